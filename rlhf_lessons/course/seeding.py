"""Seeding: one call makes a run repeatable.

Python's ``random``, NumPy and torch each keep their own generator; gymnasium environments take
their seed at ``env.reset(seed=...)`` (see :mod:`rlhf_lessons.rl.cartpole`). Seeding all of them is
what makes "5 of 5 seeds solve" a reproducible statement rather than an anecdote.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int) -> np.random.Generator:
    """Seed ``random``, NumPy's global generator and torch (CPU and CUDA) with ``seed``.

    Returns a fresh ``np.random.Generator`` seeded with the same value, for code that prefers
    an explicit generator to global state.
    """
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} ({seed!r})")
    seed = int(seed)
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    # Only affects subprocesses (the current interpreter's hash seed is fixed at start-up).
    os.environ["PYTHONHASHSEED"] = str(seed)
    return np.random.default_rng(seed)
