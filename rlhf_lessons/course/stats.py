"""95% intervals for the lessons' claims.

A learning claim ("DPO raises the true reward by at least 0.25") is a statement about what the
method does on *any* seed, so it rests on several seeds and is asserted on an interval, not on
one run's number:

- :func:`mean_ci`: a t-interval of the mean over independent runs (one value per seed);
- :func:`diff_ci`: the interval of a difference between two methods, paired by seed when both
  ran on the same seeds (the same data and initialisation), which removes the seed-to-seed
  variation they share;
- :func:`proportion_ci`: Wilson's interval of a proportion (an accuracy over k of n items);
- :func:`paired_bootstrap_diff`: the interval of a difference of means over the *same* items
  (held-out pairs scored before and after training), resampling items;
- :func:`cluster_mean_ci`: a mean over prompts x samples, with the standard error taken over
  the per-prompt means (samples of one prompt are correlated).

Each returns an :class:`Interval`; ``str(interval)`` prints ``0.552 [0.501, 0.603]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A point estimate and its interval: ``mean`` in ``[low, high]`` at ``level``."""

    mean: float
    low: float
    high: float
    n: int
    level: float = LEVEL
    method: str = "t"

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def excludes(self, value: float) -> bool:
        """Whether ``value`` lies outside the interval."""
        return value < self.low or value > self.high

    def above(self, bar: float) -> bool:
        """The whole interval lies above ``bar`` (a gain whose lower bound clears the bar)."""
        return self.low > bar

    def below(self, bar: float) -> bool:
        return self.high < bar

    def __str__(self) -> str:
        return format(self, ".3f")

    def __format__(self, spec: str) -> str:
        spec = spec or ".3f"
        return f"{self.mean:{spec}} [{self.low:{spec}}, {self.high:{spec}}]"


def _values(values: Sequence[float] | np.ndarray, name: str = "values") -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size < 2:
        raise ValueError(
            f"{name}: an interval needs at least 2 values (one per seed), got {v.size}; run more "
            "seeds"
        )
    if not np.isfinite(v).all():
        raise ValueError(f"{name} contain NaN or inf: {v.tolist()}")
    return v


def t_quantile(df: int, level: float = LEVEL) -> float:
    """The two-sided Student-t critical value (e.g. 2.776 for 5 seeds, df = 4)."""
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, df))


def mean_ci(values: Sequence[float], level: float = LEVEL) -> Interval:
    """t-interval of the mean of independent values (one per seed): mean +- t * s / sqrt(n)."""
    v = _values(values)
    m, se = float(v.mean()), float(v.std(ddof=1) / math.sqrt(v.size))
    h = t_quantile(v.size - 1, level) * se
    return Interval(m, m - h, m + h, int(v.size), level, "t")


def diff_ci(
    a: Sequence[float], b: Sequence[float], paired: bool = True, level: float = LEVEL
) -> Interval:
    """Interval of mean(a) - mean(b).

    ``paired=True`` (both methods ran on the same seeds, in the same order): the t-interval of
    the per-seed differences. ``paired=False``: Welch's interval for independent samples.
    """
    a, b = _values(a, "a"), _values(b, "b")
    if paired:
        if a.size != b.size:
            raise ValueError(
                f"paired values need the same number of seeds, got {a.size} and {b.size}"
            )
        return replace(mean_ci(a - b, level), method="paired t")
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(va + vb)
    df = (
        (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
        if se > 0
        else a.size + b.size - 2
    )
    m = float(a.mean() - b.mean())
    h = t_quantile(max(1, int(df)), level) * se
    return Interval(m, m - h, m + h, int(a.size + b.size), level, "Welch t")


def proportion_ci(successes: float, n: int, level: float = LEVEL) -> Interval:
    """Wilson score interval of a proportion ``successes / n`` (ties counted 1/2 are fine)."""
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n >= 1, got {successes} of {n}")
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + level / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return Interval(p, max(0.0, centre - h), min(1.0, centre + h), n, level, "Wilson")


def bootstrap_ci(
    values: Sequence[float], n_boot: int = 10_000, seed: int = 0, level: float = LEVEL
) -> Interval:
    """Percentile bootstrap interval of the mean over items (resampled with replacement)."""
    v = _values(values)
    idx = np.random.default_rng(seed).integers(0, v.size, size=(n_boot, v.size))
    lo, hi = np.quantile(v[idx].mean(1), [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(np.mean(v)), float(lo), float(hi), int(v.size), level, "bootstrap")


def paired_bootstrap_diff(
    a: Sequence[float], b: Sequence[float], n_boot: int = 10_000, seed: int = 0,
    level: float = LEVEL,
) -> Interval:  # fmt: skip
    """Interval of mean(a) - mean(b) over the *same* items (e.g. each held-out pair's
    correctness after and before training), resampling items with replacement."""
    a, b = _values(a, "a"), _values(b, "b")
    if a.size != b.size:
        raise ValueError(f"paired items need equal lengths, got {a.size} and {b.size}")
    iv = bootstrap_ci(a - b, n_boot=n_boot, seed=seed, level=level)
    return replace(iv, method="paired bootstrap")


def cluster_mean_ci(values, level: float = LEVEL) -> Interval:
    """Mean of a (prompts, samples) array with a t-interval over the per-prompt means (the
    samples of one prompt are correlated; with a single prompt, over its samples)."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2:
        raise ValueError(f"values must be (prompts, samples), got shape {v.shape}")
    units = v.mean(axis=1) if v.shape[0] >= 2 else v[0]
    m, h = float(v.mean()), mean_ci(units, level).half_width
    return Interval(m, m - h, m + h, int(units.size), level, "cluster t")


def rank_correlations(scores: Sequence[float]) -> tuple[float, float]:
    """Kendall's tau and Spearman's rho between ``scores`` and the true order (best first).

    Scores that are all equal carry no ranking: both are 0 (scipy gives NaN)."""
    from scipy.stats import kendalltau, spearmanr

    truth = -np.arange(len(scores))  # higher = better, like the scores
    s = np.asarray(scores, dtype=float)
    if np.all(s == s[0]):
        return 0.0, 0.0
    return float(kendalltau(s, truth).statistic), float(spearmanr(s, truth).statistic)
