"""Judges with planted behaviour: the instrument's calibration weights (lesson 09).

Before a lesson measures a judge's biases it must show that its measurements find a bias that
is there, and find none where there is none. These judges are rules, not models, whose
behaviour is known by construction; they have :meth:`Judge.compare`'s signature, so they go
through exactly the code that measures the real judges (:func:`~rlhf_lessons.judges.
judge_bias.judge_both_orders`, :func:`~rlhf_lessons.judges.checks.diagnose`):

- :class:`AlwaysA`: answers "A" whatever it is shown (a judge wired wrong, or a pure position
  detector). Agreement exactly 1/2, position pull 1, consistency 0.
- :class:`InformedJudge`: knows the human ranking of every answer it is shown (agreement 1, no
  position pull); an answer outside the ranking (an attacked copy) is no better than the
  original, so that pair is a tie.
- :class:`PositionPull`: on top of another judge, answers "A" with probability ``pull``
  whatever the answers. On a position-free judge the first-position rate becomes
  ``(1 + pull) / 2``, so the measured pull ``2 * rate - 1`` should recover ``pull``.
- :class:`PrefersLonger`: the answer with more words wins; equal lengths go to the base judge.
  It falls for every "longer" attack and for no "same length" one.
- :class:`PrefersLists`: the answer with list formatting wins when only one has it; otherwise
  the base judge decides. It falls for every list attack and for no prose one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rlhf_lessons.judges.attacks import is_list, word_count
from rlhf_lessons.judges.llm_judge import PairwiseResult, Verdict
from rlhf_lessons.rewards.preference_data import Record


class RuleJudge:
    """A judge that is a rule: :meth:`verdict` decides each pair (:meth:`verdicts` a batch);
    :meth:`compare` has the signature of :meth:`rlhf_lessons.judges.llm_judge.Judge.compare`
    (the prompt config, mode, references and few-shot examples are accepted and ignored: a rule
    reads only the texts)."""

    name = "rule"

    def verdict(self, prompt: str, a: str, b: str) -> Verdict:
        raise NotImplementedError

    def verdicts(self, prompts: Sequence[str], responses_a: Sequence[str],
                 responses_b: Sequence[str]) -> list[Verdict]:  # fmt: skip
        return [self.verdict(*x) for x in zip(prompts, responses_a, responses_b, strict=True)]

    def compare(self, prompts: Sequence[str], responses_a: Sequence[str],
                responses_b: Sequence[str], config=None, mode="rule", references=None,
                few_shot=()) -> PairwiseResult:  # fmt: skip
        del config, mode, references, few_shot
        verdicts = self.verdicts(prompts, responses_a, responses_b)
        return PairwiseResult("rule", verdicts, ["ok"] * len(verdicts))


class AlwaysA(RuleJudge):
    """Answers "A", always."""

    name = "always A"

    def verdict(self, prompt: str, a: str, b: str) -> Verdict:
        return "A"


class InformedJudge(RuleJudge):
    """Knows the ranking: of two ranked answers to a prompt the higher-ranked wins (equal
    ranks tie); a pair with an answer outside the ranking is a tie."""

    name = "informed"

    def __init__(self, records: Sequence[Record]):
        self.rank = {(r["prompt"], answer): i
                     for r in records for i, answer in enumerate(r["ranked_outputs"])}  # fmt: skip

    def verdict(self, prompt: str, a: str, b: str) -> Verdict:
        ra, rb = self.rank.get((prompt, a)), self.rank.get((prompt, b))
        if ra is None or rb is None or ra == rb:
            return "tie"
        return "A" if ra < rb else "B"


class PositionPull(RuleJudge):
    """``base``'s verdict, except that each verdict is "A" with probability ``pull``
    (independently, from a generator seeded with ``seed``; each call draws afresh)."""

    def __init__(self, base: RuleJudge, pull: float, seed: int = 0):
        if not 0 <= pull <= 1:
            raise ValueError(f"pull must be a probability in [0, 1], got {pull}")
        self.base, self.pull = base, pull
        self.rng = np.random.default_rng(seed)
        self.name = f"{base.name} + position pull {pull:g}"

    def verdicts(self, prompts, responses_a, responses_b) -> list[Verdict]:
        base = self.base.verdicts(prompts, responses_a, responses_b)
        pulled = self.rng.random(len(base)) < self.pull
        return ["A" if p else v for p, v in zip(pulled, base, strict=True)]


class _PrefersMore(RuleJudge):
    """The answer with more of ``feature`` wins; equal amounts go to ``base`` (a tie when
    there is none)."""

    label = "more"

    @staticmethod
    def feature(text: str) -> float:
        raise NotImplementedError

    def __init__(self, base: RuleJudge | None = None):
        self.base = base
        self.name = f"prefers {self.label}" + (f" (else {base.name})" if base else "")

    def verdict(self, prompt: str, a: str, b: str) -> Verdict:
        fa, fb = self.feature(a), self.feature(b)
        if fa != fb:
            return "A" if fa > fb else "B"
        return self.base.verdict(prompt, a, b) if self.base else "tie"


class PrefersLonger(_PrefersMore):
    """More words (:func:`~rlhf_lessons.judges.attacks.word_count`) win."""

    label, feature = "longer", staticmethod(word_count)


class PrefersLists(_PrefersMore):
    """List formatting (:func:`~rlhf_lessons.judges.attacks.is_list`) wins over prose."""

    label, feature = "lists", staticmethod(is_list)


#: The lesson's yardstick rule (longer wins, equal lengths tie), under its old name.
LengthJudge = PrefersLonger


def planted_judges(records: Sequence[Record], pull: float = 0.3,
                   seed: int = 0) -> dict[str, RuleJudge]:  # fmt: skip
    """The module doc's five judges over the ranking of ``records`` (rules fall back on the
    informed judge)."""
    informed = InformedJudge(records)
    return {
        "always A": AlwaysA(),
        f"informed + position pull {pull:g}": PositionPull(informed, pull, seed),
        "prefers longer": PrefersLonger(informed),
        "prefers lists": PrefersLists(informed),
        "informed": informed,
    }
