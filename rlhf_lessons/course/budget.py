"""The one switch that shrinks training budgets for CI.

A learner running a notebook gets the real result at the default settings. CI may set
``RLHF_LESSONS_FAST=1`` to run the same code paths on smaller budgets; a lesson uses
:func:`pick` for every number that the switch may change, so the difference is visible in
one place in each notebook.
"""

from __future__ import annotations

import os
from typing import TypeVar

T = TypeVar("T")

ENV_VAR = "RLHF_LESSONS_FAST"


def fast_mode() -> bool:
    """True when ``RLHF_LESSONS_FAST`` is set to 1/true/yes (case-insensitive)."""
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if value in ("", "0", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    raise ValueError(f"{ENV_VAR} must be 1/true/yes or 0/false/no (or unset), got {value!r}")


def pick(full: T, fast: T) -> T:
    """Return ``fast`` under ``RLHF_LESSONS_FAST=1`` and ``full`` otherwise."""
    return fast if fast_mode() else full
