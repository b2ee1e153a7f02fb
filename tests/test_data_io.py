"""Reading your own data: files and datasets folders, TRL's formats, implicit prompts."""

import json

import pytest

from rlhf_lessons import data_io
from rlhf_lessons.course.data import data_dir
from rlhf_lessons.data_io import DataFormatError

SKY = [{"role": "user", "content": "What color is the sky?"}]
CHOSEN_MSGS = [*SKY, {"role": "assistant", "content": "It is blue."}]
REJECTED_MSGS = [*SKY, {"role": "assistant", "content": "It is green."}]
PAIR = {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon."}


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# --- reading -----------------------------------------------------------------------------------


def test_reads_jsonl_json_and_lists(tmp_path):
    records = [PAIR, {**PAIR, "chosen": "Paris, of course."}]
    assert data_io.read_records(_jsonl(tmp_path / "a.jsonl", records)) == records
    (tmp_path / "b.json").write_text(json.dumps(records))
    assert data_io.read_records(tmp_path / "b.json") == records
    assert data_io.read_records(records, limit=1) == records[:1]


def test_reads_saved_datasets_folders_and_their_splits(tmp_path):
    import datasets

    ds = datasets.Dataset.from_list([PAIR, PAIR])
    ds.save_to_disk(str(tmp_path / "one"))
    assert data_io.read_records(tmp_path / "one") == [PAIR, PAIR]
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "dd"))
    assert len(data_io.read_records(tmp_path / "dd", split="test")) == 1
    with pytest.raises(DataFormatError, match=r"splits \['test', 'train'\].*--split"):
        data_io.read_records(tmp_path / "dd", split="validation")
    assert data_io.read_records(ds) == [PAIR, PAIR]


def test_reading_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        data_io.read_records(tmp_path / "missing.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a"}\n{"prompt": \n')
    with pytest.raises(DataFormatError, match="bad.jsonl line 2: invalid JSON"):
        data_io.read_records(tmp_path / "bad.jsonl")
    (tmp_path / "plain").mkdir()
    _jsonl(tmp_path / "plain" / "train.jsonl", [PAIR])
    with pytest.raises(DataFormatError, match="did you mean .*train.jsonl"):
        data_io.read_records(tmp_path / "plain")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(DataFormatError, match="unknown file type '.txt'"):
        data_io.read_records(tmp_path / "x.txt")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataFormatError, match="no records"):
        data_io.read_records(tmp_path / "empty.jsonl")


# --- formats -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "kind"),
    [
        (PAIR, "preference"),
        ({"chosen": "a b", "rejected": "a c"}, "preference"),
        ({"prompt": "p", "ranked_outputs": ["a", "b"]}, "ranked"),
        ({"prompt": "p", "completion": "c"}, "prompt_completion"),
        ({"messages": CHOSEN_MSGS}, "messages"),
        ({"prompt": SKY}, "prompt_only"),
        ({"text": "hello"}, "text"),
    ],
)
def test_record_kinds(record, kind):
    assert data_io.record_kind(record) == kind


def test_a_record_without_a_prompt_gets_the_fix():
    with pytest.raises(DataFormatError, match="'completion' but no 'prompt'; add the 'prompt'"):
        data_io.record_kind({"completion": "Paris."}, "data[3]")
    with pytest.raises(DataFormatError, match="no 'rejected'"):
        data_io.record_kind({"prompt": "p", "chosen": "a"})
    with pytest.raises(DataFormatError, match="match no known format"):
        data_io.record_kind({"question": "q", "answer": "a"})


def test_one_format_per_file():
    with pytest.raises(DataFormatError, match=r"data\[1\] is a ranked record but data\[0\]"):
        data_io.data_kind([PAIR, {"prompt": "p", "ranked_outputs": ["a", "b"]}])
    conversational = {"prompt": SKY, "chosen": CHOSEN_MSGS[1:], "rejected": REJECTED_MSGS[1:]}
    with pytest.raises(DataFormatError, match="conversational but data"):
        data_io.data_kind([PAIR, conversational])


# --- implicit prompts --------------------------------------------------------------------------

IMPLICIT = [
    {"chosen": "\n\nHuman: Hi there\n\nAssistant: Hello!",
     "rejected": "\n\nHuman: Hi there\n\nAssistant: Go away."},
    {"chosen": "The sky is blue", "rejected": "The sky is green"},
    {"chosen": CHOSEN_MSGS, "rejected": REJECTED_MSGS},
    {"chosen": "abc xyz", "rejected": "abc xy!"},
]  # fmt: skip


@pytest.mark.parametrize("record", IMPLICIT)
def test_extract_prompt_matches_trl(record):
    from trl import extract_prompt

    assert data_io.extract_prompt(record) == extract_prompt(record)


def test_extract_prompt_keeps_other_keys_and_refuses_what_cannot_be_split():
    out = data_io.extract_prompt({**IMPLICIT[1], "id": 7})
    assert out == {"prompt": "The sky is", "chosen": " blue", "rejected": " green", "id": 7}
    with pytest.raises(DataFormatError, match="share no prefix.*add a 'prompt' field"):
        data_io.extract_prompt({"chosen": "Yes.", "rejected": "No."}, "data[2]")
    with pytest.raises(DataFormatError, match="prefix of the other"):
        data_io.extract_prompt({"chosen": "Sure", "rejected": "Sure, here"})
    with pytest.raises(DataFormatError, match="both be strings or both lists"):
        data_io.extract_prompt({"chosen": "a", "rejected": REJECTED_MSGS})


def test_preference_pairs_from_every_preference_format():
    pairs = data_io.preference_pairs(IMPLICIT[:2])
    assert pairs[0]["prompt"] == "\n\nHuman: Hi there\n\nAssistant:"
    assert pairs[0]["chosen"] == " Hello!"
    conv = data_io.preference_pairs([IMPLICIT[2]])[0]
    assert conv["prompt"] == SKY and conv["chosen"] == CHOSEN_MSGS[1:]
    with pytest.raises(DataFormatError, match=r"data\[0\]: has no 'prompt'.*share no prefix"):
        data_io.preference_pairs([{"chosen": "Yes.", "rejected": "No."}])
    with pytest.raises(DataFormatError, match="needs 'chosen' and 'rejected'"):
        data_io.preference_pairs([{"prompt": "p", "completion": "c"}])


def test_rankings_give_all_pairs_or_best_vs_worst():
    records = data_io.read_records(data_dir() / "preferences" / "heldout.jsonl")
    ks = [len(r["ranked_outputs"]) for r in records]
    assert len(data_io.preference_pairs(records)) == sum(k * (k - 1) // 2 for k in ks)
    best = data_io.preference_pairs(records, ranked="best_vs_worst")
    assert len(best) == len(records)
    assert best[0]["chosen"] == records[0]["ranked_outputs"][0]
    assert best[0]["rejected"] == records[0]["ranked_outputs"][-1]


def test_ranked_records_for_reward_models():
    out = data_io.ranked_records([PAIR])
    assert out == [{"prompt": PAIR["prompt"], "ranked_outputs": ["Paris.", "Lyon."]}]
    conv = {"prompt": SKY, "chosen": CHOSEN_MSGS[1:], "rejected": REJECTED_MSGS[1:]}
    assert data_io.ranked_records([conv])[0]["ranked_outputs"] == ["It is blue.", "It is green."]
    two_turns = {**conv, "prompt": [*SKY, {"role": "assistant", "content": "?"}, *SKY]}
    with pytest.raises(DataFormatError, match="'prompt' has 3 turns"):
        data_io.ranked_records([two_turns])


def test_sft_records_from_each_format():
    assert data_io.sft_records([{"messages": CHOSEN_MSGS}]) == [
        {"prompt": SKY, "completion": "It is blue."}
    ]
    assert data_io.sft_records([PAIR])[0] == {"prompt": PAIR["prompt"], "completion": "Paris."}
    ranked = {"prompt": "p", "ranked_outputs": ["best", "worst"]}
    assert data_io.sft_records([ranked])[0]["completion"] == "best"
    with pytest.raises(DataFormatError, match="'text' records"):
        data_io.sft_records([{"text": "hello"}])
    with pytest.raises(DataFormatError, match="add a 'completion' field"):
        data_io.sft_records([{"prompt": "p"}])
    with pytest.raises(DataFormatError, match="must end with an assistant turn"):
        data_io.sft_records([{"messages": SKY}])


def test_prompts_are_distinct_and_in_order():
    records = [
        PAIR,
        {**PAIR, "chosen": "Paris!"},
        {"prompt": "Other?", "chosen": "a", "rejected": "b"},
    ]
    assert data_io.prompts(records) == ["Capital of France?", "Other?"]
    assert data_io.prompts([IMPLICIT[2]]) == [SKY]
    assert data_io.prompts([{"messages": CHOSEN_MSGS}]) == [SKY]


# --- lengths -----------------------------------------------------------------------------------


def test_length_report_counts_what_a_limit_cuts(word_tokenizer):
    tok = word_tokenizer("a b c d e".split())
    report = data_io.length_report(tok, ["a b c", "a"], ["d e", "d e e e"], 2, 3)
    assert (report.longest_prompt, report.longest_completion) == (3, 5)  # EOS counted
    assert (report.prompts_cut, report.completions_cut, report.cut) == (1, 1, 2)
    assert report.share_cut == 1.0
    assert data_io.length_report(tok, ["a b c", "a"], ["d", "d e"], 2, 3).share_cut == 0.5
    assert data_io.fit_lengths(report, None) == (3, 5)
    assert data_io.fit_lengths(report, 6) == (3, 3)  # completions keep 6 - 3, prompts whole
    assert data_io.fit_lengths(report, 100) == (3, 5)
