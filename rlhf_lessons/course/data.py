"""The datasets the course ships in ``data/`` and their fixed splits.

``data/preferences/raw/*.jsonl`` hold the hand-written ranked preference records (CC0; see
``data/preferences/README.md``). :func:`make_preference_split` derives the fixed train /
held-out split from them: within each category, every 5th record (by id) is held out, so the
held-out set has the same mix of categories and ranking sizes as training. The split files are
committed; a test checks that they equal what this function produces.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from rlhf_lessons.rewards.preference_data import Record, load_jsonl, write_jsonl

DATA_DIR = Path(__file__).resolve().parents[2] / "data"
PREFERENCES_DIR = DATA_DIR / "preferences"
SPLITS = ("train", "heldout")
HELDOUT_EVERY = 5


def data_dir() -> Path:
    """The repository's ``data/`` folder (where the shipped datasets live)."""
    if not DATA_DIR.is_dir():
        raise FileNotFoundError(
            f"{DATA_DIR} not found: the course data ships with the repository, so run from a "
            "clone (pip install -e .) rather than a bare wheel install"
        )
    return DATA_DIR


def make_preference_split() -> dict[str, list[Record]]:
    """Split the raw ranked records into ``{"train": [...], "heldout": [...]}``."""
    raw = sorted((data_dir() / "preferences" / "raw").glob("*.jsonl"))
    if not raw:
        raise FileNotFoundError(f"no raw preference files in {PREFERENCES_DIR / 'raw'}")
    records = [record for path in raw for record in load_jsonl(path, kind="ranked")]
    train, heldout = validation_split(records, HELDOUT_EVERY)  # the same rule
    return {"train": train, "heldout": heldout}


def write_preference_split() -> dict[str, Path]:
    """(Re)write ``data/preferences/{train,heldout}.jsonl`` from the raw files."""
    split = make_preference_split()
    return {name: write_jsonl(records, PREFERENCES_DIR / f"{name}.jsonl")
            for name, records in split.items()}  # fmt: skip


def load_preferences(split: str = "train") -> list[Record]:
    """The shipped ranked preference records of one split ("train" or "heldout").

    Each record: ``{"id", "category", "prompt", "ranked_outputs": [best, ..., worst]}``, with
    categories helpfulness, concision, factuality and refusal.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return load_jsonl(data_dir() / "preferences" / f"{split}.jsonl", kind="ranked")


def validation_split(
    records: list[Record], every: int = HELDOUT_EVERY
) -> tuple[list[Record], list[Record]]:
    """Split training records into ``(fit, validation)`` for choosing settings: within each
    category, every ``every``-th record (by id) is validation, as the held-out split is made
    from the raw files. The held-out split stays for reporting only."""
    if every < 2:
        raise ValueError(f"every must be >= 2, got {every}")
    by_category: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        by_category[record.get("category", "all")].append(record)
    fit: list[Record] = []
    validation: list[Record] = []
    for category in sorted(by_category):
        ordered = sorted(by_category[category], key=lambda r: r.get("id", ""))
        for i, record in enumerate(ordered):
            (validation if i % every == every - 1 else fit).append(record)
    return fit, validation
