"""The one switch for every seed of the course: ``RLHF_LESSONS_SEEDS``.

A lesson's learning claim rests on several runs that differ only in their seed. The lesson asks
:func:`lesson_seeds` for them instead of writing ``range(5)``, so that anyone can rerun the
whole course on seeds nobody tuned on, and check that every claim still holds:

- unset: each lesson's own seeds, ``default_base, default_base + 1, ...``;
- ``RLHF_LESSONS_SEEDS=1000``: every lesson uses ``1000, 1001, ...`` instead (one number: the
  first seed);
- ``RLHF_LESSONS_SEEDS=7,19,23,41,57``: exactly these (at least as many as a lesson asks for;
  a lesson asking for 3 takes the first 3).

Data the lesson samples for a run (prompts, pairs, rollouts) is drawn with the run's seed too;
only the named evaluation splits (:mod:`rlhf_lessons.review_world.splits`) stay fixed.
"""

from __future__ import annotations

import os

ENV_VAR = "RLHF_LESSONS_SEEDS"


def _parse(value: str) -> list[int]:
    """``"1000"`` -> [1000]; ``"1,2,3"`` -> [1, 2, 3]."""
    parts = [p.strip() for p in value.replace(" ", ",").split(",") if p.strip()]
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        numbers = []
    if not numbers or any(n < 0 or n >= 2**32 for n in numbers):
        raise ValueError(
            f"{ENV_VAR} must be one whole number (the first seed, e.g. 1000) or a comma-separated "
            f"list of seeds in [0, 2**32) (e.g. 7,19,23), got {value!r}"
        )
    if len(set(numbers)) != len(numbers):
        raise ValueError(f"{ENV_VAR} lists a seed twice: {value!r}")
    return numbers


def lesson_seeds(n: int, default_base: int = 0) -> list[int]:
    """The ``n`` seeds of a lesson's repeated runs (see the module docstring)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a whole number >= 1, got {n!r}")
    value = os.environ.get(ENV_VAR, "").strip()
    if not value:
        return list(range(default_base, default_base + n))
    listed = _parse(value)
    if len(listed) == 1:  # the first seed
        return list(range(listed[0], listed[0] + n))
    if len(listed) < n:
        raise ValueError(
            f"{ENV_VAR} lists {len(listed)} seeds but this lesson needs {n}: list at least {n}, "
            "or give one number (the first seed)"
        )
    return listed[:n]


def lesson_seed(default: int = 0) -> int:
    """One seed (for a single demonstration run): the first of :func:`lesson_seeds`."""
    return lesson_seeds(1, default)[0]
