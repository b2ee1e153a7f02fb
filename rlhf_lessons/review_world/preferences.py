"""Preferences in the known-reward world, and a reward model learned from them.

The DPO paper's IMDb experiment (Rafailov et al. 2023, arXiv 2305.18290, section 6.1) builds its
preference data from the SFT model itself: several completions of each prompt are sampled and
ordered by the true reward (there, a sentiment classifier; here VADER,
:mod:`rlhf_lessons.review_world.true_reward`). The "labeller" is then perfectly consistent, and every
method's result can be scored on the reward that produced its labels.

- :func:`sample_ranked_completions` draws K completions per prompt from a policy and ranks them
  by the true reward: ranked records ``{"prompt", "ranked_outputs": [best, ..., worst],
  "rewards": [...]}`` in the course's preference format (:mod:`rlhf_lessons.rewards.preference_data`;
  ``ranked_to_pairs`` gives the C(K, 2) pairs). Completions that tie on the reward (VADER often
  gives 0.0 to neutral text) or repeat cannot be ordered and are dropped; a prompt left with
  fewer than two is skipped.
- :func:`train_review_reward_model` fits lesson 04's :class:`~rlhf_lessons.rewards.reward_model.
  CausalLMRewardModel` (a copy of the SFT model's transformer with a scalar head on the
  last token's state) on those pairs with the Bradley-Terry loss; then it is *normalised* so
  that the SFT model's own samples of training prompts score mean 0 and std 1 ("N
  implementation details", no. 2): the scale of a learned reward is arbitrary, and this fixes
  what a beta of 0.1 means.
- :class:`StandardizedReward` does the same to any reward function: the true reward put on the
  same scale lets PPO run on the learned and on the true reward with the same beta, so that
  the two runs differ only in the reward.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rlhf_lessons.alignment.rollouts import RewardFn, score_completions
from rlhf_lessons.lm import generate
from rlhf_lessons.review_world.true_reward import reward_of
from rlhf_lessons.rewards.reward_model import (
    CausalLMRewardModel,
    RewardModelConfig,
    evaluate_reward_model,
    train_reward_model,
)
from rlhf_lessons.training import History


def sample_ranked_completions(
    model,
    tokenizer,
    prompts: Sequence[str],
    k: int = 2,
    max_new_tokens: int = 16,
    temperature: float = 1.0,
    seed: int = 0,
    reward_fn: RewardFn = reward_of,
    min_gap: float = 1e-6,
    batch_size: int = 64,
) -> list[dict]:
    """Sample ``k`` completions of every prompt and rank them by ``reward_fn`` (see the module
    docstring): of completions within ``min_gap`` of each other (or equal texts) only the
    first is kept, so the result may be shorter than ``prompts``."""
    if k < 2:
        raise ValueError(f"k must be >= 2 completions per prompt to rank, got {k}")
    expanded = [p for p in prompts for _ in range(k)]
    gen = generate(
        model, tokenizer, expanded, max_new_tokens=max_new_tokens, temperature=temperature,
        batch_size=batch_size, seed=seed,
    )  # fmt: skip
    rewards = score_completions(reward_fn, expanded, gen.completions).tolist()
    records = []
    for i, prompt in enumerate(prompts):
        group = sorted(
            zip(rewards[i * k : (i + 1) * k], gen.completions[i * k : (i + 1) * k], strict=True),
            key=lambda rc: -rc[0],
        )
        kept: list[tuple[float, str]] = []
        for r, c in group:
            if c.strip() and all(
                abs(r - r2) >= min_gap and c.strip() != c2.strip() for r2, c2 in kept
            ):
                kept.append((r, c))
        if len(kept) >= 2:
            ranked, rewards_kept = [c for _, c in kept], [r for r, _ in kept]
            records.append({"prompt": prompt, "ranked_outputs": ranked, "rewards": rewards_kept})
    return records


@dataclass
class StandardizedReward:
    """``reward_fn`` on the scale of reference samples: ``(r(x, y) - mean) / std``, with
    ``mean`` and ``std`` measured on those samples (:meth:`fit`)."""

    reward_fn: RewardFn
    mean: float = 0.0
    std: float = 1.0

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
        return (score_completions(self.reward_fn, prompts, completions) - self.mean) / self.std

    @classmethod
    def fit(cls, reward_fn: RewardFn, prompts: Sequence[str], completions: Sequence[str]):
        """Shift and scale so that these (reference) samples score mean 0 and std 1."""
        raw = score_completions(reward_fn, prompts, completions)
        std = raw.std().item()
        if not math.isfinite(std) or std == 0:
            raise ValueError("the reward gives every reference sample the same score")
        return cls(reward_fn, raw.mean().item(), std)


class NormalizedReward(StandardizedReward):
    """A reward model as a standardized reward function; ``model`` is the reward model."""

    def __init__(self, model: CausalLMRewardModel, mean: float = 0.0, std: float = 1.0) -> None:
        super().__init__(lambda p, c: model.score(list(p), list(c), batch_size=64), mean, std)
        self.model = model

    @classmethod
    def fit(cls, model, prompts: Sequence[str], completions: Sequence[str]) -> NormalizedReward:
        """Gain and bias so that these (reference) samples score mean 0 and std 1."""
        fitted = StandardizedReward.fit(cls(model).reward_fn, prompts, completions)
        return cls(model, fitted.mean, fitted.std)


@dataclass
class LearnedReward:
    """What :func:`train_review_reward_model` returns."""

    reward_fn: NormalizedReward  # the normalised reward model, ready for PPO
    history: History
    heldout_accuracy: float  # pairwise accuracy on held-out pairs labelled by the true reward
    n_train_pairs: int
    n_heldout_pairs: int


def train_review_reward_model(
    sft_model,
    tokenizer,
    train_prompts: Sequence[str],
    heldout_prompts: Sequence[str],
    k: int = 2,
    max_new_tokens: int = 16,
    epochs: int = 2,
    lr: float = 1e-3,
    batch_size: int = 32,
    seed: int = 0,
    show_progress: bool = True,
) -> LearnedReward:
    """The module docstring's reward model, every weight trained on ranked samples of
    ``train_prompts``. ``heldout_prompts`` only measure the held-out accuracy; the normalisation
    uses fresh SFT samples of (at most 256 of) ``train_prompts``."""
    sample = functools.partial(sample_ranked_completions, sft_model, tokenizer, k=k,
                               max_new_tokens=max_new_tokens, batch_size=256)  # fmt: skip
    train = sample(train_prompts, seed=seed)
    heldout = sample(heldout_prompts, seed=seed + 1)
    if not train or not heldout:
        raise ValueError("no rankable prompts: every sampled group tied on the reward")
    rm = CausalLMRewardModel(copy.deepcopy(sft_model), tokenizer, format_prompts=False)
    config = RewardModelConfig(mode="pairs", epochs=epochs, lr=lr, batch_size=batch_size,
                               seed=seed, dropout=False)  # fmt: skip
    history = train_reward_model(rm, tokenizer, train, config, show_progress=show_progress)
    rm.requires_grad_(False)
    accuracy = evaluate_reward_model(rm, heldout).accuracy
    ref = generate(
        sft_model, tokenizer, list(train_prompts)[:256], max_new_tokens=max_new_tokens,
        batch_size=256, seed=seed + 2,
    )  # fmt: skip
    reward_fn = NormalizedReward.fit(rm, ref.prompts, ref.completions)
    n_pairs = lambda recs: sum(math.comb(len(r["ranked_outputs"]), 2) for r in recs)  # noqa: E731
    return LearnedReward(reward_fn, history, accuracy, n_pairs(train), n_pairs(heldout))
