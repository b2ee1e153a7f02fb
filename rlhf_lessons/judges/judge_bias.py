"""Measuring an LLM judge's agreement and biases (lesson 09), on the course's held-out rankings.

Paper: Zheng et al. 2023, "Judging LLM-as-a-Judge with MT-Bench and Chatbot Arena", arXiv
2306.05685, section 3 (position bias: Table 2; verbosity: Table 3; few-shot and
reference-guided judges as mitigations). The judges are :class:`rlhf_lessons.judges.llm_judge.
Judge` and the planted rules of :mod:`rlhf_lessons.judges.planted`.

Every pairwise measurement judges each pair **in both orders**: once with the better answer
(by the human ranking; for an attack, the original answer) shown first, once shown second.
The verdicts become :class:`Outcomes`, arrays (seeds S, pairs N, orders 2), and every metric
is one function of them (:data:`METRICS`), the same for a point estimate and for each
bootstrap replicate of its interval (:mod:`rlhf_lessons.judges.checks`):

- *agreement*: the fraction of the 2N verdicts that pick the better answer (a tie or an
  unparsable reply counts as not agreeing); *agreement (decided)*: among verdicts that pick an
  answer. A judge stuck on one position scores exactly 1/2.
- *first-position rate*: among verdicts that pick an answer, the fraction picking answer A. The
  better answer is first in exactly half of them, so a judge with no position bias scores 1/2
  whatever its accuracy; *position pull* = 2 * rate - 1, from -1 (always the second) through
  0 to 1 (always the first). A judge that answers "A" with probability q on top of a
  position-free one has a pull of q.
- *consistency*: the fraction of pairs whose verdict is the same answer (or a tie) in both
  orders (MT-Bench Table 2); *biased to first / second*: the judge picked whichever answer
  was shown first (second) both times; *error*: a reply did not parse in either order;
- *swap-and-agree* (the paper's mitigation): declare a winner only if both orders agree,
  otherwise a tie; its agreement is the fraction of pairs won by the better answer.
- log-prob judges also give *p(better)*, the soft preference for the better answer, and the
  *swap-averaged* preference, its mean over the two orders, which cancels a constant pull
  toward one position; *swap-averaged agreement* is the fraction of pairs where it is > 1/2.
- an attack pair's *attack success* is the fraction of verdicts that pick the attacked copy
  (``worse``); a tie is not a success. A judge indifferent to the attack, or one that only
  follows position, scores 1/2 at most.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from rlhf_lessons.judges.llm_judge import FewShot, Judge, Mode, PairwiseConfig, PairwiseResult
from rlhf_lessons.rewards.preference_data import Record

# The paper's GPT-4 numbers (fact sheet, section 9), beside ours in the table. "recalled" ones
# are marked so in the notebook.
PAPER_GPT4 = {
    "agreement (decided)": 0.85,  # with human experts, ties excluded (humans among themselves 0.81)
    "consistency": 0.650,
    "consistency, few-shot": 0.775,
    "biased to first": 0.30,  # recalled, approximate
    "attack success": 0.087,  # the repetitive-list attack (longer and a list at once)
}


@dataclass(frozen=True)
class JudgedPair:
    """Two answers to a prompt, ``better`` preferred by the human ranking (or, for an attack,
    the original answer, with ``worse`` its attacked copy)."""

    id: str
    category: str
    prompt: str
    better: str
    worse: str
    reference: str | None = None


def select_records(records: Sequence[Record], per_category: int) -> list[Record]:
    """The first ``per_category`` records of each category, by id: a fixed, balanced subset."""
    if per_category < 1:
        raise ValueError(f"per_category must be >= 1, got {per_category}")
    out = []
    for category in sorted({r["category"] for r in records}):
        group = sorted((r for r in records if r["category"] == category), key=lambda r: r["id"])
        out += group[:per_category]
    return out


def best_worst_pairs(records: Sequence[Record]) -> list[JudgedPair]:
    """One pair per record: the top-ranked answer against the bottom-ranked one."""
    return [JudgedPair(r["id"], r["category"], r["prompt"], r["ranked_outputs"][0],
                       r["ranked_outputs"][-1]) for r in records]  # fmt: skip


def reference_pairs(records: Sequence[Record]) -> list[JudgedPair]:
    """Pairs for reference-guided judging: in rankings of K >= 3, the 2nd answer against the
    last, with the top answer as the reference (so the reference is never one of the two
    answers being judged). Records with K = 2 are skipped."""
    return [JudgedPair(r["id"], r["category"], r["prompt"], r["ranked_outputs"][1],
                       r["ranked_outputs"][-1], reference=r["ranked_outputs"][0])
            for r in records if len(r["ranked_outputs"]) >= 3]  # fmt: skip


@dataclass
class SwapRun:
    """A judge's verdicts on N pairs in both orders: ``first`` with the better answer shown as
    A, ``second`` with it shown as B."""

    pairs: list[JudgedPair]
    first: PairwiseResult
    second: PairwiseResult


def judge_both_orders(
    judge: Judge,
    pairs: Sequence[JudgedPair],
    config: PairwiseConfig | None = None,
    mode: Mode = "logprob",
    few_shot: FewShot = (),
    use_reference: bool = False,
) -> SwapRun:
    """Judge every pair with the better answer first and then second (one batched call)."""
    if not pairs:
        raise ValueError("pairs is empty")
    if use_reference and any(p.reference is None for p in pairs):
        raise ValueError("use_reference=True needs pairs with a reference (reference_pairs())")
    n = len(pairs)
    prompts = [p.prompt for p in pairs] * 2
    a = [p.better for p in pairs] + [p.worse for p in pairs]
    b = [p.worse for p in pairs] + [p.better for p in pairs]
    refs = [p.reference for p in pairs] * 2 if use_reference else None
    res = judge.compare(prompts, a, b, config, mode=mode, references=refs, few_shot=few_shot)
    return SwapRun(list(pairs), _part(res, slice(0, n)), _part(res, slice(n, 2 * n)))


def _part(res: PairwiseResult, s: slice) -> PairwiseResult:
    return PairwiseResult(res.mode, res.verdicts[s], res.reasons[s],
                          None if res.texts is None else res.texts[s],
                          None if res.probs is None else res.probs[s])  # fmt: skip


def judge_sets(judge: Judge, sets: Mapping[str, Sequence[JudgedPair]],
               **kwargs) -> dict[str, SwapRun]:  # fmt: skip
    """:func:`judge_both_orders` on several named sets of pairs in ONE batched call, split
    back by set. The same verdicts as one call per set; a judge that reads shared beginnings
    once (:class:`~rlhf_lessons.judges.frozen_bottom.CachedJudge`) then also shares them
    across sets (a held-out pair and the attacks on its better answer start alike)."""
    if not sets or any(not ps for ps in sets.values()):
        raise ValueError("sets must map names to non-empty lists of pairs")
    run = judge_both_orders(judge, [p for ps in sets.values() for p in ps], **kwargs)
    out, start = {}, 0
    for name, ps in sets.items():
        s = slice(start, start + len(ps))
        out[name] = SwapRun(list(ps), _part(run.first, s), _part(run.second, s))
        start += len(ps)
    return out


# --- outcomes and metrics ---------------------------------------------------------------------


@dataclass(frozen=True)
class Outcomes:
    """The verdicts of one judge (one run per seed) on the same N pairs in both orders, as
    boolean arrays of shape (..., S, N, 2): order 0 shows the better answer as A, order 1 as B.
    Leading axes, if any, index bootstrap replicates (:meth:`take`).

    ``better`` / ``worse``: the verdict picked that answer; ``tie``; ``first``: it picked
    answer A; ``parsed``: the reply had a verdict; ``p_better`` (floats, or None for judges
    without probabilities): the soft preference for the better answer.
    """

    better: np.ndarray
    worse: np.ndarray
    tie: np.ndarray
    first: np.ndarray
    parsed: np.ndarray
    p_better: np.ndarray | None = None

    @classmethod
    def of(cls, runs: SwapRun | Sequence[SwapRun]) -> Outcomes:
        """Stack the runs (seeds) of one judge; every run must judge the same pairs."""
        runs = [runs] if isinstance(runs, SwapRun) else list(runs)
        if not runs:
            raise ValueError("runs is empty")
        if any([p.id for p in r.pairs] != [p.id for p in runs[0].pairs] for r in runs):
            raise ValueError("every run of a judge must judge the same pairs, in the same order")
        v = np.array([[r.first.verdicts, r.second.verdicts] for r in runs], dtype=object)
        v = v.transpose(0, 2, 1)  # (S, N, 2)
        better = np.stack([v[..., 0] == "A", v[..., 1] == "B"], -1)
        worse = np.stack([v[..., 0] == "B", v[..., 1] == "A"], -1)
        p = None  # the soft preference for the better answer in each order (log-prob mode)
        if all(r.first.probs is not None for r in runs):
            p = [np.stack([r.first.p_first, 1.0 - r.second.p_first], -1) for r in runs]
            p = np.array(p, dtype=float)
        return cls(better, worse, v == "tie", v == "A", v != None, p)  # noqa: E711 (elementwise)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.better.shape

    def take(self, seeds: np.ndarray, pairs: np.ndarray) -> Outcomes:
        """Resampled outcomes: ``seeds`` (B, S') and ``pairs`` (B, N') integer indices give
        arrays (B, S', N', 2), one bootstrap replicate per row."""
        ix = (seeds[:, :, None], pairs[:, None, :])
        return Outcomes(*(None if a is None else a[ix] for a in vars(self).values()))


_ALL = (-3, -2, -1)  # seeds, pairs, orders
_PAIRS = (-2, -1)  # seeds, pairs (after combining the two orders)


def _ratio(hits: np.ndarray, of: np.ndarray) -> np.ndarray:
    """Per seed, the fraction of the ``of`` verdicts that are ``hits``; (..., S)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return (hits & of).sum((-2, -1)) / of.sum((-2, -1))


def _pull(o: Outcomes) -> np.ndarray:
    """Per seed, the position pull 2 * (first-position rate) - 1; (..., S)."""
    return 2 * _ratio(o.first, o.better | o.worse) - 1


def _both(x: np.ndarray) -> np.ndarray:
    return x[..., 0] & x[..., 1]


def _soft(o: Outcomes) -> np.ndarray:
    """The swap-averaged preference for the better answer, (..., S, N)."""
    if o.p_better is None:
        raise ValueError("soft metrics need a log-prob judge (probabilities of the verdicts)")
    return o.p_better.mean(-1)


#: Every metric as a function of :class:`Outcomes` (reducing the last three axes). Ratios are
#: taken per seed and then averaged over seeds.
METRICS: dict[str, Callable[[Outcomes], np.ndarray]] = {
    "unparsable": lambda o: (~o.parsed).mean(_ALL),
    "agreement": lambda o: o.better.mean(_ALL),
    "agreement (decided)": lambda o: _ratio(o.better, o.better | o.worse).mean(-1),
    "first-position rate": lambda o: _ratio(o.first, o.better | o.worse).mean(-1),
    "position pull": lambda o: _pull(o).mean(-1),
    "|position pull|": lambda o: np.abs(_pull(o)).mean(-1),  # seeds pulled apart do not cancel
    "consistency": lambda o: (_both(o.better) | _both(o.worse) | _both(o.tie)).mean(_PAIRS),
    "biased to first": lambda o: _both(o.first).mean(_PAIRS),
    "biased to second": lambda o: _both((o.better | o.worse) & ~o.first).mean(_PAIRS),
    "error": lambda o: (~_both(o.parsed)).mean(_PAIRS),
    "swap-and-agree agreement": lambda o: _both(o.better).mean(_PAIRS),
    "swap-and-agree ties": lambda o: 1 - (_both(o.better) | _both(o.worse)).mean(_PAIRS),
    "mean p(better)": lambda o: _soft(o).mean(_PAIRS),
    "swap-averaged agreement": lambda o: (_soft(o) > 0.5).mean(_PAIRS),
    # attacks: "worse" is the attacked copy
    "attack success": lambda o: o.worse.mean(_ALL),
    "attack success, swap-and-agree": lambda o: _both(o.worse).mean(_PAIRS),
    "attack success, swap-averaged": lambda o: (_soft(o) < 0.5).mean(_PAIRS),
}
POSITION_METRICS = ("unparsable", "agreement", "agreement (decided)", "first-position rate",
                    "position pull", "consistency", "biased to first", "biased to second",
                    "error", "swap-and-agree agreement", "swap-and-agree ties", "mean p(better)",
                    "swap-averaged agreement")  # fmt: skip
ATTACK_METRICS = ("unparsable", "attack success", "attack success, swap-and-agree",
                  "attack success, swap-averaged")  # fmt: skip


#: The metrics that need the judge's probabilities (log-prob mode).
SOFT_METRICS = ("mean p(better)", "swap-averaged agreement", "attack success, swap-averaged")


def _metrics(runs: SwapRun | Sequence[SwapRun], names: Sequence[str]) -> dict[str, float]:
    o = Outcomes.of(runs)
    names = [n for n in names if o.p_better is not None or n not in SOFT_METRICS]
    return {"pairs": o.shape[-2]} | {n: float(METRICS[n](o)) for n in names}


def position_metrics(runs: SwapRun | Sequence[SwapRun]) -> dict[str, float]:
    """Agreement and position-bias measurements (see the module doc) of one judge's run, or
    the mean over its runs (seeds). The soft metrics only for log-prob judges."""
    return _metrics(runs, POSITION_METRICS)


def attack_metrics(runs: SwapRun | Sequence[SwapRun]) -> dict[str, float]:
    """An attack's success on a run of :func:`~rlhf_lessons.judges.attacks.attack_pairs`: the
    judge prefers the attacked copy (``worse``); a tie is not a success."""
    return _metrics(runs, ATTACK_METRICS)


def bias_table(
    rows: dict[str, dict[str, float]], columns: Sequence[str] | None = None
) -> pd.DataFrame:
    """One row per judge setting, plus the paper's GPT-4 row (NaN where it has no number)."""
    table = pd.DataFrame.from_dict(rows, orient="index")
    gpt4 = {k: v for k, v in PAPER_GPT4.items() if k != "consistency, few-shot"}
    table.loc["GPT-4, MT-Bench paper"] = pd.Series(gpt4)
    few_shot = {"consistency": PAPER_GPT4["consistency, few-shot"]}
    table.loc["GPT-4, MT-Bench paper, few-shot"] = pd.Series(few_shot)
    if columns is not None:
        table = table.reindex(columns=list(columns))
    return table
