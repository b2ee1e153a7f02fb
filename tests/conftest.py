import os

import pytest

# Tests never show progress bars and never touch the learner's cache.
os.environ.setdefault("RLHF_LESSONS_PROGRESS", "0")


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RLHF_LESSONS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"
