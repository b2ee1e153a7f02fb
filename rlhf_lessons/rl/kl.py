"""KL divergence: exact, its Monte-Carlo estimators, and per-token KL between language models
(lesson 03).

    KL(q || p) = E_{x ~ q}[log q(x) - log p(x)]  >= 0, and = 0 only when q = p.

It is not symmetric. Minimising KL(p || q) over q ("forward") makes q cover every region where
p has mass (mode covering); minimising KL(q || p) ("reverse") lets q sit on one mode of p and
ignore the others (mode seeking), because q is only penalised where q itself puts mass.

RLHF penalises KL(pi_theta || pi_ref): the fine-tuned policy's own samples are scored by how much
more likely the policy makes them than the reference model did. It is estimated from those
samples. With r = p(x) / q(x) for x ~ q (in RLHF: q = pi_theta, p = pi_ref, so
log r = logp_ref - logp_theta per token), Schulman's estimators ("Approximating KL Divergence",
2020, joschu.net/blog/kl-approx.html) are

    k1 = -log r                 unbiased, high variance, negative for about half the samples
    k2 = (log r)^2 / 2          biased (exact to second order near q = p), low variance, >= 0
    k3 = (r - 1) - log r        unbiased (E_q[r - 1] = 0), low variance, >= 0 (log r <= r - 1)
"""

from __future__ import annotations

import math

import numpy as np
import torch


def kl_divergence(p, q) -> float:
    """Exact KL(p || q) = sum_i p_i log(p_i / q_i) in nats for two discrete distributions.

    Terms with p_i = 0 contribute 0; p_i > 0 with q_i = 0 makes the KL infinite.
    """
    p = np.asarray(p, dtype=float)
    q = np.asarray(q, dtype=float)
    if p.shape != q.shape or p.ndim != 1:
        raise ValueError(f"p and q must be 1-D and the same length, got {p.shape} and {q.shape}")
    for name, d in (("p", p), ("q", q)):
        if (d < 0).any() or not math.isclose(d.sum(), 1.0, abs_tol=1e-6):
            raise ValueError(f"{name} must be a probability distribution (>= 0, sums to 1): {d}")
    support = p > 0
    if (q[support] == 0).any():
        return math.inf
    return float(np.sum(p[support] * np.log(p[support] / q[support])))


def kl_estimates(log_r: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sample k1, k2, k3 from ``log_r = log p(x) - log q(x)`` for samples x ~ q.

    Shapes: any (...) -> dict of (...) tensors. Their means estimate KL(q || p).
    """
    r = log_r.exp()
    return {"k1": -log_r, "k2": 0.5 * log_r.pow(2), "k3": (r - 1.0) - log_r}


def gaussian_kl(mu_q: float, sigma_q: float, mu_p: float, sigma_p: float) -> float:
    """Closed-form KL(N(mu_q, sigma_q^2) || N(mu_p, sigma_p^2))."""
    return math.log(sigma_p / sigma_q) + (sigma_q**2 + (mu_q - mu_p) ** 2) / (2 * sigma_p**2) - 0.5


def estimator_samples(mu: float, n: int = 2_000_000, seed: int = 0) -> dict[str, torch.Tensor]:
    """Single-sample k1, k2, k3 (each (n,), float64) for q = N(0, 1), p = N(mu, 1), from ``n``
    samples x ~ q drawn with ``seed``. Their means estimate KL(q || p) = mu^2 / 2."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=gen, dtype=torch.float64)
    # log p(x) - log q(x) for unit-variance Gaussians: the normalisers cancel
    return kl_estimates(-0.5 * (x - mu) ** 2 + 0.5 * x**2)


def estimator_stats(mu: float, n: int = 2_000_000, seed: int = 0) -> dict[str, dict[str, float]]:
    """Bias and spread of k1, k2, k3 for q = N(0, 1), p = N(mu, 1), from ``n`` samples of q.

    The true KL is mu^2 / 2. Returns, per estimator, ``mean``, ``bias/true`` (relative bias of
    the sample mean) and ``std/true`` (standard deviation of a single-sample estimate relative
    to the true KL), plus ``min`` (k3 and k2 are never negative; k1 is).
    """
    true = gaussian_kl(0.0, 1.0, mu, 1.0)
    return {
        name: {
            "mean": k.mean().item(),
            "bias/true": (k.mean().item() - true) / true,
            "std/true": k.std().item() / true,
            "min": k.min().item(),
        }
        for name, k in estimator_samples(mu, n, seed).items()
    }


def fit_gaussian(
    log_p: torch.Tensor,
    grid: torch.Tensor,
    direction: str,
    init: tuple[float, float] = (1.0, 1.0),
    steps: int = 2000,
    lr: float = 0.05,
) -> tuple[float, float]:
    """Fit N(mu, sigma^2) to a 1-D density ``p`` (given as log-density on an even ``grid``) by
    minimising KL(p || q) (``direction="forward"``) or KL(q || p) (``"reverse"``) with Adam,
    starting from ``init = (mu, sigma)``.

    The integrals are Riemann sums on the grid. Returns ``(mu, sigma)``. (For a symmetric
    bimodal p, a start exactly between the modes is a saddle point of the reverse KL: start
    off-centre to let it fall into a mode.)
    """
    if direction not in ("forward", "reverse"):
        raise ValueError(f"direction must be 'forward' or 'reverse', got {direction!r}")
    dx = (grid[1] - grid[0]).item()
    p = log_p.exp()
    mu = torch.tensor(float(init[0]), requires_grad=True)
    log_sigma = torch.tensor(math.log(init[1]), requires_grad=True)
    opt = torch.optim.Adam([mu, log_sigma], lr=lr)
    for _ in range(steps):
        sigma = log_sigma.exp()
        log_q = -0.5 * ((grid - mu) / sigma) ** 2 - log_sigma - 0.5 * math.log(2 * math.pi)
        if direction == "forward":
            loss = (p * (log_p - log_q)).sum() * dx
        else:
            loss = (log_q.exp() * (log_q - log_p)).sum() * dx
        opt.zero_grad()
        loss.backward()
        opt.step()
    return mu.item(), log_sigma.exp().item()


def per_token_kl(
    logits_q: torch.Tensor, logits_p: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Exact KL(q_t || p_t) = sum_v q_t(v) (log q_t(v) - log p_t(v)) in nats at every position.

    ``logits_q`` (B, T, V): the sampling model's (the policy's) next-token logits; ``logits_p``
    the reference model's at the same positions; ``mask`` (B, T), optional: 0 gives KL 0.
    Returns (B, T).
    """
    if logits_q.shape != logits_p.shape:
        raise ValueError(
            f"logits_q {tuple(logits_q.shape)} and logits_p {tuple(logits_p.shape)} must match"
        )
    log_q = torch.log_softmax(logits_q.float(), dim=-1)
    log_p = torch.log_softmax(logits_p.float(), dim=-1)
    kl = (log_q.exp() * (log_q - log_p)).sum(-1)
    return kl * mask.to(kl.dtype) if mask is not None else kl


@torch.no_grad()
def temperature_kl_terms(
    model, batch, temperature: float, rows_per_pass: int = 8
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token terms of KL(q || p) on ``batch`` (a :class:`rlhf_lessons.lm.Batch` of prompts
    and completions sampled from q), where p is the causal LM ``model`` and q the same model at
    ``temperature`` (q proportional to p^(1/temperature)): one forward pass gives both. It runs
    ``rows_per_pass`` sequences at a time (the (rows, T, V) logits are the memory peak).

    Returns ``(exact, log_r)``, both (B, T) and 0 outside the completion: the exact per-token
    KL(q_t || p_t) over the vocabulary (:func:`per_token_kl`), and ``log r = log p - log q``
    of the sampled token, from which :func:`kl_estimates` gives k1, k2, k3.
    """
    from rlhf_lessons.lm import next_token_logits

    exact, log_r = [], []
    for start in range(0, len(batch), rows_per_pass):
        rows = batch.rows(slice(start, start + rows_per_pass))
        logits = next_token_logits(model, rows)  # (b, T, V): p's
        mask = rows.completion_mask.float()
        ids = rows.input_ids.unsqueeze(-1)
        logp = torch.log_softmax(logits.float(), -1)
        logq = torch.log_softmax(logits.float() / temperature, -1)
        exact.append((logq.exp() * (logq - logp)).sum(-1) * mask)
        log_r.append((logp.gather(-1, ids) - logq.gather(-1, ids)).squeeze(-1) * mask)
    return torch.cat(exact), torch.cat(log_r)
