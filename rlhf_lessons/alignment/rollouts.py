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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rlhf_lessons.lm import Batch, generate, token_logprobs
from rlhf_lessons.training import RewardFn


@dataclass
class Rollout:
    """Sampled completions and what the update needs from them.

    ``batch`` rows are left-padded prompt + completion (see :func:`rlhf_lessons.lm.generate`);
    ``logp`` and ``ref_logp`` are (B, T) on the sampled tokens, zero outside the completion;
    ``scores`` (B,) the rewards after the EOS penalty, ``raw_scores`` (B,) before it;
    ``ended`` (B,) True where the completion ended with EOS.
    """

    prompts: list[str]
    completions: list[str]
    batch: Batch
    logp: torch.Tensor
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


@torch.no_grad()
def logprobs_in_chunks(model, batch: Batch, temperature: float, chunk: int = 64) -> torch.Tensor:
    """:func:`rlhf_lessons.lm.token_logprobs` over ``batch`` ``chunk`` rows at a time, (B, T)."""
    device = next(model.parameters()).device
    out = [
        token_logprobs(model, Batch(*(t[i : i + chunk] for t in (
            batch.input_ids, batch.attention_mask, batch.completion_mask))).to(device),
            temperature).cpu()
        for i in range(0, len(batch), chunk)
    ]  # fmt: skip
    return torch.cat(out)


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
) -> Rollout:
    """Sample one completion per prompt from ``policy`` (a causal LM) and measure it.

    Args:
        policy, ref: causal LMs sharing ``tokenizer``; both are put in eval mode while sampling
            and scoring (no dropout: "N implementation details", no. 8) and restored after.
        prompts: formatted prompts; repeat a prompt to draw several completions of it.
        reward_fn: ``(prompts, completions) -> (B,)`` scores.
        max_new_tokens: completions are cut there (and count as not ended).
        temperature: sampling temperature, also used for both models' log-probs.
        missing_eos_penalty: subtracted from the score of each completion without EOS.
        seed: seeds the sampling.
    """
    if missing_eos_penalty is not None and missing_eos_penalty < 0:
        raise ValueError(
            f"missing_eos_penalty is subtracted: pass it >= 0, got {missing_eos_penalty}"
        )
    modes = [(m, m.training) for m in (policy, ref)]
    for m, _ in modes:
        m.eval()
    try:
        gen = generate(
            policy, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature,
            batch_size=batch_size, seed=seed,
        )  # fmt: skip
        batch = gen.batch
        mask = batch.completion_mask.float()
        logp = logprobs_in_chunks(policy, batch, temperature, batch_size) * mask
        ref_logp = logprobs_in_chunks(ref, batch, temperature, batch_size) * mask
    finally:
        for m, was_training in modes:
            m.train(was_training)
    raw = score_completions(reward_fn, gen.prompts, gen.completions)
    last = (mask * torch.arange(mask.shape[1])).argmax(-1)
    ended = batch.input_ids[torch.arange(len(batch)), last] == tokenizer.eos_token_id
    scores = raw.clone()
    if missing_eos_penalty:
        scores[~ended] -= missing_eos_penalty
    return Rollout(gen.prompts, gen.completions, batch, logp, ref_logp, scores, raw, ended)
