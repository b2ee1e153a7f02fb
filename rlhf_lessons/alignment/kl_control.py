"""The KL-penalised reward of RLHF and the controllers that set its coefficient (lesson 05).

Ziegler et al. 2019 (arXiv 1909.08593) fine-tune a policy pi_theta from a reference pi_ref with

    R(x, y) = r_RM(x, y) - beta * log(pi_theta(y | x) / pi_ref(y | x)),

applied per token: every completion token t is rewarded ``-beta * kl_t`` and the last one also
gets the reward model's score (old TRL ``compute_rewards``; "N implementation details" no. 3).
``kl_t`` is the k1 estimate ``log pi_theta(y_t) - log pi_ref(y_t)`` on the sampled token, or k3
(see :mod:`rlhf_lessons.rl.kl`).

beta is fixed, or adapted to hold the KL near a target (Ziegler et al.):
``e = clip(KL / target - 1, -0.2, 0.2)`` and ``beta <- beta * (1 + K_beta * e)``; TRL's
``AdaptiveKLController`` uses ``K_beta = n_steps / horizon`` (samples per update over a horizon).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf_lessons.rl.kl import kl_estimates

KL_ESTIMATORS = ("k1", "k3")


def token_kl(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token KL estimate of lesson 03 (:func:`rlhf_lessons.rl.kl.kl_estimates`) on the
    sampled tokens, (B, T) x 2 -> (B, T): k1 = logp - ref_logp; k3 = (r - 1) - log r >= 0 with
    log r = ref_logp - logp."""
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")
    return kl_estimates(ref_logp - logp)[estimator]


def check_scores(scores: torch.Tensor, batch: int, beta: float) -> None:
    """The checks of a KL-penalised reward: (B,) finite scores, one per completion; beta >= 0."""
    if scores.ndim != 1 or scores.shape[0] != batch:
        raise ValueError(
            f"scores must be (B,) = ({batch},), one per completion, got {tuple(scores.shape)}"
        )
    if not torch.isfinite(scores).all():
        raise ValueError("scores contain NaN or inf: check the reward function's output")
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")


def shape_rewards(
    scores: torch.Tensor,
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    completion_mask: torch.Tensor,
    beta: float,
    estimator: str = "k1",
) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-token rewards ``-beta * kl_t``, plus the sequence score at the last completion token.

    ``scores`` (B,) are the completions' reward-model (or true) scores; ``logp``, ``ref_logp``
    and ``completion_mask`` (B, T): the sampled tokens' log-probs under the policy (at rollout
    time) and the reference, and 1 on completion tokens; ``estimator`` "k1" or "k3".
    Returns ``(rewards, metrics)``: rewards (B, T), zero outside the completion; metrics: the
    mean sequence KL (sum over tokens), the mean score, and the mean total reward.
    """
    check_scores(scores, logp.shape[0], beta)
    mask = completion_mask.to(logp.dtype)
    if (mask.sum(-1) == 0).any():
        raise ValueError("a row has an empty completion: it cannot receive a score")
    kl = token_kl(logp, ref_logp, estimator) * mask
    rewards = -beta * kl
    # index of each row's last completion token
    last = (mask * torch.arange(mask.shape[1], device=mask.device)).argmax(-1)
    rewards[torch.arange(len(scores)), last] += scores
    seq_kl = kl.sum(-1)
    return rewards, {
        "kl": seq_kl.mean().item(),
        "score": scores.mean().item(),
        "reward": (scores - beta * seq_kl).mean().item(),
    }


@dataclass
class FixedKLController:
    """A constant beta."""

    value: float

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value


@dataclass
class AdaptiveKLController:
    """Ziegler et al.'s proportional controller, in TRL's form (old ``PPOConfig`` defaults:
    init 0.2, target 6 nats, horizon 10,000)."""

    value: float = 0.2
    target: float = 6.0
    horizon: int = 10_000

    def __post_init__(self) -> None:
        if self.value < 0 or self.target <= 0 or self.horizon <= 0:
            raise ValueError("need value >= 0, target > 0 and horizon > 0")

    def update(self, current_kl: float, n_steps: int) -> float:
        """Move beta towards holding ``current_kl`` (mean sequence KL of the last batch) at the
        target; ``n_steps`` = samples in that batch. Returns the new beta."""
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value
