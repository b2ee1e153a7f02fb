"""LLM-as-a-judge (lesson 09): a language model asked to compare or grade answers.

Papers: Zheng et al. 2023, "Judging LLM-as-a-Judge with MT-Bench and Chatbot Arena", arXiv
2306.05685 (the three modes: pairwise verdicts, single-answer grading, reference-guided
grading); Yuan et al. 2024, "Self-Rewarding Language Models", arXiv 2401.10020 (the additive
5-point prompt, each answer judged 3 times and averaged); Bai et al. 2022, "Constitutional AI",
arXiv 2212.08073 (a preference read from the model's probabilities of the answer options
instead of from sampled text).

Two ways to read a judge, for every mode:

- ``mode="text"``: the judge writes a reply (greedy by default, or sampled); a parser
  (:mod:`rlhf_lessons.judges.prompts`) looks for the verdict or the score in it. A reply that
  does not contain one is **reported as unparsable** with a reason.
- ``mode="logprob"``: one forward pass. The reply is assumed to start with the text before the
  verdict or score (``[[`` or ``Score: ``); the judge's log-probabilities of each option right
  after it (``A``/``B``/``C``, or ``0``...``5``) give a distribution over the options:

      p(v | prompt) = exp(l_v) / sum_u exp(l_u),   l_v the logit of option v after the prefix,

  so it never fails to parse and gives a soft preference (``p_first = p_A / (p_A + p_B)``) or
  an expected score (``sum_k k p(k)``).

The prompts and parsers live in :mod:`rlhf_lessons.judges.prompts` and are re-exported here
(lesson 10 imports :class:`RewardPromptConfig`, :data:`ADDITIVE_5_POINT`, :func:`parse_score`
and :class:`Judge` from this module). Everything goes through :mod:`rlhf_lessons.lm` (chat
formatting, generation, log-probs).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from rlhf_lessons import lm
from rlhf_lessons.course.progress import progress
from rlhf_lessons.judges.prompts import (  # noqa: F401 (re-exported: the lesson's public names)
    ADDITIVE_5_POINT,
    PAIRWISE_INSTRUCTIONS_FIRST,
    PAIRWISE_REFERENCE_TEMPLATE,
    SINGLE_1_TO_10,
    VERDICTS,
    PairwiseConfig,
    RewardPromptConfig,
    Verdict,
    parse_score,
    parse_verdict,
)

Mode = Literal["text", "logprob"]
MODES = ("text", "logprob")


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


def mean_of_valid(scores: np.ndarray) -> np.ndarray:
    """Each row's mean over its valid (non-NaN) entries; NaN for a row with none. (N, S) -> (N,)"""
    valid = ~np.isnan(scores)
    total = np.where(valid, scores, 0.0).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(valid.any(1), total / valid.sum(1), np.nan)


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
        return mean_of_valid(self.scores)

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

    def option_logprobs(self, contexts: Sequence[str], options: Sequence[str]) -> torch.Tensor:
        """(N, K) log-probabilities of each option right after each formatted context (the
        log-prob mode's one forward pass: :func:`choice_logprobs`)."""
        desc = "judge (log-prob)" if self.show_progress else None
        return choice_logprobs(self.model, self.tokenizer, contexts, options, self.batch_size, desc)

    def reply(self, prompts: Sequence[str], temperature: float | None = None,
              top_p: float = 1.0, seed: int = 0) -> list[str]:  # fmt: skip
        """The judge's replies to formatted prompts: greedy when ``temperature`` is None."""
        order = np.argsort([len(p) for p in prompts], kind="stable")  # similar lengths together
        replies: list[str] = [""] * len(prompts)
        chunks = range(0, len(order), self.batch_size)
        for n, start in enumerate(progress(chunks, desc="judge (text)",
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
        logp = self.option_logprobs([c + prefix for c in chats], options)
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
        logp = self.option_logprobs(
            [c + config.answer_prefix for c in chats], list(map(str, choices))
        )
        probs = torch.softmax(logp, dim=-1).numpy()
        expected = probs @ np.array(choices, dtype=float)
        return GradeResult("logprob", expected[:, None], [["ok"] for _ in chats], probs=probs,
                           choices=choices)  # fmt: skip


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def _check_lengths(prompts: Sequence[str], **columns: Sequence[str] | None) -> list[str | None]:
    """Check every given column has one entry per prompt; return the references (or Nones)."""
    if not prompts:
        raise ValueError("prompts is empty")
    for name, col in columns.items():
        if col is not None and len(col) != len(prompts):
            raise ValueError(f"got {len(prompts)} prompts but {len(col)} {name}")
    references = columns.get("references")
    return [None] * len(prompts) if references is None else list(references)
