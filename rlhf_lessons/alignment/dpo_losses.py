"""The DPO family's losses on sequence log-probabilities (lesson 06): DPO, cDPO, IPO, hinge.

Papers: Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model is Secretly a
Reward Model", arXiv 2305.18290 (DPO; conservative DPO, "cDPO", is label smoothing in the
authors' code, eric-mitchell/direct-preference-optimization ``trainers.py``); Azar et al. 2023,
"A General Theoretical Paradigm to Understand Learning from Human Preferences", arXiv 2310.12036
(IPO, eq. 17); Zhao et al. 2023, "SLiC-HF", arXiv 2305.10425, and Liu et al. 2023, "Statistical
Rejection Sampling Improves Preference Optimization", arXiv 2309.06657 (the hinge loss on
reference-normalised log-probs). SimPO (lesson 07) is in :mod:`rlhf_lessons.alignment.simpo`.

A pair is a prompt x with a chosen response y_w and a rejected one y_l. With the sequence
log-probs of :func:`rlhf_lessons.lm.sequence_logprobs` and

    h = [log pi(y_w) - log pi_ref(y_w)] - [log pi(y_l) - log pi_ref(y_l)]

(``beta (log pi - log pi_ref)`` is a response's *implicit reward*), per pair:

- **DPO**: ``-log sigma(beta h)``. Its gradient is ``-beta sigma(-beta h) grad h``: pairs already
  ranked right by a margin weigh little. At pi = pi_ref, h = 0: the loss is log 2 whatever beta.
- **cDPO** (label smoothing eps, the probability that a label is flipped):
  ``-(1 - eps) log sigma(beta h) - eps log sigma(-beta h)``, minimised at the finite margin
  ``beta h = log((1 - eps) / eps)``; eps = 1/2 is minimised at h = 0.
- **IPO**: ``(h - 1 / (2 beta))^2``, a squared distance to a finite target (beta is the paper's
  tau); 1 / (4 beta^2) at pi = pi_ref.
- **hinge**: ``relu(1 - beta h)``: zero, with zero gradient, once beta h >= 1.

Conventions, checked against TRL 1.16 in the tests: ``dpo_loss`` computes what ``trl.DPOTrainer``
computes for ``loss_type`` "sigmoid", "ipo" and "hinge" from the same sequence log-probs. TRL's
IPO uses *token-averaged* log-probs (a comment in its code says the IPO authors confirmed it):
pass ``sequence_logprobs(..., average=True)`` for policy and reference to match it; summed
log-probs give eric-mitchell's IPO. TRL 1.x's ``DPOTrainer`` no longer applies
``label_smoothing`` to "sigmoid", so cDPO is checked against TRL's ``CPOTrainer``, which does.
"""

from __future__ import annotations

import math
from numbers import Real

import torch
import torch.nn.functional as F

LOSS_TYPES = ("sigmoid", "ipo", "hinge")


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None,
    ref_rejected_logps: torch.Tensor | None,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    reference_free: bool = False,
) -> tuple[torch.Tensor, dict[str, float]]:
    """DPO and its pairwise relatives, the batch mean of (per pair)

        "sigmoid" (DPO):  -log sigma(beta h)          (cDPO: -(1-eps) log sigma(beta h) - eps log sigma(-beta h))
        "ipo":            (h - 1 / (2 beta))^2
        "hinge":          relu(1 - beta h)
        with  h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected).

    Args:
        policy_chosen_logps, policy_rejected_logps: (B,) log pi(y_w | x), log pi(y_l | x), with
            gradient: sums of token log-probs (DPO, hinge; token means for TRL's IPO).
        ref_chosen_logps, ref_rejected_logps: (B,) the same under pi_ref (detached: a constant);
            None with ``reference_free``.
        beta: > 0; DPO's KL strength (the paper's 0.1), IPO's tau, the hinge's 1 / margin.
        loss_type: "sigmoid", "ipo" or "hinge".
        label_smoothing: eps in [0, 0.5], "sigmoid" only (cDPO).
        reference_free: log pi_ref = 0 (the DPO authors' option): the reward is beta log pi.

    Returns:
        ``(loss, metrics)``: the scalar loss, and :func:`pair_metrics` of the implicit rewards
        (TRL's ``rewards/chosen``, ``rewards/margins``, ``rewards/accuracies``, ...).
    """
    ref_chosen, ref_rejected = check_dpo_inputs(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
        beta, loss_type, label_smoothing, reference_free,
    )  # fmt: skip
    chosen = policy_chosen_logps - ref_chosen  # log pi / pi_ref of y_w, (B,)
    rejected = policy_rejected_logps - ref_rejected  # ... of y_l
    h = chosen - rejected
    if loss_type == "sigmoid":
        losses = smoothed_sigmoid_loss(beta * h, label_smoothing)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:  # hinge
        losses = torch.relu(1 - beta * h)
    loss = losses.mean()
    return loss, pair_metrics(loss, beta * chosen, beta * rejected, policy_chosen_logps,
                              policy_rejected_logps)  # fmt: skip


def smoothed_sigmoid_loss(z: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Per pair ``-(1 - eps) log sigma(z) - eps log sigma(-z)`` (eps = 0: ``-log sigma(z)``)."""
    losses = -F.logsigmoid(z)
    if label_smoothing > 0:
        losses = losses * (1 - label_smoothing) - F.logsigmoid(-z) * label_smoothing
    return losses


def pair_metrics(
    loss: torch.Tensor,
    rewards_chosen: torch.Tensor,
    rewards_rejected: torch.Tensor,
    logps_chosen: torch.Tensor,
    logps_rejected: torch.Tensor,
) -> dict[str, float]:
    """Batch means of what a pairwise loss logs, named as TRL logs them (``accuracy``: pairs
    whose chosen reward is higher, ties counting as wrong; ``logps_*``: the policy's)."""
    with torch.no_grad():
        return {
            "loss": loss.item(),
            "rewards_chosen": rewards_chosen.mean().item(),
            "rewards_rejected": rewards_rejected.mean().item(),
            "margin": (rewards_chosen - rewards_rejected).mean().item(),
            "accuracy": (rewards_chosen > rewards_rejected).float().mean().item(),
            "logps_chosen": logps_chosen.mean().item(),
            "logps_rejected": logps_rejected.mean().item(),
            "pairs": float(logps_chosen.shape[0]),
        }


# --- Input checks ------------------------------------------------------------------------------


def check_dpo_inputs(
    policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta, loss_type, label_smoothing,
    reference_free,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Every check of :func:`dpo_loss`'s arguments; returns the detached reference log-probs
    (zeros with ``reference_free``). Errors name the argument and the fix."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    check_beta(beta)
    check_label_smoothing(label_smoothing)
    if label_smoothing > 0 and loss_type != "sigmoid":
        raise ValueError(
            f"label_smoothing applies to loss_type='sigmoid' (cDPO) only, got label_smoothing="
            f"{label_smoothing} with loss_type={loss_type!r}"
        )
    check_logps(policy_chosen=policy_chosen, policy_rejected=policy_rejected)
    if reference_free:
        return torch.zeros_like(policy_chosen).detach(), torch.zeros_like(policy_rejected).detach()
    for name, value in (("ref_chosen_logps", ref_chosen), ("ref_rejected_logps", ref_rejected)):
        if value is None:
            raise ValueError(
                f"{name} is None: DPO needs the reference model's log-probs (or pass "
                "reference_free=True to drop the reference)"
            )
    check_logps(policy_chosen=policy_chosen, ref_chosen=ref_chosen, ref_rejected=ref_rejected)
    return ref_chosen.detach(), ref_rejected.detach()


def check_logps(**named: torch.Tensor) -> None:
    """Each ``name=tensor`` (``policy_chosen=...`` stands for ``policy_chosen_logps``) must be a
    (B,) float tensor of finite log-probs (<= 0), all of the first one's shape."""
    shape = None
    for key, values in named.items():
        name = f"{key}_logps"
        if not torch.is_tensor(values):
            raise ValueError(f"{name} must be a (B,) tensor, got {type(values).__name__}")
        if values.dim() != 1:
            raise ValueError(
                f"{name} must be a (B,) tensor of sequence log-probs, got shape "
                f"{tuple(values.shape)} (reduce per-token log-probs with "
                "rlhf_lessons.lm.sequence_logprobs first)"
            )
        if not values.is_floating_point():
            raise ValueError(f"{name} must be floating point, got {values.dtype}")
        if values.shape[0] == 0:
            raise ValueError(f"{name} is empty (B = 0): there is no pair to compute a loss on")
        if shape is not None and values.shape != shape:
            raise ValueError(
                f"{name} has shape {tuple(values.shape)} but policy_chosen_logps has "
                f"{tuple(shape)}: every input holds one value per pair"
            )
        shape = values.shape
        v = values.detach()
        bad = ~torch.isfinite(v)
        if bad.any():
            kind = "NaN" if torch.isnan(v[bad]).any() else "infinite"
            raise ValueError(
                f"{name} has {int(bad.sum())} {kind} value(s) (first at index "
                f"{int(bad.nonzero()[0])}); log-probs must be finite: check for an empty "
                "completion or a diverged model"
            )
        if float(v.max()) > 1e-3:
            raise ValueError(
                f"{name} has a positive value ({float(v.max()):.4g}); log-probabilities are "
                "<= 0. Did you pass a negative log-likelihood (a loss) or logits instead?"
            )


def check_beta(beta) -> None:
    if isinstance(beta, bool) or not isinstance(beta, Real):
        raise ValueError(f"beta must be a positive number, got {beta!r}")
    if not math.isfinite(beta) or beta <= 0:
        raise ValueError(f"beta must be > 0 (and finite), got {beta}")


def check_label_smoothing(label_smoothing) -> None:
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, Real):
        raise ValueError(f"label_smoothing must be a number in [0, 0.5], got {label_smoothing!r}")
    if not 0.0 <= label_smoothing <= 0.5:
        raise ValueError(
            f"label_smoothing must be in [0, 0.5] (the probability that a label is flipped), "
            f"got {label_smoothing}"
        )
