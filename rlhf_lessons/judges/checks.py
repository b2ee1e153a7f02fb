"""The lesson's checks on a judge (lesson 09): does it have signal, a position bias, a taste
for length or for lists? Each answer rests on a 95% interval, not on a point.

The metrics are :data:`rlhf_lessons.judges.judge_bias.METRICS`. Their intervals come from a
**bootstrap over the held-out pairs** (the pairs are a sample of the questions a judge will
meet), and, for a judge trained with several seeds, **over the seeds** too: each replicate
resamples the N pairs with replacement (the same pairs for every judge it compares) and each
judge's S seeds with replacement, then recomputes the metric on the resampled outcomes.
A paired difference (fine-tuned minus zero-shot, on the same pairs) resamples the pairs
jointly, so the pair-to-pair variation the two judges share cancels.

:func:`diagnose` reads the intervals against the metrics' chance values (derived in
:mod:`rlhf_lessons.judges.judge_bias`): *signal* when the agreement's lower bound is above 1/2,
a *position bias* when the position pull's interval excludes 0, *falls for an attack* when the
attack success's lower bound is above 1/2.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from rlhf_lessons.course.results import Results
from rlhf_lessons.course.stats import LEVEL, Interval
from rlhf_lessons.judges.judge_bias import METRICS, Outcomes, SwapRun

Runs = SwapRun | Sequence[SwapRun]  # one judge: one run, or one per seed

#: GPT-4's position pull on MT-Bench: Table 2 has 65% of its pairs consistent and about 30%
#: biased to the first answer (recalled), so about 2 * (0.65 * 1/2 + 0.30) - 1 = 0.25.
GPT4_POSITION_PULL = 0.25


def _indices(rng, n_boot: int, o: Outcomes, pairs: np.ndarray) -> Outcomes:
    seeds = rng.integers(0, o.shape[0], size=(n_boot, o.shape[0]))
    return o.take(seeds, pairs)


def bootstrap(metric: str, runs: Runs, minus: Runs | None = None, n_boot: int = 4000,
              seed: int = 0, level: float = LEVEL) -> Interval:  # fmt: skip
    """Percentile bootstrap interval of ``metric`` for a judge's ``runs`` (pairs and seeds
    resampled), or of its difference with the judge ``minus`` on the same pairs (pairs
    resampled jointly, each judge's seeds separately). ``mean`` is the metric on the data."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose from {sorted(METRICS)}")
    fn = METRICS[metric]
    a = Outcomes.of(runs)
    b = None if minus is None else Outcomes.of(minus)
    if b is not None and b.shape[1] != a.shape[1]:
        raise ValueError(f"a paired difference needs the same pairs, got {a.shape[1]} and "
                         f"{b.shape[1]}")  # fmt: skip
    rng = np.random.default_rng(seed)
    pairs = rng.integers(0, a.shape[1], size=(n_boot, a.shape[1]))
    stats = fn(_indices(rng, n_boot, a, pairs))
    estimate = float(fn(a))
    if b is not None:
        stats = stats - fn(_indices(rng, n_boot, b, pairs))
        estimate -= float(fn(b))
    stats = stats[np.isfinite(stats)]
    if stats.size < n_boot // 2:  # e.g. a ratio whose denominator is empty in most replicates
        return Interval(estimate, float("nan"), float("nan"), a.shape[1], level, "bootstrap")
    low, high = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    what = "paired bootstrap" if b is not None else "bootstrap"
    what += (
        " (pairs x seeds)" if max(a.shape[0], 1 if b is None else b.shape[0]) > 1 else " (pairs)"
    )
    return Interval(estimate, float(low), float(high), a.shape[1], level, what)


@dataclass
class Diagnosis:
    """What the checks found about one judge, with the intervals behind each finding."""

    name: str
    agreement: Interval
    position_pull: Interval
    consistency: Interval
    attacks: dict[str, Interval] = field(default_factory=dict)

    @property
    def has_signal(self) -> bool:
        return self.agreement.above(0.5)

    @property
    def position_biased(self) -> bool:
        return self.position_pull.excludes(0.0)

    def falls_for(self, attack: str) -> bool:
        return self.attacks[attack].above(0.5)

    def flags(self) -> dict[str, bool]:
        """The findings: signal, position bias and each attack, as booleans."""
        out = {"has signal": self.has_signal, "position bias": self.position_biased}
        return out | {f"falls for: {a}": self.falls_for(a) for a in self.attacks}

    def row(self) -> dict[str, object]:
        """One table row: each interval as text, then the findings."""
        ivs = {"agreement": self.agreement, "position pull": self.position_pull,
               "consistency": self.consistency} | {f"success: {a}": iv
                                                   for a, iv in self.attacks.items()}  # fmt: skip
        return {k: f"{v:.2f}" for k, v in ivs.items()} | self.flags()


def diagnose(name: str, runs: Runs, attacks: dict[str, Runs] | None = None,
             seed: int = 0) -> Diagnosis:  # fmt: skip
    """The lesson's checks on one judge: ``runs`` on the held-out pairs (one per seed) and, by
    attack name, its runs on each attack's pairs."""
    ivs = {m: bootstrap(m, runs, seed=seed) for m in ("agreement", "position pull", "consistency")}
    hits = {a: bootstrap("attack success", r, seed=seed) for a, r in (attacks or {}).items()}
    return Diagnosis(name, ivs["agreement"], ivs["position pull"], ivs["consistency"], hits)


def diagnosis_table(diagnoses: Sequence[Diagnosis]) -> pd.DataFrame:
    """One row per judge (:meth:`Diagnosis.row`)."""
    return pd.DataFrame({d.name: d.row() for d in diagnoses}).T


#: Lesson 09's claims: (name, metric, judge, minus judge or None, bar, direction, reason), with
#: ``tuned`` / ``zero`` standing for the fine-tuned and the zero-shot judge's runs.
JUDGE_CLAIMS = (
    ("fine-tuned judge: agreement with the held-out labels above chance",
     "agreement", "tuned", None, 0.5, "above",
     "chance; a judge stuck on one position scores exactly 1/2"),
    ("fine-tuning raises agreement over the zero-shot judge (same pairs)",
     "agreement", "tuned", "zero", 0.0, "above",
     "the lesson needs a judge with more signal than the zero-shot one"),
    ("zero-shot judge: position pull above 0",
     "position pull", "zero", None, 0.0, "above",
     "a judge without position bias scores 0, whatever its accuracy"),
    ("fine-tuning lowers |position pull| below the zero-shot judge's (same pairs)",
     "|position pull|", "tuned", "zero", 0.0, "below",
     "trained on both orders (JudgeLM's swap augmentation), a position cannot lower the loss, "
     "so the fine-tuned judge should be pulled less than the zero-shot one"),
)  # fmt: skip


def judge_claims(results: Results, tuned: Runs, zero: Runs, seed: int = 0) -> None:
    """State lesson 09's claims (:data:`JUDGE_CLAIMS`) in ``results``: the fine-tuned judge
    (``tuned``, one run per seed) and the zero-shot one (``zero``) on the same held-out pairs.
    Each bar is fixed there, with its reason; a judge wired to answer "A" fails three of them,
    a fine-tuned judge with a planted position pull the last (tests/test_judge_checks.py)."""
    judges = {"tuned": tuned, "zero": zero}
    for name, metric, judge, minus, bar, direction, reason in JUDGE_CLAIMS:
        interval = bootstrap(metric, judges[judge], minus=judges.get(minus), seed=seed)
        results.claim(name, interval, bar=bar, direction=direction, reason=reason)
