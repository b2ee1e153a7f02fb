"""SimPO: preference optimisation with no reference model (lesson 07).

Paper: Meng, Xia & Chen 2024, "SimPO: Simple Preference Optimization with a Reference-Free
Reward", arXiv 2405.14734; code: princeton-nlp/SimPO (``scripts/simpo_trainer.py``).

DPO (:mod:`rlhf_lessons.alignment.dpo_losses`) rewards a response by its summed log-ratio to a
frozen reference. SimPO changes two things and adds one:

- **no reference**: the reward is the policy's own log-probability, so there is no reference
  pass and no second model;
- **length normalisation**: that log-probability is averaged over the response's |y| tokens,
  ``r(x, y) = (beta / |y|) log pi(y | x)``, the quantity generation ranks by;
- **a target margin** gamma: the chosen response must win by gamma.

    L = -log sigma(beta [avg log pi(y_w) - avg log pi(y_l)] - gamma)

Training is :func:`rlhf_lessons.alignment.dpo.train_dpo` with ``DPOConfig.simpo()`` (the loss is
the only difference); :func:`train_simpo` is that call under SimPO's name.

gamma is in reward units in the paper and TRL (``trl.experimental.cpo.CPOTrainer``,
``loss_type="simpo"``, ``simpo_gamma``, default 0.5); the SimPO authors' code takes
``gamma_beta_ratio`` = gamma / beta (its beta 2.0 and ratio 0.25 give gamma 0.5); both are
accepted. TRL's ``CPOConfig`` defaults are *not* SimPO's: ``beta`` 0.1 and ``cpo_alpha`` 1.0, which adds an NLL
loss on the chosen responses; pure SimPO is ``loss_type="simpo", cpo_alpha=0`` with the beta
set explicitly (the paper's released settings use beta 2-10, gamma / beta 0.1-0.8).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from numbers import Real

import torch

from rlhf_lessons.alignment.dpo_losses import (
    check_beta,
    check_label_smoothing,
    check_logps,
    pair_metrics,
    smoothed_sigmoid_loss,
)
from rlhf_lessons.training import EvalFn, History

DEFAULT_GAMMA = 0.5  # the paper's code (beta 2.0 x ratio 0.25) and TRL's simpo_gamma


def simpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    beta: float = 2.0,
    gamma: float | None = None,
    *,
    gamma_beta_ratio: float | None = None,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """SimPO, the batch mean of (per pair, Delta = avg log pi(y_w) - avg log pi(y_l))

        -log sigma(beta Delta - gamma)
        (label smoothing eps: -(1-eps) log sigma(beta Delta - gamma) - eps log sigma(gamma - beta Delta))

    At Delta = 0 the loss is log(1 + e^gamma): the margin makes even a tie costly.

    Args:
        policy_chosen_logps, policy_rejected_logps: (B,) *average* token log-probs of y_w and
            y_l under the policy (``sequence_logprobs(..., average=True)``), with gradient.
        beta: > 0, the reward scale (2.0 in the paper's code; far above DPO's 0.1, since an
            average log-prob is a few nats at most).
        gamma: >= 0, the target margin in reward units (the paper's; TRL's ``simpo_gamma``).
        gamma_beta_ratio: >= 0, gamma / beta (the SimPO code's); not together with ``gamma``.
            Neither given: gamma = 0.5.
        label_smoothing: eps in [0, 0.5], as in cDPO.

    Returns:
        ``(loss, metrics)``: :func:`~rlhf_lessons.alignment.dpo_losses.pair_metrics` of the
        rewards beta * avg log pi (TRL ``CPOTrainer``'s; ``margin`` is beta Delta without
        gamma), plus ``gamma``.
    """
    gamma = check_simpo_inputs(policy_chosen_logps, policy_rejected_logps, beta, gamma,
                               gamma_beta_ratio, label_smoothing)  # fmt: skip
    chosen, rejected = beta * policy_chosen_logps, beta * policy_rejected_logps  # rewards
    losses = smoothed_sigmoid_loss(chosen - rejected - gamma, label_smoothing)
    loss = losses.mean()
    metrics = pair_metrics(loss, chosen, rejected, policy_chosen_logps, policy_rejected_logps)
    return loss, {**metrics, "gamma": gamma}


def check_simpo_inputs(
    policy_chosen, policy_rejected, beta, gamma, gamma_beta_ratio, label_smoothing
) -> float:
    """Every check of :func:`simpo_loss`'s arguments; returns gamma in reward units."""
    check_beta(beta)
    if gamma is not None and gamma_beta_ratio is not None:
        raise ValueError(
            f"give gamma or gamma_beta_ratio, not both (got gamma={gamma}, gamma_beta_ratio="
            f"{gamma_beta_ratio}); gamma = beta * gamma_beta_ratio"
        )
    for name, value in (("gamma", gamma), ("gamma_beta_ratio", gamma_beta_ratio)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, Real):
            raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be >= 0 (a target margin), got {value}")
    check_label_smoothing(label_smoothing)
    check_logps(policy_chosen=policy_chosen, policy_rejected=policy_rejected)
    if gamma_beta_ratio is not None:
        return float(beta * gamma_beta_ratio)
    return float(DEFAULT_GAMMA if gamma is None else gamma)


def train_simpo(
    policy,
    tokenizer,
    pairs: Sequence[Mapping],
    config=None,
    *,
    eval_fn: EvalFn | None = None,
    eval_every: int = 0,
    show_progress: bool = True,
) -> History:
    """Fine-tune ``policy`` on preference pairs with SimPO: :func:`~rlhf_lessons.alignment.dpo.
    train_dpo` with ``config`` a :meth:`DPOConfig.simpo() <rlhf_lessons.alignment.dpo.DPOConfig.
    simpo>` (the default: beta 2.0, gamma 0.5). No reference is computed or needed."""
    from rlhf_lessons.alignment.dpo import DPOConfig, train_dpo

    config = config or DPOConfig.simpo()
    if config.loss != "simpo":
        raise ValueError(
            f"train_simpo needs a SimPO config (DPOConfig.simpo(...)), got loss={config.loss!r}; "
            "for the other losses call train_dpo"
        )
    return train_dpo(policy, tokenizer, pairs, config, eval_fn=eval_fn, eval_every=eval_every,
                     show_progress=show_progress)  # fmt: skip
