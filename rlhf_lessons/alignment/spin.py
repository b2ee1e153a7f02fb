"""SPIN: self-play fine-tuning, DPO against the model's own previous answers.

Paper: Chen et al. 2024, "Self-Play Fine-Tuning Converts Weak Language Models to Strong Language
Models", arXiv 2401.01335 (code: uclaml/SPIN; also lucidrains/self-rewarding-lm-pytorch
``spin.py``). SPIN needs only SFT data, (prompt, answer) pairs, and no preference labels. Each
iteration t turns the SFT data into preference pairs against the current model pi_t:

    chosen y   = the data's answer to x,
    rejected y' ~ pi_t(. | x), the model's own answer,
    L(theta) = E[ l( lambda log pi_theta(y|x)/pi_t(y|x) - lambda log pi_theta(y'|x)/pi_t(y'|x) ) ],
    l(u) = log(1 + exp(-u)),

which is the DPO loss (lesson 06) with the previous iterate pi_t as the reference (uclaml/SPIN's
``spin_loss`` is DPO's, on summed log-probs). The trained model is pi_{t+1}, and the next
iteration samples from it and uses it as the reference. When pi_t already writes like the data,
chosen and rejected come from the same distribution, the expected gradient vanishes: the fixed
point is pi = p_data. lambda is DPO's beta (0.1 in the paper).

:func:`spin_loss` is the formula above on sequence log-probs; it is the DPO loss with
chosen = data and rejected = sample (a unit test checks them equal), so training runs lesson 06's
:func:`rlhf_lessons.alignment.dpo.train_dpo` (:func:`spin_iteration`; chained, also with LoRA, by
:mod:`rlhf_lessons.alignment.pipeline`'s ``SPINStage``). :func:`data_logprob` measures what SPIN
should raise: the likelihood of held-out data answers.

**Sampling temperature.** The fixed-point argument needs y' ~ pi_t itself, i.e. temperature 1
(our default). lucidrains samples at 0.7: the rejected answers are then sharper than the model,
and the fixed point moves.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from rlhf_lessons import lm
from rlhf_lessons.alignment.dpo import DPOConfig, train_dpo
from rlhf_lessons.alignment.self_rewarding import format_prompts
from rlhf_lessons.alignment.sft import check_sft_data
from rlhf_lessons.course.device import torch_threads
from rlhf_lessons.training import History


@dataclass(frozen=True)
class SPINConfig:
    """How the rejected answers are sampled from the current model (see the module docstring).

    ``chat``: wrap prompts in the tokenizer's chat template (:func:`rlhf_lessons.lm.
    format_prompt`; without one the raw text is used)."""

    temperature: float = 1.0
    max_new_tokens: int = 16
    chat: bool = True
    batch_size: int = 64
    threads: int | None = None  # torch threads while sampling (None: leave as they are)
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"SPINConfig.temperature must be > 0, got {self.temperature}")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("SPINConfig needs max_new_tokens >= 1 and batch_size >= 1")


def spin_loss(
    policy_real: torch.Tensor,
    policy_generated: torch.Tensor,
    ref_real: torch.Tensor,
    ref_generated: torch.Tensor,
    lam: float = 0.1,
) -> tuple[torch.Tensor, dict]:
    """SPIN's loss (Chen et al. 2024, eq. 4.7) on sequence log-probs, each (B,):

        L = mean_b log(1 + exp(-lam [(log pi(y_b) - log pi_t(y_b)) - (log pi(y'_b) - log pi_t(y'_b))]))

    ``policy_real`` = log pi_theta(y|x) of the data's answers, ``policy_generated`` = log
    pi_theta(y'|x) of pi_t's samples, ``ref_*`` the same under pi_t (constants). Returns the
    loss and ``accuracy`` (the fraction of pairs where the data's answer already wins)."""
    if not policy_real.shape == policy_generated.shape == ref_real.shape == ref_generated.shape:
        raise ValueError("the four log-prob tensors must have the same shape (B,)")
    u = lam * ((policy_real - ref_real) - (policy_generated - ref_generated))
    loss = torch.nn.functional.softplus(-u).mean()  # log(1 + e^{-u})
    return loss, {"loss": loss.item(), "accuracy": (u > 0).float().mean().item()}


def spin_pairs(model, tokenizer, data: Sequence[Mapping], config: SPINConfig | None = None,
               seed: int | None = None) -> tuple[list[dict], Counter]:  # fmt: skip
    """One SPIN iteration's preference pairs: chosen = the data's answer, rejected = a sample
    of ``model`` for the same prompt. Returns ``(pairs, skipped)``: a sample identical to the
    data's answer, or an empty one (DPO needs a text), makes no pair and is counted in
    ``skipped`` ("same as data", "empty")."""
    config = config or SPINConfig()
    data = check_sft_data(data)
    model.eval()
    prompts = format_prompts(tokenizer, [r["prompt"] for r in data], config.chat)
    with torch_threads(config.threads):
        gen = lm.generate(model, tokenizer, prompts, max_new_tokens=config.max_new_tokens,
                          temperature=config.temperature, batch_size=config.batch_size,
                          seed=config.seed if seed is None else seed)  # fmt: skip
    pairs, skipped = [], Counter()
    for prompt, record, sample in zip(prompts, data, gen.completions, strict=True):
        if not sample.strip():
            skipped["empty"] += 1
        elif sample.strip() == record["completion"].strip():
            skipped["same as data"] += 1
        else:
            pairs.append({"prompt": prompt, "chosen": record["completion"], "rejected": sample})
    return pairs, skipped


def spin_iteration(policy, tokenizer, data: Sequence[Mapping], config: SPINConfig | None = None,
                   dpo: DPOConfig | None = None, seed: int | None = None,
                   show_progress: bool = False) -> tuple[History | None, list[dict], Counter]:  # fmt: skip
    """pi_t -> pi_{t+1}, in place: :func:`spin_pairs`, then DPO with ``policy`` before the update
    as the reference (a peft policy: its base with the adapter disabled, so merge earlier
    adapters first). Returns the DPO history (None without pairs), the pairs, the skip counts."""
    pairs, skipped = spin_pairs(policy, tokenizer, data, config, seed)
    if not pairs:
        return None, pairs, skipped
    history = train_dpo(policy, tokenizer, pairs, dpo or DPOConfig(), show_progress=show_progress)
    return history, pairs, skipped


@torch.no_grad()
def data_logprob(model, tokenizer, data: Sequence[Mapping], chat: bool = True,
                 batch_size: int = 64) -> dict:  # fmt: skip
    """Likelihood of the data's answers under ``model`` (EOS included): ``token`` the mean
    log-prob per answer token, ``sequence`` the mean log pi(y|x) per answer, ``perplexity``
    exp(-token)."""
    data = check_sft_data(data)
    model.eval()
    prompts = format_prompts(tokenizer, [r["prompt"] for r in data], chat)
    device = next(model.parameters()).device
    total, tokens, seqs = 0.0, 0, []
    for i in range(0, len(data), batch_size):
        batch = lm.tokenize_pairs(tokenizer, prompts[i : i + batch_size],
                                  [r["completion"] for r in data[i : i + batch_size]]).to(device)  # fmt: skip
        seq = lm.sequence_logprobs(lm.token_logprobs(model, batch), batch.completion_mask)
        seqs.append(seq.cpu())
        total += seq.sum().item()
        tokens += int(batch.completion_mask.sum())
    token = total / tokens
    return {
        "token": token,
        "sequence": torch.cat(seqs).mean().item(),
        "perplexity": math.exp(-token),
    }
