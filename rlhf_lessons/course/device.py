"""Device and thread choice.

The course runs on a laptop CPU by default and uses a CUDA GPU when one is present. Small
networks (CartPole's 64-unit MLPs) run fastest on one thread: the work per call is too small to
split, and a second thread only adds synchronisation (and, on a busy machine, long stalls).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

_VALID = ("cpu", "cuda", "auto")


def get_device(prefer: str | None = None) -> torch.device:
    """Return the device to train on.

    ``prefer`` (or the ``RLHF_LESSONS_DEVICE`` environment variable) may be ``"cpu"``,
    ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (the default: CUDA when available, else CPU).
    """
    choice = (prefer or os.environ.get("RLHF_LESSONS_DEVICE") or "auto").lower()
    if choice.split(":")[0] not in _VALID:
        raise ValueError(
            f"device must be one of {_VALID} (or 'cuda:N'), got {choice!r}; "
            "set it with get_device('cpu') or RLHF_LESSONS_DEVICE=cpu"
        )
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            f"device {choice!r} was asked for but torch sees no CUDA GPU; use 'cpu' or 'auto'"
        )
    return torch.device(choice)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run a block with ``torch.set_num_threads(n)``, restoring the previous setting after.

    ``n=None`` leaves the thread count as it is, so a config's ``threads: int | None`` can be
    passed straight in: ``with torch_threads(cfg.threads): ...``.
    """
    if n is None:
        yield
        return
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"thread count must be a whole number >= 1 or None, got {n!r}")
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def lm_threads(default: int = 2) -> int:
    """Torch threads for the lessons' 135M-parameter model (SmolLM2), where a second core does
    speed up each matrix multiply: ``default`` (at most the cores there are), but 1 inside a
    parallel test worker (pytest-xdist sets ``PYTEST_XDIST_WORKER``; the notebook kernels it
    starts inherit it), where another worker already keeps the other core busy and two threads
    each would make both wait. ``RLHF_LESSONS_THREADS`` overrides both (``make lessons`` sets
    it to 1 in its kernels when it runs two notebooks at a time, with ``OMP_NUM_THREADS=1``)."""
    if os.environ.get("RLHF_LESSONS_THREADS"):
        value = os.environ["RLHF_LESSONS_THREADS"]
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"RLHF_LESSONS_THREADS must be a whole number >= 1, got {value!r}")
        return int(value)
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return 1
    return max(1, min(default, os.cpu_count() or 1))
