"""LoRA adapters for the LM lessons (06, 07, 10, 11): train 0.1% of the weights, and get the
reference model for free.

Paper: Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", arXiv 2106.09685.
A LoRA layer computes ``W x + (alpha / r) B A x`` with the pretrained ``W`` frozen and only the
rank-r matrices A and B trained; B starts at 0, so the adapted model starts as the base model.

For preference optimisation that has a second use: with the adapter switched off, the model
*is* its frozen base, pi_ref (:func:`adapter_disabled`). DPO with LoRA therefore needs no second
copy of the model for its reference (TRL's ``DPOTrainer`` does the same). The adapters are
peft's (``peft.get_peft_model``); peft is optional, and :func:`is_peft_model` is False without it.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence

import torch
from torch import nn


def is_peft_model(model) -> bool:
    """Whether ``model`` is a peft ``PeftModel`` (a base model wrapped with adapters)."""
    try:
        from peft import PeftModel
    except ImportError:  # peft is optional: without it no model is a PeftModel
        return False
    return isinstance(model, PeftModel)


def add_lora(
    model,
    r: int = 8,
    alpha: int = 16,
    target_modules: Sequence[str] = ("q_proj", "v_proj"),
    dropout: float = 0.0,
    seed: int = 0,
):
    """Wrap ``model`` with a fresh LoRA adapter on its ``target_modules`` linear layers; only
    A and B train. A is drawn after seeding torch with ``seed``: two calls with the same seed
    give the same adapter. Defaults: rank 8 on the attention queries and values (the LoRA
    paper's and TRL's examples); no dropout, so log-probs are deterministic."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as err:  # pragma: no cover - peft ships with the [lm] extra
        raise ImportError("add_lora needs peft: pip install 'rlhf-lessons[lm]'") from err
    torch.manual_seed(seed)
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=list(target_modules),
                        lora_dropout=dropout, task_type="CAUSAL_LM")  # fmt: skip
    with warnings.catch_warnings():  # peft calls a method transformers 5 deprecates
        warnings.filterwarnings(
            "ignore", message=".*is_gradient_checkpointing", category=FutureWarning
        )
        return get_peft_model(model, config)


@contextlib.contextmanager
def adapter_disabled(model) -> Iterator[nn.Module]:
    """Run a peft model as its base model (every adapter bypassed) inside the block:
    ``with adapter_disabled(policy) as ref: ...``."""
    if not is_peft_model(model):
        raise ValueError(
            f"adapter_disabled needs a peft PeftModel (e.g. peft.get_peft_model(model, "
            f"LoraConfig(...))), got {type(model).__name__}: a plain model has no adapter to "
            "switch off. Pass the reference model itself instead"
        )
    with model.disable_adapter():
        yield model


def check_adapters_only(policy) -> None:
    """A peft policy must train only its adapters: with the adapter disabled its base weights
    are the reference, which must not move. peft keys every adapter weight by the adapter's
    name ("...lora_A.default.weight")."""
    adapters = list(policy.peft_config)
    base = [
        n
        for n, p in policy.named_parameters()
        if p.requires_grad and not any(f".{a}." in n or n.endswith(f".{a}") for a in adapters)
    ]
    if base:
        raise ValueError(
            f"the peft policy has trainable base weights (e.g. {base[0]}); with the adapter "
            "disabled they are the reference, so training them would move pi_ref too. Freeze "
            "them (peft.get_peft_model does), or pass ref_model explicitly"
        )
