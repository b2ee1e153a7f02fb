"""A judge's verdicts in both orders -> preference pairs (lessons 09-10 as one helper).

An LLM judge shown two answers prefers one *position* more often than chance (Zheng et al.
2023, "Judging LLM-as-a-Judge with MT-Bench and Chatbot Arena", arXiv 2306.05685, section 3.3;
lesson 09 measures it). The paper's remedy is to ask twice, with the answers swapped, and to
declare a winner only when both verdicts name the same *answer*. A judge that always says
"A" then never produces a pair, instead of producing a pair for every position it likes.

For each candidate pair (a, b) of a prompt the judge gives two verdicts:

- ``ab``: a shown first (as A), b second: "A" means a is better;
- ``ba``: b shown first, a second: "A" means b is better.

======================  ===========================  ==========================================
``ab``                  ``ba``                       outcome
======================  ===========================  ==========================================
"A"                     "B"                          ``a``: a pair, a chosen
"B"                     "A"                          ``b``: a pair, b chosen
"A" / "B"               "A" / "B" (same slot)        ``position``: the slot won, dropped
"tie"                   "tie"                        ``tie``: dropped
"tie" and a winner                                   ``half tie``: dropped
None (unparsable)       anything                     ``unparsed``: dropped
======================  ===========================  ==========================================

:func:`verdict_pairs` turns the two lists of verdicts into TRL's preference records
``{"prompt", "chosen", "rejected"}`` (kept pairs only) and reports what share was kept and why
the rest was not; :func:`judge_pairs` asks a :class:`~rlhf_lessons.judges.llm_judge.Judge` for
both orders in one batched call first. The kept pairs feed :func:`rlhf_lessons.alignment.dpo.
train_dpo` (or a reward model) as they are; a low kept share says the judge is mostly voting
for a position, and that the pairs it did keep are few, not that they are wrong.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

VERDICT_VALUES = ("A", "B", "tie", None)
OUTCOMES = ("a", "b", "position", "tie", "half tie", "unparsed")
KEPT = ("a", "b")


def outcome(ab: str | None, ba: str | None) -> str:
    """The outcome of one pair from its two verdicts (see the module's table)."""
    if ab is None or ba is None:
        return "unparsed"
    if ab == "tie" and ba == "tie":
        return "tie"
    if "tie" in (ab, ba):
        return "half tie"
    if ab == ba:
        return "position"
    return "a" if ab == "A" else "b"


@dataclass
class VerdictPairs:
    """The preference pairs kept from both-orders verdicts, and what happened to the rest.

    ``pairs``: ``{"prompt", "chosen", "rejected", **extra, "pair_index": i}`` for every kept
    pair, ``i`` its position in the input; ``outcomes``: one of :data:`OUTCOMES` per input pair;
    ``position_slot``: of the ``position`` outcomes, how many went to the first and to the
    second slot (which way the judge leans)."""

    pairs: list[dict[str, Any]]
    outcomes: list[str]
    position_slot: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return len(self.outcomes)

    @property
    def kept(self) -> int:
        return len(self.pairs)

    @property
    def kept_share(self) -> float:
        """Kept pairs / judged pairs."""
        return self.kept / self.total if self.total else float("nan")

    @property
    def counts(self) -> dict[str, int]:
        """Pairs per outcome, every outcome listed (0 when none)."""
        found = Counter(self.outcomes)
        return {o: found.get(o, 0) for o in OUTCOMES}

    def summary(self) -> str:
        """One line: the kept share and why the others were dropped."""
        c = self.counts
        dropped = ", ".join(f"{c[o]} {o}" for o in OUTCOMES if o not in KEPT and c[o])
        lean = ""
        if c["position"]:
            lean = (f" (position: {self.position_slot.get('first', 0)} first slot, "
                    f"{self.position_slot.get('second', 0)} second)")  # fmt: skip
        return (f"kept {self.kept} of {self.total} pairs ({self.kept_share:.0%}) on which both "
                f"orders agree" + (f"; dropped {dropped}{lean}" if dropped else ""))  # fmt: skip


def _check(name: str, values: Sequence, n: int) -> list:
    if isinstance(values, str | Mapping):
        raise TypeError(f"{name} must be a list (one entry per pair), got {type(values).__name__}")
    values = list(values)
    if len(values) != n:
        raise ValueError(f"{name} has {len(values)} entries but there are {n} prompts")
    return values


def verdict_pairs(
    prompts: Sequence[Any],
    responses_a: Sequence[Any],
    responses_b: Sequence[Any],
    ab: Sequence[str | None],
    ba: Sequence[str | None],
    extra: Sequence[Mapping[str, Any]] | None = None,
) -> VerdictPairs:
    """Preference pairs from a judge's verdicts in both orders, agreeing verdicts only.

    One entry per candidate pair in each argument: ``prompts`` and the two responses (text or
    chat messages, kept as given); ``ab`` the verdicts with ``responses_a`` shown first, ``ba``
    with ``responses_b`` first (``"A"``, ``"B"``, ``"tie"`` or None for unparsable, as in
    :class:`~rlhf_lessons.judges.llm_judge.PairwiseResult`); ``extra`` optional keys to copy
    into each kept record (ids, categories, ...).
    """
    prompts = list(prompts)
    n = len(prompts)
    if not n:
        raise ValueError("prompts is empty: there are no pairs to turn into preferences")
    a, b = _check("responses_a", responses_a, n), _check("responses_b", responses_b, n)
    ab, ba = _check("ab", ab, n), _check("ba", ba, n)
    extra = _check("extra", extra, n) if extra is not None else [{}] * n
    for name, verdicts in (("ab", ab), ("ba", ba)):
        bad = next((v for v in verdicts if v not in VERDICT_VALUES), "ok")
        if bad != "ok":
            raise ValueError(
                f"{name} holds the verdict {bad!r}; verdicts are 'A', 'B', 'tie' or None "
                "(unparsable): map the judge's own labels (e.g. '[[C]]') to these first"
            )
    outcomes, pairs, slot = [], [], Counter()
    for i in range(n):
        o = outcome(ab[i], ba[i])
        outcomes.append(o)
        if o == "position":
            slot["first" if ab[i] == "A" else "second"] += 1
        if o in KEPT:
            chosen, rejected = (a[i], b[i]) if o == "a" else (b[i], a[i])
            pairs.append({"prompt": prompts[i], "chosen": chosen, "rejected": rejected,
                          **extra[i], "pair_index": i})  # fmt: skip
    return VerdictPairs(pairs, outcomes, dict(slot))


def judge_pairs(
    judge,
    prompts: Sequence[str],
    responses_a: Sequence[str],
    responses_b: Sequence[str],
    config=None,
    mode: str = "logprob",
    references: Sequence[str] | None = None,
    few_shot: Sequence[tuple[str, str]] = (),
    extra: Sequence[Mapping[str, Any]] | None = None,
) -> VerdictPairs:
    """Ask ``judge`` (a :class:`~rlhf_lessons.judges.llm_judge.Judge`, or anything with its
    ``compare``) about every pair in both orders, in one batched call, and keep the pairs on
    which the two verdicts agree (:func:`verdict_pairs`)."""
    prompts = list(prompts)
    n = len(prompts)
    a, b = _check("responses_a", responses_a, n), _check("responses_b", responses_b, n)
    refs = None if references is None else _check("references", references, n) * 2
    result = judge.compare(prompts * 2, a + b, b + a, config, mode=mode, references=refs,
                           few_shot=few_shot)  # fmt: skip
    verdicts = list(result.verdicts)
    if len(verdicts) != 2 * n:
        raise ValueError(f"the judge returned {len(verdicts)} verdicts for {2 * n} questions")
    return verdict_pairs(prompts, a, b, verdicts[:n], verdicts[n:], extra)
