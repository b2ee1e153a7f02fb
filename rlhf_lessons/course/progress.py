"""Progress bars: tqdm in the terminal, a widget in Jupyter.

``RLHF_LESSONS_PROGRESS=0`` turns them off (useful in logs and tests).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm


def progress_enabled() -> bool:
    return os.environ.get("RLHF_LESSONS_PROGRESS", "1").strip().lower() not in ("0", "false", "no")


def progress(iterable: Iterable | None = None, **kwargs: Any) -> tqdm:
    """A tqdm bar (``tqdm.auto``) that respects ``RLHF_LESSONS_PROGRESS``.

    Accepts every tqdm keyword (``total``, ``desc``, ``unit``, ...).
    """
    # a caller's disable=True always wins; otherwise the environment switch decides
    kwargs["disable"] = bool(kwargs.get("disable")) or not progress_enabled()
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)
