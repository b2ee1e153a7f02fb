"""Where the course caches converted models, trained toy models and finished runs."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$RLHF_LESSONS_CACHE`` or ``~/.cache/rlhf_lessons`` (the Makefile uses ``.cache/``)."""
    root = os.environ.get("RLHF_LESSONS_CACHE") or Path.home() / ".cache" / "rlhf_lessons"
    return Path(root)
