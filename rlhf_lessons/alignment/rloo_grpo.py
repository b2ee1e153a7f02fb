"""RLOO and GRPO: REINFORCE with a baseline from sibling samples, no critic (lesson 05).

Papers: Kool, van Hoof & Welling 2019, "Buy 4 REINFORCE Samples, Get a Baseline for Free!"
(ICLR workshop); Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization
for Learning from Human Feedback in LLMs" (RLOO, arXiv 2402.14740); Shao et al. 2024,
"DeepSeekMath" (GRPO, arXiv 2402.03300).

PPO for LMs (:mod:`rlhf_lessons.alignment.lm_ppo`) needs a critic V(s_t) to tell a good
completion from a lucky prompt. RLOO and GRPO drop the critic: they sample **k completions of
the same prompt** and use the siblings as the baseline. With rewards r_1..r_k of one prompt,

    RLOO:  A_i = r_i - mean_{j != i} r_j = k / (k - 1) * (r_i - mean_j r_j)
    GRPO:  A_i = (r_i - mean_j r_j) / (std_j r_j + 1e-4)

(:func:`rlhf_lessons.rl.advantages.rloo_advantages` / ``grpo_advantages``). A group whose
samples all score the same teaches nothing: its advantages, and so its gradient, are zero.
Every token of completion i gets the same A_i: there is no per-token credit assignment.

The two differ in where the KL to the reference pi_ref goes and how the loss is averaged:

- **RLOO** (:func:`rloo_loss`) folds the KL into the reward before the baseline,
  ``r_i = score_i - beta * KL_i`` with the sequence k1 estimate
  ``KL_i = sum_t log pi(y_t) - log pi_ref(y_t)``, and is whole-sequence REINFORCE:
  ``L = -mean_i A_i log pi(y_i | x_i)``.
- **GRPO** (:func:`grpo_loss`, DeepSeekMath eq. 3) keeps the reward as it is, uses PPO's
  clipped ratio per token, and subtracts the k3 KL estimate per token in the loss:
  ``J = mean_i (1/|o_i|) sum_t [min(rho A_i, clip(rho, 1 - eps, 1 + eps) A_i) - beta k3]``.

**What the k3 term's gradient is.** With the context s_t = (x, y_<t) held fixed, k3 = r - 1 -
log r (r = pi_ref(y_t|s_t) / pi(y_t|s_t)) estimates KL(pi(.|s_t) || pi_ref(.|s_t)) without bias,
but its gradient through log pi, ``(1 - r) grad log pi``, has expectation ``grad
KL(pi_ref(.|s_t) || pi(.|s_t))``: the *forward* KL of that token's distribution (TRL's ratio
correction gives the reverse one, :mod:`rlhf_lessons.alignment.grpo_trl_variants`). Neither is
the gradient of the *sequence* KL(pi(y|x) || pi_ref(y|x)), which also charges each token for the
KL of the tokens after it; RLOO's k1 penalty, part of the return, does charge that.

**TRL.** :func:`rloo_loss`, :func:`group_advantages` and :func:`grpo_loss` match TRL 1.x's
``RLOOTrainer`` and ``GRPOTrainer`` (``loss_type="grpo"``, ``use_bias_correction_kl=False``) on
the same log-probs (the tests call TRL's own methods); TRL's other options are in
:mod:`~rlhf_lessons.alignment.grpo_trl_variants`, its runs in :mod:`rlhf_lessons.trl_runs.rloo_grpo`.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import NamedTuple

import torch
from torch import nn

from rlhf_lessons.alignment.kl_control import check_scores, token_kl
from rlhf_lessons.alignment.rollouts import collect_rollout, logprobs_by_length
from rlhf_lessons.course.device import torch_threads
from rlhf_lessons.course.seeding import seed_everything
from rlhf_lessons.rl.advantages import grpo_advantages, masked_mean, rloo_advantages
from rlhf_lessons.training import (
    EvalFn,
    History,
    RewardFn,
    Stopwatch,
    check_frozen_reference,
    mean,
    optimizer_step,
    trainable_parameters,
)

METHODS = ("rloo", "grpo")
LOSS_TYPES = ("grpo", "bnpo", "dapo", "dr_grpo")  # "grpo" is the paper's; see grpo_trl_variants
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
    return torch.where(mask.bool(), logp - ref_logp, torch.zeros_like(logp)).sum(-1)


def kl_penalized_rewards(
    scores: torch.Tensor,
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """RLOO's reward: ``r_i = score_i - beta * sum_t (log pi(y_t) - log pi_ref(y_t))``.
    (B,) scores, (B, T) x 3 (the log-probs recorded at sampling time) -> (B,).

    As in TRL's RLOOTrainer and the RLOO paper, the KL penalty is one number per sequence (the
    k1 estimate summed over the completion), subtracted from the score *before* the
    leave-one-out baseline.
    """
    check_scores(scores, logp.shape[0], beta)
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
    """Advantages of a batch of groups of ``k`` samples: (B * k,) rewards -> (B * k,).

    Row ``i * k + j`` is sample j of prompt i (``collect_rollout`` with each prompt repeated k
    times in a row). ``method`` "rloo": the leave-one-out baseline; with ``normalize`` (TRL's
    ``normalize_advantages``) whitened over the batch, ``(A - mean A) / (std A + 1e-4)``.
    "grpo": minus the group mean, then ``scale_rewards`` (TRL's option): "group" divides by
    each group's std (+1e-4, the paper), "batch" by the whole batch's, "none" does not divide
    (Dr. GRPO: dividing by a group's std up-weights prompts that are nearly solved).
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
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards must be one of {SCALE_REWARDS}, got {scale_rewards!r}")
    grouped = rewards.float().view(-1, k)
    if method == "rloo":
        adv = rloo_advantages(grouped).flatten()
        return (adv - adv.mean()) / (adv.std() + STD_EPS) if normalize else adv
    if scale_rewards == "group":
        return grpo_advantages(grouped, eps=STD_EPS).flatten()
    centred = (grouped - grouped.mean(dim=1, keepdim=True)).flatten()
    return centred / (rewards.float().std() + STD_EPS) if scale_rewards == "batch" else centred


# --- The two losses --------------------------------------------------------------------------


def _check_finite(name: str, x: torch.Tensor, where: torch.Tensor | None = None) -> None:
    values = x if where is None else x[where]
    if not torch.isfinite(values).all():
        raise ValueError(
            f"{name} contains NaN or inf"
            + (" on completion tokens" if where is not None else "")
            + ": check the log-probs / rewards that produced it"
        )


def _clip_range(clip_eps: float, clip_eps_high: float | None) -> tuple[float, float]:
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    if not 0 < clip_eps < 1 or eps_high <= 0:
        raise ValueError(
            f"need 0 < clip_eps < 1 and clip_eps_high > 0, got {clip_eps} and {clip_eps_high}"
        )
    return clip_eps, eps_high


def rloo_loss(
    seq_logp: torch.Tensor,
    advantages: torch.Tensor,
    old_seq_logp: torch.Tensor | None = None,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """RLOO's whole-sequence REINFORCE loss (Ahmadian et al. 2024, section 3.2).

    Without ``old_seq_logp``: ``L = -mean_i A_i log pi(y_i | x_i)``, whose gradient
    ``-mean_i A_i grad log pi(y_i | x_i)`` is REINFORCE with the leave-one-out baseline
    ``A_i = r_i - mean_{j != i} r_j`` (the KL penalty is inside r, :func:`kl_penalized_rewards`).

    With ``old_seq_logp`` (log pi_old(y|x) recorded at sampling): TRL 1.x's RLOOTrainer form, a
    PPO-clipped *sequence* ratio ``rho_i = exp(log pi(y_i|x) - log pi_old(y_i|x))``:
    ``L = -mean_i min(rho_i A_i, clip(rho_i, 1 - eps, 1 + eps_high) A_i)``. At rho = 1 (the
    first update on a fresh batch; TRL's default ``num_iterations=1`` never makes another) the
    gradient is exactly the REINFORCE one above; the loss *value* is then -mean(A), not
    -mean(A log pi). Later updates on the same batch are importance-weighted and clipped.

    ``seq_logp`` (B,) is log pi(y_i | x_i), the summed token log-probs, with gradient;
    ``advantages`` (B,), constants; ``old_seq_logp`` (B,) or None. The clip range is
    [1 - clip_eps, 1 + clip_eps_high] (``clip_eps_high`` defaults to ``clip_eps``; DAPO's
    "clip-higher" raises it). Returns ``(loss, metrics)``: ``loss``, ``clipfrac`` (sequences
    whose clip is active) and ``approx_kl`` (mean k3 estimate of KL(pi_old || pi) per
    sequence; 0 without ``old_seq_logp``).
    """
    if seq_logp.ndim != 1:
        raise ValueError(
            f"seq_logp must be (B,): one log pi(y|x) per completion (sum the token log-probs "
            f"with lm.sequence_logprobs), got shape {tuple(seq_logp.shape)}"
        )
    for name, x in (("advantages", advantages), ("old_seq_logp", old_seq_logp)):
        if x is not None and x.shape != seq_logp.shape:
            raise ValueError(f"{name} must have the shape of seq_logp {tuple(seq_logp.shape)}, "
                             f"got {tuple(x.shape)}")  # fmt: skip
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


def _check_beta(beta: float, ref_logp) -> None:
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if beta > 0 and ref_logp is None:
        raise ValueError("beta > 0 needs ref_logp (the reference model's token log-probs)")


class GRPOTerms(NamedTuple):
    """The per-token pieces of GRPO's objective, (B, T) each, zero outside the completion."""

    mask: torch.Tensor  # float, 1 on completion tokens
    log_ratio: torch.Tensor  # log pi_theta - log pi_old (with gradient)
    ratio: torch.Tensor  # rho = pi_theta / pi_old (with gradient)
    surrogate: torch.Tensor  # min(rho A, clip(rho) A): what GRPO maximises, per token
    k3: torch.Tensor | None  # r - 1 - log r, r = pi_ref / pi_theta (with gradient); None: no ref
    clipped: torch.Tensor  # bool: the clip is active (rho < 1 - eps, A < 0 or rho > 1 + eps, A > 0)


def grpo_terms(new_logp, old_logp, ref_logp, advantages, mask, clip_eps=0.2,
               clip_eps_high=None) -> GRPOTerms:  # fmt: skip
    """Check the inputs of a GRPO loss (shapes, finite values on completion tokens) and compute
    its per-token terms (:class:`GRPOTerms`). ``advantages`` is (B,) or per token (B, T);
    ``ref_logp`` may be None (no KL term). Values outside ``mask`` are ignored, even NaN."""
    if new_logp.ndim != 2:
        raise ValueError(f"new_logp must be (B, T) token log-probs, got {tuple(new_logp.shape)}")
    shape = new_logp.shape
    for name, x in (("old_logp", old_logp), ("mask", mask), ("ref_logp", ref_logp)):
        if x is not None and x.shape != shape:
            raise ValueError(f"{name} must have the shape of new_logp {tuple(shape)}, got "
                             f"{tuple(x.shape)}")  # fmt: skip
    if advantages.shape not in ((shape[0],), shape):
        raise ValueError(
            f"advantages must be (B,) = ({shape[0]},), one per completion, or (B, T) = "
            f"{tuple(shape)}, got {tuple(advantages.shape)}"
        )
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
    # zero everything outside the completion first, so padding (even NaN) cannot leak in
    zero = torch.zeros((), dtype=new_logp.dtype, device=new_logp.device)
    new = torch.where(m, new_logp, zero)
    adv = advantages.detach()
    adv = adv.unsqueeze(1) if adv.ndim == 1 else torch.where(m, adv, zero)
    log_ratio = new - torch.where(m, old_logp.detach(), zero)
    ratio = log_ratio.exp()
    surrogate = torch.min(ratio * adv, ratio.clamp(1.0 - eps_low, 1.0 + eps_high) * adv)
    k3 = None if ref_logp is None else token_kl(new, torch.where(m, ref_logp.detach(), zero), "k3")
    with torch.no_grad():
        clipped = ((ratio < 1 - eps_low) & (adv < 0)) | ((ratio > 1 + eps_high) & (adv > 0))
    return GRPOTerms(m.to(new.dtype), log_ratio, ratio, surrogate, k3, clipped & m)


def grpo_metrics(loss: torch.Tensor, terms: GRPOTerms) -> dict[str, float]:
    """``loss``; ``kl``, the mean per-token k3 over completion tokens (what TRL logs as
    ``kl``); ``clipfrac``, the fraction of tokens whose clip is active; ``approx_kl``, the mean
    per-token k3 estimate of KL(pi_old || pi_theta)."""
    with torch.no_grad():
        m, lr = terms.mask, terms.log_ratio
        return {
            "loss": loss.item(),
            "kl": masked_mean(terms.k3, m).item() if terms.k3 is not None else 0.0,
            "clipfrac": masked_mean(terms.clipped.to(m.dtype), m).item(),
            "approx_kl": masked_mean((lr.exp() - 1) - lr, m).item(),
        }


def grpo_loss(
    new_logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    beta: float = 0.04,
    clip_eps_high: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """GRPO's loss as in the paper (DeepSeekMath, eq. 3), to minimise:

        L = -(1/B) sum_i (1/|o_i|) sum_t [ min(rho A_i, clip(rho, 1 - eps, 1 + eps_high) A_i)
                                             - beta * k3_{i,t} ]
        rho = pi_theta(y_t) / pi_old(y_t),   k3 = r - 1 - log r,   r = pi_ref(y_t) / pi_theta(y_t)

    Each completion weighs the same, so a token of a short completion weighs more than one of
    a long completion. ``grad k3`` is the gradient of the forward per-token KL (module
    docstring); TRL's variants are in :mod:`rlhf_lessons.alignment.grpo_trl_variants`.

    Args:
        new_logp: (B, T) log pi_theta of the sampled tokens, with gradient.
        old_logp: (B, T) log pi_old at sampling time.
        ref_logp: (B, T) log pi_ref, or None when ``beta == 0``.
        advantages: (B,) one advantage per completion (or (B, T) per token).
        mask: (B, T) 1 on completion tokens; values elsewhere are ignored, even NaN.
        clip_eps, clip_eps_high: the clip range [1 - clip_eps, 1 + clip_eps_high].
        beta: KL coefficient, >= 0 (the paper's 0.04).

    Returns:
        ``(loss, metrics)``, metrics as :func:`grpo_metrics`.
    """
    _check_beta(beta, ref_logp)
    t = grpo_terms(new_logp, old_logp, ref_logp, advantages, mask, clip_eps, clip_eps_high)
    per_token = -t.surrogate + (beta * t.k3 if beta > 0 else 0.0)
    loss = ((per_token * t.mask).sum(-1) / t.mask.sum(-1).clamp(min=1.0)).mean()
    return loss, grpo_metrics(loss, t)


# --- The trainer -----------------------------------------------------------------------------


@dataclass
class GroupPGConfig:
    """Settings of :func:`train_group_pg` (TRL 1.x's defaults in brackets, RLOO / GRPO).

    Use :meth:`rloo` or :meth:`grpo` for each method's settings on the course's tiny review
    model (chosen on the validation prompts of :mod:`rlhf_lessons.review_world.splits`).
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
    loss_type: str = "grpo"  # GRPO only ["dapo"]; "grpo" is the paper's, see grpo_trl_variants
    scale_rewards: str = "group"  # GRPO only ["group"]
    kl_ratio_correction: bool = False  # GRPO only: TRL's rho * k3 [use_bias_correction_kl True]
    normalize_advantages: bool = False  # RLOO only [False]
    missing_eos_penalty: float | None = 1.0  # subtracted from completions cut before EOS [none]
    threads: int | None = 1  # torch threads while training (None: leave as is)
    seed: int = 0

    def __post_init__(self) -> None:
        for name, allowed in (("method", METHODS), ("loss_type", LOSS_TYPES),
                              ("scale_rewards", SCALE_REWARDS)):  # fmt: skip
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"GroupPGConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}"
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
        """GRPO on the tiny review model: the paper's loss (per-sequence mean, plain k3)."""
        return replace(cls(method="grpo", beta=0.1), **overrides)


def _step_loss(cfg: GroupPGConfig, new_logp, ro, adv, idx):
    """The loss of minibatch ``idx`` of rollout ``ro``: :func:`rloo_loss`, the paper's
    :func:`grpo_loss`, or TRL's GRPO variant when ``cfg`` asks for one."""
    mask = ro.mask[idx]
    if cfg.method == "rloo":
        return rloo_loss((new_logp * mask).sum(-1), adv[idx], ro.logp[idx].sum(-1), cfg.clip_eps,
                         cfg.clip_eps_high)  # fmt: skip
    args = (new_logp, ro.logp[idx], ro.ref_logp[idx], adv[idx], mask)
    if cfg.loss_type == "grpo" and not cfg.kl_ratio_correction:  # the paper's
        return grpo_loss(*args, cfg.clip_eps, cfg.beta, cfg.clip_eps_high)
    from rlhf_lessons.alignment.grpo_trl_variants import trl_grpo_loss

    return trl_grpo_loss(
        *args, clip_eps=cfg.clip_eps, beta=cfg.beta, loss_type=cfg.loss_type,
        clip_eps_high=cfg.clip_eps_high, kl_ratio_correction=cfg.kl_ratio_correction,
        # "dapo": completion tokens per optimizer step, averaged over the batch (as TRL)
        num_items_in_batch=ro.mask.sum().item() / cfg.minibatches,
        max_completion_length=cfg.max_new_tokens,
    )  # fmt: skip


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
    :func:`grpo_loss`. ``train_rloo`` and ``train_grpo`` call it with each method's config.

    Arguments as :func:`~rlhf_lessons.alignment.lm_ppo.train_lm_ppo`, with ``policy`` a causal
    LM (typically ``copy.deepcopy(ref)``). Returns a :class:`~rlhf_lessons.training.History`,
    one row per iteration: ``score`` (after the EOS penalty), ``raw_score`` (reward_fn alone),
    sequence ``kl`` (k1), ``length``, ``ended``, ``zero_std`` (groups whose rewards are all
    equal), the update's ``loss`` (~0 on-policy: not a progress measure), ``clipfrac``,
    ``approx_kl``, ``grad_norm``, ``seconds``; ``info["samples"]``: a few of the last samples.
    """
    cfg, pool = config or GroupPGConfig.grpo(), list(prompts)
    check_frozen_reference(policy, ref)
    if len(pool) < cfg.prompts_per_iteration:
        raise ValueError(
            f"prompts has {len(pool)} prompts, fewer than prompts_per_iteration "
            f"{cfg.prompts_per_iteration}: pass more prompts or draw fewer per iteration"
        )
    seed_everything(cfg.seed)
    rng = random.Random(cfg.seed)
    ref.eval()  # only run under no_grad; its requires_grad flags stay as they are for deepcopy
    params = trainable_parameters(policy)
    policy.eval()  # dropout off for sampling and updates alike ("N details", no. 8)
    optimizer = torch.optim.Adam(params, lr=cfg.lr, eps=cfg.adam_eps)
    history = History(cfg.method, asdict(cfg))
    tau, k, watch = cfg.temperature, cfg.k, Stopwatch()
    one_update = cfg.epochs == 1 and cfg.minibatches == 1
    with torch_threads(cfg.threads):
        for _ in history.loop(range(cfg.iterations), cfg.iterations, policy, eval_fn, eval_every,
                              desc=cfg.method.upper(), show_progress=show_progress,
                              show=("score", "kl")):  # fmt: skip
            with watch:
                # 1. Rollout: k samples of each prompt, side by side (rows i*k .. i*k + k - 1).
                # With one update on the whole batch, that update's forward pass gives the
                # sampling-time log-probs (as TRL does): one pass fewer.
                group_prompts = rng.sample(pool, cfg.prompts_per_iteration)
                ro = collect_rollout(
                    policy, ref, tokenizer, [p for p in group_prompts for _ in range(k)],
                    reward_fn, max_new_tokens=cfg.max_new_tokens, temperature=tau,
                    missing_eos_penalty=cfg.missing_eos_penalty, batch_size=cfg.batch_size,
                    policy_logprobs=not one_update,
                )  # fmt: skip
                mask = ro.mask
                if one_update:
                    first_pass = logprobs_by_length(policy, ro.batch, tau)
                    ro.logp = first_pass.detach() * mask
                seq_kl = sequence_kl(ro.logp, ro.ref_logp, mask)

                # 2. Advantages from the siblings. RLOO puts the KL into the reward first.
                if cfg.method == "rloo":
                    rewards = kl_penalized_rewards(ro.scores, ro.logp, ro.ref_logp, mask, cfg.beta)
                    adv = group_advantages(rewards, k, "rloo", normalize=cfg.normalize_advantages)
                else:
                    adv = group_advantages(ro.scores, k, "grpo", scale_rewards=cfg.scale_rewards)

                # 3. Policy-gradient steps on this batch (one, by default: fully on-policy).
                stats = defaultdict(list)
                for _ in range(cfg.epochs):
                    for idx in torch.randperm(cfg.batch_size).split(
                        cfg.batch_size // cfg.minibatches
                    ):
                        new_logp = (first_pass[idx] if one_update else
                                    logprobs_by_length(policy, ro.batch.rows(idx), tau))  # fmt: skip
                        loss, m = _step_loss(cfg, new_logp, ro, adv, idx)
                        norm = optimizer_step(loss, optimizer, params, cfg.max_grad_norm)
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
        history.info["samples"] = ro.samples()
    return history


def _method_config(method: str, config: GroupPGConfig | None) -> GroupPGConfig:
    """``config`` (or ``GroupPGConfig.<method>()``), refused when its method differs."""
    cfg = config or getattr(GroupPGConfig, method)()
    if cfg.method != method:
        raise ValueError(
            f"train_{method} needs a config with method={method!r}, got {cfg.method!r}"
        )
    return cfg


def train_rloo(policy, tokenizer, prompts, config=None, **kwargs) -> History:
    """RLOO: :func:`train_group_pg` with ``GroupPGConfig.rloo()`` or an RLOO ``config``."""
    return train_group_pg(policy, tokenizer, prompts, _method_config("rloo", config), **kwargs)


def train_grpo(policy, tokenizer, prompts, config=None, **kwargs) -> History:
    """GRPO: :func:`train_group_pg` with ``GroupPGConfig.grpo()`` or a GRPO ``config``."""
    return train_group_pg(policy, tokenizer, prompts, _method_config("grpo", config), **kwargs)
