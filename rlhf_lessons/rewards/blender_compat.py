"""Make llm-blender 0.0.2 (LLM-Blender's PairRanker / PairRM code) run with transformers 5.

Lesson 08 uses llm-blender's own code (``pip install llm-blender``: the package of Jiang, Ren &
Lin 2023, arXiv 2306.02561, github.com/yuchenlin/LLM-Blender), not a copy of it. Its last release,
0.0.2, was written against transformers 4, and two things it uses were removed in transformers
5. This module puts them back, each only when it is missing, before llm-blender is imported:

1. ``transformers.utils.hub.TRANSFORMERS_CACHE`` (deprecated in 4.x in favour of huggingface_hub's
   ``HF_HUB_CACHE``, removed in 5.0). llm-blender imports it at module level in
   ``blender/blender.py`` and ``blender/blender_utils.py`` (the default ``cache_dir`` of
   ``Blender.loadranker``), so ``import llm_blender`` fails with "cannot import name
   'TRANSFORMERS_CACHE'". We set it to ``huggingface_hub.constants.HF_HUB_CACHE``.
2. ``PreTrainedTokenizerBase.batch_encode_plus`` (removed in 5.0: calling the tokenizer on a list
   does the same). Every llm-blender collator encodes through it (``pair_ranker/collator.py``,
   ``encode_texts``), so every batch fails with "BertTokenizer has no attribute
   batch_encode_plus". We add a one-line alias on the base class.

It also writes and relocates the *checkpoint folder* that ``Blender().loadranker(folder)``
reads: ``config.json`` (a ``RankerConfig``) and ``model.safetensors``. The config names the
backbone folder (``model_name``) that the ranker is rebuilt from before the weights are loaded,
and that is an absolute path which differs between machines (our MiniLM lives inside a pip
package), so :func:`relocate_checkpoint` rewrites it for this machine.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from rlhf_lessons.course.cache import atomic_folder

LLM_BLENDER_VERSION = "0.0.2"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def patch_transformers_cache() -> bool:
    """Give ``transformers.utils.hub`` back its ``TRANSFORMERS_CACHE`` constant (patch 1 of the
    module docstring). Returns True when it patched, False when it was there (transformers 4)."""
    import transformers.utils.hub as hub

    if hasattr(hub, "TRANSFORMERS_CACHE"):
        return False
    from huggingface_hub import constants

    hub.TRANSFORMERS_CACHE = constants.HF_HUB_CACHE
    return True


def _batch_encode_plus(self, batch_text_or_text_pairs, *args: Any, **kwargs: Any):
    """transformers 4's ``batch_encode_plus``: encoding a list is what ``__call__`` does."""
    return self(batch_text_or_text_pairs, *args, **kwargs)


def patch_batch_encode_plus() -> bool:
    """Add ``batch_encode_plus`` to transformers' tokenizer base class if it is missing.

    Needed by llm-blender 0.0.2's collators with transformers >= 5.0 (see the module docstring).
    The alias lives on ``PreTrainedTokenizerBase`` because ``Blender.loadranker`` builds its own
    tokenizer internally, so patching one instance would not reach it. Returns True when it
    patched, False when the method exists (transformers 4.x, or already patched).
    """
    from transformers import PreTrainedTokenizerBase

    if hasattr(PreTrainedTokenizerBase, "batch_encode_plus"):
        return False
    PreTrainedTokenizerBase.batch_encode_plus = _batch_encode_plus
    return True


def import_llm_blender():
    """Apply the patches (idempotent: each only when missing) and return the ``llm_blender``
    module. Import llm-blender only through this function."""
    patch_transformers_cache()
    patch_batch_encode_plus()
    try:
        import llm_blender
    except ImportError as err:
        raise ImportError(
            f"llm-blender is needed for lesson 08: pip install llm-blender=={LLM_BLENDER_VERSION} "
            f"(it is in the course's [lm] extra) ({err})"
        ) from err
    return llm_blender


# --- checkpoint folders --------------------------------------------------------------------------


def checkpoint_config(config) -> dict[str, Any]:
    """A ``RankerConfig`` as the ``config.json`` of a portable checkpoint folder.

    ``load_checkpoint`` and ``cache_dir`` are machine-specific (``loadranker`` fills both in from
    the folder it is given) and ``device`` is the loader's choice, so they are stored as null.
    """
    data = config.to_dict()
    for key in ("load_checkpoint", "cache_dir", "device"):
        data[key] = None
    if data.get("ranker_type") != "pairranker":
        raise ValueError(
            f"config.ranker_type must be 'pairranker' for a PairRanker checkpoint, got "
            f"{data.get('ranker_type')!r}"
        )
    for key in ("model_type", "model_name", "source_maxlength", "candidate_maxlength"):
        if data.get(key) is None:
            raise ValueError(
                f"config.{key} is not set; Blender.loadranker needs it to rebuild the ranker: "
                "build the ranker with rlhf_lessons.rewards.pairrm.build_pair_ranker"
            )
    data["model_name"] = str(data["model_name"])
    return data


def write_ranker_checkpoint(ranker, config, folder: str | os.PathLike) -> Path:
    """Save a PairRanker as a folder that ``Blender().loadranker(folder)`` loads.

    Writes ``config.json`` (:func:`checkpoint_config`) and ``model.safetensors`` (the ranker's
    whole state dict: backbone with its resized embeddings, and the head), atomically
    (:func:`~rlhf_lessons.course.cache.atomic_folder`: an interrupted save leaves no half folder).
    """
    from safetensors.torch import save_model

    target = Path(folder)
    data = checkpoint_config(config)
    with atomic_folder(target) as tmp:
        (tmp / CONFIG_FILE).write_text(json.dumps(data, indent=2))
        save_model(ranker, str(tmp / WEIGHTS_FILE))
    return target


def relocate_checkpoint(folder: str | os.PathLike, backbone: str | os.PathLike) -> bool:
    """Point a checkpoint's ``config.json`` at this machine's copy of its backbone.

    ``loadranker`` rebuilds the ranker from ``model_name`` (tokenizer, architecture, initial
    weights) before it loads ``model.safetensors`` over it, so that folder must exist here.
    Returns True when the file was rewritten, False when it already pointed at ``backbone``.
    """
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: a PairRanker checkpoint folder holds {CONFIG_FILE} and "
            f"{WEIGHTS_FILE} (write one with write_ranker_checkpoint)"
        )
    if not (Path(backbone) / "config.json").is_file():
        raise FileNotFoundError(
            f"backbone folder {backbone} has no config.json: pass the folder of the encoder the "
            "ranker was trained from (e.g. rlhf_lessons.models.minilm_path())"
        )
    data = json.loads(path.read_text())
    if data.get("model_name") == str(backbone):
        return False
    data["model_name"] = str(backbone)
    path.write_text(json.dumps(data, indent=2))
    return True
