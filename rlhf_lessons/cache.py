"""Where the course caches converted models, trained toy models and finished runs."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$RLHF_LESSONS_CACHE`` or ``~/.cache/rlhf_lessons`` (the Makefile uses ``.cache/``)."""
    root = os.environ.get("RLHF_LESSONS_CACHE") or Path.home() / ".cache" / "rlhf_lessons"
    return Path(root)


def save_folder_atomically(
    target: Path, model, tokenizer, extra_files: dict[str, str] | None = None
) -> Path:
    """Save ``model`` and ``tokenizer`` (``save_pretrained``) plus ``extra_files`` (name -> text)
    as the folder ``target``.

    Everything is written to a temporary folder beside ``target`` and renamed at the end, so an
    interrupted conversion or training run never leaves half a model in the cache.
    """
    import shutil
    import tempfile

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
