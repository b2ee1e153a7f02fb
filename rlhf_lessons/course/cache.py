"""Where the course caches converted models, trained toy models and finished runs."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def is_checkout(folder: Path) -> bool:
    """Whether ``folder`` holds the course's ``pyproject.toml``."""
    toml = folder / "pyproject.toml"
    try:
        return toml.is_file() and 'name = "rlhf-lessons"' in toml.read_text()
    except OSError:
        return False


def checkout_root() -> Path | None:
    """The course checkout this package was imported from (an editable install, ``make``'s
    ``.venv``, ``PYTHONPATH`` or Colab's clone), found from the package's own location: the
    folder above ``rlhf_lessons/`` when it holds the course's ``pyproject.toml``. ``None`` for
    an installed wheel."""
    folder = Path(__file__).resolve().parents[2]
    return folder if is_checkout(folder) else None


def write_atomically(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file: a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def cache_dir() -> Path:
    """Where converted models, the trained review model and finished runs are kept.

    ``$RLHF_LESSONS_CACHE`` when set; else ``<checkout>/.cache`` when the package is imported
    from a checkout (:func:`checkout_root`), so ``make lessons``, ``make lab`` and a Jupyter
    started by hand in the checkout share one cache whatever their working folder; else
    ``~/.cache/rlhf_lessons``.
    """
    if os.environ.get("RLHF_LESSONS_CACHE"):
        return Path(os.environ["RLHF_LESSONS_CACHE"])
    root = checkout_root()
    if root is not None:
        return root / ".cache"
    return Path.home() / ".cache" / "rlhf_lessons"


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
