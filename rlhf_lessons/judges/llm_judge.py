"""LLM-as-a-judge (lesson 09): a language model asked to compare or grade answers.

Papers: Zheng et al. 2023, "Judging LLM-as-a-Judge with MT-Bench and Chatbot Arena", arXiv
2306.05685 (the three modes: pairwise verdicts ``[[A]]`` / ``[[B]]`` / ``[[C]]``, single-answer
grading, reference-guided grading); Yuan et al. 2024, "Self-Rewarding Language Models", arXiv
2401.10020 (the additive 5-point prompt, each answer judged 3 times and averaged); Bai et al.
2022, "Constitutional AI", arXiv 2212.08073 (a preference read from the model's probabilities of
the answer options instead of from sampled text).

Two ways to read a judge, for every mode:

- ``mode="text"``: the judge writes a reply (greedy by default, or sampled); a parser looks for
  the verdict or the score in it. A reply that does not contain one is **reported as
  unparsable** with a reason, never silently turned into a score or a tie.
- ``mode="logprob"``: one forward pass. The reply is assumed to start with the text before the
  verdict or score (``[[`` or ``Score: ``); the judge's log-probabilities of each option right
  after it (``A``/``B``/``C``, or ``0``...``5``) give a distribution over the options. It never
  fails to parse and gives a soft preference (``p_first``) or an expected score.

Prompts are configurable: :class:`PairwiseConfig` (a template with ``{prompt}``,
``{response_a}``, ``{response_b}`` and optionally ``{reference}``) and :class:`RewardPromptConfig`
(a template with ``{prompt}``, ``{response}`` and optionally ``{reference}``, and a score pattern
with a ``{reward}`` slot, e.g. ``"Score: {reward}"`` or ``"[[{reward}]]"``). Lesson 10
(self-rewarding LMs) reuses :class:`RewardPromptConfig`, :func:`parse_score` and
:meth:`Judge.grade`.

Everything goes through :mod:`rlhf_lessons.lm` (chat formatting, generation, log-probs).
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from rlhf_lessons import lm
from rlhf_lessons.course.progress import progress

Mode = Literal["text", "logprob"]
MODES = ("text", "logprob")

# --- prompt templates (our wording; the formats follow the papers) --------------------------

PAIRWISE_TEMPLATE = (
    "Which of two answers to a question is better: more helpful, correct and to the point? "
    "Do not let their order or length decide.\n\n"
    "Question: {prompt}\n\n"
    "Answer A: {response_a}\n\n"
    "Answer B: {response_b}\n\n"
    "Reply [[A]] if A is better, [[B]] if B is better, or [[C]] for a tie."
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

SINGLE_REFERENCE_TEMPLATE = (
    "Rate the answer to the user's question below on a scale from 1 (wrong or useless) to 10 "
    "(correct and excellent). A correct reference answer is given: compare the answer with it."
    "\n\nQuestion: {prompt}\n\n"
    "Reference answer: {reference}\n\n"
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


def _template_fields(template: str) -> set[str]:
    try:
        return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as err:
        raise ValueError(
            f"template is not a valid format string ({err}); write literal braces as {{{{ }}}}"
        ) from err


def _check_template(template: str, required: set[str], what: str) -> bool:
    """Validate a template's fields; return whether it uses ``{reference}``."""
    fields = _template_fields(template)
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
PARSE_REASONS = ("ok", "no score", "not a number", "out of range", "ambiguous")


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
SINGLE_REFERENCE_1_TO_10 = RewardPromptConfig(SINGLE_REFERENCE_TEMPLATE, "[[{reward}]]", 1, 10)


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
        token = raw.rstrip(".,;:!")  # "Score: 4." ends a sentence
        try:
            value = float(token)
        except ValueError:
            return ParsedScore(None, "not a number", raw)
        if not math.isfinite(value):  # float() accepts "nan" and "inf"
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
    ``{reference}``). The log-prob mode reads the options where the verdicts differ: with
    ``[[A]]``/``[[B]]``/``[[C]]`` the reply is assumed to start with ``[[`` and the options are
    ``A``, ``B``, ``C`` (the shared ending ``]]`` carries no preference and is not scored).
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
        prefix = _common_prefix(self.verdicts)
        suffix = _common_prefix([v[len(prefix) :][::-1] for v in self.verdicts])[::-1]
        return prefix, [v[len(prefix) : len(v) - len(suffix)] for v in self.verdicts]


def _common_prefix(texts: Sequence[str]) -> str:
    first = min(texts, key=len)
    for i, ch in enumerate(first):
        if any(t[i] != ch for t in texts):
            return first[:i]
    return first


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


# --- log-probabilities of answer options ------------------------------------------------------


@torch.no_grad()
def choice_logprobs(model, tokenizer, contexts: Sequence[str], choices: Sequence[str],
                    batch_size: int = 8, desc: str | None = None) -> torch.Tensor:  # fmt: skip
    """``out[i, k] = log p(choices[k] | contexts[i])`` under ``model``. (N,) x (K,) -> (N, K).

    Contexts are already formatted text (chat template and answer prefix included); context
    and choice are tokenised separately, as :func:`rlhf_lessons.lm.tokenize_pairs` does. When
    every choice is one token, one forward pass per context reads all K at once (the
    next-token distribution after the context); otherwise each (context, choice) pair is a row
    and its log-prob is the sum over the choice's tokens.
    """
    if not contexts or not choices:
        raise ValueError("contexts and choices must be non-empty")
    ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in choices]
    if any(len(i) == 0 for i in ids):
        raise ValueError(f"every choice must have at least one token, got {list(choices)!r}")
    single = all(len(i) == 1 for i in ids)
    device = next(model.parameters()).device
    # Rows sorted by length, so a batch holds similar lengths (less padding to compute).
    lengths = [len(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in contexts]
    order = np.argsort(lengths, kind="stable")
    out = torch.empty(len(contexts), len(choices))
    step = batch_size if single else max(1, batch_size // len(choices))
    for start in progress(range(0, len(order), step), desc=desc or "judge (log-prob)",
                          disable=desc is None):  # fmt: skip
        rows = order[start : start + step]
        ctx = [contexts[i] for i in rows]
        if single:  # next-token logits at the first completion position: all choices at once
            batch = lm.tokenize_pairs(tokenizer, ctx, [choices[0]] * len(ctx), add_eos=False)
            first = batch.completion_mask.argmax(-1)  # the column of the choice's token
            logp = torch.log_softmax(lm.next_token_logits_at(model, batch.to(device), first), -1)
            out[rows] = logp[:, [i[0] for i in ids]].cpu()
        else:
            flat_ctx = [c for c in ctx for _ in choices]
            batch = lm.tokenize_pairs(tokenizer, flat_ctx, list(choices) * len(ctx),
                                      add_eos=False).to(device)  # fmt: skip
            seq = lm.sequence_logprobs(lm.token_logprobs(model, batch), batch.completion_mask)
            out[rows] = seq.view(len(ctx), len(choices)).cpu()
    return out


# --- the judge ----------------------------------------------------------------------------------

FewShot = Sequence[tuple[str, str]]  # (user message, the judge's reply) pairs


@dataclass
class PairwiseResult:
    """Verdicts on N pairs. ``verdicts[i]`` is "A", "B", "tie" or None (unparsable, text mode
    only), ``reasons[i]`` why; ``texts`` the replies (text mode); ``probs`` (N, 3) the judge's
    probabilities of A / B / tie renormalised over the three options (log-prob mode)."""

    mode: str
    verdicts: list[Verdict | None]
    reasons: list[str]
    texts: list[str] | None = None
    probs: np.ndarray | None = None

    @property
    def n_unparsed(self) -> int:
        return sum(v is None for v in self.verdicts)

    @property
    def unparsed_reasons(self) -> Counter:
        return Counter(r for v, r in zip(self.verdicts, self.reasons, strict=True) if v is None)

    @property
    def p_first(self) -> np.ndarray:
        """Soft preference for answer A over B: P(A) / (P(A) + P(B)) (log-prob mode)."""
        if self.probs is None:
            raise ValueError("p_first needs the log-prob mode (mode='logprob')")
        return self.probs[:, 0] / (self.probs[:, 0] + self.probs[:, 1])


@dataclass
class GradeResult:
    """Scores of N answers, ``samples`` judgements each.

    ``scores`` (N, samples): the parsed scores, NaN where a reply did not parse (text mode) or
    the expected score under the judge's distribution (log-prob mode); ``reasons[i][s]``;
    ``texts`` the replies (text mode); ``probs`` (N, n_choices) over ``choices`` (log-prob).
    """

    mode: str
    scores: np.ndarray
    reasons: list[list[str]]
    texts: list[list[str]] | None = None
    probs: np.ndarray | None = None
    choices: list[int] = field(default_factory=list)

    @property
    def mean(self) -> np.ndarray:
        """Average of each answer's valid scores (NaN when none parsed). (N,)"""
        valid = ~np.isnan(self.scores)
        total = np.where(valid, self.scores, 0.0).sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(valid.any(1), total / valid.sum(1), np.nan)

    @property
    def n_unparsed(self) -> int:
        return int(np.isnan(self.scores).sum())

    @property
    def unparsed_reasons(self) -> Counter:
        return Counter(r for row in self.reasons for r in row if r != "ok")


class Judge:
    """A causal LM used as a judge: chat-formats judge prompts (optionally after few-shot
    example turns), then reads verdicts or scores from sampled text or from log-probs.

    ``system``: the system message (None: the tokenizer's default). ``max_new_tokens``: the
    length of a text-mode reply (short: the verdict should come first).
    """

    def __init__(self, model, tokenizer, system: str | None = None, max_new_tokens: int = 16,
                 batch_size: int = 8, show_progress: bool = True):  # fmt: skip
        self.model, self.tokenizer, self.system = model, tokenizer, system
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self.show_progress = show_progress

    def chat(self, user_texts: Sequence[str], few_shot: FewShot = ()) -> list[str]:
        """Formatted prompts: the few-shot turns (user, judge reply) and then each user text."""
        shots = [m for user, reply in few_shot
                 for m in ({"role": "user", "content": user},
                           {"role": "assistant", "content": reply})]  # fmt: skip
        return [
            lm.format_prompt(self.tokenizer, [*shots, {"role": "user", "content": u}], self.system)
            for u in user_texts
        ]

    def _desc(self, what: str) -> str | None:
        return what if self.show_progress else None

    def reply(self, prompts: Sequence[str], temperature: float | None = None,
              top_p: float = 1.0, seed: int = 0) -> list[str]:  # fmt: skip
        """The judge's replies to formatted prompts: greedy when ``temperature`` is None."""
        order = np.argsort([len(p) for p in prompts], kind="stable")  # similar lengths together
        replies: list[str] = [""] * len(prompts)
        chunks = range(0, len(order), self.batch_size)
        for n, start in enumerate(progress(chunks, desc=self._desc("judge (text)"),
                                           disable=not self.show_progress)):  # fmt: skip
            rows = order[start : start + self.batch_size]
            gen = lm.generate(
                self.model, self.tokenizer, [prompts[i] for i in rows],
                max_new_tokens=self.max_new_tokens, do_sample=temperature is not None,
                temperature=temperature or 1.0, top_p=top_p, batch_size=self.batch_size,
                seed=seed + n,
            )  # fmt: skip
            for i, text in zip(rows, gen.completions, strict=True):
                replies[i] = text
        return replies

    def compare(
        self,
        prompts: Sequence[str],
        responses_a: Sequence[str],
        responses_b: Sequence[str],
        config: PairwiseConfig | None = None,
        mode: Mode = "logprob",
        references: Sequence[str] | None = None,
        few_shot: FewShot = (),
    ) -> PairwiseResult:
        """Pairwise verdicts: is answer A (shown first) or B better, or a tie?"""
        config = config or PairwiseConfig()
        _check_mode(mode)
        refs = _check_lengths(prompts, responses_a=responses_a, responses_b=responses_b,
                              references=references)  # fmt: skip
        users = [config.format(p, a, b, r)
                 for p, a, b, r in zip(prompts, responses_a, responses_b, refs, strict=True)]  # fmt: skip
        chats = self.chat(users, few_shot)
        if mode == "text":
            texts = self.reply(chats)
            parsed = [parse_verdict(t, config) for t in texts]
            return PairwiseResult("text", [p.verdict for p in parsed],
                                  [p.reason for p in parsed], texts=texts)  # fmt: skip
        prefix, options = config.split_verdicts()
        logp = choice_logprobs(self.model, self.tokenizer, [c + prefix for c in chats], options,
                               self.batch_size, self._desc("judge (log-prob)"))  # fmt: skip
        probs = torch.softmax(logp, dim=-1).numpy()
        verdicts = [VERDICTS[k] for k in probs.argmax(1)]
        return PairwiseResult("logprob", verdicts, ["ok"] * len(verdicts), probs=probs)

    def grade(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        config: RewardPromptConfig | None = None,
        mode: Mode = "logprob",
        references: Sequence[str] | None = None,
        few_shot: FewShot = (),
        samples: int = 1,
        temperature: float | None = None,
        top_p: float = 1.0,
        seed: int = 0,
    ) -> GradeResult:
        """Single-answer grading (optionally reference-guided). Text mode: ``samples``
        replies per answer (sampled at ``temperature``/``top_p``; greedy when None), each
        parsed with :func:`parse_score`. Log-prob mode: the expected score under the judge's
        distribution over the integer scores, read after ``config.answer_prefix``."""
        config = config or ADDITIVE_5_POINT
        _check_mode(mode)
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        if samples > 1 and temperature is None and mode == "text":
            raise ValueError("samples > 1 with greedy decoding repeats one reply: set temperature")
        refs = _check_lengths(prompts, responses=responses, references=references)
        users = [config.format(p, r, ref) for p, r, ref in zip(prompts, responses, refs,
                                                               strict=True)]  # fmt: skip
        chats = self.chat(users, few_shot)
        if mode == "text":
            texts = [self.reply(chats, temperature, top_p, seed=seed + 1000 * s)
                     for s in range(samples)]  # fmt: skip
            by_answer = [list(t) for t in zip(*texts, strict=True)]
            parsed = [[parse_score(t, config) for t in row] for row in by_answer]
            scores = np.array([[p.value if p.ok else np.nan for p in row] for row in parsed])
            reasons = [[p.reason for p in row] for row in parsed]
            return GradeResult("text", scores, reasons, texts=by_answer)
        choices = config.choices()
        logp = choice_logprobs(self.model, self.tokenizer,
                               [c + config.answer_prefix for c in chats],
                               [str(k) for k in choices], self.batch_size,
                               self._desc("judge (log-prob)"))  # fmt: skip
        probs = torch.softmax(logp, dim=-1).numpy()
        expected = probs @ np.array(choices, dtype=float)
        return GradeResult("logprob", expected[:, None], [["ok"] for _ in chats], probs=probs,
                           choices=choices)  # fmt: skip


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def _check_lengths(prompts: Sequence[str], references: Sequence[str] | None = None,
                   **columns: Sequence[str]) -> list[str | None]:  # fmt: skip
    if not prompts:
        raise ValueError("prompts is empty")
    for name, col in columns.items():
        if len(col) != len(prompts):
            raise ValueError(f"got {len(prompts)} prompts but {len(col)} {name}")
    if references is None:
        return [None] * len(prompts)
    if len(references) != len(prompts):
        raise ValueError(f"got {len(prompts)} prompts but {len(references)} references")
    return list(references)
