"""One batch of on-policy experience for a language model: sample, score, and log-probs.

Every online method of lesson 05 (PPO, RLOO, GRPO) starts an update the same way:

1. sample a completion y ~ pi_theta(. | x) for each prompt x, at temperature tau;
2. score each (x, y) with the reward function (a reward model, or the true reward);
3. record log pi_theta(y_t | x, y_<t) and log pi_ref(y_t | x, y_<t) of the sampled tokens,
   both at the same tau as the sampling ("N implementation details", no. 6: recomputing at
   tau = 1 after sampling at 0.7 makes the policy look far from itself and the KL rise).

A completion that hits ``max_new_tokens`` before EOS is a truncated sentence. With
``missing_eos_penalty`` its score is lowered by that amount (TRL's ``missing_eos_penalty``;
lm-human-preferences gives such responses a fixed -1), which teaches the policy to finish its
sentences instead of being cut off mid-review.

**Forward passes by length.** A sampled batch is a left-padded prompt plus a completion that
stops at its own EOS, so much of it is padding, and a forward pass pays for every cell:
:func:`forward_by_length` runs rows of similar length together, each group cut to its longest
row, for the same numbers (to float rounding); with gradients too, for the trainers' updates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from rlhf_lessons.lm import Batch, generate, token_logprobs
from rlhf_lessons.training import RewardFn, eval_mode


@dataclass
class Rollout:
    """Sampled completions and what the update needs from them.

    ``batch`` rows are left-padded prompt + completion (see :func:`rlhf_lessons.lm.generate`);
    ``logp`` and ``ref_logp`` are (B, T) on the sampled tokens, zero outside the completion
    (``logp`` is None when :func:`collect_rollout` was told to leave it to the trainer);
    ``scores`` (B,) the rewards after the EOS penalty, ``raw_scores`` (B,) before it;
    ``ended`` (B,) True where the completion ended with EOS.
    """

    prompts: list[str]
    completions: list[str]
    batch: Batch
    logp: torch.Tensor | None
    ref_logp: torch.Tensor
    scores: torch.Tensor
    raw_scores: torch.Tensor
    ended: torch.Tensor

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def mask(self) -> torch.Tensor:
        """(B, T) float: 1 on completion tokens (EOS included)."""
        return self.batch.completion_mask.float()

    def lengths(self) -> torch.Tensor:
        """(B,) completion lengths in tokens (EOS included)."""
        return self.batch.completion_mask.sum(-1)

    def samples(self, n: int = 8) -> list[tuple[str, str, float]]:
        """The first ``n`` (prompt, completion, score before the EOS penalty) triples."""
        return list(zip(self.prompts[:n], self.completions[:n], self.raw_scores[:n].tolist(),
                        strict=True))  # fmt: skip


def _spans(attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(first real column, number of real tokens) of each row; rows must be contiguous."""
    real = attention_mask.bool()
    length = real.sum(-1)
    first = real.long().argmax(-1)
    cols = torch.arange(real.shape[1], device=real.device)
    inside = (cols >= first[:, None]) & (cols < (first + length)[:, None])
    if (inside != real).any():
        raise ValueError(
            "every row's real tokens must be contiguous (padding only at its start and end), as "
            "lm.generate and lm.tokenize_pairs build them"
        )
    return first, length


def forward_by_length(
    fn: Callable[[Batch], torch.Tensor | tuple[torch.Tensor, ...]], batch: Batch, rows: int = 32
):
    """``fn(batch)`` computed on groups of rows of similar length, without their padding.

    The rows are sorted by length and cut into groups of ``rows``, each shifted to start at
    column 0 and cut to its longest row; ``fn`` returns one tensor or a tuple of (n, w, ...)
    tensors aligned with the group's tokens, put back at the batch's rows and columns, zero on
    padding, with gradients. What ``fn`` computes at a real token depends only on the row's real
    tokens (positions come from the attention mask): it equals ``fn(batch)``, to float rounding.
    """
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    first, length = _spans(batch.attention_mask)
    n_rows, width = batch.input_ids.shape
    flat_index, pieces = [], None
    for idx in length.argsort().split(rows):
        w = int(length[idx].max())
        offsets = torch.arange(w, device=first.device)
        cols = (first[idx, None] + offsets).clamp(max=width - 1)
        valid = offsets < length[idx, None]
        group = Batch(*(t[idx].gather(1, cols) * valid for t in (
            batch.input_ids, batch.attention_mask, batch.completion_mask)))  # fmt: skip
        out = fn(group)
        outs = out if isinstance(out, tuple) else (out,)
        pieces = pieces or [[] for _ in outs]
        for store, o in zip(pieces, outs, strict=True):
            store.append(o[valid])
        flat_index.append((idx[:, None] * width + cols)[valid])
    index = torch.cat(flat_index)
    results = []
    for store in pieces:
        values = torch.cat(store)
        full = values.new_zeros((n_rows * width, *values.shape[1:]))
        results.append(full.index_put((index,), values).view(n_rows, width, *values.shape[1:]))
    return tuple(results) if len(results) > 1 else results[0]


def logprobs_by_length(model, batch: Batch, temperature: float = 1.0, rows: int = 32):
    """:func:`rlhf_lessons.lm.token_logprobs` (B, T) through :func:`forward_by_length`, zero on
    padding; with gradients unless called under ``torch.no_grad()``."""
    return forward_by_length(lambda b: token_logprobs(model, b, temperature), batch, rows)


@torch.no_grad()
def logprobs_in_chunks(model, batch: Batch, temperature: float) -> torch.Tensor:
    """:func:`logprobs_by_length` without gradients, on ``model``'s device; (B, T) on the CPU."""
    device = next(model.parameters()).device
    return logprobs_by_length(model, batch.to(device), temperature).cpu()


def score_completions(reward_fn: RewardFn, prompts: Sequence[str], completions: Sequence[str]):
    """``reward_fn(prompts, completions)`` as a float (B,) tensor, checked: the right shape,
    and no NaN or inf (a silent NaN would poison every advantage of the batch)."""
    scores = torch.as_tensor(reward_fn(list(prompts), list(completions))).detach().float().cpu()
    if scores.shape != (len(prompts),):
        raise ValueError(
            f"reward_fn returned shape {tuple(scores.shape)}, expected ({len(prompts)},): one "
            "score per (prompt, completion)"
        )
    if not torch.isfinite(scores).all():
        bad = int((~torch.isfinite(scores)).nonzero()[0, 0])
        raise ValueError(
            f"reward_fn returned {scores[bad].item()} for completion {bad} "
            f"({completions[bad]!r}): rewards must be finite numbers"
        )
    return scores


@torch.no_grad()
def collect_rollout(
    policy,
    ref,
    tokenizer,
    prompts: Sequence[str],
    reward_fn: RewardFn,
    max_new_tokens: int = 16,
    temperature: float = 1.0,
    missing_eos_penalty: float | None = None,
    seed: int | None = None,
    batch_size: int = 64,
    policy_logprobs: bool = True,
) -> Rollout:
    """Sample one completion per prompt from ``policy`` (a causal LM) and measure it.

    ``policy`` and ``ref`` share ``tokenizer``; both are in eval mode while sampling and scoring
    (no dropout: "N implementation details", no. 8), then restored. Repeat a prompt to draw
    several completions of it. Completions are cut at ``max_new_tokens`` (and count as not
    ended); ``temperature`` is used for the sampling and both models' log-probs.
    ``policy_logprobs=False`` leaves ``logp`` None, for a trainer that gets it from its first
    update's forward pass (or with its values).
    """
    if missing_eos_penalty is not None and missing_eos_penalty < 0:
        raise ValueError(
            f"missing_eos_penalty is subtracted: pass it >= 0, got {missing_eos_penalty}"
        )
    with eval_mode(policy, ref):
        gen = generate(
            policy, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature,
            batch_size=batch_size, seed=seed,
        )  # fmt: skip
        batch = gen.batch
        mask = batch.completion_mask.float()
        logp = logprobs_in_chunks(policy, batch, temperature) * mask if policy_logprobs else None
        ref_logp = logprobs_in_chunks(ref, batch, temperature) * mask
    raw = score_completions(reward_fn, gen.prompts, gen.completions)
    last = (mask * torch.arange(mask.shape[1])).argmax(-1)
    ended = batch.input_ids[torch.arange(len(batch)), last] == tokenizer.eos_token_id
    scores = raw.clone()
    if missing_eos_penalty:
        scores[~ended] -= missing_eos_penalty
    return Rollout(gen.prompts, gen.completions, batch, logp, ref_logp, scores, raw, ended)
