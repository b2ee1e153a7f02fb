"""Judge prompts, and how to read a verdict or a score out of a judge's reply (lesson 09).

Papers: Zheng et al. 2023, "Judging LLM-as-a-Judge with MT-Bench and Chatbot Arena", arXiv
2306.05685 (pairwise verdicts ``[[A]]`` / ``[[B]]`` / ``[[C]]``, single-answer grading
``[[rating]]``, reference-guided judging); Yuan et al. 2024, "Self-Rewarding Language Models",
arXiv 2401.10020 (the additive 5-point prompt ending in ``Score: <points>``).

:class:`PairwiseConfig` (a pairwise template and its verdicts) goes with
:func:`parse_verdict`, :class:`RewardPromptConfig` (a grading template and its score pattern)
with :func:`parse_score`; lesson 10 reuses both. A reply that does not contain a verdict or
score is reported as unparsable with its reason, never silently turned into a score or a tie.
"""

from __future__ import annotations

import math
import os
import re
import string
from dataclasses import dataclass
from typing import Literal

# --- prompt templates (our wording; the formats follow the papers) --------------------------

PAIRWISE_TEMPLATE = (
    "Which of two answers to a question is better: more helpful, correct and to the point? "
    "Do not let their order or length decide.\n\n"
    "Question: {prompt}\n\n"
    "Answer A: {response_a}\n\n"
    "Answer B: {response_b}\n\n"
    "Reply [[A]] if A is better, [[B]] if B is better, or [[C]] for a tie."
)

#: The same prompt with the reply instruction first, as MT-Bench's judge prompt has it (its
#: system prompt holds every instruction; the answers end the prompt). Every judge prompt then
#: starts with the same instructions, so a judge that reads shared beginnings once
#: (:class:`~rlhf_lessons.judges.frozen_bottom.LayerCache`) reads them once in all, and only
#: the question and the answers are new in each prompt (lesson 09 uses it).
PAIRWISE_INSTRUCTIONS_FIRST = (
    "Which of two answers to a question is better: more helpful, correct and to the point? "
    "Do not let their order or length decide. "
    "Reply [[A]] if A is better, [[B]] if B is better, or [[C]] for a tie.\n\n"
    "Question: {prompt}\n\n"
    "Answer A: {response_a}\n\n"
    "Answer B: {response_b}"
)

PAIRWISE_REFERENCE_TEMPLATE = (
    "Which of two answers to a question is better: more helpful, correct and to the point? "
    "Compare both with the correct reference answer. Do not let their order or length "
    "decide.\n\n"
    "Question: {prompt}\n\n"
    "Reference answer: {reference}\n\n"
    "Answer A: {response_a}\n\n"
    "Answer B: {response_b}\n\n"
    "Reply [[A]] if A is better, [[B]] if B is better, or [[C]] for a tie."
)

SINGLE_TEMPLATE = (
    "Rate the answer to the user's question below for helpfulness, accuracy and relevance, "
    "on a scale from 1 (useless) to 10 (excellent).\n\n"
    "Question: {prompt}\n\n"
    "Answer: {response}\n\n"
    "Give your rating in the format [[rating]], for example [[6]]."
)

# The self-rewarding paper's additive rubric (points for: relevant; covers much of the
# question; answers its basic elements usefully; direct, complete, well organised; expert and
# without extraneous text), in our words, ending in "Score: <points>".
ADDITIVE_TEMPLATE = (
    "Review the user's question and the response below, and score the response with this "
    "additive 5-point system:\n"
    "- Add 1 point if the response is relevant and gives some information related to the "
    "question, even if incomplete.\n"
    "- Add 1 more point if it addresses a large part of the question but does not fully "
    "answer it.\n"
    "- Add a third point if it answers the basic elements of the question in a useful way.\n"
    "- Add a fourth point if it answers the question directly and completely, and is clear "
    "and well organised.\n"
    "- Add a fifth point if it is expert, precise and perfectly tailored to the question, "
    "with nothing unnecessary.\n\n"
    "User: {prompt}\n"
    "<response>{response}</response>\n\n"
    'Briefly justify your total, then end with the line "Score: <total points>".'
)


def _check_template(template: str, required: set[str], what: str) -> bool:
    """Validate a template's fields; return whether it uses ``{reference}``."""
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as err:
        raise ValueError(
            f"template is not a valid format string ({err}); write literal braces as {{{{ }}}}"
        ) from err
    allowed = required | {"reference"}
    if not required <= fields:
        raise ValueError(
            f"{what} template must contain {sorted('{' + f + '}' for f in required)}; "
            f"it is missing {sorted('{' + f + '}' for f in required - fields)}"
        )
    if fields - allowed:
        raise ValueError(
            f"{what} template has unknown fields {sorted(fields - allowed)}; allowed are "
            f"{sorted(allowed)} (write literal braces as {{{{ and }}}})"
        )
    return "reference" in fields


def _reference(reference: str | None, uses_reference: bool, what: str) -> dict:
    if uses_reference and reference is None:
        raise ValueError(f"the {what} template uses {{reference}}: pass references=[...]")
    if reference is not None and not uses_reference:
        raise ValueError(
            f"a reference was given but the {what} template has no {{reference}} field: use a "
            "reference-guided template (e.g. PAIRWISE_REFERENCE_TEMPLATE) or drop references"
        )
    return {"reference": reference} if uses_reference else {}


# --- score parsing ----------------------------------------------------------------------------

_NUMBER_TOKEN = r"[^\s\[\]()<>]+"  # whatever sits in the slot; float() decides if it is a number


@dataclass(frozen=True)
class RewardPromptConfig:
    """A grading prompt and how to read the score out of the judge's reply.

    ``template`` uses ``{prompt}`` and ``{response}`` (and optionally ``{reference}``);
    ``score_pattern`` is literal text with one ``{reward}`` slot, e.g. ``"Score: {reward}"``
    (self-rewarding) or ``"[[{reward}]]"`` (MT-Bench). A space in the pattern matches any
    whitespace, including none. Scores must lie in ``[min_score, max_score]``; ``integer``
    says the scale has integer points (used by the log-prob mode, which scores the options
    ``min_score, ..., max_score``).
    """

    template: str = ADDITIVE_TEMPLATE
    score_pattern: str = "Score: {reward}"
    min_score: float = 0
    max_score: float = 5
    integer: bool = True

    def __post_init__(self):
        self.uses_reference  # noqa: B018 (validates the template)
        if self.score_pattern.count("{reward}") != 1:
            raise ValueError(
                f"score_pattern must contain the slot {{reward}} exactly once, got "
                f"{self.score_pattern!r} (e.g. 'Score: {{reward}}' or '[[{{reward}}]]')"
            )
        if not self.min_score < self.max_score:
            raise ValueError(f"min_score {self.min_score} must be < max_score {self.max_score}")

    @property
    def uses_reference(self) -> bool:
        return _check_template(self.template, {"prompt", "response"}, "grading")

    def format(self, prompt: str, response: str, reference: str | None = None) -> str:
        extra = _reference(reference, self.uses_reference, "grading")
        return self.template.format(prompt=prompt, response=response, **extra)

    @property
    def regex(self) -> re.Pattern:
        before, after = self.score_pattern.split("{reward}")

        def lit(s: str) -> str:  # literal text; a run of spaces matches any whitespace
            return r"\s*".join(re.escape(part) for part in re.split(r" +", s))

        # greedy: the slot takes the whole run of non-space text ("4.5", "4/5"), giving back
        # only what the pattern's ending needs ("[[7]]" -> "7")
        return re.compile(lit(before) + f"({_NUMBER_TOKEN})" + lit(after))

    @property
    def answer_prefix(self) -> str:
        """The reply text before the score (``"Score: "``), where the log-prob mode reads it."""
        return self.score_pattern.split("{reward}")[0]

    def choices(self) -> list[int]:
        """The integer scores the log-prob mode puts probability on."""
        if not self.integer:
            raise ValueError("the log-prob mode needs an integer scale: set integer=True")
        return list(range(math.ceil(self.min_score), math.floor(self.max_score) + 1))


# Ready-made configurations of the papers' prompts.
ADDITIVE_5_POINT = RewardPromptConfig(ADDITIVE_TEMPLATE, "Score: {reward}", 0, 5)
SINGLE_1_TO_10 = RewardPromptConfig(SINGLE_TEMPLATE, "[[{reward}]]", 1, 10)


@dataclass(frozen=True)
class ParsedScore:
    """A parsed score: ``value`` is None unless ``reason == "ok"``; ``found`` is the text that
    sat in the ``{reward}`` slot (if the pattern matched at all)."""

    value: float | None
    reason: str
    found: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason == "ok"


def parse_score(text: str, config: RewardPromptConfig) -> ParsedScore:
    """Read the score out of a judge's reply, or say why there is none.

    Reasons: ``"ok"``; ``"no score"`` (the pattern does not occur); ``"not a number"`` (the
    slot holds e.g. ``five``, ``4/5`` or ``nan``); ``"out of range"`` (outside
    ``[min_score, max_score]``); ``"ambiguous"`` (the pattern occurs with different numbers;
    repeating the same number is fine).
    """
    found = [m.group(1) for m in config.regex.finditer(text)]
    if not found:
        return ParsedScore(None, "no score")
    values = []
    for raw in found:
        try:
            value = float(raw.rstrip(".,;:!"))  # "Score: 4." ends a sentence
        except ValueError:
            value = math.nan
        if not math.isfinite(value):  # float() also accepts "nan" and "inf"
            return ParsedScore(None, "not a number", raw)
        values.append(value)
    if len(set(values)) > 1:
        return ParsedScore(None, "ambiguous", ", ".join(found))
    value = values[0]
    if not config.min_score <= value <= config.max_score:
        return ParsedScore(None, "out of range", found[0])
    return ParsedScore(value, "ok", found[0])


# --- pairwise verdicts --------------------------------------------------------------------------

Verdict = Literal["A", "B", "tie"]
VERDICTS: tuple[str, str, str] = ("A", "B", "tie")


@dataclass(frozen=True)
class PairwiseConfig:
    """A pairwise prompt and its three verdict strings (A better, B better, tie).

    The template uses ``{prompt}``, ``{response_a}``, ``{response_b}`` (and optionally
    ``{reference}``). The log-prob mode reads the options where the verdicts differ
    (:meth:`split_verdicts`): a shared ending such as ``]]`` carries no preference.
    """

    template: str = PAIRWISE_TEMPLATE
    verdicts: tuple[str, str, str] = ("[[A]]", "[[B]]", "[[C]]")

    def __post_init__(self):
        self.uses_reference  # noqa: B018 (validates the template)
        if len(self.verdicts) != 3 or len(set(self.verdicts)) != 3 or not all(self.verdicts):
            raise ValueError(
                f"verdicts must be three different non-empty strings (A better, B better, "
                f"tie), got {self.verdicts!r}"
            )
        if any(a in b for a in self.verdicts for b in self.verdicts if a != b):
            raise ValueError(f"no verdict may contain another, got {self.verdicts!r}")

    @property
    def uses_reference(self) -> bool:
        return _check_template(self.template, {"prompt", "response_a", "response_b"}, "pairwise")

    def format(self, prompt: str, response_a: str, response_b: str,
               reference: str | None = None) -> str:  # fmt: skip
        extra = _reference(reference, self.uses_reference, "pairwise")
        return self.template.format(
            prompt=prompt, response_a=response_a, response_b=response_b, **extra
        )

    def split_verdicts(self) -> tuple[str, list[str]]:
        """``(answer_prefix, options)``: the verdicts' common beginning and what follows it,
        up to their common ending. ``("[[", ["A", "B", "C"])`` for the default."""
        prefix = os.path.commonprefix(self.verdicts)  # any strings, not only paths
        suffix = os.path.commonprefix([v[len(prefix) :][::-1] for v in self.verdicts])[::-1]
        return prefix, [v[len(prefix) : len(v) - len(suffix)] for v in self.verdicts]


@dataclass(frozen=True)
class ParsedVerdict:
    verdict: Verdict | None
    reason: str  # "ok", "no verdict" or "ambiguous"

    @property
    def ok(self) -> bool:
        return self.reason == "ok"


def parse_verdict(text: str, config: PairwiseConfig | None = None) -> ParsedVerdict:
    """The verdict in a judge's reply: the one verdict string it contains. No verdict string
    -> ``"no verdict"``; two different ones -> ``"ambiguous"`` (never a guess)."""
    config = config or PairwiseConfig()
    present = [v for v, s in zip(VERDICTS, config.verdicts, strict=True) if s in text]
    if not present:
        return ParsedVerdict(None, "no verdict")
    if len(present) > 1:
        return ParsedVerdict(None, "ambiguous")
    return ParsedVerdict(present[0], "ok")
