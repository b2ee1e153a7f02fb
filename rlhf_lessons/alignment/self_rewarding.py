"""Self-rewarding language models: the model writes prompts, answers them and judges its answers.

Paper: Yuan et al. 2024, "Self-Rewarding Language Models", arXiv 2401.10020 (reference code:
lucidrains/self-rewarding-lm-pytorch). RLHF and DPO learn from preferences that someone else
labelled; a self-rewarding model labels them itself, with an LLM-as-a-judge prompt (lesson 09),
and is then trained on its own labels with DPO (lesson 06). One iteration M_t -> M_{t+1}:

1. **New prompts** (:func:`generate_prompts`): M_t is shown a few seed prompts (the paper: 8)
   and asked for a new one of the same kind.
2. **Candidates** (:func:`generate_candidates`): N = 4 responses per prompt, sampled at
   temperature 0.7 with top-p 0.9.
3. **Self-judging** (:func:`judge_candidates`): M_t grades each response with the additive
   5-point prompt **3 times** (also sampled at 0.7 / 0.9) and the valid scores are averaged. A
   reply whose score does not parse, is out of range or is not a number gives no score, with a
   reason (:func:`rlhf_lessons.judges.llm_judge.parse_score`); the lucidrains parser instead crashes on
   every successful match (``result.groups(1).isnumeric()`` on a tuple).
4. **The pair rule** (:func:`pick_pair`): chosen = the candidate with the highest average score,
   rejected = the one with the lowest. A prompt whose best and worst averages are equal (a tie),
   or which has fewer than 2 candidates with a valid score, gives no pair; it is skipped and
   counted (lucidrains ``break``s out of the batch on a tie).
5. **DPO** on the pairs, with M_t as the reference, gives M_{t+1} (:mod:`rlhf_lessons.alignment.pipeline`
   runs it with :func:`rlhf_lessons.alignment.dpo.train_dpo`).

The judge and the policy are **the same weights**: training the answers moves the judge too.
The paper gets both better (M1 -> M3: AlpacaEval 2.0 win rate 9.9% -> 20.4%, judge-human
agreement up, answers longer); nothing guarantees it, and lesson 10 measures it.

The review world's version (a review model taught to judge and to write prompts, its seed
data and annotators) is :mod:`rlhf_lessons.review_world.self_judge`.
"""

from __future__ import annotations

import math
import random
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from rlhf_lessons import lm
from rlhf_lessons.course.device import torch_threads
from rlhf_lessons.judges.llm_judge import (
    ADDITIVE_5_POINT,
    Judge,
    RewardPromptConfig,
    mean_of_valid,
    parse_score,
)
from rlhf_lessons.training import RewardFn

SKIP_REASONS = ("tie", "fewer than 2 scored")

# --- configuration ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SelfRewardConfig:
    """One self-rewarding data round (the paper's settings by default).

    ``chat``: wrap prompts in the tokenizer's chat template (:func:`rlhf_lessons.lm.
    format_prompt`; a tokenizer without one, like the review model's, uses the raw text).
    ``judge_prefix``: text the judge's reply starts with, written into the prompt after the
    chat template ("prefilling" the reply); it is parsed together with the reply. A small
    model that rambles instead of scoring (SmolLM2-135M: 0 of 48 replies parsed) scores almost
    always when its reply starts with ``"Score:"``."""

    n_candidates: int = 4  # N responses per prompt
    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 64  # response budget (tokens)
    judge_samples: int = 3  # judgements per response, averaged
    judge_temperature: float = 0.7
    judge_top_p: float = 0.9
    judge_max_new_tokens: int = 64  # judge reply budget (tokens)
    reward_prompt: RewardPromptConfig = ADDITIVE_5_POINT
    judge_prefix: str = ""  # the start of the judge's reply, written for it (e.g. "Score:")
    chat: bool = True
    batch_size: int = 8  # rows per generation call
    threads: int | None = None  # torch threads while sampling and judging (None: as they are)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_candidates < 2:
            raise ValueError(f"n_candidates must be >= 2 to form a pair, got {self.n_candidates}")
        for name in ("judge_samples", "max_new_tokens", "judge_max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"SelfRewardConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("temperature", "judge_temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(
                    f"SelfRewardConfig.{name} must be > 0 (candidates and judgements are "
                    f"sampled), got {getattr(self, name)}"
                )
        for name in ("top_p", "judge_top_p"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(
                    f"SelfRewardConfig.{name} must be in (0, 1], got {getattr(self, name)}"
                )
        if not isinstance(self.reward_prompt, RewardPromptConfig):
            raise TypeError(
                "SelfRewardConfig.reward_prompt must be a rlhf_lessons.judges.llm_judge.RewardPromptConfig, "
                f"got {type(self.reward_prompt).__name__}"
            )


# --- the pair rule ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairChoice:
    """What :func:`pick_pair` decided for one prompt: ``chosen`` / ``rejected`` candidate
    indices (None when skipped), ``reason`` ("ok", "tie" or "fewer than 2 scored") and each
    candidate's average score ``means`` (NaN where no judgement parsed)."""

    chosen: int | None
    rejected: int | None
    reason: str
    means: tuple[float, ...]

    @property
    def ok(self) -> bool:
        return self.reason == "ok"


def average_scores(scores) -> np.ndarray:
    """Each candidate's mean over its valid (non-NaN) judgements; NaN when none is valid.
    (N, S) -> (N,)."""
    s = np.asarray(scores, dtype=float)
    if s.ndim != 2:
        raise ValueError(f"scores must be (candidates, judgements), got shape {s.shape}")
    return mean_of_valid(s)


def pick_pair(scores) -> PairChoice:
    """The pair rule (the module docstring's step 4) on one prompt's judgements ``scores``
    (N, S), NaN where a judgement did not parse; candidates without a valid score drop out, and
    among equal averages argmax / argmin take the first."""
    means = average_scores(scores)
    scored = np.flatnonzero(~np.isnan(means))
    if len(scored) < 2:
        return PairChoice(None, None, "fewer than 2 scored", tuple(means.tolist()))
    best = int(scored[np.argmax(means[scored])])
    worst = int(scored[np.argmin(means[scored])])
    if means[best] == means[worst]:
        return PairChoice(None, None, "tie", tuple(means.tolist()))
    return PairChoice(best, worst, "ok", tuple(means.tolist()))


# --- candidates and judgements ------------------------------------------------------------------


def format_prompts(tokenizer, prompts: Sequence[str], chat: bool) -> list[str]:
    """The user prompts in the tokenizer's chat template (``chat``; :func:`rlhf_lessons.lm.
    format_prompt`) or as they are."""
    return [lm.format_prompt(tokenizer, p) if chat else p for p in prompts]


def generate_candidates(model, tokenizer, prompts: Sequence[str], config: SelfRewardConfig,
                        seed: int | None = None) -> list[list[str]]:  # fmt: skip
    """``config.n_candidates`` sampled responses to each (user) prompt: (P,) -> P lists of N."""
    if not prompts:
        raise ValueError("prompts is empty")
    n = config.n_candidates
    formatted = [p for p in format_prompts(tokenizer, prompts, config.chat) for _ in range(n)]
    gen = lm.generate(model, tokenizer, formatted, max_new_tokens=config.max_new_tokens,
                      temperature=config.temperature, top_p=config.top_p,
                      batch_size=config.batch_size,
                      seed=config.seed if seed is None else seed)  # fmt: skip
    return [gen.completions[i * n : (i + 1) * n] for i in range(len(prompts))]


@dataclass
class Judgements:
    """The model's judgements of its candidates: ``scores`` (P, N, S) with NaN for a reply that
    gave no score, ``reasons[p][n][s]`` ("ok" or why not) and the judge's ``texts``."""

    scores: np.ndarray
    reasons: list[list[list[str]]]
    texts: list[list[list[str]]]

    @property
    def unparsed_reasons(self) -> Counter:
        return Counter(r for by_prompt in self.reasons for row in by_prompt for r in row
                       if r != "ok")  # fmt: skip

    @property
    def parse_rate(self) -> float:
        return float((~np.isnan(self.scores)).mean())


def judge_candidates(model, tokenizer, prompts: Sequence[str], candidates: Sequence[Sequence[str]],
                     config: SelfRewardConfig, seed: int | None = None,
                     show_progress: bool = False) -> Judgements:  # fmt: skip
    """Grade every candidate ``config.judge_samples`` times with ``config.reward_prompt``
    (sampled at ``judge_temperature`` / ``judge_top_p``), using the model itself as the judge
    (:class:`rlhf_lessons.judges.llm_judge.Judge`, text mode)."""
    if len(prompts) != len(candidates):
        raise ValueError(f"got {len(prompts)} prompts but {len(candidates)} candidate lists")
    sizes = {len(c) for c in candidates}
    if len(sizes) != 1:
        raise ValueError(f"every prompt needs the same number of candidates, got sizes {sizes}")
    n = sizes.pop()
    judge = Judge(model, tokenizer, max_new_tokens=config.judge_max_new_tokens,
                  batch_size=config.batch_size, show_progress=show_progress)  # fmt: skip
    rp, prefix = config.reward_prompt, config.judge_prefix
    users = [rp.format(p, c) for p, cands in zip(prompts, candidates, strict=True) for c in cands]
    chats = [c + prefix for c in judge.chat(users)]
    seed = config.seed + 7 if seed is None else seed
    # S independent sampled judgements of every candidate, in one call: (P * N * S,) replies
    s = config.judge_samples
    replies = judge.reply([c for c in chats for _ in range(s)], config.judge_temperature,
                          config.judge_top_p, seed=seed)  # fmt: skip
    texts = [[prefix + r for r in replies[k * s : (k + 1) * s]] for k in range(len(chats))]
    parsed = [[parse_score(t, rp) for t in row] for row in texts]
    scores = np.array([[x.value if x.ok else np.nan for x in row] for row in parsed])
    reasons = [[x.reason for x in row] for row in parsed]
    by_prompt = range(0, len(chats), n)
    return Judgements(
        scores=scores.reshape(len(prompts), n, s),
        reasons=[reasons[i : i + n] for i in by_prompt],
        texts=[texts[i : i + n] for i in by_prompt],
    )


# --- one round of self-rewarding data -----------------------------------------------------------


@dataclass
class SelfRewardData:
    """One round's data: the prompts, candidates, judgements, decisions and the kept pairs.

    ``pairs`` are DPO records ``{"prompt", "chosen", "rejected", "score_chosen",
    "score_rejected", "index"}`` with the prompt already formatted (as the candidates were
    generated from it); ``skipped`` counts the prompts without a pair by reason."""

    prompts: list[str]
    candidates: list[list[str]]
    judgements: Judgements
    choices: list[PairChoice]
    pairs: list[dict]
    skipped: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def mean_scores(self) -> np.ndarray:
        """(P, N) each candidate's average judge score (NaN: none parsed)."""
        return np.array([c.means for c in self.choices], dtype=float)

    def table(self) -> pd.DataFrame:
        """One row per candidate: prompt, candidate, its judge scores, their mean, and whether it
        was chosen or rejected."""
        rows = []
        for i, (prompt, cands, choice) in enumerate(zip(self.prompts, self.candidates,
                                                        self.choices, strict=True)):  # fmt: skip
            roles = {choice.rejected: "rejected", choice.chosen: "chosen"}
            for j, cand in enumerate(cands):
                role = roles.get(j, "")
                rows.append({"prompt_index": i, "prompt": prompt, "candidate": cand,
                             "scores": self.judgements.scores[i, j].tolist(),
                             "mean_score": choice.means[j], "role": role,
                             "decision": choice.reason})  # fmt: skip
        return pd.DataFrame(rows)

    def summary(self) -> dict:
        return {
            "prompts": len(self.prompts),
            "pairs": len(self.pairs),
            **{f"skipped_{r.replace(' ', '_')}": self.skipped.get(r, 0) for r in SKIP_REASONS},
            "judge_parse_rate": self.judgements.parse_rate,
            "unparsed_reasons": dict(self.judgements.unparsed_reasons),
            "seconds": self.seconds,
        }


def build_pairs(prompts: Sequence[str], formatted: Sequence[str],
                candidates: Sequence[Sequence[str]], scores: np.ndarray
                ) -> tuple[list[PairChoice], list[dict], Counter]:  # fmt: skip
    """Apply :func:`pick_pair` to every prompt: the decisions, the DPO records and the skip
    counts. ``scores`` (P, N, S). An empty candidate (the model stopped at once) counts as
    unscored: DPO needs a text to train on. A pair whose two texts are the same (two identical
    samples judged differently) is skipped as a "tie": DPO cannot learn from it."""
    choices, pairs, skipped = [], [], Counter()
    for i, cands in enumerate(candidates):
        empty = np.array([not c.strip() for c in cands])
        choice = pick_pair(np.where(empty[:, None], np.nan, scores[i]))
        if choice.ok and cands[choice.chosen].strip() == cands[choice.rejected].strip():
            choice = PairChoice(None, None, "tie", choice.means)
        choices.append(choice)
        if not choice.ok:
            skipped[choice.reason] += 1
            continue
        pairs.append({"prompt": formatted[i], "chosen": cands[choice.chosen],
                      "rejected": cands[choice.rejected],
                      "score_chosen": choice.means[choice.chosen],
                      "score_rejected": choice.means[choice.rejected], "index": i,
                      "user_prompt": prompts[i]})  # fmt: skip
    return choices, pairs, skipped


def self_reward_round(model, tokenizer, prompts: Sequence[str], config: SelfRewardConfig | None = None,
                      show_progress: bool = False) -> SelfRewardData:  # fmt: skip
    """Steps 2-4 of an iteration on ``prompts``: sample N candidates, judge each S times with
    the model itself, pick (best, worst) pairs. The model is put in eval mode."""
    config = config or SelfRewardConfig()
    start = time.perf_counter()
    model.eval()
    prompts = list(prompts)
    with torch_threads(config.threads):
        candidates = generate_candidates(model, tokenizer, prompts, config)
        judgements = judge_candidates(model, tokenizer, prompts, candidates, config,
                                      show_progress=show_progress)  # fmt: skip
    formatted = format_prompts(tokenizer, prompts, config.chat)
    choices, pairs, skipped = build_pairs(prompts, formatted, candidates, judgements.scores)
    return SelfRewardData(prompts, candidates, judgements, choices, pairs, skipped,
                          time.perf_counter() - start)  # fmt: skip


# --- new prompts from few-shot examples ---------------------------------------------------------


@dataclass(frozen=True)
class PromptWriterConfig:
    """How the model is asked for new prompts (the paper: 8-shot examples from the seed data).

    The default is a plain-text list the model continues (no chat template, as self-instruct
    prompts a base model): SmolLM2-135M, asked in a chat turn to "write one new request",
    mostly echoed the instruction instead.

    ``template`` uses ``{examples}``: ``n_shots`` seed prompts, each written with
    ``example_format`` (``{prompt}``) and joined by ``separator``. The reply's first line, cut
    at ``stop`` (if given) and stripped of list markers, is the new prompt; ``suffix`` is added
    to it (the review world's prompts end in a space)."""

    template: str = "Questions that users asked an AI assistant:\n{examples}\n-"
    example_format: str = "- {prompt}"
    separator: str = "\n"
    n_shots: int = 8
    temperature: float = 0.8
    top_p: float = 0.9
    max_new_tokens: int = 32
    chat: bool = False
    stop: str | None = None
    suffix: str = ""

    def __post_init__(self) -> None:
        if "{examples}" not in self.template:
            raise ValueError("PromptWriterConfig.template must contain {examples}")
        if "{prompt}" not in self.example_format:
            raise ValueError("PromptWriterConfig.example_format must contain {prompt}")
        if self.n_shots < 1 or self.max_new_tokens < 1:
            raise ValueError("PromptWriterConfig needs n_shots >= 1 and max_new_tokens >= 1")

    def format(self, examples: Sequence[str]) -> str:
        shots = self.separator.join(self.example_format.format(prompt=e.strip()) for e in examples)
        return self.template.format(examples=shots)

    def extract(self, reply: str) -> str:
        """The new prompt in a reply: first non-empty line, cut at ``stop``, list marker off."""
        lines = [line for line in reply.strip().splitlines() if line.strip()]
        text = lines[0] if lines else ""
        if self.stop:
            text = text.split(self.stop)[0]
        return re.sub(r"^\s*(?:[-*]|\d+[.)])\s+", "", text).strip().strip('"').strip()


def generate_prompts(model, tokenizer, seed_prompts: Sequence[str], n: int,
                     config: PromptWriterConfig | None = None, seed: int = 0,
                     batch_size: int = 8, max_rounds: int = 4) -> tuple[list[str], Counter]:  # fmt: skip
    """Up to ``n`` new prompts written by the model from few-shot examples of ``seed_prompts``.

    Each request shows ``config.n_shots`` seed prompts drawn at random. A reply is rejected
    (and counted by reason) when it is ``"empty"`` or shorter than two words, a
    ``"copy of a seed"`` or a ``"duplicate"`` of an earlier new prompt. Up to ``max_rounds``
    rounds of requests are made; returns ``(prompts, rejected)``, possibly fewer than ``n``.
    """
    config = config or PromptWriterConfig()
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    seeds = [s for s in seed_prompts if s.strip()]
    if len(seeds) < config.n_shots:
        raise ValueError(
            f"need at least n_shots={config.n_shots} non-empty seed prompts, got {len(seeds)}"
        )
    rng = random.Random(seed)
    known = {s.strip().lower() for s in seeds}
    new, seen, rejected = [], set(), Counter()
    for round_ in range(max_rounds):
        want = n - len(new)
        if want <= 0:
            break
        asks = [
            config.format(rng.sample(seeds, config.n_shots)) for _ in range(math.ceil(want * 1.25))
        ]
        asks = format_prompts(tokenizer, asks, config.chat)
        gen = lm.generate(model, tokenizer, asks, max_new_tokens=config.max_new_tokens,
                          temperature=config.temperature, top_p=config.top_p,
                          batch_size=batch_size, seed=seed + 1000 * round_)  # fmt: skip
        for reply in gen.completions:
            text = config.extract(reply)
            key = text.lower()
            if len(text.split()) < 2:
                rejected["empty"] += 1
            elif key in known:
                rejected["copy of a seed"] += 1
            elif key in seen:
                rejected["duplicate"] += 1
            elif len(new) < n:
                seen.add(key)
                new.append(text + config.suffix)
    return new, rejected


# --- measuring the judge ------------------------------------------------------------------------


def judge_agreement(data: SelfRewardData, reward_fn: RewardFn) -> dict:
    """How well the self-judge agrees with a known reward on one round's candidates.

    ``spearman``: rank correlation of the averaged judge score and the true reward over every
    candidate that got a score; ``pair_accuracy``: among the kept pairs, the fraction whose
    chosen response has the higher true reward (equal rewards count 1/2); ``true_margin``: the
    mean true-reward gap chosen - rejected; ``candidate_reward``: mean true reward of all the
    candidates (the model's answers at the sampling temperature)."""
    prompts = [p for p, cands in zip(data.prompts, data.candidates, strict=True) for _ in cands]
    flat = [c for cands in data.candidates for c in cands]
    true = torch.as_tensor(reward_fn(prompts, flat), dtype=torch.float64).numpy()
    true = true.reshape(len(data.prompts), -1)
    means = data.mean_scores
    ok = ~np.isnan(means)
    spearman = float("nan")
    if ok.sum() >= 3:
        spearman = float(pd.Series(means[ok]).corr(pd.Series(true[ok]), method="spearman"))
    gaps = [true[i, c.chosen] - true[i, c.rejected] for i, c in enumerate(data.choices) if c.ok]
    right = [1.0 if gap > 0 else 0.5 if gap == 0 else 0.0 for gap in gaps]
    return {
        "spearman": spearman,
        "pair_accuracy": float(np.mean(right)) if right else float("nan"),
        "true_margin": float(np.mean(gaps)) if gaps else float("nan"),
        "candidate_reward": float(true.mean()),
        "n_scored": int(ok.sum()),
    }
