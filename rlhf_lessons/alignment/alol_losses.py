"""The A-LoL family of offline policy-gradient objectives (lesson 11).

Paper: Baheti, Lu, Brahman, Le Bras, Sap & Riedl 2024, "Leftover Lunch: Advantage-based Offline
Reinforcement Learning for Language Models", ICLR 2024, arXiv 2305.14718. Reference code:
abaheti95/LoL-RL (``lolrl_qlora_llama_hh.py``, the training loop of the HH experiment, and
``train_generation_task_with_off_policy_PG.py``); the formulas below are the ones that code runs.

A-LoL treats a whole response y to a prompt x as **one action**. The data were written by some
behaviour policy we cannot sample from again; the reference policy pi_ref (the SFT model) stands
in for it. The off-policy policy gradient with a baseline V_ref(x) is then

    grad J = E_{(x, y) ~ D}[ A(x, y) * (pi_theta(y|x) / pi_ref(y|x)) * grad log pi_theta(y|x) ],
    A(x, y) = R(x, y) - V_ref(x),

with log pi(y|x) = sum_t log pi(y_t | x, y_<t) (the sum, as the repository uses). Every
objective here is a weighted negative log-likelihood, ``weight * NLL(y)`` with
NLL(y) = -sum_t log pi_theta(y_t | .), where the weight is computed under ``no_grad``: a
*detached* weight times the NLL has exactly the gradient above (the weight is a number, the
gradient comes only from the NLL). The eight objectives, as ``loss = mean over the batch``:

    nll              NLL(y)                                              behaviour cloning
    wbc              R * NLL(y)                                          weighted BC
    r_gold           R * sum_t max(pi_theta(y_t), u) * (-log pi_theta(y_t))     (GOLD, u = 0.1)
    r_lol            R * clip(pi_theta(y) / pi_ref(y), 1 - eps, 1 + eps) * NLL(y)
    a_lol            A+ * clip(pi_theta(y) / pi_ref(y), 1 - eps, 1 + eps) * NLL(y)
    a_lol_ref_free   A+ * NLL(y)                                         (no importance weight)
    a_lol_seq        A+ * sum_t clip(pi_theta(y_t) / pi_ref(y_t), 1 - eps, 1 + eps)
                        * (-log pi_theta(y_t))
    a_lol_kl         A+ * NLL(y) + beta * (log pi_theta(y) - log pi_ref(y))

with A+ = max(A, 0) (only "leftover lunch", the data that beats the reference, teaches
anything) and eps = 0.9 by default, so every importance weight lies in [0.1, 1.9]: the
sequence ratio pi_theta(y) / pi_ref(y) is a product of one ratio per token and soon leaves any
narrower range. ``a_lol_seq`` clips each token's ratio instead of their product.

**a_lol_kl is not a KL penalty.** Its "KL" term is evaluated on the *data* y ~ D, not on
samples of pi_theta, and log pi_ref(y) is a constant, so its gradient is beta * grad log
pi_theta(y): the whole objective has the gradient of ``(A+ - beta) * NLL(y)``. It is
``a_lol_ref_free`` with every advantage lowered by beta, which *pushes down* the likelihood of
data whose advantage is below beta (the tests check this identity). In the repository it is
``a_lol`` with ``kl_beta > 0`` and ``ppo_clip = 0`` (no importance weight).

Rewards: A-LoL's code expects R in [0, 1] (its value head ends in a sigmoid); ``wbc``,
``r_gold`` and ``r_lol`` refuse negative rewards here, because a negative weight on an NLL is
unlikelihood training, unbounded below, and not what these objectives are. Rescale a reward
in [-1, 1] with (R + 1) / 2 (:mod:`rlhf_lessons.alignment.alol_data` does).

Shapes: ``logp``, ``ref_logp`` and ``mask`` are (B, T) per-token log-probs of the data's tokens
(:func:`rlhf_lessons.lm.token_logprobs`; the policy's with gradient) and the completion mask;
``rewards`` and ``advantages`` are (B,). Every function returns ``(loss, metrics)``: the scalar
loss and a dict of floats (``loss``, ``nll`` the batch-mean NLL, ``weight`` the mean of the
per-sequence multiplier applied to the NLL, ``weight_min``/``weight_max`` of the importance
weights where there are any, ``clipfrac`` the fraction of importance weights the clip changed).
"""

from __future__ import annotations

import math

import torch

METHODS = ("nll", "wbc", "r_gold", "r_lol", "a_lol", "a_lol_ref_free", "a_lol_seq", "a_lol_kl")
REWARD_METHODS = ("wbc", "r_gold", "r_lol")  # weighted by R (sampled in proportion to R)
ADVANTAGE_METHODS = ("a_lol", "a_lol_ref_free", "a_lol_seq", "a_lol_kl")  # weighted by A+
REFERENCE_METHODS = ("r_lol", "a_lol", "a_lol_seq", "a_lol_kl")  # need log pi_ref of the data
DEFAULT_CLIP_EPS = 0.9  # the repository's ppo_clip
DEFAULT_MIN_PROB = 0.1  # GOLD's lower bound u on the token probability (the repository's)
DEFAULT_KL_BETA = 0.1  # our choice; the repository's default kl_beta is 0 (A-LoL KL off)


# --- Input checks (one call at the top of every objective) -----------------------------------

_UNSET = object()


def check_inputs(
    logp: torch.Tensor,
    mask: torch.Tensor,
    *,
    ref_logp: torch.Tensor | None = None,
    rewards: torch.Tensor | None = None,
    advantages: torch.Tensor | None = None,
    clip_eps=_UNSET,
    kl_beta=_UNSET,
    min_prob=_UNSET,
) -> torch.Tensor:
    """Every check of an objective's inputs (the module's shapes, finite values on the completion
    tokens, rewards >= 0, settings in range), in one call; returns ``mask`` in ``logp``'s dtype.
    Each error names the field and the fix."""
    for name, x in (("logp", logp), ("mask", mask), ("ref_logp", ref_logp)):
        if x is None:
            continue
        if not isinstance(x, torch.Tensor) or x.ndim != 2:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(
                f"{name} must be a (B, T) tensor of per-token values (lm.token_logprobs), got {got}"
            )
        if name != "logp" and x.shape != logp.shape:
            raise ValueError(
                f"{name} must have the shape of logp {tuple(logp.shape)}, got {tuple(x.shape)}"
            )
        if x.shape[0] == 0:
            raise ValueError(f"{name} is empty (B = 0): there is no response to compute a loss on")
    if (mask.sum(-1) == 0).any():
        i = int((mask.sum(-1) == 0).nonzero()[0, 0])
        raise ValueError(f"mask row {i} has no completion token: every response needs one")
    m = mask.bool()
    for name, x in (("logp", logp), ("ref_logp", ref_logp)):
        if x is not None and not torch.isfinite(x.detach()[m]).all():
            raise ValueError(f"{name} is NaN or inf on a completion token")
    batch = logp.shape[0]
    for name, x in (("rewards", rewards), ("advantages", advantages)):
        if x is None:
            continue
        if not isinstance(x, torch.Tensor) or x.shape != (batch,):
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(
                f"{name} must be a ({batch},) tensor, one value per response, got {got}"
            )
        if not torch.isfinite(x).all():
            raise ValueError(
                f"{name} contains NaN or inf: check the reward / value that produced it"
            )
    if rewards is not None and (rewards < 0).any():
        raise ValueError(
            f"rewards must be >= 0 (A-LoL's rewards lie in [0, 1]); got {rewards.min().item():.4g}. "
            "Rescale the reward, e.g. (r + 1) / 2 for a reward in [-1, 1]"
        )
    if clip_eps is not _UNSET:
        check_clip_eps(clip_eps)
    if kl_beta is not _UNSET and not (
        isinstance(kl_beta, int | float) and math.isfinite(kl_beta) and kl_beta >= 0
    ):
        raise ValueError(f"kl_beta must be a number >= 0, got {kl_beta!r}")
    if min_prob is not _UNSET and not (isinstance(min_prob, int | float) and 0 < min_prob <= 1):
        raise ValueError(f"min_prob (GOLD's lower bound u) must be in (0, 1], got {min_prob}")
    return mask.to(logp.dtype)


def check_clip_eps(clip_eps) -> None:
    """``clip_eps`` in (0, 1] (weights clipped to [1 - eps, 1 + eps]) or None (no clip)."""
    if clip_eps is not None and not (isinstance(clip_eps, int | float) and 0 < clip_eps <= 1):
        raise ValueError(
            f"clip_eps must be in (0, 1] (weights are clipped to [1 - eps, 1 + eps]) or None for "
            f"an unclipped ratio, got {clip_eps!r}"
        )


# --- Building blocks ---------------------------------------------------------------------------


def sequence_nll(logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """NLL(y) = -sum_t log pi(y_t | .) over the completion tokens: (B, T), (B, T) -> (B,)."""
    return -(logp * mask).sum(-1)


@torch.no_grad()
def clipped_ratio(
    log_ratio: torch.Tensor, clip_eps: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Detached importance weight exp(log_ratio) clipped to [1 - eps, 1 + eps] (any shape).

    Returns ``(weight, changed)``: ``changed`` is True where the clip moved the ratio. With
    ``clip_eps=None`` the ratio is returned as it is (the repository with ``ppo_clip=0``)."""
    ratio = log_ratio.detach().exp()
    if clip_eps is None:
        return ratio, torch.zeros_like(ratio, dtype=torch.bool)
    weight = ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)
    return weight, weight != ratio


def positive_part(advantages: torch.Tensor) -> torch.Tensor:
    """A+ = max(A, 0): the advantage A-LoL trains with (negative-advantage data is ignored)."""
    return advantages.detach().clamp(min=0.0)


def _metrics(loss, nll, weight, iw=None, changed=None, extra=None) -> dict[str, float]:
    m = {"loss": loss.item(), "nll": nll.mean().item(), "weight": weight.mean().item()}
    if iw is not None:
        m.update(weight_min=iw.min().item(), weight_max=iw.max().item(),
                 clipfrac=changed.float().mean().item())  # fmt: skip
    else:
        m.update(weight_min=math.nan, weight_max=math.nan, clipfrac=0.0)
    m.update(extra or {})
    return m


# --- The eight objectives ----------------------------------------------------------------------


def nll_loss(logp: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Behaviour cloning: ``L = mean_b NLL(y_b)``. logp (B, T) with grad, mask (B, T)."""
    mask = check_inputs(logp, mask)
    nll = sequence_nll(logp, mask)
    loss = nll.mean()
    return loss, _metrics(loss, nll, torch.ones_like(nll))


def wbc_loss(
    logp: torch.Tensor, mask: torch.Tensor, rewards: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]:
    """Reward-weighted behaviour cloning: ``L = mean_b R_b * NLL(y_b)``.

    logp (B, T) with grad, mask (B, T), rewards (B,) >= 0. With R = 1 it is :func:`nll_loss`."""
    mask = check_inputs(logp, mask, rewards=rewards)
    nll = sequence_nll(logp, mask)
    r = rewards.detach().to(nll.dtype)
    loss = (r * nll).mean()
    return loss, _metrics(loss, nll, r)


def r_gold_loss(
    logp: torch.Tensor, mask: torch.Tensor, rewards: torch.Tensor,
    min_prob: float = DEFAULT_MIN_PROB,
) -> tuple[torch.Tensor, dict[str, float]]:  # fmt: skip
    """Reward-GOLD (Pang & He 2021, "Text Generation by Learning from Demonstrations", with the
    sequence reward R in place of GOLD's per-token one):
    ``L = mean_b R_b * sum_t max(pi_theta(y_t), u) * (-log pi_theta(y_t))``.

    The token probability is a detached per-token importance weight (GOLD's approximation of
    pi_theta / pi_behaviour with a uniform behaviour policy), bounded below by ``min_prob`` = u
    so that unlikely tokens still get some gradient. logp (B, T) with grad, mask (B, T),
    rewards (B,) >= 0. With ``min_prob`` = 1 every weight is 1 and it is :func:`wbc_loss`."""
    mask = check_inputs(logp, mask, rewards=rewards, min_prob=min_prob)
    with torch.no_grad():
        token_w = logp.detach().exp().clamp(min=min_prob)
    r = rewards.detach().to(logp.dtype)
    per_seq = -(token_w * logp * mask).sum(-1)
    loss = (r * per_seq).mean()
    m = mask.bool()
    clipped = logp.detach().exp()[m] < min_prob
    return loss, _metrics(loss, sequence_nll(logp, mask), r, token_w[m], clipped)


def _sequence_is_loss(logp, ref_logp, mask, scale, clip_eps):
    """scale_b * clip(pi(y_b) / pi_ref(y_b)) * NLL(y_b), batch mean; the ratio is detached."""
    nll = sequence_nll(logp, mask)
    log_ratio = ((logp.detach() - ref_logp) * mask).sum(-1)
    iw, changed = clipped_ratio(log_ratio, clip_eps)
    loss = (scale * iw * nll).mean()
    return loss, _metrics(loss, nll, scale * iw, iw, changed,
                          {"log_ratio": log_ratio.mean().item()})  # fmt: skip


def r_lol_loss(
    logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, rewards: torch.Tensor,
    clip_eps: float | None = DEFAULT_CLIP_EPS,
) -> tuple[torch.Tensor, dict[str, float]]:  # fmt: skip
    """R-LoL: ``L = mean_b R_b * clip(pi_theta(y_b) / pi_ref(y_b), 1 - eps, 1 + eps) * NLL(y_b)``.

    The sequence ratio exp(sum_t log pi_theta(y_t) - log pi_ref(y_t)) is detached. logp (B, T)
    with grad, ref_logp (B, T), mask (B, T), rewards (B,) >= 0."""
    mask = check_inputs(logp, mask, ref_logp=ref_logp, rewards=rewards, clip_eps=clip_eps)
    return _sequence_is_loss(logp, ref_logp.detach(), mask, rewards.detach().to(logp.dtype),
                             clip_eps)  # fmt: skip


def a_lol_loss(
    logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor,
    clip_eps: float | None = DEFAULT_CLIP_EPS,
) -> tuple[torch.Tensor, dict[str, float]]:  # fmt: skip
    """A-LoL: ``L = mean_b A+_b * clip(pi_theta(y_b) / pi_ref(y_b), 1 - eps, 1 + eps) *
    NLL(y_b)`` with A+ = max(A, 0) and the sequence ratio detached.

    logp (B, T) with grad, ref_logp (B, T), mask (B, T), advantages (B,) (any sign: the
    function takes the positive part)."""
    mask = check_inputs(logp, mask, ref_logp=ref_logp, advantages=advantages, clip_eps=clip_eps)
    a = positive_part(advantages).to(logp.dtype)
    loss, m = _sequence_is_loss(logp, ref_logp.detach(), mask, a, clip_eps)
    m["advantage"] = a.mean().item()
    return loss, m


def a_lol_ref_free_loss(
    logp: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]:
    """A-LoL ref-free: ``L = mean_b A+_b * NLL(y_b)``: no importance weight, so no pi_ref.

    logp (B, T) with grad, mask (B, T), advantages (B,). With A+ = 1 it is :func:`nll_loss`."""
    mask = check_inputs(logp, mask, advantages=advantages)
    nll = sequence_nll(logp, mask)
    a = positive_part(advantages).to(nll.dtype)
    loss = (a * nll).mean()
    return loss, _metrics(loss, nll, a, extra={"advantage": a.mean().item()})


def a_lol_seq_loss(
    logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor,
    clip_eps: float | None = DEFAULT_CLIP_EPS,
) -> tuple[torch.Tensor, dict[str, float]]:  # fmt: skip
    """A-LoL seq: per-token clipped ratios,
    ``L = mean_b A+_b * sum_t clip(pi_theta(y_t) / pi_ref(y_t), 1 - eps, 1 + eps) *
    (-log pi_theta(y_t))``, every ratio detached.

    logp (B, T) with grad, ref_logp (B, T), mask (B, T), advantages (B,)."""
    mask = check_inputs(logp, mask, ref_logp=ref_logp, advantages=advantages, clip_eps=clip_eps)
    a = positive_part(advantages).to(logp.dtype)
    iw, changed = clipped_ratio(logp.detach() - ref_logp.detach(), clip_eps)
    per_seq = -(iw * logp * mask).sum(-1)
    loss = (a * per_seq).mean()
    nll = sequence_nll(logp, mask)
    m = mask.bool()
    return loss, _metrics(loss, nll, a, iw[m], changed[m], {"advantage": a.mean().item()})


def a_lol_kl_loss(
    logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor,
    kl_beta: float = DEFAULT_KL_BETA,
) -> tuple[torch.Tensor, dict[str, float]]:  # fmt: skip
    """A-LoL KL: ``L = mean_b [A+_b * NLL(y_b) + beta * (log pi_theta(y_b) - log pi_ref(y_b))]``,
    no importance weight; on data its gradient is that of ``(A+ - beta) * NLL(y)`` (see the
    module docstring). logp (B, T) with grad, ref_logp (B, T), mask (B, T), advantages (B,),
    ``kl_beta`` >= 0."""
    mask = check_inputs(logp, mask, ref_logp=ref_logp, advantages=advantages, kl_beta=kl_beta)
    nll = sequence_nll(logp, mask)
    a = positive_part(advantages).to(nll.dtype)
    log_ratio = ((logp - ref_logp.detach()) * mask).sum(-1)  # = -NLL(y) - log pi_ref(y)
    kl = kl_beta * log_ratio.mean()
    loss = (a * nll).mean() + kl
    return loss, _metrics(loss, nll, a, extra={"advantage": a.mean().item(),
                                               "kl_term": kl.item(),
                                               "log_ratio": log_ratio.mean().item()})  # fmt: skip


def alol_objective(
    method: str,
    logp: torch.Tensor,
    mask: torch.Tensor,
    ref_logp: torch.Tensor | None = None,
    rewards: torch.Tensor | None = None,
    advantages: torch.Tensor | None = None,
    clip_eps: float | None = DEFAULT_CLIP_EPS,
    kl_beta: float = DEFAULT_KL_BETA,
    min_prob: float = DEFAULT_MIN_PROB,
) -> tuple[torch.Tensor, dict[str, float]]:
    """One of :data:`METHODS` by name, with the inputs it needs (the others are ignored).

    logp (B, T) with grad, mask (B, T); ``ref_logp`` (B, T) for :data:`REFERENCE_METHODS`,
    ``rewards`` (B,) in [0, 1] for :data:`REWARD_METHODS`, ``advantages`` (B,) for
    :data:`ADVANTAGE_METHODS`."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    needs = {"ref_logp": method in REFERENCE_METHODS, "rewards": method in REWARD_METHODS,
             "advantages": method in ADVANTAGE_METHODS}  # fmt: skip
    given = {"ref_logp": ref_logp, "rewards": rewards, "advantages": advantages}
    for name, needed in needs.items():
        if needed and given[name] is None:
            raise ValueError(f"method {method!r} needs {name}; pass it")
    objectives = {
        "nll": lambda: nll_loss(logp, mask),
        "wbc": lambda: wbc_loss(logp, mask, rewards),
        "r_gold": lambda: r_gold_loss(logp, mask, rewards, min_prob),
        "r_lol": lambda: r_lol_loss(logp, ref_logp, mask, rewards, clip_eps),
        "a_lol": lambda: a_lol_loss(logp, ref_logp, mask, advantages, clip_eps),
        "a_lol_ref_free": lambda: a_lol_ref_free_loss(logp, mask, advantages),
        "a_lol_seq": lambda: a_lol_seq_loss(logp, ref_logp, mask, advantages, clip_eps),
        "a_lol_kl": lambda: a_lol_kl_loss(logp, ref_logp, mask, advantages, kl_beta),
    }
    return objectives[method]()
