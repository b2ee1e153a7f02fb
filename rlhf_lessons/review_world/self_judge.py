"""The review model as its own judge (lesson 10): vocabulary, formats, seed data, annotators.

Lesson 05's review model can only write reviews. To run the self-rewarding loop
(:mod:`rlhf_lessons.alignment.self_rewarding`) in the review world, where the true reward is
known, it must also grade reviews and write prompts. This module teaches it to:

- :func:`add_judge_vocabulary` gives it the few words the new tasks need (new ids at the end);
- :data:`REVIEW_JUDGE` and :data:`REVIEW_PROMPT_WRITER` are short formats for its 64
  positions: ``"judge : <review> grade :" -> "4"`` and ``"prompts : <p1> ; ... ; <p4> ;" ->
  "<p5>"``;
- :func:`review_seed_data` builds the paper's two seed sets from the model's own samples, as
  labelled by an **annotator**: instruction data (IFT, each prompt's best fluent answer) and
  evaluation data (EFT, a review -> its grade 0-5), plus prompt-writing examples.

**Who labels the seed data decides what the "self" in self-rewarding means.** The paper's seed
data are human rankings of Open Assistant answers; its evaluation is GPT-4 (AlpacaEval). Two
annotators here (both ``(prompts, completions) -> grades``):

- :func:`lexicon_grades`, the **lexicon annotator**: it counts the review grammar's positive
  and negative words (single-word entries of its ``POS_*`` / ``NEG_*`` lists), flips a word
  after "not" or "never", and ignores intensity, "!" and the weight VADER gives the clause after
  "but". It never calls VADER: a self-judge trained on it learns *someone else's* notion of a
  positive review, as the paper's judge learns the Open Assistant annotators'.
- :func:`true_reward_grades`: the true reward (VADER) binned to 0-5. A judge trained on it is a
  distilled reward model of the very reward the lesson evaluates with; "self-rewarding" with it
  is RLHF with a learned reward model in disguise. Use it for the ceiling, not for the loop.

:func:`judge_accuracy` measures a model as a judge of held-out reviews against the *true*
grades, whichever annotator it learned from.
"""

from __future__ import annotations

import copy
import functools
import math
import random
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from rlhf_lessons import lm
from rlhf_lessons.alignment.self_rewarding import (
    PromptWriterConfig,
    SelfRewardConfig,
    average_scores,
    judge_candidates,
)
from rlhf_lessons.judges.llm_judge import RewardPromptConfig
from rlhf_lessons.review_world.grammar import _NONTERMINAL, GRAMMAR
from rlhf_lessons.review_world.true_reward import join_prompt_completion, reward_of

#: ``(prompts, completions) -> grades``: an annotator of the seed data (integers 0-5).
Grader = Callable[[Sequence[str], Sequence[str]], list[int]]

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


# --- the annotators ------------------------------------------------------------------------------


def reward_to_grade(reward: float) -> int:
    """A true reward in [-1, 1] binned to the judge's 0-5 scale: round(2.5 (r + 1)), halves up
    ([-1, -0.8) -> 0, [-0.8, -0.4) -> 1, ..., [0.8, 1] -> 5)."""
    if not -1.0 <= reward <= 1.0:
        raise ValueError(f"reward must be in [-1, 1], got {reward}")
    # round(): 2.5 * (1 - 0.8) = 0.4999.. in floats
    return min(5, int(math.floor(round(2.5 * (reward + 1.0), 9) + 0.5)))


def true_reward_grades(prompts: Sequence[str], completions: Sequence[str]) -> list[int]:
    """The true reward (VADER on prompt + completion) binned to 0-5 (:func:`reward_to_grade`)."""
    return [reward_to_grade(float(r)) for r in reward_of(prompts, completions)]


_WORD_LISTS = ("ADJ", "NOUN", "VERB", "VERB_BASE", "VERB3", "VERB_PAST", "REACTION", "ADV_END")
NEGATORS = ("not", "never")
_CLAUSE_ENDS = (",", ".", "!", "and", "but", "yet", "while")


@functools.cache
def lexicon() -> tuple[frozenset[str], frozenset[str]]:
    """(positive words, negative words): the single-word entries of the grammar's ``POS_*`` and
    ``NEG_*`` word lists (adjectives, nouns, verbs, reactions, adverbs), minus any in both."""

    def words(polarity: str) -> set[str]:
        names = [f"{polarity}_{kind}" for kind in _WORD_LISTS] + [f"PERSON_{polarity}_ADJ"]
        entries = [a[0] if isinstance(a, tuple) else a for n in names for a in GRAMMAR.get(n, [])]
        return {e for e in entries if len(e.split()) == 1 and not _NONTERMINAL.match(e)}

    pos, neg = words("POS"), words("NEG")
    return frozenset(pos - neg), frozenset(neg - pos)


def lexicon_score(text: str) -> int:
    """#positive - #negative lexicon words in ``text``, "not" / "never" flipping the next polar
    word of its clause ("not bad at all" counts +1); see the module docstring."""
    pos, neg = lexicon()
    score, flip = 0, False
    for word in text.split():
        if word in NEGATORS:
            flip = True
        elif word in _CLAUSE_ENDS:
            flip = False
        elif word in pos or word in neg:
            value = 1 if word in pos else -1
            score, flip = score + (-value if flip else value), False
    return score


def lexicon_grades(prompts: Sequence[str], completions: Sequence[str]) -> list[int]:
    """The lexicon annotator's grades: 3 + :func:`lexicon_score` of prompt + completion, clipped
    to 0-5 (no sentiment word: 3, as VADER's 0 bins to 3)."""
    return [max(0, min(5, 3 + lexicon_score(join_prompt_completion(p, c))))
            for p, c in zip(prompts, completions, strict=True)]  # fmt: skip


# --- the seed data ---------------------------------------------------------------------------------


def review_seed_data(model, tokenizer, prompts: Sequence[str], grader: Grader,
                     fluency_fn: Callable[[str], bool], k: int = 4, max_new_tokens: int = 16,
                     min_grade: int = 4, seed: int = 0, batch_size: int = 512) -> dict:  # fmt: skip
    """The review world's seed data, from ``k`` samples of ``model`` for each prompt, labelled
    by ``grader`` (:func:`lexicon_grades` or :func:`true_reward_grades`; the paper: human
    rankings of Open Assistant answers):

    - ``ift`` (instruction data): each prompt's best-graded sample, kept when it is fluent
      (``fluency_fn`` of the whole review) and graded at least ``min_grade``;
    - ``eft`` (evaluation data): ``REVIEW_JUDGE`` prompts with one sample of each prompt
      (either polarity) and the grader's grade as the answer (a digit);
    - ``writing``: ``REVIEW_PROMPT_WRITER`` requests with 4 prompts as examples and a fifth as
      the answer.

    Records are ``{"prompt", "completion"}``; an EFT record also keeps ``review_prompt``,
    ``review_completion``, its ``grade`` and the ``true_grade`` (:func:`true_reward_grades`,
    for measuring a judge, never for training it)."""
    prompts = list(prompts)
    expanded = [p for p in prompts for _ in range(k)]
    gen = lm.generate(model, tokenizer, expanded, max_new_tokens=max_new_tokens,
                      batch_size=batch_size, seed=seed)  # fmt: skip
    grades = np.asarray(grader(expanded, gen.completions)).reshape(len(prompts), k)
    rng = random.Random(seed)
    ift, eft = [], []
    for i, p in enumerate(prompts):
        comps = gen.completions[i * k : (i + 1) * k]
        best = int(grades[i].argmax())
        if (comps[best].strip() and grades[i, best] >= min_grade
                and fluency_fn(join_prompt_completion(p, comps[best]))):  # fmt: skip
            ift.append({"prompt": p, "completion": comps[best]})
        j = rng.randrange(k)
        if comps[j].strip():
            eft.append({"prompt": REVIEW_JUDGE.format(p, comps[j]), "completion": str(grades[i, j]),
                        "review_prompt": p, "review_completion": comps[j],
                        "grade": int(grades[i, j])})  # fmt: skip
    true = true_reward_grades([r["review_prompt"] for r in eft],
                              [r["review_completion"] for r in eft])  # fmt: skip
    for record, grade in zip(eft, true, strict=True):
        record["true_grade"] = grade
    writer = REVIEW_PROMPT_WRITER
    writing = []
    for _ in range(len(prompts) // 2):
        shots = rng.sample(prompts, writer.n_shots + 1)
        writing.append({"prompt": writer.format(shots[:-1]), "completion": shots[-1].strip()})
    return {"ift": ift, "eft": eft, "writing": writing}


def judge_accuracy(model, tokenizer, eft: Sequence[dict], config: SelfRewardConfig) -> dict:
    """The model as a judge of held-out evaluation records (from :func:`review_seed_data`): each
    review judged ``config.judge_samples`` times and averaged, compared with its ``true_grade``.

    Returns ``parse_rate`` (judgements that gave a valid score), ``mae`` (mean absolute error of
    the average against the true grade), ``pearson`` and ``spearman`` (over reviews with a
    score), ``pair_accuracy`` (over every two reviews of different true grade, the fraction the
    judge orders the same way; ties of the judge count 1/2: the paper's "pairwise accuracy")
    and ``n``."""
    if not eft:
        raise ValueError("eft is empty")
    prompts = [r["review_prompt"] for r in eft]
    j = judge_candidates(model, tokenizer, prompts, [[r["review_completion"]] for r in eft], config)
    mean = average_scores(j.scores[:, 0, :])
    true = np.array([r["true_grade"] for r in eft], dtype=float)
    ok = ~np.isnan(mean)
    out = {"parse_rate": j.parse_rate, "n": len(eft), "mae": math.nan, "pearson": math.nan,
           "spearman": math.nan, "pair_accuracy": math.nan}  # fmt: skip
    if ok.sum() >= 3 and np.std(mean[ok]) > 0:
        a, b = pd.Series(mean[ok]), pd.Series(true[ok])
        out.update(mae=float(np.abs(mean[ok] - true[ok]).mean()), pearson=float(a.corr(b)),
                   spearman=float(a.corr(b, method="spearman")))  # fmt: skip
        dj = np.sign(mean[ok][:, None] - mean[ok][None, :])
        dt = np.sign(true[ok][:, None] - true[ok][None, :])
        pairs = dt != 0
        agree = np.where(dj == 0, 0.5, (dj == dt).astype(float))
        out["pair_accuracy"] = float(agree[pairs].mean())
    return out
