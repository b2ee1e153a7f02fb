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

**The review world** (the last section): lesson 05's review model cannot judge or write prompts
until it is taught to. :func:`add_judge_vocabulary` gives it the few words it needs,
:data:`REVIEW_JUDGE` and :data:`REVIEW_PROMPT_WRITER` are short formats for its 64 positions,
and :func:`review_seed_data` builds the paper's two seed sets from the model's own samples scored
by the true reward: instruction data (IFT, the best positive answer to each prompt) and
evaluation data (EFT, "judge : <review> grade :" -> the true reward binned to 0-5).
:func:`judge_accuracy` measures the model as a judge of held-out reviews.
"""

from __future__ import annotations

import math
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from rlhf_lessons import lm
from rlhf_lessons.judges.llm_judge import ADDITIVE_5_POINT, Judge, RewardPromptConfig, parse_score
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
    always when its reply starts with ``"Score:"``. ``judge_system``: the judge's system message
    (None: the tokenizer's default)."""

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
    judge_system: str | None = None
    chat: bool = True
    batch_size: int = 8  # rows per generation call
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
    valid = ~np.isnan(s)
    total = np.where(valid, s, 0.0).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(valid.any(1), total / valid.sum(1), np.nan)


def pick_pair(scores) -> PairChoice:
    """The self-rewarding pair rule on one prompt's judgements, ``scores`` (N, S) with NaN for
    a judgement that did not parse.

    Average each candidate's valid scores; candidates with none drop out. Fewer than 2 left ->
    no pair ("fewer than 2 scored"). Otherwise chosen = argmax, rejected = argmin of the
    averages (the first one on equal values); equal max and min -> no pair ("tie").
    """
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


def _formatted(tokenizer, prompts: Sequence[str], chat: bool) -> list[str]:
    return [lm.format_prompt(tokenizer, p) if chat else p for p in prompts]


def generate_candidates(model, tokenizer, prompts: Sequence[str], config: SelfRewardConfig,
                        seed: int | None = None) -> list[list[str]]:  # fmt: skip
    """``config.n_candidates`` sampled responses to each (user) prompt: (P,) -> P lists of N."""
    if not prompts:
        raise ValueError("prompts is empty")
    n = config.n_candidates
    formatted = [p for p in _formatted(tokenizer, prompts, config.chat) for _ in range(n)]
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
    judge = Judge(model, tokenizer, system=config.judge_system,
                  max_new_tokens=config.judge_max_new_tokens, batch_size=config.batch_size,
                  show_progress=show_progress)  # fmt: skip
    rp, prefix = config.reward_prompt, config.judge_prefix
    users = [rp.format(p, c) for p, cands in zip(prompts, candidates, strict=True) for c in cands]
    chats = [c + prefix for c in judge.chat(users)]
    seed = config.seed + 7 if seed is None else seed
    # S independent sampled judgements of every candidate: (S, P * N) replies
    replies = [judge.reply(chats, config.judge_temperature, config.judge_top_p, seed=seed + 1000 * s)
               for s in range(config.judge_samples)]  # fmt: skip
    texts = [[prefix + r[k] for r in replies] for k in range(len(chats))]  # (P * N, S)
    parsed = [[parse_score(t, rp) for t in row] for row in texts]
    scores = np.array([[x.value if x.ok else np.nan for x in row] for row in parsed])
    reasons = [[x.reason for x in row] for row in parsed]
    p, s = len(prompts), config.judge_samples
    return Judgements(
        scores=scores.reshape(p, n, s),
        reasons=[reasons[i * n : (i + 1) * n] for i in range(p)],
        texts=[texts[i * n : (i + 1) * n] for i in range(p)],
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
            for j, cand in enumerate(cands):
                role = (
                    "chosen" if j == choice.chosen else "rejected" if j == choice.rejected else ""
                )
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
    candidates = generate_candidates(model, tokenizer, prompts, config)
    judgements = judge_candidates(model, tokenizer, prompts, candidates, config,
                                  show_progress=show_progress)  # fmt: skip
    formatted = _formatted(tokenizer, prompts, config.chat)
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
    min_words: int = 2

    def __post_init__(self) -> None:
        if "{examples}" not in self.template:
            raise ValueError("PromptWriterConfig.template must contain {examples}")
        if "{prompt}" not in self.example_format:
            raise ValueError("PromptWriterConfig.example_format must contain {prompt}")
        if self.n_shots < 1 or self.max_new_tokens < 1 or self.min_words < 1:
            raise ValueError("PromptWriterConfig needs n_shots, max_new_tokens, min_words >= 1")

    def format(self, examples: Sequence[str]) -> str:
        shots = self.separator.join(self.example_format.format(prompt=e.strip()) for e in examples)
        return self.template.format(examples=shots)

    def extract(self, reply: str) -> str:
        """The new prompt in a reply: first non-empty line, cut at ``stop``, list marker off."""
        lines = [line for line in reply.strip().splitlines() if line.strip()]
        text = lines[0] if lines else ""
        if self.stop:
            text = text.split(self.stop)[0]
        text = re.sub(r"^\s*(?:[-*]|\d+[.)])\s+", "", text).strip().strip('"').strip()
        return text


def generate_prompts(model, tokenizer, seed_prompts: Sequence[str], n: int,
                     config: PromptWriterConfig | None = None, seed: int = 0,
                     batch_size: int = 8, max_rounds: int = 4) -> tuple[list[str], Counter]:  # fmt: skip
    """Up to ``n`` new prompts written by the model from few-shot examples of ``seed_prompts``.

    Each request shows ``config.n_shots`` seed prompts drawn at random. A reply is rejected
    (and counted by reason) when it is ``"empty"`` or shorter than ``min_words``, a
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
        asks = [lm.format_prompt(tokenizer, a) if config.chat else a for a in asks]
        gen = lm.generate(model, tokenizer, asks, max_new_tokens=config.max_new_tokens,
                          temperature=config.temperature, top_p=config.top_p,
                          batch_size=batch_size, seed=seed + 1000 * round_)  # fmt: skip
        for reply in gen.completions:
            text = config.extract(reply)
            key = text.lower()
            if len(text.split()) < config.min_words:
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
    right, gaps = [], []
    for i, c in enumerate(data.choices):
        if c.ok:
            gap = true[i, c.chosen] - true[i, c.rejected]
            gaps.append(gap)
            right.append(1.0 if gap > 0 else 0.5 if gap == 0 else 0.0)
    return {
        "spearman": spearman,
        "pair_accuracy": float(np.mean(right)) if right else float("nan"),
        "true_margin": float(np.mean(gaps)) if gaps else float("nan"),
        "candidate_reward": float(true.mean()),
        "n_scored": int(ok.sum()),
    }


# --- the review world: a review model that can also judge and write prompts (lesson 10) ------------

# Words the review model needs for its new tasks; appended after its vocabulary, so every review
# word keeps its id (and its trained embedding).
JUDGE_WORDS = ("judge", "grade", ":", ";", "prompts", "0", "1", "2", "3", "4", "5")

# "judge : <review> grade :" -> "4": short, because the model has 64 positions and 2 layers.
# "grade :" ends the *prompt*, so the model never learns to write it after a review: with it in
# the reply, DPO on the answers taught the model to append "grade : 3" to its reviews.
REVIEW_JUDGE = RewardPromptConfig(template="judge : {prompt}{response} grade :",
                                  score_pattern="{reward}", min_score=0, max_score=5)  # fmt: skip
# "prompts : <p1> ; <p2> ; <p3> ; <p4> ;" -> "<p5>": few-shot prompt writing, 4 shots.
REVIEW_PROMPT_WRITER = PromptWriterConfig(template="prompts : {examples} ;", example_format="{prompt}",
                                          separator=" ; ", n_shots=4, temperature=1.0, top_p=1.0,
                                          max_new_tokens=10, chat=False, stop=";", suffix=" ")  # fmt: skip


def add_judge_vocabulary(model, tokenizer, words: Sequence[str] = JUDGE_WORDS):
    """A copy of a word-level review model whose vocabulary also has ``words`` (new ids at the
    end; existing ids and embeddings unchanged; the new embeddings start near the mean of the
    old ones, with seeded noise). Returns ``(model, tokenizer)``; the input model is untouched."""
    import copy

    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = dict(tokenizer.get_vocab())
    for w in words:
        vocab.setdefault(w, len(vocab))
    backend = tokenizer.backend_tokenizer
    new = Tokenizer(models.WordLevel(vocab, unk_token=tokenizer.unk_token))
    new.normalizer, new.pre_tokenizer = backend.normalizer, backend.pre_tokenizer
    tok = PreTrainedTokenizerFast(tokenizer_object=new, pad_token=tokenizer.pad_token,
                                  bos_token=tokenizer.bos_token, eos_token=tokenizer.eos_token,
                                  unk_token=tokenizer.unk_token, clean_up_tokenization_spaces=False,
                                  model_max_length=tokenizer.model_max_length)  # fmt: skip
    model = copy.deepcopy(model)
    old = model.get_input_embeddings().weight.detach().clone()
    model.resize_token_embeddings(len(vocab), mean_resizing=False)
    # new rows: the old rows' mean plus a little seeded noise (distinct, and repeatable)
    noise = torch.randn(
        len(vocab) - len(old), old.shape[1], generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        model.get_input_embeddings().weight[len(old) :] = old.mean(0) + 0.5 * old.std(0) * noise
    return model, tok


def reward_to_grade(reward: float) -> int:
    """A true reward in [-1, 1] binned to the judge's 0-5 scale: round(2.5 (r + 1)), halves up
    ([-1, -0.8) -> 0, [-0.8, -0.4) -> 1, ..., [0.8, 1] -> 5)."""
    if not -1.0 <= reward <= 1.0:
        raise ValueError(f"reward must be in [-1, 1], got {reward}")
    return min(
        5, int(math.floor(round(2.5 * (reward + 1.0), 9) + 0.5))
    )  # round(): 2.5 * (1 - 0.8) = 0.4999.. in floats


def review_seed_data(model, tokenizer, prompts: Sequence[str], reward_fn: RewardFn,
                     fluency_fn: Callable[[str], bool], k: int = 4, max_new_tokens: int = 16,
                     min_reward: float = 0.5, seed: int = 0) -> dict:  # fmt: skip
    """The review world's seed data, from ``k`` samples of ``model`` for each prompt, scored by
    the true reward (the paper: human-ranked Open Assistant answers):

    - ``ift`` (instruction data): each prompt's best sample, kept when it is fluent
      (``fluency_fn`` of the whole review) and its reward is at least ``min_reward``;
    - ``eft`` (evaluation data): ``REVIEW_JUDGE`` prompts with one sample of each prompt
      (either polarity) and the answer ``reward_to_grade(r)`` (a digit);
    - ``writing``: ``REVIEW_PROMPT_WRITER`` requests with 4 prompts as examples and a fifth as
      the answer.
    Records are ``{"prompt", "completion"}``; an EFT record also keeps its ``review_prompt``,
    ``review_completion`` and true ``grade`` (for :func:`judge_accuracy` on held-out data)."""
    from rlhf_lessons.review_world.true_reward import join_prompt_completion

    prompts = list(prompts)
    expanded = [p for p in prompts for _ in range(k)]
    gen = lm.generate(model, tokenizer, expanded, max_new_tokens=max_new_tokens, batch_size=64,
                      seed=seed)  # fmt: skip
    rewards = torch.as_tensor(reward_fn(expanded, gen.completions)).view(len(prompts), k)
    rng = random.Random(seed)
    ift, eft = [], []
    for i, p in enumerate(prompts):
        comps = gen.completions[i * k : (i + 1) * k]
        best = int(rewards[i].argmax())
        if (comps[best].strip() and rewards[i, best] >= min_reward
                and fluency_fn(join_prompt_completion(p, comps[best]))):  # fmt: skip
            ift.append({"prompt": p, "completion": comps[best]})
        j = rng.randrange(k)
        if comps[j].strip():
            grade = reward_to_grade(float(rewards[i, j]))
            eft.append({"prompt": REVIEW_JUDGE.format(p, comps[j]), "completion": str(grade),
                        "review_prompt": p, "review_completion": comps[j], "grade": grade})  # fmt: skip
    writer = REVIEW_PROMPT_WRITER
    writing = []
    for _ in range(len(prompts) // 2):
        shots = rng.sample(prompts, writer.n_shots + 1)
        writing.append({"prompt": writer.format(shots[:-1]), "completion": shots[-1].strip()})
    return {"ift": ift, "eft": eft, "writing": writing}


def judge_accuracy(model, tokenizer, eft: Sequence[dict], config: SelfRewardConfig) -> dict:
    """The model as a judge of held-out evaluation records with known grades (from
    :func:`review_seed_data`): each review judged ``config.judge_samples`` times and averaged.
    Returns ``parse_rate`` (judgements that gave a valid score), ``mae`` (mean absolute error of
    the average against the true grade), ``pearson`` and ``spearman`` (over reviews with a
    score) and ``n``."""
    if not eft:
        raise ValueError("eft is empty")
    prompts = [r["review_prompt"] for r in eft]
    j = judge_candidates(model, tokenizer, prompts, [[r["review_completion"]] for r in eft], config)
    mean = average_scores(j.scores[:, 0, :])
    true = np.array([r["grade"] for r in eft], dtype=float)
    ok = ~np.isnan(mean)
    out = {"parse_rate": j.parse_rate, "n": len(eft), "mae": float("nan"),
           "pearson": float("nan"), "spearman": float("nan")}  # fmt: skip
    if ok.sum() >= 3 and np.std(mean[ok]) > 0:
        a, b = pd.Series(mean[ok]), pd.Series(true[ok])
        out.update(mae=float(np.abs(mean[ok] - true[ok]).mean()), pearson=float(a.corr(b)),
                   spearman=float(a.corr(b, method="spearman")))  # fmt: skip
    return out
