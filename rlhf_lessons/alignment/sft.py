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

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import torch

from rlhf_lessons import lm
from rlhf_lessons.course.device import torch_threads
from rlhf_lessons.course.seeding import seed_everything
from rlhf_lessons.distributed import Parallel
from rlhf_lessons.training import (
    EvalFn,
    History,
    Stopwatch,
    check_minibatch_config,
    minibatch_plan,
    optimizer_step,
    trainable_parameters,
    warmup_schedule,
)


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
        check_minibatch_config(self)


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
    parallel: Parallel | None = None,
) -> History:
    """Fine-tune ``policy`` in place on ``{"prompt", "completion"}`` records (the prompt is a
    user message, formatted with :func:`rlhf_lessons.lm.format_prompt` when ``config.chat``).

    Data-parallel as :func:`~rlhf_lessons.alignment.dpo.train_dpo`: each process computes its
    share of every minibatch's rows, weighted by their completion tokens.

    Returns a :class:`~rlhf_lessons.training.History` with one row per step (``loss``,
    ``seconds``) and ``info["examples"]``.
    """
    cfg = config or SFTConfig()
    data = check_sft_data(data)
    par = parallel if parallel is not None else Parallel.for_trainer()
    params = trainable_parameters(policy)  # fails early, naming the fix, if nothing would train
    history = History("sft", asdict(cfg), info={"examples": len(data)})
    with torch_threads(cfg.threads):
        seed_everything(cfg.seed)
        prompts = [lm.format_prompt(tokenizer, r["prompt"]) if cfg.chat else r["prompt"]
                   for r in data]  # fmt: skip
        batch = lm.tokenize_pairs(tokenizer, prompts, [r["completion"] for r in data],
                                  cfg.max_prompt_length, cfg.max_completion_length, cfg.add_eos)  # fmt: skip
        optimizer = torch.optim.Adam(params, lr=cfg.lr)
        schedule = warmup_schedule(optimizer, cfg.warmup_steps)  # built before prepare (see par)
        model, optimizer = par.prepare(policy, optimizer)  # (policy, optimizer) in one process
        params = trainable_parameters(model)
        device = par.device or next(policy.parameters()).device
        minibatches, total = minibatch_plan(batch.attention_mask.sum(-1), cfg, cfg.group_by_length)
        policy.eval()  # no dropout: the loss is the model's own likelihood
        watch = Stopwatch()
        for idx in history.loop(minibatches, total, policy, eval_fn, eval_every, desc="SFT",
                                show_progress=show_progress):  # fmt: skip
            with watch:
                shard = par.shard(idx)  # this process's rows (all of them in one process)
                rows = batch.rows(shard.index).trimmed().to(device)
                loss, m = sft_loss(lm.token_logprobs(model, rows), rows.completion_mask)
                tokens = rows.completion_mask.sum().item() if shard.rows else 0
                # a mean over this process's tokens, weighted to the minibatch's token mean
                weight = par.scale(tokens, batch.completion_mask[idx].sum().item())
                optimizer_step(loss * weight, optimizer, params, cfg.max_grad_norm, schedule, par)
                m = par.mean(m, tokens)  # the whole minibatch's loss, the same everywhere
            history.log(seconds=watch.seconds, **m)
    return history
