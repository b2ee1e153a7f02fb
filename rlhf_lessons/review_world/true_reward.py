"""The ground-truth reward of the review world: VADER's compound sentiment score.

In the DPO paper's controlled-sentiment experiment (Rafailov et al. 2023, arXiv 2305.18290,
section 6.1) the "true" reward is a sentiment classifier (siebert/sentiment-roberta-large-
english) applied to the review: it is known exactly, so every method's result can be measured
on it, including methods that never see it and learn from preferences instead. We use VADER
(Hutto & Gilbert 2014, "VADER: A Parsimonious Rule-based Model for Sentiment Analysis of Social
Media Text"), a lexicon of ~7,500 rated words plus rules for intensifiers ("very"), negation
("not bad"), contrast ("..., but ..." weighs the part after "but" more) and "!". It ships with
the ``vaderSentiment`` wheel, runs offline in microseconds per sentence, and its compound score
is a number in [-1, 1] (the normalised sum of the word valences). The words of
:mod:`rlhf_lessons.review_world.grammar` that carry sentiment are all in its lexicon.

**What is scored: the prompt and the completion together.** A completion alone is often a
fragment whose sentiment depends on the prefix: after the prompt "the plot was not" the
completion "bad at all ." is praise, and after "the acting was superb , but" the completion
decides the verdict. VADER's negation and "but" rules only work when they see that context. It
is also what the DPO paper, lm-human-preferences and TRL's sentiment example do (the classifier
reads query + response). The prompt is the same for every completion of it, so comparisons
between completions of one prompt are about the completion. Use :func:`reward_of` for (prompt,
completion) pairs; it joins them exactly as :func:`rlhf_lessons.lm.generate`'s texts are meant
to be joined.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch

# VADER's convention (up to the boundary): above 0.05 positive, below -0.05 negative
POSITIVE_THRESHOLD = 0.05


@functools.cache
def _analyzer():
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError as err:
        raise ImportError(
            "the ground-truth reward needs VADER: pip install 'vaderSentiment>=3.3' "
            f"(or pip install -e '.[lm]') ({err})"
        ) from err
    return SentimentIntensityAnalyzer()


@functools.lru_cache(maxsize=1 << 17)
def _compound(text: str) -> float:
    """VADER's compound score of one text, remembered: a policy repeats its completions, and
    each score costs about a millisecond."""
    return _analyzer().polarity_scores(text)["compound"]


def _check_texts(texts, name: str = "texts") -> list[str]:
    if isinstance(texts, str):
        raise TypeError(f"{name} must be a list of strings, not one string: pass [{name}]")
    texts = list(texts)
    if not texts:
        raise ValueError(f"{name} is empty: pass at least one text to score")
    for i, t in enumerate(texts):
        if isinstance(t, float) and math.isnan(t):
            raise ValueError(
                f"{name}[{i}] is NaN (a missing value?): pass a string for every text "
                "(use '' for an empty one)"
            )
        if not isinstance(t, str):
            raise TypeError(f"{name}[{i}] must be a string, got {type(t).__name__} ({t!r})")
    return texts


def true_reward(texts: Sequence[str]) -> torch.Tensor:
    """VADER compound score of each text: (N,) float32 in [-1, 1].

    Pass the whole review (prompt + completion, see the module docstring). An empty string
    scores 0 (no sentiment). Raises ``ValueError`` on an empty list or a NaN entry and
    ``TypeError`` on anything that is not a list of strings.
    """
    texts = _check_texts(texts)
    scores = torch.tensor([_compound(t) for t in texts])
    if torch.isnan(scores).any():  # VADER never does this; a broken install might
        bad = int(torch.isnan(scores).nonzero()[0, 0])
        raise ValueError(f"VADER returned NaN for texts[{bad}] = {texts[bad]!r}")
    return scores.float()


def join_prompt_completion(prompt: str, completion: str) -> str:
    """The review text of a (prompt, completion) pair: joined by one space (the tokenizer's
    canonical form), with no stray space when either part is empty."""
    return " ".join(part for part in (prompt.strip(), completion.strip()) if part)


def reward_of(prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
    """True reward of each (prompt, completion) pair, scoring the joined text. (N,), (N,) ->
    (N,) float32."""
    prompts = _check_texts(prompts, "prompts")
    completions = _check_texts(completions, "completions")
    if len(prompts) != len(completions):
        raise ValueError(f"got {len(prompts)} prompts but {len(completions)} completions")
    return true_reward(
        [join_prompt_completion(p, c) for p, c in zip(prompts, completions, strict=True)]
    )


def summarize(scores) -> dict[str, float]:
    """Distribution of reward scores: ``mean``, ``std`` and the fractions ``positive``
    (> 0.05), ``negative`` (< -0.05) and ``neutral`` (in between), VADER's thresholds.
    Takes any 1-D array-like of scores."""
    s = torch.as_tensor(scores, dtype=torch.float64).flatten()
    if s.numel() == 0:
        raise ValueError("scores is empty: pass at least one reward")
    if torch.isnan(s).any():
        raise ValueError("scores contains NaN")
    return {
        "mean": s.mean().item(),
        "std": s.std().item() if s.numel() > 1 else 0.0,
        "positive": (s > POSITIVE_THRESHOLD).double().mean().item(),
        "negative": (s < -POSITIVE_THRESHOLD).double().mean().item(),
        "neutral": (s.abs() <= POSITIVE_THRESHOLD).double().mean().item(),
    }
