import json

import pytest

from rlhf_lessons.rewards.preference_data import (
    PreferenceDataError,
    best_vs_worst,
    from_dataset,
    load_jsonl,
    pairs_to_ranked,
    ranked_to_pairs,
    to_conversational,
    to_dataset,
    to_standard,
    validate_pair,
    validate_ranked,
    write_jsonl,
)

RANKED = {"id": 7, "prompt": "Name a prime.", "ranked_outputs": ["2", "9", "x"], "category": "math"}


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


# --- ranked <-> pairs ------------------------------------------------------------------------


def test_ranked_to_pairs_k3_hand_checked():
    pairs = ranked_to_pairs(RANKED)
    assert [(p["chosen_rank"], p["rejected_rank"]) for p in pairs] == [(0, 1), (0, 2), (1, 2)]
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("2", "9"), ("2", "x"), ("9", "x")]
    for p in pairs:
        assert p["prompt"] == "Name a prime." and p["id"] == 7 and p["category"] == "math"
        assert validate_pair(p) == "standard"


def test_ranked_to_pairs_k4_gives_six():
    pairs = ranked_to_pairs({"prompt": "p", "ranked_outputs": ["a", "b", "c", "d"]})
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [
        ("a", "b"), ("a", "c"), ("a", "d"), ("b", "c"), ("b", "d"), ("c", "d"),
    ]  # fmt: skip


def test_ranked_to_pairs_refuses_to_overwrite_keys():
    with pytest.raises(PreferenceDataError, match="'chosen' would be overwritten"):
        ranked_to_pairs({**RANKED, "chosen": "2"})


def test_ranked_pairs_ranked_round_trip():
    records = [
        RANKED,
        {"prompt": "Say hi.", "ranked_outputs": ["Hi!", "hello", "..."], "id": 8},
        {"prompt": "Two of them.", "ranked_outputs": ["yes", "no"], "id": 9},
        {"prompt": "Four.", "ranked_outputs": ["d", "c", "b", "a"], "id": 10},
    ]
    pairs = [p for r in records for p in ranked_to_pairs(r)]
    ranked, leftover = pairs_to_ranked(pairs)
    assert ranked == records
    assert leftover == []
    # the order of the pairs does not matter
    ranked, _ = pairs_to_ranked(reversed(pairs))
    assert sorted(ranked, key=lambda r: r["id"]) == records


def test_chain_of_pairs_is_a_total_order():
    # a > b and b > c determine a > b > c without the a > c pair
    pairs = [
        {"prompt": "q", "chosen": "b", "rejected": "c"},
        {"prompt": "q", "chosen": "a ", "rejected": "b"},  # "a " and "a" are one response
        {"prompt": "q", "chosen": "a", "rejected": "b"},  # duplicates are harmless
    ]
    ranked, leftover = pairs_to_ranked(pairs)
    assert ranked == [{"prompt": "q", "ranked_outputs": ["a ", "b", "c"]}]
    assert leftover == []


def test_partial_orders_stay_pairs():
    best_vs_each = [
        {"prompt": "q1", "chosen": "best", "rejected": "x", "id": 1},
        {"prompt": "q2", "chosen": "u", "rejected": "v", "id": 2},
        {"prompt": "q1", "chosen": "best", "rejected": "y", "id": 3},
        {"prompt": "q3", "chosen": "a", "rejected": "b", "id": 4},  # disconnected from c > d:
        {"prompt": "q3", "chosen": "c", "rejected": "d", "id": 5},  # no total order either
    ]
    ranked, leftover = pairs_to_ranked(best_vs_each)
    assert ranked == [{"prompt": "q2", "ranked_outputs": ["u", "v"], "id": 2}]
    assert [p["id"] for p in leftover] == [1, 3, 4, 5]  # input order
    assert leftover[0] == best_vs_each[0]


def test_extra_keys_that_differ_within_a_group_are_dropped():
    pairs = [
        {"prompt": "q", "chosen": "a", "rejected": "b", "id": 1, "source": "lab"},
        {"prompt": "q", "chosen": "b", "rejected": "c", "id": 2, "source": "lab"},
    ]
    ranked, _ = pairs_to_ranked(pairs)
    assert ranked == [{"prompt": "q", "ranked_outputs": ["a", "b", "c"], "source": "lab"}]


def test_two_cycle_is_reported():
    pairs = [
        {"prompt": "Which colour is the sky on a clear day at noon?", "chosen": "a", "rejected": "b"},
        {"prompt": "Which colour is the sky on a clear day at noon?", "chosen": "b", "rejected": "a"},
    ]  # fmt: skip
    with pytest.raises(PreferenceDataError) as info:
        pairs_to_ranked(pairs)
    message = str(info.value)
    assert "'Which colour is the sky on a clear da...'" in message  # prompt, truncated
    assert "'a' > 'b' > 'a'" in message
    assert "pairs[0], pairs[1]" in message


def test_three_cycle_is_reported():
    pairs = [
        {"prompt": "q", "chosen": "x", "rejected": "y"},
        {"prompt": "other", "chosen": "k", "rejected": "l"},
        {"prompt": "q", "chosen": "y", "rejected": "z"},
        {"prompt": "q", "chosen": "z", "rejected": "x"},
    ]
    with pytest.raises(PreferenceDataError, match=r"'x' > 'y' > 'z' > 'x' \(from pairs\[0\], pairs\[2\], pairs\[3\]\)"):  # fmt: skip
        pairs_to_ranked(pairs)


def test_group_by_annotator_keeps_disagreements_apart():
    a = ranked_to_pairs({"prompt": "q", "ranked_outputs": ["x", "y", "z"], "annotator": 1})
    b = ranked_to_pairs({"prompt": "q", "ranked_outputs": ["y", "x", "z"], "annotator": 2})
    with pytest.raises(PreferenceDataError, match="group_by=\\('prompt', 'annotator'\\)"):
        pairs_to_ranked(a + b)
    ranked, leftover = pairs_to_ranked(a + b, group_by=("prompt", "annotator"))
    assert [r["ranked_outputs"] for r in ranked] == [["x", "y", "z"], ["y", "x", "z"]]
    assert leftover == []


def test_pairs_to_ranked_needs_standard_pairs():
    pair = to_conversational({"prompt": "q", "chosen": "a", "rejected": "b"})
    with pytest.raises(PreferenceDataError, match=r"pairs\[0\].*to_standard"):
        pairs_to_ranked([pair])


# --- standard <-> conversational -------------------------------------------------------------


def test_standard_conversational_round_trip():
    pair = {"prompt": "2+2?", "chosen": "4", "rejected": "5", "id": "a1", "category": "math"}
    conv = to_conversational(pair)
    assert conv == {
        "prompt": [user("2+2?")],
        "chosen": [assistant("4")],
        "rejected": [assistant("5")],
        "id": "a1",
        "category": "math",
    }
    assert validate_pair(conv) == "conversational"
    assert to_standard(conv) == pair
    assert to_conversational(conv) == conv
    assert to_standard(pair) == pair


def test_system_message_round_trip():
    conv = {
        "prompt": [{"role": "system", "content": "Be brief."}, user("2+2?")],
        "chosen": [assistant("4")],
        "rejected": [assistant("Four, because...")],
        "id": 3,
    }
    flat = to_standard(conv)
    assert flat == {"prompt": "2+2?", "chosen": "4", "rejected": "Four, because...", "id": 3,
                    "system": "Be brief."}  # fmt: skip
    assert to_conversational(flat) == conv
    plain = {k: v for k, v in flat.items() if k != "system"}
    assert to_conversational(plain, system="Be brief.") == conv
    with pytest.raises(PreferenceDataError, match="differs from system="):
        to_conversational(flat, system="Be verbose.")
    with pytest.raises(PreferenceDataError, match="already has the system message"):
        to_conversational(conv, system="Be verbose.")


def test_to_standard_refuses_lossy_flattening():
    multi_turn = {
        "prompt": [user("Hi"), assistant("Hello!"), user("2+2?")],
        "chosen": [assistant("4")],
        "rejected": [assistant("5")],
    }
    with pytest.raises(PreferenceDataError, match=r"field 'prompt' has the turns \['user', 'assistant', 'user'\].*apply_chat_template"):  # fmt: skip
        to_standard(multi_turn)
    two_replies = {
        "prompt": [user("2+2?")],
        "chosen": [assistant("4"), user("sure?"), assistant("yes")],
        "rejected": [assistant("5")],
    }
    with pytest.raises(PreferenceDataError, match="field 'chosen' has the turns"):
        to_standard(two_replies)
    named = {
        "prompt": [{"role": "user", "content": "2+2?", "name": "ann"}],
        "chosen": [assistant("4")],
        "rejected": [assistant("5")],
    }
    with pytest.raises(PreferenceDataError, match=r"prompt\[0\]' has keys besides role and content \(name\)"):  # fmt: skip
        to_standard(named)


# --- validation ------------------------------------------------------------------------------

WHERE = "train.jsonl line 17"
CONV = {"prompt": [user("q")], "chosen": [assistant("a")], "rejected": [assistant("b")]}


@pytest.mark.parametrize(
    ("record", "match"),
    [
        ({"prompt": "q", "rejected": "b"}, "field 'chosen' is missing"),
        ({"prompt": "  \n", "chosen": "a", "rejected": "b"}, "field 'prompt' is empty or whitespace-only"),
        ({"prompt": "q", "chosen": 3, "rejected": "b"}, "field 'chosen' is a int but 'prompt' is a str"),
        ({"prompt": None, "chosen": "a", "rejected": "b"}, "field 'prompt' must be a string .* got NoneType"),
        ({"prompt": "q", "chosen": " a", "rejected": "a "}, "field 'rejected' is identical to 'chosen'"),
        ({**CONV, "prompt": ["q"]}, r"field 'prompt\[0\]' must be a message dict"),
        ({**CONV, "prompt": [{"role": "human", "content": "q"}]}, r"field 'prompt\[0\].role' is 'human'.*'system', 'user', 'assistant'"),
        ({**CONV, "prompt": [{"role": "user"}]}, r"field 'prompt\[0\].content' is missing"),
        ({**CONV, "chosen": [{"role": "assistant", "content": ["a"]}]}, r"field 'chosen\[0\].content' must be a string, got list"),
        ({**CONV, "rejected": [assistant(" ")]}, r"field 'rejected\[0\].content' is empty"),
        ({**CONV, "rejected": []}, "field 'rejected' is an empty list of messages"),
        ({**CONV, "chosen": "a"}, "field 'chosen' is a str but 'prompt' is a list"),
        ({**CONV, "chosen": [user("q"), assistant("a")]}, r"field 'chosen\[0\].role' is 'user'.*extract_prompt"),
        ({**CONV, "rejected": [assistant(" a")]}, "field 'rejected' is identical"),
        ({"prompt": "q", "ranked_outputs": ["a", "b"]}, "field 'chosen' is missing.*looks like a ranked record: use validate_ranked"),
        (["q", "a", "b"], "expected a dict .* got list"),
    ],
)  # fmt: skip
def test_validate_pair_errors(record, match):
    with pytest.raises(PreferenceDataError, match=match) as info:
        validate_pair(record, where=WHERE)
    assert str(info.value).startswith(WHERE + ": ")


@pytest.mark.parametrize(
    ("record", "match"),
    [
        ({"ranked_outputs": ["a", "b"]}, "field 'prompt' is missing"),
        ({"prompt": "q"}, "field 'ranked_outputs' is missing"),
        ({"prompt": "q", "ranked_outputs": ["a"]}, "field 'ranked_outputs' has 1 response.*K >= 2"),
        ({"prompt": "q", "ranked_outputs": "ab"}, "field 'ranked_outputs' must be a list"),
        ({"prompt": "q", "ranked_outputs": ["a", "b", " a\n"]}, r"field 'ranked_outputs\[2\]' duplicates ranked_outputs\[0\]"),
        ({"prompt": "q", "ranked_outputs": ["a", "", "c"]}, r"field 'ranked_outputs\[1\]' is empty"),
        ({"prompt": "q", "ranked_outputs": ["a", 2]}, r"field 'ranked_outputs\[1\]' must be a string, got int"),
        ({"prompt": [user("q")], "ranked_outputs": ["a", "b"]}, "field 'prompt' must be a string, got list"),
        ({"prompt": "q", "chosen": "a", "rejected": "b"}, "looks like a pairwise record: use validate_pair"),
    ],
)  # fmt: skip
def test_validate_ranked_errors(record, match):
    with pytest.raises(PreferenceDataError, match=match) as info:
        validate_ranked(record, where=WHERE)
    assert str(info.value).startswith(WHERE + ": ")


def test_valid_records_pass():
    assert validate_pair({"prompt": "q", "chosen": "a", "rejected": "b", "x": 1}) == "standard"
    assert validate_pair(CONV) == "conversational"
    validate_ranked(RANKED)


# --- JSONL and datasets ----------------------------------------------------------------------


def test_write_and_load_jsonl(tmp_path):
    pairs = [{"prompt": "Où est la gare ?", "chosen": "Là-bas.", "rejected": "Non.", "id": 1}, CONV]
    path = write_jsonl(pairs, tmp_path / "sub" / "dir" / "pairs.jsonl")
    text = path.read_text(encoding="utf-8")
    assert "Où est la gare ?" in text and len(text.splitlines()) == 2  # not \u-escaped
    assert load_jsonl(path) == pairs
    ranked_path = write_jsonl([RANKED, RANKED], tmp_path / "ranked.jsonl")
    assert load_jsonl(ranked_path) == [RANKED, RANKED]


def test_load_jsonl_reports_the_line(tmp_path):
    path = tmp_path / "train.jsonl"
    good = json.dumps({"prompt": "q", "ranked_outputs": ["a", "b"]})
    bad = json.dumps({"prompt": "q", "ranked_outputs": ["a", "b", "   "]})
    path.write_text(f"{good}\n\n{good}\n{bad}\n", encoding="utf-8")  # line 2 is blank
    with pytest.raises(PreferenceDataError, match=r"^train.jsonl line 4: field 'ranked_outputs\[2\]' is empty"):  # fmt: skip
        load_jsonl(path)


def test_load_jsonl_invalid_json_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + '\n{"prompt": "q", "chosen": \n',
        encoding="utf-8",
    )  # fmt: skip
    with pytest.raises(PreferenceDataError, match=r"^pairs.jsonl line 2: invalid JSON"):
        load_jsonl(path)
    path.write_text('["q", "a", "b"]\n', encoding="utf-8")
    with pytest.raises(PreferenceDataError, match="line 1: expected a JSON object, got list"):
        load_jsonl(path)


def test_load_jsonl_kinds(tmp_path):
    pair = {"prompt": "q", "chosen": "a", "rejected": "b"}
    mixed = write_jsonl([pair, RANKED], tmp_path / "mixed.jsonl")
    with pytest.raises(PreferenceDataError, match="mixed.jsonl line 2: a ranked record in a file whose first record \\(line 1\\) is pairwise"):  # fmt: skip
        load_jsonl(mixed)
    with pytest.raises(PreferenceDataError, match="line 1: field 'ranked_outputs' is missing"):
        load_jsonl(mixed, kind="ranked")
    unknown = write_jsonl([{"prompt": "q", "response": "a"}], tmp_path / "unknown.jsonl")
    with pytest.raises(PreferenceDataError, match="unknown.jsonl line 1: cannot tell"):
        load_jsonl(unknown)
    with pytest.raises(PreferenceDataError, match="field 'chosen' is missing"):
        load_jsonl(unknown, kind="pairwise")
    with pytest.raises(ValueError, match="kind must be"):
        load_jsonl(unknown, kind="pairs")
    # a byte-order mark (Windows editors) does not break the first line
    bom = tmp_path / "bom.jsonl"
    bom.write_text(json.dumps(pair) + "\n", encoding="utf-8-sig")
    assert load_jsonl(bom) == [pair]


def test_dataset_round_trips():
    standard = [{"prompt": "q", "chosen": "a", "rejected": "b", "id": i} for i in range(3)]
    conversational = [to_conversational(p, system="Be brief.") for p in standard]
    ranked = [RANKED, {**RANKED, "ranked_outputs": ["a", "b"], "id": 8}]
    for records in (standard, conversational, ranked):
        ds = to_dataset(records)
        assert len(ds) == len(records)
        assert from_dataset(ds) == records


def test_dataset_errors():
    import datasets

    with pytest.raises(PreferenceDataError, match=r"records\[1\]: keys differ .*missing \['id'\]"):
        to_dataset([{"prompt": "q", "id": 1}, {"prompt": "q"}])
    dd = datasets.DatasetDict({"train": to_dataset([RANKED])})
    with pytest.raises(PreferenceDataError, match=r"pass one split, e.g. ds\['train'\]"):
        from_dataset(dd)


def test_best_vs_worst_takes_the_ends_of_each_ranking():
    pairs = best_vs_worst([RANKED, {"prompt": "q", "ranked_outputs": ["good", "bad"]}])
    assert [(p["chosen_rank"], p["rejected_rank"]) for p in pairs] == [(0, 2), (0, 1)]
    assert pairs[0]["chosen"] == RANKED["ranked_outputs"][0]
    assert pairs[0]["rejected"] == RANKED["ranked_outputs"][-1]
    with pytest.raises(PreferenceDataError, match=r"records\[0\]"):
        best_vs_worst([{"prompt": "q", "ranked_outputs": ["only one"]}])
