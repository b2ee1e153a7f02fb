"""Supervised fine-tuning (SFT): the next-token loss on the completions of prompt/completion
records (lessons 09-10, and the first stage of every RLHF pipeline).

Ouyang et al. 2022 (InstructGPT, arXiv 2203.02155), step 1: fine-tune the pretrained model on
demonstrations. The loss is the negative log-likelihood of the completion tokens only; the
prompt is context, not a target:

    L = - sum_{b,t} m_{bt} log pi(y_{bt} | x_b, y_{b,<t}) / sum_{b,t} m_{bt}

with ``m`` (B, T) the completion mask of a minibatch of B right-padded prompt + completion rows
(every completion token of the minibatch weighs the same).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from rlhf_lessons import lm
from rlhf_lessons.course.device import torch_threads
from rlhf_lessons.course.progress import progress
from rlhf_lessons.course.seeding import seed_everything
from rlhf_lessons.training import EvalFn, History, Stopwatch, trainable_parameters, warmup_schedule


@dataclass(frozen=True)
class SFTConfig:
    """Settings of :func:`train_sft`: Adam, a constant learning rate after a linear warm-up."""

    lr: float = 1e-3
    epochs: int = 1
    batch_size: int = 64
    max_steps: int | None = None
    warmup_steps: int = 10
    max_grad_norm: float = 1.0
    max_prompt_length: int | None = None
    max_completion_length: int | None = None
    add_eos: bool = True  # the model learns to stop
    chat: bool = True  # wrap prompts in the chat template (a tokenizer without one: raw text)
    group_by_length: bool = False  # minibatches of similar lengths (less padding; see below)
    threads: int | None = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.lr > 0 or self.epochs < 1 or self.batch_size < 1:
            raise ValueError("SFTConfig needs lr > 0, epochs >= 1 and batch_size >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"SFTConfig.max_steps must be >= 1 or None, got {self.max_steps}")


def check_sft_data(data: Sequence[Mapping], what: str = "data") -> list[dict]:
    """SFT records ``{"prompt", "completion"}`` (strings, completion non-empty), as a list."""
    if isinstance(data, Mapping | str):
        raise TypeError(f"{what} must be a list of {{'prompt', 'completion'}} records")
    out = list(data)
    if not out:
        raise ValueError(f"{what} is empty")
    for i, r in enumerate(out):
        if not isinstance(r, Mapping) or "prompt" not in r or "completion" not in r:
            raise ValueError(
                f"{what}[{i}] must be a dict with 'prompt' and 'completion' (the data's answer), "
                f"got {r!r:.80}"
            )
        if not isinstance(r["prompt"], str) or not isinstance(r["completion"], str):
            raise TypeError(f"{what}[{i}]: 'prompt' and 'completion' must be strings")
        if not r["completion"].strip():
            raise ValueError(f"{what}[{i}]: 'completion' is empty; drop the record")
    return out


def minibatch_order(
    lengths: torch.Tensor,
    batch_size: int,
    epochs: int,
    group_by_length: bool,
    generator: torch.Generator,
) -> list[torch.Tensor]:
    """Each epoch's minibatches of row indices: a fresh shuffle cut into ``batch_size`` pieces,
    or, with ``group_by_length``, Hugging Face's ``group_by_length``: each shuffled window of 50
    minibatches is sorted by length before it is cut, and the minibatches are shuffled again
    (every row once per epoch, as before; rows of similar length train together, so a padded
    minibatch wastes less compute)."""
    order = []
    for _ in range(epochs):
        perm = torch.randperm(len(lengths), generator=generator)
        if not group_by_length:
            order += list(perm.split(batch_size))
            continue
        window = 50 * batch_size
        groups = [w[lengths[w].argsort(descending=True, stable=True)] for w in perm.split(window)]
        batches = [b for w in groups for b in w.split(batch_size)]
        order += [batches[i] for i in torch.randperm(len(batches), generator=generator)]
    return order


def sft_loss(logp: torch.Tensor, completion_mask: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Mean NLL of the completion tokens. logp, completion_mask: (B, T) -> scalar."""
    mask = completion_mask.to(logp.dtype)
    loss = -(logp * mask).sum() / mask.sum()
    return loss, {"loss": loss.item()}


def train_sft(
    policy,
    tokenizer,
    data: Sequence[Mapping],
    config: SFTConfig | None = None,
    *,
    eval_fn: EvalFn | None = None,
    eval_every: int = 0,
    show_progress: bool = True,
) -> History:
    """Fine-tune ``policy`` in place on ``{"prompt", "completion"}`` records (the prompt is a
    user message, formatted with :func:`rlhf_lessons.lm.format_prompt` when ``config.chat``).

    Returns a :class:`~rlhf_lessons.training.History` with one row per step (``loss``,
    ``seconds``) and ``info["examples"]``.
    """
    cfg = config or SFTConfig()
    data = check_sft_data(data)
    params = trainable_parameters(policy)
    history = History("sft", asdict(cfg), info={"examples": len(data)})
    with torch_threads(cfg.threads):
        seed_everything(cfg.seed)
        prompts = [lm.format_prompt(tokenizer, r["prompt"]) if cfg.chat else r["prompt"]
                   for r in data]  # fmt: skip
        batch = lm.tokenize_pairs(tokenizer, prompts, [r["completion"] for r in data],
                                  cfg.max_prompt_length, cfg.max_completion_length, cfg.add_eos)  # fmt: skip
        device = next(policy.parameters()).device
        optimizer = torch.optim.Adam(params, lr=cfg.lr)
        schedule = warmup_schedule(optimizer, cfg.warmup_steps)
        generator = torch.Generator().manual_seed(cfg.seed)
        total = math.ceil(len(data) / cfg.batch_size) * cfg.epochs
        total = min(total, cfg.max_steps or total)
        minibatches = minibatch_order(batch.attention_mask.sum(-1), cfg.batch_size, cfg.epochs,
                                      cfg.group_by_length, generator)  # fmt: skip
        policy.eval()  # no dropout: the loss is the model's own likelihood
        watch = Stopwatch()
        if eval_every:
            history.evaluate(eval_fn, policy)
        bar = progress(total=total, desc="SFT", disable=not show_progress)
        for idx in itertools.islice(minibatches, total):
            with watch:
                rows = batch.rows(idx).trimmed().to(device)
                loss, m = sft_loss(lm.token_logprobs(policy, rows), rows.completion_mask)
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                schedule.step()
            history.log(seconds=watch.seconds, **m)
            bar.update(1)
            bar.set_postfix(loss=f"{m['loss']:.3f}")
            if history.due(eval_every, total):
                history.evaluate(eval_fn, policy)
        bar.close()
        history.evaluate(eval_fn, policy)
    return history
