"""Preference-optimisation losses (lessons 06-07): DPO, cDPO, IPO, hinge, SimPO.

Papers: Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model is Secretly a
Reward Model", arXiv 2305.18290 (DPO; conservative DPO, "cDPO", is label smoothing in the
authors' code, eric-mitchell/direct-preference-optimization ``trainers.py``); Azar et al. 2023,
"A General Theoretical Paradigm to Understand Learning from Human Preferences", arXiv 2310.12036
(IPO, eq. 17); Zhao et al. 2023, "SLiC-HF", arXiv 2305.10425, and Liu et al. 2023, "Statistical
Rejection Sampling Improves Preference Optimization", arXiv 2309.06657 (the hinge loss on
reference-normalised log-probs); Meng, Xia & Chen 2024, "SimPO: Simple Preference Optimization
with a Reference-Free Reward", arXiv 2405.14734.

All of them score a pair (y_w chosen, y_l rejected) from sequence log-probabilities, which
:func:`rlhf_lessons.lm.sequence_logprobs` computes from per-token log-probs (the sum, or the
per-token mean with ``average=True``). With

    h = [log pi(y_w) - log pi_ref(y_w)] - [log pi(y_l) - log pi_ref(y_l)]

(the "implicit reward" of a response is beta * (log pi - log pi_ref)):

- **DPO**: L = -log sigma(beta h). Its gradient on a pair is -beta sigma(-beta h) grad h: pairs
  the policy already ranks right (large h) weigh little. At pi = pi_ref, h = 0, L = log 2 and the
  weight is sigma(0) = 1/2, whatever beta.
- **cDPO** (label smoothing eps, the probability that a label is flipped):
  L = -(1 - eps) log sigma(beta h) - eps log sigma(-beta h). It is minimised at the finite margin
  beta h = log((1 - eps) / eps) instead of pushing h to infinity; eps = 1/2 makes it symmetric,
  minimised at h = 0.
- **IPO**: L = (h - 1/(2 beta))^2: a squared loss that pulls h to the target 1/(2 beta) and no
  further (beta is the paper's tau). At pi = pi_ref, L = 1/(4 beta^2), 25 at beta = 0.1.
- **hinge**: L = relu(1 - beta h): zero, with zero gradient, once beta h >= 1.
- **SimPO**: no reference model, and log-probs averaged over each response's tokens:
  L = -log sigma(beta (avg log pi(y_w) - avg log pi(y_l)) - gamma), gamma a target margin.

Conventions, matched to TRL 1.x (checked against TRL 1.16's code in the tests):

- ``dpo_loss`` "sigmoid", "ipo" and "hinge" compute exactly what ``trl.DPOTrainer`` computes for
  those ``loss_type`` values, from the sequence log-probs it would compute.
- **IPO uses length-averaged log-probs in TRL**: ``DPOTrainer`` divides each response's summed
  log-ratio by its number of completion tokens before squaring (a comment in its code says the
  IPO authors confirmed this). ``dpo_loss`` takes whatever log-probs it is given, so to match TRL
  pass ``sequence_logprobs(..., average=True)`` for policy *and* reference; with summed log-probs
  you get the IPO of eric-mitchell's code instead. (TRL still logs its IPO rewards and logps from
  the summed log-probs, so its logged metrics differ from ours there; its loss does not.)
- **Label smoothing (cDPO)** follows the DPO authors' code, TRL 0.x's ``DPOTrainer`` and TRL 1.x's
  ``CPOTrainer``. TRL 1.x's ``DPOTrainer`` no longer applies ``label_smoothing`` to "sigmoid" (it
  only feeds its "robust" and "exo_pair" losses), so cDPO is checked against ``CPOTrainer``.
- ``reference_free=True`` (DPO authors' code; TRL 0.x) sets log pi_ref to 0, which is CPO's
  "sigmoid" loss without its NLL term. TRL 1.x's ``DPOTrainer`` has no such option.
- **SimPO**: the paper and TRL (``trl.experimental.cpo.CPOTrainer``, ``loss_type="simpo"``,
  ``simpo_gamma``) take gamma in reward units: L = -log sigma(beta Delta - gamma). The SimPO
  authors' code takes ``gamma_beta_ratio`` = gamma / beta: L = -log sigma(beta (Delta - ratio)).
  Both are accepted here. TRL's ``CPOTrainer`` adds ``cpo_alpha`` times an NLL loss on the chosen
  responses (``cpo_alpha`` defaults to 1.0, and ``beta`` to 0.1): pure SimPO is ``cpo_alpha=0``.

Every function here is pure: it takes (B,) log-prob tensors (policy ones with gradient) and
returns ``(loss, metrics)``: the batch-mean loss and a dict of floats. Reference log-probs are
detached: the reference model is a constant.
"""

from __future__ import annotations

import math
from numbers import Real

import torch
import torch.nn.functional as F

LOSS_TYPES = ("sigmoid", "ipo", "hinge")


def _check_logps(name: str, values, shape: torch.Size | None = None) -> torch.Tensor:
    """Validate one (B,) tensor of sequence log-probs; return it."""
    if not torch.is_tensor(values):
        raise ValueError(f"{name} must be a (B,) tensor, got {type(values).__name__}")
    if values.dim() != 1:
        raise ValueError(
            f"{name} must be a (B,) tensor of sequence log-probs, got shape {tuple(values.shape)} "
            "(reduce per-token log-probs with rlhf_lessons.lm.sequence_logprobs first)"
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
    bad = ~torch.isfinite(values.detach())
    if bad.any():
        kind = "NaN" if torch.isnan(values.detach()[bad]).any() else "infinite"
        first = int(bad.nonzero()[0])
        raise ValueError(
            f"{name} has {int(bad.sum())} {kind} value(s) (first at index {first}); log-probs "
            "must be finite: check for an empty completion or a diverged model"
        )
    top = float(values.detach().max())
    if top > 1e-3:
        raise ValueError(
            f"{name} has a positive value ({top:.4g}); log-probabilities are <= 0. Did you pass "
            "a negative log-likelihood (a loss) or logits instead of log-probs?"
        )
    return values


def _check_beta(beta) -> float:
    if isinstance(beta, bool) or not isinstance(beta, Real):
        raise ValueError(f"beta must be a positive number, got {beta!r}")
    if not math.isfinite(beta) or beta <= 0:
        raise ValueError(f"beta must be > 0 (and finite), got {beta}")
    return float(beta)


def _check_label_smoothing(label_smoothing) -> float:
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, Real):
        raise ValueError(f"label_smoothing must be a number in [0, 0.5], got {label_smoothing!r}")
    if not 0.0 <= label_smoothing <= 0.5:
        raise ValueError(
            f"label_smoothing must be in [0, 0.5] (the probability that a label is flipped), "
            f"got {label_smoothing}"
        )
    return float(label_smoothing)


def _smoothed_sigmoid_loss(logits: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Per-pair -(1 - eps) log sigma(z) - eps log sigma(-z) (eps = 0: the DPO loss)."""
    losses = -F.logsigmoid(logits)
    if label_smoothing > 0:
        losses = losses * (1 - label_smoothing) - F.logsigmoid(-logits) * label_smoothing
    return losses


def _pair_metrics(
    loss: torch.Tensor,
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
) -> dict[str, float]:
    with torch.no_grad():
        return {
            "loss": loss.item(),
            "rewards_chosen": chosen_rewards.mean().item(),
            "rewards_rejected": rejected_rewards.mean().item(),
            "margin": (chosen_rewards - rejected_rewards).mean().item(),
            "accuracy": (chosen_rewards > rejected_rewards).float().mean().item(),
            "logps_chosen": chosen_logps.mean().item(),
            "logps_rejected": rejected_logps.mean().item(),
            "pairs": float(chosen_logps.shape[0]),
        }


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
    """DPO and its pairwise relatives on sequence log-probs: TRL ``DPOTrainer``'s losses.

    With h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected), per pair:

        "sigmoid" (DPO):  -log sigma(beta h)
                 (cDPO):  -(1 - eps) log sigma(beta h) - eps log sigma(-beta h),  eps = label_smoothing
        "ipo":            (h - 1 / (2 beta))^2
        "hinge":          relu(1 - beta h)

    and the loss is the mean over the batch.

    Args:
        policy_chosen_logps: (B,) log pi(y_w | x) under the policy, with gradient.
        policy_rejected_logps: (B,) log pi(y_l | x) under the policy, with gradient.
        ref_chosen_logps: (B,) log pi_ref(y_w | x), or None with ``reference_free``. Detached.
        ref_rejected_logps: (B,) log pi_ref(y_l | x), or None with ``reference_free``. Detached.
        beta: > 0. DPO's KL strength (0.1 in the paper; larger stays closer to pi_ref); IPO's
            tau, the target margin being 1 / (2 beta); the hinge's margin is 1 / beta.
        loss_type: "sigmoid", "ipo" or "hinge".
        label_smoothing: eps in [0, 0.5], "sigmoid" only (cDPO). eps = 0.5 gives a loss
            minimised at h = 0.
        reference_free: treat log pi_ref as 0 (the reference arguments are then ignored and may
            be None): the implicit reward becomes beta log pi.

    All inputs are sums of token log-probs for DPO and the hinge (as in TRL and the paper). For
    IPO, TRL uses per-token *averages*: pass ``sequence_logprobs(..., average=True)`` for the
    policy and the reference to match it (summed log-probs give eric-mitchell's IPO).

    Returns:
        ``(loss, metrics)``: a scalar loss; metrics ``loss``, ``rewards_chosen`` and
        ``rewards_rejected`` (batch means of the implicit rewards beta (log pi - log pi_ref)),
        ``margin`` (mean of their difference, beta h), ``accuracy`` (fraction of pairs with
        chosen reward > rejected reward; ties count as wrong), ``logps_chosen`` and
        ``logps_rejected`` (mean policy log-probs) and ``pairs`` (B). These are TRL's
        ``rewards/chosen``, ``rewards/rejected``, ``rewards/margins``, ``rewards/accuracies``,
        ``logps/chosen`` and ``logps/rejected``.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    beta = _check_beta(beta)
    label_smoothing = _check_label_smoothing(label_smoothing)
    if label_smoothing > 0 and loss_type != "sigmoid":
        raise ValueError(
            f"label_smoothing applies to loss_type='sigmoid' (cDPO) only, got label_smoothing="
            f"{label_smoothing} with loss_type={loss_type!r}"
        )
    _check_logps("policy_chosen_logps", policy_chosen_logps)
    shape = policy_chosen_logps.shape
    _check_logps("policy_rejected_logps", policy_rejected_logps, shape)
    if reference_free:
        ref_chosen = torch.zeros_like(policy_chosen_logps).detach()
        ref_rejected = torch.zeros_like(policy_rejected_logps).detach()
    else:
        for name, value in (("ref_chosen_logps", ref_chosen_logps),
                            ("ref_rejected_logps", ref_rejected_logps)):  # fmt: skip
            if value is None:
                raise ValueError(
                    f"{name} is None: DPO needs the reference model's log-probs (or pass "
                    "reference_free=True to drop the reference)"
                )
            _check_logps(name, value, shape)
        ref_chosen = ref_chosen_logps.detach()
        ref_rejected = ref_rejected_logps.detach()

    chosen_logratios = policy_chosen_logps - ref_chosen
    rejected_logratios = policy_rejected_logps - ref_rejected
    h = chosen_logratios - rejected_logratios
    if loss_type == "sigmoid":
        losses = _smoothed_sigmoid_loss(beta * h, label_smoothing)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:  # hinge
        losses = torch.relu(1 - beta * h)
    loss = losses.mean()
    metrics = _pair_metrics(
        loss,
        beta * chosen_logratios.detach(),
        beta * rejected_logratios.detach(),
        policy_chosen_logps.detach(),
        policy_rejected_logps.detach(),
    )
    return loss, metrics


def simpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    beta: float = 2.0,
    gamma: float | None = None,
    *,
    gamma_beta_ratio: float | None = None,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """SimPO: a reference-free, length-normalised pairwise loss with a target margin.

    With Delta = avg log pi(y_w) - avg log pi(y_l) (per-token averages), per pair:

        -log sigma(beta Delta - gamma)                                (label_smoothing = 0)
        -(1 - eps) log sigma(beta Delta - gamma) - eps log sigma(-(beta Delta - gamma))

    and the loss is the mean over the batch. The reward of a response is beta times its average
    token log-prob, and the chosen one must beat the rejected one by gamma. At Delta = 0 the
    loss is log(1 + e^gamma).

    gamma can be given in either of two parametrisations (not both):

    - ``gamma``: the paper's gamma, in reward units; TRL's ``CPOConfig.simpo_gamma``.
    - ``gamma_beta_ratio``: gamma / beta, the SimPO authors' code (``-log sigma(beta (Delta -
      ratio))``); gamma = beta * ratio.

    Neither given: gamma = 0.5 (beta 2.0 and ratio 0.25, the SimPO code's defaults; also TRL's
    default ``simpo_gamma``). The released SimPO settings use beta 2-10 and ratio 0.1-0.8.

    Args:
        policy_chosen_logps: (B,) *average* token log-prob of y_w under the policy
            (``sequence_logprobs(..., average=True)``), with gradient.
        policy_rejected_logps: (B,) the same for y_l.
        beta: > 0, the reward scale (much larger than DPO's: 2.0 in the paper's settings).
        gamma: >= 0, the target reward margin (see above).
        gamma_beta_ratio: >= 0, gamma / beta (see above).
        label_smoothing: eps in [0, 0.5], as in cDPO.

    Passing summed log-probs with gamma = 0 gives :func:`dpo_loss` with ``reference_free=True``.
    TRL's ``CPOTrainer`` with ``loss_type="simpo"`` computes this loss plus ``cpo_alpha`` times
    an NLL term (set ``cpo_alpha=0`` for SimPO).

    Returns:
        ``(loss, metrics)``: metrics as :func:`dpo_loss` with rewards beta * avg log pi (TRL
        ``CPOTrainer``'s), ``margin`` = mean beta Delta (without gamma), plus ``gamma``.
    """
    beta = _check_beta(beta)
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
    if gamma_beta_ratio is not None:
        gamma = beta * gamma_beta_ratio
    elif gamma is None:
        gamma = 0.5
    gamma = float(gamma)
    label_smoothing = _check_label_smoothing(label_smoothing)
    _check_logps("policy_chosen_logps", policy_chosen_logps)
    _check_logps("policy_rejected_logps", policy_rejected_logps, policy_chosen_logps.shape)

    delta = policy_chosen_logps - policy_rejected_logps
    losses = _smoothed_sigmoid_loss(beta * delta - gamma, label_smoothing)
    loss = losses.mean()
    metrics = _pair_metrics(
        loss,
        beta * policy_chosen_logps.detach(),
        beta * policy_rejected_logps.detach(),
        policy_chosen_logps.detach(),
        policy_rejected_logps.detach(),
    )
    metrics["gamma"] = gamma
    return loss, metrics
