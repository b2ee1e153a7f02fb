"""The review world's named prompt splits: choose settings on one, report on another.

Lessons 05-11 train on review prefixes and evaluate policies by the true reward of their
completions. A setting chosen by looking at the prompts it is then reported on is tuned to
them; so the prompts are split, once, into three disjoint, fixed, named sets:

- :func:`test_prompts`: 64 distinct prefixes on which every lesson *reports* its results;
  nothing is ever chosen by looking at them;
- :func:`validation_prompts`: 64 other distinct prefixes for *choosing* settings (a beta, a
  learning rate, a checkpoint);
- :func:`train_prompts`: as many training prefixes as a run asks for, drawn with the run's seed,
  never one of the 128 above.

None of them is a sentence of the tiny model's training corpus (:func:`rlhf_lessons.
review_world.grammar.prompts`). The test and validation sets do not depend on any seed switch.
"""

from __future__ import annotations

import functools

from rlhf_lessons.review_world.grammar import prompts

TEST_SIZE = 64
VALIDATION_SIZE = 64
_TEST_STREAM, _VALIDATION_STREAM = 1_000_003, 1_000_033  # fixed, used for nothing else


@functools.cache
def _test() -> tuple[str, ...]:
    return tuple(prompts(TEST_SIZE, seed=_TEST_STREAM, distinct=True))


@functools.cache
def _validation() -> tuple[str, ...]:
    return tuple(prompts(VALIDATION_SIZE, seed=_VALIDATION_STREAM, distinct=True, exclude=_test()))


def test_prompts() -> list[str]:
    """The 64 report-only prefixes (fixed)."""
    return list(_test())


def validation_prompts() -> list[str]:
    """The 64 prefixes for choosing settings (fixed, disjoint from the test set)."""
    return list(_validation())


def train_prompts(n: int, seed: int = 0) -> list[str]:
    """``n`` training prefixes drawn with ``seed`` (repeats possible), none in the test or
    validation set."""
    return prompts(n, seed=seed, exclude=_test() + _validation())
