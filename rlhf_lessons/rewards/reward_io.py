"""Reward models on disk: save a trained one, load it back as a reward function.

A folder written by :func:`save_reward_model` holds the backbone as a normal Hugging Face model
folder (``config.json``, ``model.safetensors``, the tokenizer), plus the course's two files:
``reward_head.safetensors`` (the linear head) and ``reward_model.json`` (which class, pooling,
token limits). :func:`load_reward_model` reads that folder, or a Hugging Face
``...ForSequenceClassification`` model with one label (what TRL's ``RewardTrainer`` saves),
and returns a model with ``score(prompts, responses) -> (N,)``;
:func:`reward_function` makes it a :data:`rlhf_lessons.training.RewardFn` for PPO, RLOO/GRPO
and best-of-N.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from rlhf_lessons.rewards.reward_model import CausalLMRewardModel, HFSequenceScorer, RewardModel

SPEC_FILE = "reward_model.json"
HEAD_FILE = "reward_head.safetensors"
FORMAT_VERSION = 1
#: what reward_model.json keeps of each class: its constructor's settings
SETTINGS = {
    "RewardModel": ("pooling", "max_length", "chunk_size"),
    "CausalLMRewardModel": ("format_prompts", "max_prompt_length", "max_completion_length"),
}


class RewardModelLoadError(OSError):
    """A folder that holds no reward model this module can load; the message says what would."""


def save_reward_model(model, folder: str | Path) -> Path:
    """Write a :class:`~rlhf_lessons.rewards.reward_model.RewardModel` or
    :class:`~rlhf_lessons.rewards.reward_model.CausalLMRewardModel` to ``folder`` (a LoRA
    backbone is merged into its weights first)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not isinstance(model, RewardModel | CausalLMRewardModel):
        raise TypeError(
            f"save_reward_model saves RewardModel and CausalLMRewardModel, got "
            f"{type(model).__name__}; a transformers model saves itself with save_pretrained"
        )
    kind = "RewardModel" if isinstance(model, RewardModel) else "CausalLMRewardModel"
    spec = {"class": kind, **{k: getattr(model, k) for k in SETTINGS[kind]}}
    backbone = model.encoder if kind == "RewardModel" else model.body
    if hasattr(backbone, "merge_and_unload"):  # a peft backbone: one plain model on disk
        backbone = backbone.merge_and_unload()
    backbone.save_pretrained(folder)
    model.tokenizer.save_pretrained(folder)
    head = {k: v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()}
    save_file(head, str(folder / HEAD_FILE))
    (folder / SPEC_FILE).write_text(json.dumps({"format": FORMAT_VERSION, **spec}, indent=1))
    return folder


def is_reward_model_folder(path: str | Path) -> bool:
    """Whether ``path`` holds a reward model :func:`load_reward_model` can read."""
    path = Path(path)
    if (path / SPEC_FILE).is_file():
        return True
    return any(a.endswith("ForSequenceClassification") for a in _architectures(path))


def _architectures(path: Path) -> list[str]:
    try:
        return json.loads((path / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError):
        return []


def load_reward_model(path: str | Path, device=None):
    """A saved reward model, in eval mode: a folder of :func:`save_reward_model`, or a
    ``...ForSequenceClassification`` folder with one label (e.g. from TRL's RewardTrainer)."""
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    from rlhf_lessons.course.device import get_device

    path = Path(path)
    fix = ("pass a folder written by `rlhf-lessons train reward` (it holds reward_model.json) or "
           "a Hugging Face ...ForSequenceClassification model with one label")  # fmt: skip
    if not path.is_dir():
        raise RewardModelLoadError(f"reward model {str(path)!r}: no such folder; {fix}")
    device = device or get_device()
    if (path / SPEC_FILE).is_file():
        spec = json.loads((path / SPEC_FILE).read_text())
        kind = spec.get("class")
        if kind not in SETTINGS or not (path / HEAD_FILE).is_file():
            raise RewardModelLoadError(
                f"{path / SPEC_FILE} names class {kind!r} or {HEAD_FILE} is missing; {fix}"
            )
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        backbone = AutoModel.from_pretrained(str(path)).to(device)
        # chunk_size only sets the scoring speed (older files lack it); the rest change scores
        if missing := sorted(set(SETTINGS[kind]) - set(spec) - {"chunk_size"}):
            raise RewardModelLoadError(f"{path / SPEC_FILE} lacks the settings {missing}; {fix}")
        settings = {k: spec[k] for k in SETTINGS[kind] if k in spec}
        if kind == "RewardModel":
            model = RewardModel((backbone, tokenizer), **settings)
        else:
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            model = CausalLMRewardModel(backbone, tokenizer, **settings)
        from safetensors.torch import load_file

        model.head.load_state_dict(load_file(str(path / HEAD_FILE)))
        return model.to(device).eval()
    architectures = _architectures(path)
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        hf = AutoModelForSequenceClassification.from_pretrained(str(path)).to(device).eval()
        if hf.config.num_labels != 1:
            raise RewardModelLoadError(
                f"{path} is a classifier with {hf.config.num_labels} labels; a reward model has "
                f"one (a scalar score); {fix}"
            )
        return HFSequenceScorer(hf, tokenizer).eval()
    found = ", ".join(architectures) or "no config.json"
    raise RewardModelLoadError(f"cannot load a reward model from {path} ({found}); {fix}")


def reward_function(
    model, prompt_text: Mapping[str, str] | None = None, batch_size: int = 32
) -> Callable[[Sequence[str], Sequence[str]], torch.Tensor]:
    """``(prompts, completions) -> (B,)`` rewards from a reward model's ``score``.

    ``prompt_text`` maps the prompts the policy sees (chat-formatted) back to the text the
    reward model was trained on; prompts not in it are scored as they are."""

    def reward_fn(prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
        texts = [prompt_text.get(p, p) for p in prompts] if prompt_text else list(prompts)
        return model.score(texts, list(completions), batch_size=batch_size)

    return reward_fn
