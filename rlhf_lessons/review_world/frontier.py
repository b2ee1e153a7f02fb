"""Comparing two methods' reward-vs-KL frontiers (lessons 06-07).

A method that trades reward for distance from the reference (DPO through beta, PPO through its
KL coefficient and its number of iterations) is not one point on the reward-vs-KL plane but a
curve: the best reward it reached for each budget of KL. The DPO paper (Rafailov et al. 2023,
arXiv 2305.18290, figure 2) compares methods by these *frontiers*: one dominates another where
its curve lies higher.

- :func:`frontier` turns a method's points (its runs and their checkpoints, with the SFT model
  at KL 0) into that curve: the points no other point beats with less KL, joined by straight
  lines; its value at KL k is the reward reachable with k nats.
- :func:`frontier_gap` is the vertical distance between two frontiers on a grid of KL over the
  range both cover; its mean over the range is one number per seed, whose interval over seeds
  says whether one frontier lies above the other (:func:`rlhf_lessons.course.stats.mean_ci`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def frontier(points: Sequence[tuple[float, float]]) -> np.ndarray:
    """The upper-left frontier of ``(kl, reward)`` points: (F, 2), sorted by KL, keeping each
    point whose reward beats every point with less (or equal) KL."""
    p = np.asarray(points, dtype=float)
    if p.ndim != 2 or p.shape[1] != 2 or len(p) == 0:
        raise ValueError(f"points must be (kl, reward) pairs, got shape {p.shape}")
    if not np.isfinite(p).all():
        raise ValueError("points contain NaN or inf")
    p = p[np.lexsort((-p[:, 1], p[:, 0]))]  # by KL, the best reward first among equal KLs
    keep = [0]
    for i in range(1, len(p)):
        if p[i, 1] > p[keep[-1], 1] and p[i, 0] > p[keep[-1], 0]:
            keep.append(i)
    return p[keep]


def frontier_at(front: np.ndarray, kl: np.ndarray | float) -> np.ndarray:
    """The frontier's reward at ``kl``: linear between its points (within its KL range)."""
    kl = np.asarray(kl, dtype=float)
    if (kl < front[0, 0] - 1e-12).any() or (kl > front[-1, 0] + 1e-12).any():
        raise ValueError(f"kl outside the frontier's range [{front[0, 0]:.3g}, {front[-1, 0]:.3g}]")
    return np.interp(kl, front[:, 0], front[:, 1])


def frontier_gap(
    a: Sequence[tuple[float, float]], b: Sequence[tuple[float, float]], n_grid: int = 101
) -> tuple[np.ndarray, np.ndarray]:
    """``(kl_grid, gap)``: frontier(a) minus frontier(b) on ``n_grid`` KL values spanning the
    range both frontiers cover (from the larger of their smallest KLs to the smaller of their
    largest). Positive where ``a`` reaches more reward for the same KL."""
    fa, fb = frontier(a), frontier(b)
    lo, hi = max(fa[0, 0], fb[0, 0]), min(fa[-1, 0], fb[-1, 0])
    if hi <= lo:
        raise ValueError(
            f"the frontiers share no KL range (a covers [{fa[0, 0]:.3g}, {fa[-1, 0]:.3g}], b "
            f"[{fb[0, 0]:.3g}, {fb[-1, 0]:.3g}]): add points so that they overlap"
        )
    grid = np.linspace(lo, hi, n_grid)
    return grid, frontier_at(fa, grid) - frontier_at(fb, grid)
