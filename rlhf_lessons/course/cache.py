"""Where the course caches converted models, trained toy models and finished runs."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def cache_dir() -> Path:
    """``$RLHF_LESSONS_CACHE`` or ``~/.cache/rlhf_lessons`` (the Makefile uses ``.cache/``)."""
    root = os.environ.get("RLHF_LESSONS_CACHE") or Path.home() / ".cache" / "rlhf_lessons"
    return Path(root)


@contextlib.contextmanager
def atomic_folder(target: str | os.PathLike) -> Iterator[Path]:
    """``with atomic_folder(target) as tmp:`` write files into ``tmp``; when the block ends
    without an error, ``tmp`` replaces ``target`` (an old ``target`` is removed). ``tmp`` lies
    beside ``target``, so the final rename is atomic, and an interrupted or failed write never
    leaves half a folder behind (the temporary folder is deleted)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def save_folder_atomically(
    target: Path, model, tokenizer, extra_files: dict[str, str] | None = None
) -> Path:
    """Save ``model`` and ``tokenizer`` (``save_pretrained``) plus ``extra_files`` (name -> text)
    as the folder ``target`` (:func:`atomic_folder`: an interrupted conversion or training run
    never leaves half a model in the cache)."""
    with atomic_folder(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
    return target
