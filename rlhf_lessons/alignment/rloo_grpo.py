"""Group policy gradient: RLOO and GRPO, REINFORCE without a critic (lesson 05).

Papers: Kool, van Hoof & Welling 2019, "Buy 4 REINFORCE Samples, Get a Baseline for Free!"
(ICLR workshop); Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization
for Learning from Human Feedback in LLMs" (RLOO, arXiv 2402.14740); Shao et al. 2024,
"DeepSeekMath" (GRPO, arXiv 2402.03300); Yu et al. 2025, "DAPO" (token-level normalisation,
arXiv 2503.14476); Liu et al. 2025, "Understanding R1-Zero-Like Training" (Dr. GRPO,
arXiv 2503.20783).

PPO for LMs (:mod:`rlhf_lessons.alignment.lm_ppo`) needs a critic V(s_t) to tell a good completion from a
lucky prompt. RLOO and GRPO drop the critic: they sample **k completions of the same prompt**
and use the siblings as the baseline. With rewards r_1..r_k of one prompt's group,

    RLOO:  A_i = r_i - mean_{j != i} r_j = k / (k - 1) * (r_i - mean_j r_j)
    GRPO:  A_i = (r_i - mean_j r_j) / (std_j r_j + 1e-4)

(:func:`rlhf_lessons.rl.advantages.rloo_advantages` / ``grpo_advantages``). A group whose samples
all score the same teaches nothing: its advantages, and so its gradient, are zero. Every token
of completion i gets the same A_i: there is no per-token credit assignment.

The two differ in where the KL to the reference pi_ref goes and how the loss is averaged:

- **RLOO** folds the KL into the reward before the baseline, ``r_i = score_i - beta * KL_i``
  with the sequence k1 estimate ``KL_i = sum_t log pi(y_t) - log pi_ref(y_t)`` (the RLOO
  paper, and TRL's RLOOTrainer), and is whole-sequence REINFORCE:
  ``L = -mean_i A_i log pi(y_i | x_i)``; see :func:`rloo_loss`.
- **GRPO** keeps the reward as it is, uses PPO's clipped ratio per token, and adds the k3 KL
  estimate to the loss, per token: see :func:`grpo_loss`.

**TRL.** The losses match TRL 1.x (``RLOOTrainer._compute_loss``, ``GRPOTrainer._compute_loss``)
exactly; the tests check this by calling TRL's own methods on the same log-probs. Two TRL
details that are not in the papers: TRL's RLOO also clips a *sequence-level* ratio
``exp(log pi(y|x) - log pi_old(y|x))`` (inert at its default of one update per batch, where
the ratio is 1), and TRL's GRPO multiplies the k3 term by the token ratio
(``use_bias_correction_kl=True``, from DeepSeek-V3.2), which makes its gradient the unbiased
gradient of KL(pi || pi_ref) (see :func:`grpo_loss`). :func:`train_with_trl` runs TRL's
trainers on the course's tiny review model with settings matched to :func:`train_group_pg`.

**Defaults** (:meth:`GroupPGConfig.rloo`, :meth:`GroupPGConfig.grpo`) are for the tiny review
model (:mod:`rlhf_lessons.review_world.tiny_lm`) on the true VADER reward: 100 iterations of 16 prompts x
k = 4 samples of at most 16 tokens, Adam at 3e-4, one update per batch (so the ratios are 1 and
both methods are exactly on-policy), a -1 penalty for completions cut off before EOS. RLOO
keeps TRL's beta = 0.05; GRPO uses the paper's per-sequence loss with beta = 0.1. On one
thread of a busy 2-core machine a run takes 20-30 s and lifts the held-out reward from ~0.08
(the SFT model) to ~0.74 at KL ~3 nats (RLOO) and ~0.83 at KL ~5 nats (GRPO). TRL's trainers
at the same settings reach the same points at ~10% more seconds per step.
"""

from __future__ import annotations

import os
import random
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from rlhf_lessons.alignment.rollouts import RewardFn, collect_rollout
from rlhf_lessons.course.device import torch_threads
from rlhf_lessons.course.progress import progress
from rlhf_lessons.course.seeding import seed_everything
from rlhf_lessons.lm import token_logprobs
from rlhf_lessons.rl.advantages import grpo_advantages, masked_mean, rloo_advantages
from rlhf_lessons.training import EvalFn, History, Stopwatch, mean, trainable_parameters

METHODS = ("rloo", "grpo")
LOSS_TYPES = ("grpo", "bnpo", "dapo", "dr_grpo")
SCALE_REWARDS = ("group", "batch", "none")
STD_EPS = 1e-4  # added to the std in GRPO's advantage (TRL, and the fact sheet)


# --- Rewards and advantages of a group -------------------------------------------------------


def sequence_kl(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """k1 estimate of KL(pi || pi_ref) per completion: ``sum_t (logp_t - ref_logp_t)`` over the
    masked tokens. (B, T) x 3 -> (B,). Unbiased for the sequence KL; negative on some samples."""
    if not logp.shape == ref_logp.shape == mask.shape:
        raise ValueError(
            "logp, ref_logp and mask must share shape (B, T), got "
            f"{tuple(logp.shape)}, {tuple(ref_logp.shape)}, {tuple(mask.shape)}"
        )
    m = mask.bool()
    return torch.where(m, logp - ref_logp, torch.zeros_like(logp)).sum(-1)


def kl_penalized_rewards(
    scores: torch.Tensor,
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """RLOO's reward: ``r_i = score_i - beta * sum_t (log pi(y_t) - log pi_ref(y_t))``.

    As in TRL's RLOOTrainer and the RLOO paper, the KL penalty is one number per sequence (the
    k1 estimate summed over the completion, with the log-probs recorded at sampling time),
    subtracted from the score *before* the leave-one-out baseline.

    Args:
        scores: (B,) reward of each completion.
        logp, ref_logp: (B, T) token log-probs under the policy (at rollout) and the reference.
        mask: (B, T) 1 on completion tokens.
        beta: KL coefficient, >= 0.
    """
    if scores.ndim != 1 or scores.shape[0] != logp.shape[0]:
        raise ValueError(
            f"scores must be (B,) = ({logp.shape[0]},), one per completion, got "
            f"{tuple(scores.shape)}"
        )
    if not torch.isfinite(scores).all():
        raise ValueError("scores contain NaN or inf: check the reward function's output")
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if beta == 0:
        return scores.clone()
    return scores - beta * sequence_kl(logp, ref_logp, mask)


def group_advantages(
    rewards: torch.Tensor,
    k: int,
    method: str,
    scale_rewards: str = "group",
    normalize: bool = False,
) -> torch.Tensor:
    """Advantages of a batch of k-sample groups: (B * k,) rewards -> (B * k,) advantages.

    Row ``i * k + j`` is sample j of prompt i (the layout of ``collect_rollout`` with each prompt
    repeated k times in a row).

    Args:
        rewards: (B * k,) rewards, grouped as above.
        k: samples per prompt, >= 2.
        method: "rloo" (leave-one-out baseline) or "grpo" (group mean and std).
        scale_rewards: GRPO only, TRL's option: "group" divides by each group's std (+1e-4, the
            paper), "batch" by the std of the whole batch (+1e-4), "none" does not divide
            (Dr. GRPO: dividing by a group's std up-weights prompts that are nearly solved).
        normalize: RLOO only, TRL's ``normalize_advantages`` (default off): whiten the
            advantages over the batch, ``(A - mean A) / (std A + 1e-4)``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if rewards.ndim != 1:
        raise ValueError(f"rewards must be 1-D (B * k,), got shape {tuple(rewards.shape)}")
    if k < 2:
        raise ValueError(
            f"k must be >= 2 samples per prompt (a group of 1 has no baseline), got {k}"
        )
    if rewards.numel() % k:
        raise ValueError(
            f"{rewards.numel()} rewards do not split into groups of k = {k}: repeat each prompt "
            "k times, in a row"
        )
    if not torch.isfinite(rewards).all():
        raise ValueError("rewards contain NaN or inf: check the reward function's output")
    grouped = rewards.float().view(-1, k)
    if method == "rloo":
        adv = rloo_advantages(grouped).flatten()
        if normalize:
            adv = (adv - adv.mean()) / (adv.std() + STD_EPS)
        return adv
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards must be one of {SCALE_REWARDS}, got {scale_rewards!r}")
    if scale_rewards == "group":
        return grpo_advantages(grouped, eps=STD_EPS).flatten()
    centred = (grouped - grouped.mean(dim=1, keepdim=True)).flatten()
    if scale_rewards == "batch":
        return centred / (rewards.float().std() + STD_EPS)
    return centred


# --- The two losses --------------------------------------------------------------------------


def _check_finite(name: str, x: torch.Tensor, where: torch.Tensor | None = None) -> None:
    values = x if where is None else x[where]
    if not torch.isfinite(values).all():
        raise ValueError(
            f"{name} contains NaN or inf"
            + (" on completion tokens" if where is not None else "")
            + ": check the log-probs / rewards that produced it"
        )


def rloo_loss(
    seq_logp: torch.Tensor,
    advantages: torch.Tensor,
    old_seq_logp: torch.Tensor | None = None,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """RLOO's whole-sequence REINFORCE loss (Ahmadian et al. 2024, section 3.2):
    ``grad = (1/k) sum_i [r_i - (1/(k-1)) sum_{j != i} r_j] grad log pi(y_i | x)``.

    Without ``old_seq_logp``: ``L = -mean_i A_i * log pi(y_i | x_i)``, so
    ``grad L = -mean_i A_i grad log pi(y_i | x_i)``, REINFORCE with the leave-one-out baseline
    already inside A_i (and the KL penalty inside the reward, see :func:`kl_penalized_rewards`).

    With ``old_seq_logp`` (log pi_old(y|x) recorded at sampling): TRL 1.x's RLOOTrainer form, a
    PPO-clipped *sequence* ratio ``rho_i = exp(log pi(y_i|x) - log pi_old(y_i|x))``:
    ``L = -mean_i min(rho_i A_i, clip(rho_i, 1 - eps, 1 + eps_high) A_i)``. At rho = 1 (the
    first update on a fresh batch; TRL's default ``num_iterations=1`` never makes another) the
    gradient is exactly the REINFORCE one above; the loss *value* is then -mean(A), not
    -mean(A log pi). Later updates on the same batch are importance-weighted and clipped.

    Args:
        seq_logp: (B,) log pi(y_i | x_i), the sum of the completion's token log-probs, with
            gradient.
        advantages: (B,) advantages (constants).
        old_seq_logp: optional (B,) log pi_old(y_i | x_i) at sampling time.
        clip_eps, clip_eps_high: the clip range [1 - clip_eps, 1 + clip_eps_high]
            (``clip_eps_high`` defaults to ``clip_eps``; DAPO's "clip-higher" raises it).

    Returns:
        ``(loss, metrics)`` with ``loss``, ``clipfrac`` (fraction of sequences whose clip is
        active: rho < 1 - eps with A < 0, or rho > 1 + eps_high with A > 0) and ``approx_kl``
        (mean k3 estimate of KL(pi_old || pi) per sequence; 0 without ``old_seq_logp``).
    """
    if seq_logp.ndim != 1:
        raise ValueError(
            f"seq_logp must be (B,): one log pi(y|x) per completion (sum the token log-probs "
            f"with lm.sequence_logprobs), got shape {tuple(seq_logp.shape)}"
        )
    if advantages.shape != seq_logp.shape:
        raise ValueError(
            f"advantages must have the shape of seq_logp {tuple(seq_logp.shape)}, got "
            f"{tuple(advantages.shape)}"
        )
    if old_seq_logp is not None and old_seq_logp.shape != seq_logp.shape:
        raise ValueError(
            f"old_seq_logp must have the shape of seq_logp {tuple(seq_logp.shape)}, got "
            f"{tuple(old_seq_logp.shape)}"
        )
    eps_low, eps_high = _clip_range(clip_eps, clip_eps_high)
    _check_finite("advantages", advantages)
    _check_finite("seq_logp", seq_logp.detach())
    adv = advantages.detach()
    if old_seq_logp is None:
        loss = -(adv * seq_logp).mean()
        return loss, {"loss": loss.item(), "clipfrac": 0.0, "approx_kl": 0.0}
    _check_finite("old_seq_logp", old_seq_logp)
    log_ratio = seq_logp - old_seq_logp.detach()
    ratio = log_ratio.exp()
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)
    loss = -torch.min(ratio * adv, clipped * adv).mean()
    with torch.no_grad():
        active = ((ratio < 1 - eps_low) & (adv < 0)) | ((ratio > 1 + eps_high) & (adv > 0))
        approx_kl = ((ratio - 1) - log_ratio).mean().item()
    return loss, {"loss": loss.item(), "clipfrac": active.float().mean().item(),
                  "approx_kl": approx_kl}  # fmt: skip


def _clip_range(clip_eps: float, clip_eps_high: float | None) -> tuple[float, float]:
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    if not 0 < clip_eps < 1 or eps_high <= 0:
        raise ValueError(
            f"need 0 < clip_eps < 1 and clip_eps_high > 0, got {clip_eps} and {clip_eps_high}"
        )
    return clip_eps, eps_high


def grpo_loss(
    new_logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    beta: float = 0.04,
    loss_type: str = "grpo",
    clip_eps_high: float | None = None,
    kl_ratio_correction: bool = True,
    num_items_in_batch: float | None = None,
    max_completion_length: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """GRPO's per-token clipped surrogate with a k3 KL penalty (DeepSeekMath, eq. 3), as TRL's
    ``GRPOTrainer._compute_loss`` (token-level importance sampling).

    Per completion token t of completion i, with ``rho = pi(y_t) / pi_old(y_t)`` and
    ``log r = log pi_ref(y_t) - log pi(y_t)``:

        l_{i,t} = -min(rho A_i, clip(rho, 1 - eps, 1 + eps_high) A_i) + beta * w * k3_{i,t}
        k3 = r - 1 - log r  (>= 0),   w = rho (``kl_ratio_correction``) or 1

    and the loss averages l over the completion tokens in one of TRL's ways (``loss_type``):

    - "grpo" (the paper): ``mean_i (1 / |o_i|) sum_t l_{i,t}``, each completion weighs the same,
      so a token of a short completion weighs more than a token of a long one;
    - "bnpo": ``sum_{i,t} l / sum_i |o_i|``, every token of the batch weighs the same;
    - "dapo" (TRL's default, DAPO paper): ``sum_{i,t} l / num_items_in_batch``, where
      ``num_items_in_batch`` is the number of completion tokens per optimizer step *averaged
      over the whole generation batch* (TRL: the generation batch's token count times
      grad-accumulation steps over ``steps_per_generation``); default ``mask.sum()``, where it
      equals "bnpo". With minibatches, long-completion minibatches then weigh more;
    - "dr_grpo" (Dr. GRPO): ``sum_{i,t} l / (B * max_completion_length)``, a constant.

    **Why w = rho.** Differentiating k3 itself gives ``(1 - r) grad log pi``, whose expectation
    under pi is the gradient of the *forward* KL(pi_ref || pi). With w = rho (1 in value, but
    differentiable), ``grad(rho k3) = (k3 + 1 - r) grad log pi = (log pi - log pi_ref) grad
    log pi``, the unbiased gradient of KL(pi || pi_ref). TRL 1.x does this by default
    (``use_bias_correction_kl=True``, after DeepSeek-V3.2); the GRPO paper does not (w = 1).

    Args:
        new_logp: (B, T) log pi_theta of the sampled tokens, with gradient.
        old_logp: (B, T) log pi_old at sampling time.
        ref_logp: (B, T) log pi_ref, or None when ``beta == 0``.
        advantages: (B,) one advantage per completion (or (B, T) per token).
        mask: (B, T) 1 on completion tokens; values elsewhere are ignored, even NaN.
        clip_eps, clip_eps_high: the clip range [1 - clip_eps, 1 + clip_eps_high].
        beta: KL coefficient, >= 0 (paper 0.04; TRL's default 0.0).
        loss_type: "grpo", "bnpo", "dapo" or "dr_grpo" (see above).
        kl_ratio_correction: multiply k3 by rho (TRL's ``use_bias_correction_kl``).
        num_items_in_batch: "dapo" only, the token normaliser (default ``mask.sum()``).
        max_completion_length: "dr_grpo" only, the constant length normaliser.

    Returns:
        ``(loss, metrics)`` with ``loss``, ``kl`` (mean per-token k3 over the completion tokens,
        what TRL logs as ``kl``), ``clipfrac`` (fraction of tokens whose clip is active:
        rho < 1 - eps with A < 0, or rho > 1 + eps_high with A > 0) and ``approx_kl`` (mean
        per-token k3 estimate of KL(pi_old || pi_theta)).
    """
    if new_logp.ndim != 2:
        raise ValueError(f"new_logp must be (B, T) token log-probs, got {tuple(new_logp.shape)}")
    shape = new_logp.shape
    for name, x in (("old_logp", old_logp), ("mask", mask)):
        if x.shape != shape:
            raise ValueError(f"{name} must have the shape of new_logp {tuple(shape)}, got "
                             f"{tuple(x.shape)}")  # fmt: skip
    if ref_logp is not None and ref_logp.shape != shape:
        raise ValueError(
            f"ref_logp must have the shape of new_logp {tuple(shape)}, got {tuple(ref_logp.shape)}"
        )
    if advantages.shape not in ((shape[0],), shape):
        raise ValueError(
            f"advantages must be (B,) = ({shape[0]},), one per completion, or (B, T) = "
            f"{tuple(shape)}, got {tuple(advantages.shape)}"
        )
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if beta > 0 and ref_logp is None:
        raise ValueError("beta > 0 needs ref_logp (the reference model's token log-probs)")
    if loss_type == "dr_grpo" and not max_completion_length:
        raise ValueError("loss_type='dr_grpo' needs max_completion_length (its constant divisor)")
    eps_low, eps_high = _clip_range(clip_eps, clip_eps_high)
    m = mask.bool()
    if not m.any():
        raise ValueError("mask selects no token: there is no completion to train on")
    _check_finite("advantages", advantages)
    for name, x in (
        ("new_logp", new_logp.detach()),
        ("old_logp", old_logp),
        ("ref_logp", ref_logp),
    ):
        if x is not None:
            _check_finite(name, x, m)

    # Zero everything outside the completion first, so padding (even NaN) cannot leak in.
    zero = torch.zeros((), dtype=new_logp.dtype, device=new_logp.device)
    new = torch.where(m, new_logp, zero)
    old = torch.where(m, old_logp.detach(), zero)
    adv = advantages.detach()
    adv = adv.unsqueeze(1) if adv.ndim == 1 else torch.where(m, adv, zero)
    maskf = m.to(new.dtype)

    log_ratio = new - old
    ratio = log_ratio.exp()
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)
    per_token = -torch.min(ratio * adv, clipped * adv)  # PPO's clipped surrogate, per token
    kl = None
    if beta > 0:
        log_r = torch.where(m, ref_logp.detach(), zero) - new
        kl = log_r.exp() - log_r - 1.0  # k3 of KL(pi || pi_ref), >= 0
        per_token = per_token + beta * (kl * ratio if kl_ratio_correction else kl)

    per_token = per_token * maskf
    if loss_type == "grpo":
        loss = (per_token.sum(-1) / maskf.sum(-1).clamp(min=1.0)).mean()
    elif loss_type == "bnpo":
        loss = per_token.sum() / maskf.sum()
    elif loss_type == "dapo":
        normaliser = maskf.sum() if num_items_in_batch is None else num_items_in_batch
        loss = per_token.sum() / max(float(normaliser), 1.0)
    else:  # dr_grpo
        loss = per_token.sum() / (shape[0] * max_completion_length)

    with torch.no_grad():
        active = ((ratio < 1 - eps_low) & (adv < 0)) | ((ratio > 1 + eps_high) & (adv > 0))
        metrics = {
            "loss": loss.item(),
            "kl": masked_mean(kl, maskf).item() if kl is not None else 0.0,
            "clipfrac": masked_mean(active.to(new.dtype).expand_as(maskf), maskf).item(),
            "approx_kl": masked_mean((ratio - 1) - log_ratio, maskf).item(),
        }
    return loss, metrics


# --- The trainer -----------------------------------------------------------------------------


@dataclass
class GroupPGConfig:
    """Settings of :func:`train_group_pg` (TRL 1.x's defaults in brackets, RLOO / GRPO).

    Use :meth:`rloo` or :meth:`grpo` for the tuned settings of each method on the course's tiny
    review model.
    """

    method: str = "grpo"  # "rloo" or "grpo"
    iterations: int = 100  # rollout + update rounds [max_steps]
    prompts_per_iteration: int = 16  # distinct prompts per rollout
    k: int = 4  # samples per prompt [num_generations: 2 / 8]
    lr: float = 3e-4  # Adam; a 0.5M-parameter model tolerates far more than TRL's [1e-6]
    adam_eps: float = 1e-8  # [1e-8]
    max_grad_norm: float = 1.0  # [1.0]
    max_new_tokens: int = 16  # [max_completion_length 512]
    temperature: float = 1.0  # sampling and every log-prob [1.0]
    beta: float = 0.1  # KL coefficient: in the reward (RLOO) or the loss (GRPO) [0.05 / 0.0]
    clip_eps: float = 0.2  # [epsilon 0.2]
    clip_eps_high: float | None = None  # [epsilon_high None = epsilon]
    epochs: int = 1  # passes over each batch [num_iterations 1]
    minibatches: int = 1  # optimizer steps per pass [steps_per_generation]
    loss_type: str = "grpo"  # GRPO only ["dapo"]; see grpo_loss
    scale_rewards: str = "group"  # GRPO only ["group"]
    kl_ratio_correction: bool = True  # GRPO only [use_bias_correction_kl True]
    normalize_advantages: bool = False  # RLOO only [False]
    missing_eos_penalty: float | None = 1.0  # subtracted from completions cut before EOS [none]
    threads: int | None = 1  # torch threads while training (None: leave as is)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"GroupPGConfig.method must be one of {METHODS}, got {self.method!r}")
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(
                f"GroupPGConfig.loss_type must be one of {LOSS_TYPES}, got {self.loss_type!r}"
            )
        if self.scale_rewards not in SCALE_REWARDS:
            raise ValueError(
                f"GroupPGConfig.scale_rewards must be one of {SCALE_REWARDS}, got "
                f"{self.scale_rewards!r}"
            )
        for name in ("iterations", "prompts_per_iteration", "epochs", "minibatches",
                     "max_new_tokens"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"GroupPGConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.k < 2:
            raise ValueError(
                f"GroupPGConfig.k must be >= 2 samples per prompt (the baseline comes from the "
                f"siblings), got {self.k}"
            )
        if self.batch_size % self.minibatches:
            raise ValueError(
                f"prompts_per_iteration * k = {self.batch_size} must be divisible by "
                f"minibatches = {self.minibatches}"
            )
        if self.beta < 0 or self.lr <= 0 or self.temperature <= 0:
            raise ValueError("GroupPGConfig needs beta >= 0, lr > 0 and temperature > 0")
        _clip_range(self.clip_eps, self.clip_eps_high)

    @property
    def batch_size(self) -> int:
        """Completions per rollout: prompts_per_iteration * k."""
        return self.prompts_per_iteration * self.k

    @classmethod
    def rloo(cls, **overrides) -> GroupPGConfig:
        """RLOO on the tiny review model: TRL's beta 0.05 (sequence KL in the reward)."""
        return replace(cls(method="rloo", beta=0.05), **overrides)

    @classmethod
    def grpo(cls, **overrides) -> GroupPGConfig:
        """GRPO on the tiny review model: the paper's per-sequence loss, beta 0.1.

        The paper's beta 0.04 lets the KL run to ~10 nats in 100 iterations here: GRPO's
        advantages are divided by the group's std (~0.4 on VADER), so its policy gradient is
        ~2.5x RLOO's at the same lr, and the k3 penalty is per token, not per sequence."""
        return replace(cls(method="grpo", beta=0.1, loss_type="grpo"), **overrides)


def train_group_pg(
    policy,
    tokenizer,
    prompts: Sequence[str],
    config: GroupPGConfig | None = None,
    *,
    ref: nn.Module,
    reward_fn: RewardFn,
    eval_fn: EvalFn | None = None,
    eval_every: int = 0,
    show_progress: bool = True,
) -> History:
    """Fine-tune ``policy`` (a causal LM, changed in place) with RLOO or GRPO.

    Each iteration: draw ``prompts_per_iteration`` prompts, sample ``k`` completions of each
    (:func:`rlhf_lessons.alignment.rollouts.collect_rollout`), turn the group's rewards into
    advantages, then take ``epochs`` x ``minibatches`` Adam steps on :func:`rloo_loss` or
    :func:`grpo_loss`.

    Args:
        policy: the causal LM to train, typically ``copy.deepcopy(sft_model)``.
        tokenizer: its tokenizer.
        prompts: formatted prompts; each iteration draws from them at random.
        config: see :class:`GroupPGConfig` (default: ``GroupPGConfig.grpo()``).
        ref: the frozen reference (SFT) model, for the KL; never updated.
        reward_fn: ``(prompts, completions) -> (B,)`` scores (a reward model, or the true one).
        eval_fn: ``policy -> dict`` measured every ``eval_every`` iterations and at the end;
            its time is not counted in ``seconds``.

    Returns:
        a :class:`~rlhf_lessons.training.History`, one row per iteration: ``score`` (after the
        EOS penalty), ``raw_score`` (reward_fn alone), sequence ``kl`` (k1), ``length``,
        ``ended``, ``zero_std`` (groups whose rewards are all equal), the update's ``loss``
        (~0 on-policy: not a progress measure), ``clipfrac``, ``approx_kl``, ``grad_norm``,
        ``seconds``; ``info["samples"]``: a few of the last samples.
    """
    cfg = config or GroupPGConfig.grpo()
    if policy is ref:
        raise ValueError(
            "policy and ref are the same model: the reference must stay frozen; pass "
            "copy.deepcopy(ref) as the policy"
        )
    pool = list(prompts)
    if len(pool) < cfg.prompts_per_iteration:
        raise ValueError(
            f"prompts has {len(pool)} prompts, fewer than prompts_per_iteration "
            f"{cfg.prompts_per_iteration}: pass more prompts or draw fewer per iteration"
        )
    seed_everything(cfg.seed)
    rng = random.Random(cfg.seed)
    # ref is only ever run under no_grad; its requires_grad flags are left alone, because a
    # later copy.deepcopy(ref) would inherit frozen parameters and train nothing.
    ref.eval()
    params = trainable_parameters(policy)
    policy.eval()  # dropout off for sampling and updates alike ("N details", no. 8)
    optimizer = torch.optim.Adam(params, lr=cfg.lr, eps=cfg.adam_eps)
    history = History(cfg.method, asdict(cfg))
    tau, k, watch = cfg.temperature, cfg.k, Stopwatch()
    with torch_threads(cfg.threads):
        if eval_every:
            history.evaluate(eval_fn, policy)
        bar = progress(range(cfg.iterations), desc=cfg.method.upper(), disable=not show_progress)
        for _ in bar:
            with watch:
                # 1. Rollout: k samples of each prompt, side by side (rows i*k .. i*k + k - 1).
                group_prompts = rng.sample(pool, cfg.prompts_per_iteration)
                ro = collect_rollout(
                    policy, ref, tokenizer, [p for p in group_prompts for _ in range(k)],
                    reward_fn, max_new_tokens=cfg.max_new_tokens, temperature=tau,
                    missing_eos_penalty=cfg.missing_eos_penalty, batch_size=cfg.batch_size,
                )  # fmt: skip
                mask = ro.mask
                seq_kl = sequence_kl(ro.logp, ro.ref_logp, mask)

                # 2. Advantages from the siblings. RLOO puts the KL into the reward first.
                if cfg.method == "rloo":
                    rewards = kl_penalized_rewards(ro.scores, ro.logp, ro.ref_logp, mask, cfg.beta)
                    adv = group_advantages(rewards, k, "rloo", normalize=cfg.normalize_advantages)
                    old_seq_logp = ro.logp.sum(-1)  # zero outside the completion already
                else:
                    adv = group_advantages(ro.scores, k, "grpo", scale_rewards=cfg.scale_rewards)

                # 3. Policy-gradient steps on this batch (one, by default: fully on-policy).
                stats = defaultdict(list)
                for _ in range(cfg.epochs):
                    for idx in torch.randperm(cfg.batch_size).split(
                        cfg.batch_size // cfg.minibatches
                    ):
                        new_logp = token_logprobs(policy, ro.batch.rows(idx), tau)
                        if cfg.method == "rloo":
                            seq_logp = (new_logp * mask[idx]).sum(-1)
                            loss, m = rloo_loss(seq_logp, adv[idx], old_seq_logp[idx],
                                                cfg.clip_eps, cfg.clip_eps_high)  # fmt: skip
                        else:
                            loss, m = grpo_loss(
                                new_logp, ro.logp[idx], ro.ref_logp[idx], adv[idx], mask[idx],
                                clip_eps=cfg.clip_eps, beta=cfg.beta, loss_type=cfg.loss_type,
                                clip_eps_high=cfg.clip_eps_high,
                                kl_ratio_correction=cfg.kl_ratio_correction,
                                # "dapo": tokens per optimizer step, averaged over the batch (TRL)
                                num_items_in_batch=mask.sum().item() / cfg.minibatches,
                                max_completion_length=cfg.max_new_tokens,
                            )  # fmt: skip
                        optimizer.zero_grad()
                        loss.backward()
                        norm = nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                        optimizer.step()
                        for key in ("loss", "clipfrac", "approx_kl"):
                            stats[key].append(m[key])
                        stats["grad_norm"].append(float(norm))

            # 4. Bookkeeping.
            grouped = ro.scores.view(-1, k)
            history.log(
                seconds=watch.seconds, score=ro.scores.mean().item(),
                raw_score=ro.raw_scores.mean().item(), kl=seq_kl.mean().item(),
                length=ro.lengths().float().mean().item(), ended=ro.ended.float().mean().item(),
                zero_std=(grouped.max(1).values == grouped.min(1).values).float().mean().item(),
                **{key: mean(values) for key, values in stats.items()},
            )  # fmt: skip
            bar.set_postfix(score=f"{history.score[-1]:.2f}", kl=f"{history.kl[-1]:.2f}")
            if history.due(eval_every, cfg.iterations):
                history.evaluate(eval_fn, policy)
        history.info["samples"] = list(
            zip(ro.prompts[:8], ro.completions[:8], ro.raw_scores[:8].tolist(), strict=True)
        )
        history.evaluate(eval_fn, policy)
    return history


# --- The same with TRL -----------------------------------------------------------------------


@dataclass
class TRLRun:
    """What :func:`train_with_trl` returns; the lists have one entry per optimizer step."""

    method: str
    policy: nn.Module  # the trained model (TRL's fused-head patch removed)
    reward: list[float]  # mean total reward TRL optimised (reward_fn + EOS penalty)
    raw_reward: list[float]  # mean reward_fn output alone
    kl: list[float]  # TRL's "kl": per-token mean, k1 (RLOO) or k3 (GRPO), at sampling time
    length: list[float]  # mean completion length, tokens
    step_seconds: list[float]  # TRL's "step_time": sampling, scoring and the update
    seconds: float  # wall-clock of trainer.train()
    log_history: list[dict]  # everything TRL logged


def trl_config(method: str, config: GroupPGConfig, output_dir: str, show_progress: bool = False):
    """The ``trl.RLOOConfig`` / ``trl.GRPOConfig`` that matches ``config``.

    Our iteration (``batch_size`` completions, ``epochs`` x ``minibatches`` Adam steps) is TRL's
    generation batch: ``per_device_train_batch_size = batch_size / minibatches``,
    ``steps_per_generation = minibatches``, ``num_iterations = epochs``,
    ``max_steps = iterations * minibatches * epochs``. Constant learning rate (TRL's default
    decays it linearly to 0), no weight decay (AdamW is then Adam), dropout off, CPU, fp32.
    """
    from trl import GRPOConfig, RLOOConfig

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    common = dict(
        output_dir=output_dir, per_device_train_batch_size=config.batch_size // config.minibatches,
        steps_per_generation=config.minibatches, gradient_accumulation_steps=1,
        num_iterations=config.epochs,
        max_steps=config.iterations * config.minibatches * config.epochs,
        num_generations=config.k, max_completion_length=config.max_new_tokens,
        temperature=config.temperature, top_k=0, top_p=1.0,
        learning_rate=config.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        adam_epsilon=config.adam_eps, max_grad_norm=config.max_grad_norm,
        beta=config.beta, epsilon=config.clip_eps, epsilon_high=config.clip_eps_high,
        disable_dropout=True, seed=config.seed, use_cpu=True, bf16=False, fp16=False,
        report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=not show_progress,
        dataloader_num_workers=0,
    )  # fmt: skip
    if method == "rloo":
        return RLOOConfig(**common, normalize_advantages=config.normalize_advantages)
    return GRPOConfig(
        **common, loss_type=config.loss_type, scale_rewards=config.scale_rewards,
        use_bias_correction_kl=config.kl_ratio_correction,
    )  # fmt: skip


def trl_reward_functions(reward_fn: RewardFn, eos_token_id: int, missing_eos_penalty: float | None):
    """``reward_fn`` as TRL reward functions: ``true_reward`` and, with a penalty, a second one
    ``missing_eos_penalty`` (-penalty for a completion without EOS). TRL sums them and logs
    each one's mean, so the true reward stays visible next to what was optimised."""

    def true_reward(prompts, completions, **kwargs):
        return [float(x) for x in reward_fn(list(prompts), list(completions))]

    def missing_eos_penalty_fn(prompts, completions, completion_ids, **kwargs):
        # TRL cuts each completion after its first EOS and keeps that EOS
        return [0.0 if ids and ids[-1] == eos_token_id else -float(missing_eos_penalty)
                for ids in completion_ids]  # fmt: skip

    missing_eos_penalty_fn.__name__ = "missing_eos_penalty"
    return [true_reward, missing_eos_penalty_fn] if missing_eos_penalty else [true_reward]


def train_with_trl(
    method: str,
    policy,
    tokenizer,
    prompts_pool: Sequence[str],
    reward_fn: RewardFn,
    config: GroupPGConfig | None = None,
    show_progress: bool = False,
) -> TRLRun:
    """Train ``policy`` (changed in place) with ``trl.RLOOTrainer`` or ``trl.GRPOTrainer`` at
    the settings of ``config`` (see :func:`trl_config`), offline on the CPU.

    TRL builds its reference model itself, by loading ``policy.config._name_or_path`` again:
    ``policy`` must be (a copy of) a model loaded from a folder, such as
    ``copy.deepcopy(load_sft_model()[0])``, and that folder is the reference. The EOS penalty
    becomes a second TRL reward function (:func:`trl_reward_functions`).

    Returns a :class:`TRLRun` with TRL's per-step logs (mean reward, true reward, KL, length,
    seconds per step) and the trained policy.
    """
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import GRPOTrainer, RLOOTrainer

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    cfg = config or (GroupPGConfig.rloo() if method == "rloo" else GroupPGConfig.grpo())
    cfg = replace(cfg, method=method)
    source = getattr(policy.config, "_name_or_path", "")
    if cfg.beta > 0 and not (source and os.path.isdir(source)):
        raise ValueError(
            f"TRL loads its reference model from policy.config._name_or_path ({source!r}), which "
            "is not a folder: pass a copy of a model loaded from disk (e.g. load_sft_model()), "
            "or save the reference with save_pretrained and load the policy from there"
        )
    if len(set(prompts_pool)) < cfg.prompts_per_iteration:
        raise ValueError(
            f"prompts_pool has fewer than prompts_per_iteration = {cfg.prompts_per_iteration} "
            "distinct prompts"
        )
    if tokenizer.eos_token_id is None or tokenizer.pad_token_id is None:
        raise ValueError("TRL's trainers need a tokenizer with an EOS and a pad token")
    dataset = Dataset.from_dict({"prompt": list(prompts_pool)})
    rewards = trl_reward_functions(reward_fn, tokenizer.eos_token_id, cfg.missing_eos_penalty)
    trainer_cls = RLOOTrainer if method == "rloo" else GRPOTrainer
    with (
        tempfile.TemporaryDirectory() as out,
        torch_threads(cfg.threads),
        warnings.catch_warnings(),
    ):
        # transformers 5 renames gradient_checkpointing; TRL still uses the old names
        warnings.simplefilter("ignore", FutureWarning)
        trainer = trainer_cls(
            model=policy, reward_funcs=rewards, args=trl_config(method, cfg, out, show_progress),
            train_dataset=dataset, processing_class=tokenizer,
        )  # fmt: skip
        trainer.remove_callback(PrinterCallback)  # no dict printed per step
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    model = trainer.accelerator.unwrap_model(trainer.model)
    model.__dict__.pop("forward", None)  # undo TRL's add_fused_lm_head: the plain forward again
    logs = [h for h in trainer.state.log_history if "reward" in h]

    def column(key: str) -> list[float]:
        return [float(h[key]) for h in logs if key in h]

    return TRLRun(
        method=method,
        policy=model,
        reward=column("reward"),
        raw_reward=column("rewards/true_reward/mean"),
        kl=column("kl"),
        length=column("completions/mean_length"),
        step_seconds=column("step_time"),
        seconds=seconds,
        log_history=list(trainer.state.log_history),
    )
