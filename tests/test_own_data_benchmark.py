"""benchmarks/own_data.py's GRPO helpers: the validation split and the before/after summary."""

import importlib.util
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def own_data():
    spec = importlib.util.spec_from_file_location("own_data", ROOT / "benchmarks" / "own_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_validation_split_is_disjoint_fixed_and_complete(own_data, tmp_path):
    train, val = own_data.grpo_validation_split(tmp_path / "a")
    rows = lambda p: p.read_text().splitlines()  # noqa: E731
    assert len(rows(val)) == own_data.VALIDATION_PROMPTS
    assert not set(rows(train)) & set(rows(val))
    everything = (ROOT / "data" / "preferences" / "train.jsonl").read_text().splitlines()
    assert sorted(rows(train) + rows(val)) == sorted(everything)
    again = own_data.grpo_validation_split(tmp_path / "b")
    assert [rows(p) for p in again] == [rows(train), rows(val)]
    heldout = set((ROOT / "data" / "preferences" / "heldout.jsonl").read_text().splitlines())
    assert not heldout & set(rows(val))


def test_grpo_result_reads_before_after_and_the_paired_change(own_data, tmp_path):
    pd.DataFrame({"step": [0, 8], "reward": [0.5, 0.9], "kl": [0.0, 0.2], "length": [50, 40],
                  "reward_change": [None, 0.4], "reward_change_low": [None, 0.1],
                  "reward_change_high": [None, 0.7]}).to_csv(tmp_path / "evaluations.csv")  # fmt: skip
    got = own_data.grpo_result(tmp_path)
    assert got["reward_before"] == 0.5 and got["reward_after"] == 0.9
    assert (got["reward_change"], got["reward_change_low"], got["reward_change_high"]) == (
        0.4, 0.1, 0.7)  # fmt: skip
    assert got["kl_after"] == 0.2 and got["length_after"] == 40
