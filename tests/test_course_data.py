from collections import Counter

import pytest

from rlhf_lessons.course.data import load_preferences, make_preference_split
from rlhf_lessons.rewards.preference_data import ranked_to_pairs


def test_committed_split_is_the_derived_one():
    split = make_preference_split()
    assert load_preferences("train") == split["train"]
    assert load_preferences("heldout") == split["heldout"]


def test_split_sizes_and_balance():
    train, heldout = load_preferences("train"), load_preferences("heldout")
    assert (len(train), len(heldout)) == (256, 64)
    assert set(Counter(r["category"] for r in heldout).values()) == {16}
    assert not {r["id"] for r in train} & {r["id"] for r in heldout}
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in heldout}
    assert sum(len(ranked_to_pairs(r)) for r in train + heldout) == 1087


def test_bad_split_name():
    with pytest.raises(ValueError, match="split must be one of"):
        load_preferences("test")
