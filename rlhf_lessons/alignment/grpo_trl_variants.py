"""TRL's variants of GRPO's loss: how the per-token terms are averaged, and a reweighted k3.

Not in the GRPO paper. :func:`rlhf_lessons.alignment.rloo_grpo.grpo_loss` is the paper's loss;
TRL 1.x's ``GRPOTrainer._compute_loss`` offers these options on top of the same per-token terms
(:func:`~rlhf_lessons.alignment.rloo_grpo.grpo_terms`), and each is checked against TRL's own
code in ``tests/test_rloo_grpo.py``:

- **How tokens are averaged** (``loss_type``), with ``l_{i,t}`` the per-token loss:

  - "grpo" (the paper): ``mean_i (1/|o_i|) sum_t l_{i,t}``: each completion weighs the same,
    so a token of a short completion weighs more than one of a long completion;
  - "bnpo": ``sum_{i,t} l / sum_i |o_i|``: every token of the minibatch weighs the same;
  - "dapo" (TRL's default; Yu et al. 2025, "DAPO", arXiv 2503.14476): ``sum_{i,t} l /
    num_items_in_batch``, the completion tokens per optimizer step averaged over the whole
    generation batch (``mask.sum()`` when not given); with one minibatch it equals "bnpo", with
    several, minibatches of long completions weigh more;
  - "dr_grpo" (Liu et al. 2025, "Understanding R1-Zero-Like Training", arXiv 2503.20783):
    ``sum_{i,t} l / (B * max_completion_length)``, a constant, so no length is favoured by the
    normaliser.

- **The ratio-corrected k3** (``kl_ratio_correction``, TRL's ``use_bias_correction_kl``, after
  DeepSeek-V3.2): ``beta * rho * k3`` instead of ``beta * k3``. ``rho = pi_theta / pi_old`` is
  1 in value on-policy but carries a gradient, and
  ``grad(rho k3) = (k3 + 1 - r) grad log pi = (log pi - log pi_ref) grad log pi``
  (r = pi_ref / pi), whose expectation over the sampled token y_t ~ pi(.|s_t) is
  ``grad KL(pi(.|s_t) || pi_ref(.|s_t))``: the reverse per-token KL, where the plain k3 gives
  the forward one; neither is the gradient of the sequence KL (:mod:`~rlhf_lessons.alignment.
  rloo_grpo`; ``tests/test_rloo_grpo.py`` checks all three by exact enumeration).
"""

from __future__ import annotations

import torch

from rlhf_lessons.alignment.rloo_grpo import (
    LOSS_TYPES,
    _check_beta,
    grpo_metrics,
    grpo_terms,
)


def trl_grpo_loss(
    new_logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    beta: float = 0.04,
    loss_type: str = "dapo",
    clip_eps_high: float | None = None,
    kl_ratio_correction: bool = True,
    num_items_in_batch: float | None = None,
    max_completion_length: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """TRL 1.x's ``GRPOTrainer._compute_loss`` (token-level importance sampling), with TRL's
    defaults: per token ``l = -min(rho A, clip(rho) A) + beta * w * k3`` with ``w = rho``
    (``kl_ratio_correction``) or 1, averaged over the completion tokens by ``loss_type``.

    Arguments as :func:`rlhf_lessons.alignment.rloo_grpo.grpo_loss`, plus ``loss_type``,
    ``kl_ratio_correction``, ``num_items_in_batch`` and ``max_completion_length`` (module
    docstring). With ``loss_type="grpo"`` and ``kl_ratio_correction=False`` it is the paper's
    :func:`~rlhf_lessons.alignment.rloo_grpo.grpo_loss`.
    """
    _check_beta(beta, ref_logp)
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if loss_type == "dr_grpo" and not max_completion_length:
        raise ValueError("loss_type='dr_grpo' needs max_completion_length (its constant divisor)")
    t = grpo_terms(new_logp, old_logp, ref_logp, advantages, mask, clip_eps, clip_eps_high)
    per_token = -t.surrogate
    if beta > 0:
        per_token = per_token + beta * (t.ratio * t.k3 if kl_ratio_correction else t.k3)
    per_token, mask = per_token * t.mask, t.mask
    if loss_type == "grpo":
        loss = (per_token.sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    elif loss_type == "bnpo":
        loss = per_token.sum() / mask.sum()
    elif loss_type == "dapo":
        normaliser = mask.sum() if num_items_in_batch is None else num_items_in_batch
        loss = per_token.sum() / max(float(normaliser), 1.0)
    else:  # "dr_grpo"
        loss = per_token.sum() / (mask.shape[0] * max_completion_length)
    return loss, grpo_metrics(loss, t)
