"""Measuring an LLM judge's agreement and biases (lesson 09), on the course's held-out rankings.

Paper: Zheng et al. 2023, "Judging LLM-as-a-Judge with MT-Bench and Chatbot Arena", arXiv
2306.05685, section 3 (position bias: Table 2; verbosity, the "repetitive list" attack:
Table 3; few-shot and reference-guided judges as mitigations). The judge is
:class:`rlhf_lessons.judges.llm_judge.Judge`.

Every pairwise measurement judges each pair **in both orders**: once with the better answer
(by the human ranking) shown first, once shown second. From the 2N verdicts:

- *agreement*: the fraction of the 2N verdicts that pick the human-preferred answer (a tie or
  an unparsable reply counts as not agreeing); *agreement (decided)*: the same among verdicts
  that pick an answer;
- *consistency*: the fraction of pairs whose verdict is the same answer (or a tie) in both
  orders (MT-Bench Table 2); *biased to first / second*: the judge picked whichever answer
  was shown first (second) both times; *error*: a reply did not parse in either order;
- *first-position rate*: among verdicts that pick an answer, the fraction picking answer A.
  The better answer is first in exactly half of them, so an unbiased judge scores 0.5;
- *swap-and-agree* (the paper's mitigation): declare a winner only if both orders agree,
  otherwise a tie; its agreement is the fraction of pairs won by the better answer.
- log-prob judges also give *p(better)*, the soft preference for the better answer, and a
  *swap-averaged* preference, the mean over the two orders, which cancels a constant pull
  toward one position.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
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
    "verbosity attack success": 0.087,
}
PAPER_WEAKER = {"verbosity attack success": 0.913}  # Claude-v1 and GPT-3.5


@dataclass(frozen=True)
class JudgedPair:
    """Two answers to a prompt, ``better`` preferred by the human ranking (or, for the
    verbosity attack, the original answer, with ``worse`` its padded copy)."""

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


_RESTATE = ("In other words,", "To put it another way,", "Put simply,", "That is,")


def sentences(text: str) -> list[str]:
    """Split text after ., ! or ? followed by a space (good enough for the course's answers)."""
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s.strip()]


def repetitive_list(text: str) -> str:
    """The "repetitive list" attack (MT-Bench section 3.3): the answer followed by a numbered
    list that restates its own points with no new information. Sentences of fewer than three
    words ("No.") are not restated; an answer with none left is restated whole."""
    points = [s for s in sentences(text) if len(s.split()) >= 3] or [text.strip()]
    items = [f"{i + 1}. {_RESTATE[i % len(_RESTATE)]} {s}" for i, s in enumerate(points)]
    return text.strip() + "\n\nKey points:\n" + "\n".join(items)


def verbosity_pairs(records: Sequence[Record]) -> list[JudgedPair]:
    """The attack pairs: each record's top answer (``better``) against its padded copy."""
    return [JudgedPair(r["id"], r["category"], r["prompt"], r["ranked_outputs"][0],
                       repetitive_list(r["ranked_outputs"][0])) for r in records]  # fmt: skip


def few_shot_examples(
    records: Sequence[Record],
    config: PairwiseConfig | None = None,
    categories: Sequence[str] = ("factuality", "helpfulness"),
) -> list[tuple[str, str]]:
    """In-context examples for a pairwise judge, from (training) records: the shortest record
    of each category, best against worst, with the correct verdict as the judge's reply. The
    better answer alternates between A and B, so the examples do not teach a position."""
    config = config or PairwiseConfig()
    shots = []
    for i, category in enumerate(categories):
        group = [r for r in records if r["category"] == category]
        if not group:
            raise ValueError(f"no record of category {category!r} for a few-shot example")
        r = min(group, key=lambda r: (len(r["prompt"]) + len(r["ranked_outputs"][0])
                                      + len(r["ranked_outputs"][-1]), r["id"]))  # fmt: skip
        best, worst = r["ranked_outputs"][0], r["ranked_outputs"][-1]
        a, b, verdict = (best, worst, 0) if i % 2 == 0 else (worst, best, 1)
        shots.append((config.format(r["prompt"], a, b), config.verdicts[verdict]))
    return shots


@dataclass
class SwapRun:
    """A judge's verdicts on N pairs in both orders: ``first`` with the better answer shown as
    A, ``second`` with it shown as B."""

    pairs: list[JudgedPair]
    first: PairwiseResult
    second: PairwiseResult

    def picks_better(self) -> tuple[np.ndarray, np.ndarray]:
        """(N,) booleans per order: the verdict chose the better answer."""
        return (np.array([v == "A" for v in self.first.verdicts]),
                np.array([v == "B" for v in self.second.verdicts]))  # fmt: skip

    def picks_worse(self) -> tuple[np.ndarray, np.ndarray]:
        return (np.array([v == "B" for v in self.first.verdicts]),
                np.array([v == "A" for v in self.second.verdicts]))  # fmt: skip

    def p_better(self) -> tuple[np.ndarray, np.ndarray]:
        """(N,) soft preference for the better answer in each order (log-prob mode)."""
        return self.first.p_first, 1.0 - self.second.p_first


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

    def part(s: slice) -> PairwiseResult:
        return PairwiseResult(res.mode, res.verdicts[s], res.reasons[s],
                              None if res.texts is None else res.texts[s],
                              None if res.probs is None else res.probs[s])  # fmt: skip

    return SwapRun(list(pairs), part(slice(0, n)), part(slice(n, 2 * n)))


def position_metrics(run: SwapRun) -> dict[str, float]:
    """Agreement and position-bias measurements of one :class:`SwapRun` (see module doc)."""
    v1, v2 = run.first.verdicts, run.second.verdicts
    good1, good2 = run.picks_better()
    bad1, bad2 = run.picks_worse()
    both_parsed = np.array([x is not None and y is not None for x, y in zip(v1, v2, strict=True)])
    decided = np.concatenate([good1 | bad1, good2 | bad2])
    picks_a = np.array([v == "A" for v in v1 + v2])
    out = {
        "pairs": len(run.pairs),
        "unparsable": float(np.mean([v is None for v in v1 + v2])),
        "agreement": float(np.mean(np.concatenate([good1, good2]))),
        "agreement (decided)": _mean(np.concatenate([good1, good2])[decided]),
        "first-position rate": _mean(picks_a[decided]),
        "consistency": float(np.mean((good1 & good2) | (bad1 & bad2)
                                     | np.array([x == y == "tie" for x, y in zip(v1, v2,
                                                                                 strict=True)]))),
        "biased to first": float(np.mean([x == "A" and y == "A" for x, y in zip(v1, v2,
                                                                               strict=True)])),
        "biased to second": float(np.mean([x == "B" and y == "B" for x, y in zip(v1, v2,
                                                                                strict=True)])),
        "error": float(np.mean(~both_parsed)),
        "swap-and-agree agreement": float(np.mean(good1 & good2)),
        "swap-and-agree ties": float(np.mean(~(good1 & good2) & ~(bad1 & bad2))),
    }  # fmt: skip
    if run.first.probs is not None:
        p1, p2 = run.p_better()
        out["mean p(better)"] = float(np.mean(np.concatenate([p1, p2])))
        out["swap-averaged agreement"] = float(np.mean((p1 + p2) / 2 > 0.5))
    return out


def verbosity_metrics(run: SwapRun) -> dict[str, float]:
    """The repetitive-list attack on a :class:`SwapRun` of :func:`verbosity_pairs`: it
    succeeds when the judge prefers the padded answer (``worse``); a tie is not a success."""
    bad1, bad2 = run.picks_worse()
    out = {
        "pairs": len(run.pairs),
        "verbosity attack success": float(np.mean(np.concatenate([bad1, bad2]))),
        "attack success, swap-and-agree": float(np.mean(bad1 & bad2)),
        "unparsable": float(np.mean([v is None for v in run.first.verdicts
                                     + run.second.verdicts])),
    }  # fmt: skip
    if run.first.probs is not None:
        p1, p2 = run.p_better()
        out["attack success, swap-averaged"] = float(np.mean((p1 + p2) / 2 < 0.5))
    return out


def grading_metrics(better: np.ndarray, worse: np.ndarray) -> dict[str, float]:
    """Single-answer grades of N pairs as a pairwise judge: it agrees when the better answer
    gets the higher score; equal scores are ties; a NaN (unparsable) grade is an error."""
    better, worse = np.asarray(better, dtype=float), np.asarray(worse, dtype=float)
    if better.shape != worse.shape or better.ndim != 1:
        raise ValueError(f"better and worse must be equal-length 1-D, got {better.shape}, "
                         f"{worse.shape}")  # fmt: skip
    valid = ~np.isnan(better) & ~np.isnan(worse)
    return {
        "pairs": len(better),
        "agreement": float(np.mean(valid & (better > worse))),
        "agreement (decided)": _mean((better > worse)[valid & (better != worse)]),
        "ties": float(np.mean(valid & (better == worse))),
        "error": float(np.mean(~valid)),
    }


def bias_table(rows: dict[str, dict[str, float]], columns: Sequence[str] | None = None,
               paper: bool = True) -> pd.DataFrame:  # fmt: skip
    """One row per judge setting, plus the paper's GPT-4 row (NaN where it has no number)."""
    table = pd.DataFrame.from_dict(rows, orient="index")
    if paper:
        gpt4 = {k: v for k, v in PAPER_GPT4.items() if k != "consistency, few-shot"}
        table.loc["GPT-4, MT-Bench paper"] = pd.Series(gpt4)
        table.loc["GPT-4, MT-Bench paper, few-shot"] = pd.Series(
            {"consistency": PAPER_GPT4["consistency, few-shot"]}
        )
    if columns is not None:
        table = table.reindex(columns=list(columns))
    return table


def _mean(x: np.ndarray) -> float:
    return float(np.mean(x)) if len(x) else float("nan")


class LengthJudge:
    """A rule, not a model, with :meth:`Judge.compare`'s signature: the answer with more words
    wins, equal lengths tie. A yardstick for the measurements: it has no position bias at all
    and falls for every verbosity attack."""

    def compare(self, prompts, responses_a, responses_b, config=None, mode="text",
                references=None, few_shot=()) -> PairwiseResult:  # fmt: skip
        del prompts, config, mode, references, few_shot  # a rule reads only the answers
        verdicts = []
        for a, b in zip(responses_a, responses_b, strict=True):
            na, nb = len(a.split()), len(b.split())
            verdicts.append("A" if na > nb else "B" if nb > na else "tie")
        return PairwiseResult("rule", verdicts, ["ok"] * len(verdicts))
