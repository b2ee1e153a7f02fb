"""Plotting helpers shared by the lessons: learning curves over seeds, saved figures.

Every curve over seeds is drawn the same way across the course: the mean as a line and a
shaded band, either the spread over seeds (min to max: "how lucky was this seed") or the 95%
interval of the mean (a t-interval over seeds, as the lessons' claims use).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np


def moving_average(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing mean over the last ``window`` values (fewer at the start).

    ``out[i] = mean(values[max(0, i - window + 1) : i + 1])``, so ``out`` has the same length
    as ``values``. Shapes: (N,) -> (N,).
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    x = np.asarray(values, dtype=float)
    if x.ndim != 1:
        raise ValueError(f"values must be 1-D, got shape {x.shape}")
    csum = np.concatenate([[0.0], np.cumsum(x)])
    idx = np.arange(1, len(x) + 1)
    lo = np.maximum(0, idx - window)
    return (csum[idx] - csum[lo]) / (idx - lo)


def on_grid(xs: Sequence[float], ys: Sequence[float], grid: np.ndarray) -> np.ndarray:
    """Step-interpolate a curve ``(xs, ys)`` onto ``grid``: the last value seen at or before each
    grid point (NaN before the first x). Used to average seeds that logged at different x."""
    xs = np.asarray(xs, dtype=float)
    ys = np.asarray(ys, dtype=float)
    if xs.shape != ys.shape:
        raise ValueError(f"xs and ys must have the same shape, got {xs.shape} and {ys.shape}")
    idx = np.searchsorted(xs, grid, side="right") - 1
    return np.where(idx >= 0, ys[np.clip(idx, 0, None)], np.nan)


BANDS = ("minmax", "ci")


def plot_seeds(
    ax: plt.Axes,
    curves: Sequence[tuple[Sequence[float], Sequence[float]]],
    label: str,
    color: str | None = None,
    points: int = 300,
    band: str = "minmax",
    **line_kwargs,
) -> np.ndarray:
    """Draw several seeds' curves as mean line + band on ``ax``.

    ``curves`` holds one ``(x, y)`` pair per seed (x increasing). The seeds are put on a
    common grid of ``points`` x values up to the shortest seed's last x (so every seed counts
    at every plotted x). ``band="minmax"``: the band spans the seeds' min to max;
    ``band="ci"``: the 95% t-interval of the mean over seeds (the label says which). Extra
    keywords go to the mean line (``ls``, ``lw``, ...). Returns the mean curve.
    """
    if not curves:
        raise ValueError("curves is empty: pass one (x, y) pair per seed")
    if band not in BANDS:
        raise ValueError(f"band must be one of {BANDS}, got {band!r}")
    x_end = min(float(np.asarray(x)[-1]) for x, _ in curves)
    x_start = max(float(np.asarray(x)[0]) for x, _ in curves)
    grid = np.linspace(x_start, x_end, points)
    ys = np.stack([on_grid(x, y, grid) for x, y in curves])
    mean = ys.mean(axis=0)
    n = len(curves)
    if band == "ci" and n >= 2:
        from rlhf_lessons.course.stats import t_quantile

        half = t_quantile(n - 1) * ys.std(axis=0, ddof=1) / np.sqrt(n)
        low, high, what = mean - half, mean + half, "95% interval"
    else:
        low, high, what = ys.min(axis=0), ys.max(axis=0), "min-max"
    (line,) = ax.plot(grid, mean, label=f"{label} (mean of {n}, {what})", color=color,
                      **line_kwargs)  # fmt: skip
    ax.fill_between(grid, low, high, color=line.get_color(), alpha=0.2, lw=0)
    return mean


def save_figure(fig: plt.Figure, path: str | Path, dpi: int = 110) -> Path:
    """Save ``fig`` to ``path`` (creating folders) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path
