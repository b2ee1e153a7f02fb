"""Label Studio tasks and exports, and annotator agreement (lesson 04's collection step)."""

import copy
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from rlhf_lessons.rewards.label_studio import agreement, import_label_studio, label_studio_tasks
from rlhf_lessons.rewards.preference_data import PreferenceDataError, validate_ranked

LABEL_STUDIO = Path(__file__).resolve().parents[1] / "data" / "label_studio"
EXPORT = LABEL_STUDIO / "example_export.json"

RANKED = {"id": 7, "prompt": "Name a prime.", "ranked_outputs": ["2", "9", "x"], "category": "math"}


# --- Label Studio ----------------------------------------------------------------------------


def load_export():
    return json.loads(EXPORT.read_text(encoding="utf-8"))


def test_import_example_export():
    records = import_label_studio(EXPORT)
    counts = (records.n_tasks, records.n_cancelled, records.n_unlabelled)
    assert (len(records), *counts) == (5, 4, 1, 0)
    assert [(r["task_id"], r["annotator"]) for r in records] == [
        (101, 1), (102, 1), (102, 2), (103, 2), (104, 1),
    ]  # fmt: skip
    # task 101 was ranked r3, r1, r2: ids map to the item bodies, order kept
    items = {item["id"]: item["body"] for item in load_export()[0]["data"]["items"]}
    assert records[0]["ranked_outputs"] == [items["r3"], items["r1"], items["r2"]]
    assert records[0]["prompt"] == "How do I reverse a list in Python?"
    assert records[0]["ranked_outputs"][0].startswith("For a reversed copy")
    assert records[4]["ranked_outputs"][1] == "Où est la gare ?"
    for record in records:
        validate_ranked(record)
    assert import_label_studio(load_export()) == records  # a loaded list works too
    assert "5 rankings from 4 tasks" in records.summary()


def test_example_export_shows_disagreement():
    records = import_label_studio(EXPORT)
    first, second = [r for r in records if r["task_id"] == 102]
    # r2, r4, r1, r3 against r4, r2, r3, r1: the pairs (r2, r4) and (r1, r3) flip
    assert agreement(first, second) == pytest.approx(4 / 6)
    assert agreement(first, first) == 1.0


def test_example_export_matches_template():
    root = ET.parse(LABEL_STUDIO / "ranker_template.xml").getroot()
    tags = {child.tag: child.attrib for child in root}
    assert tags["Text"]["value"] == "$prompt" and tags["List"]["value"] == "$items"
    assert tags["Ranker"]["toName"] == tags["List"]["name"]
    for task in load_export():
        for annotation in task["annotations"]:
            for result in annotation["result"]:
                assert result["from_name"] == tags["Ranker"]["name"]
                assert result["to_name"] == tags["List"]["name"]


def set_ranking(tasks, task_index, ids):
    tasks[task_index]["annotations"][0]["result"][0]["value"]["ranker"] = {"rank": ids}
    return tasks


def test_import_errors_name_task_and_annotation():
    with pytest.raises(PreferenceDataError, match=r"task 101 annotation 1: .*missing ids \['r2'\]"):
        import_label_studio(set_ranking(load_export(), 0, ["r3", "r1"]))
    with pytest.raises(PreferenceDataError, match=r"task 101 annotation 1: .*unknown ids \['r9'\]"):
        import_label_studio(set_ranking(load_export(), 0, ["r3", "r1", "r2", "r9"]))
    with pytest.raises(PreferenceDataError, match=r"task 101 annotation 1: .*exactly once"):
        import_label_studio(set_ranking(load_export(), 0, ["r3", "r1", "r2", "r1"]))
    tasks = load_export()
    tasks[3]["annotations"][0]["result"] = []
    with pytest.raises(PreferenceDataError, match="task 104 annotation 4: no ranker result"):
        import_label_studio(tasks)
    tasks = load_export()
    tasks[0]["annotations"][0]["result"][0]["value"]["ranker"] = {"best": ["r3"], "_": ["r1"]}
    with pytest.raises(PreferenceDataError, match="task 101 annotation 1: .*without Buckets"):
        import_label_studio(tasks)
    tasks = load_export()
    tasks[0]["data"]["question"] = tasks[0]["data"].pop("prompt")
    with pytest.raises(PreferenceDataError, match="task 101: field 'data.prompt' is missing"):
        import_label_studio(tasks)
    assert import_label_studio(tasks[:1], prompt_field="question")[0]["prompt"].startswith("How")


def test_import_ranker_name_and_list_keyed_results():
    tasks = load_export()[:1]
    result = tasks[0]["annotations"][0]["result"]
    # some documentation keys the ids by the List's name; the only key is used either way
    result[0]["value"]["ranker"] = {"response_choices": ["r2", "r1", "r3"]}
    assert import_label_studio(tasks)[0]["ranked_outputs"][0].startswith("Call items.sort")
    result.append({**result[0], "from_name": "rank_style"})
    with pytest.raises(PreferenceDataError, match="2 ranker results.*ranker_name="):
        import_label_studio(tasks)
    assert len(import_label_studio(tasks, ranker_name="rank")) == 1


def test_label_studio_tasks_shuffle_and_import_back():
    records = [
        {"prompt": f"q{n}", "responses": [f"best {n}", f"middle {n}", f"worst {n}"], "id": n}
        for n in range(6)
    ]
    tasks = label_studio_tasks(records, seed=1)
    assert tasks == label_studio_tasks(records, seed=1)  # seeded
    assert tasks != label_studio_tasks(records, seed=2)
    displayed = [[item["body"] for item in t["data"]["items"]] for t in tasks]
    assert any(d != r["responses"] for d, r in zip(displayed, records, strict=True))
    for task, record in zip(tasks, records, strict=True):
        assert sorted(i["body"] for i in task["data"]["items"]) == sorted(record["responses"])
        assert [i["id"] for i in task["data"]["items"]] == ["r1", "r2", "r3"]
        assert task["data"]["prompt"] == record["prompt"] and task["data"]["id"] == record["id"]
    # a labeller who ranks in model order gives back the original ranking
    for number, (task, record) in enumerate(zip(tasks, records, strict=True)):
        by_body = {item["body"]: item["id"] for item in task["data"]["items"]}
        ids = [by_body[text] for text in record["responses"]]
        value = {"ranker": {"rank": ids}}
        result = {"from_name": "rank", "to_name": "response_choices", "type": "ranker"}
        task.update(id=number, annotations=[
            {"id": number, "completed_by": 1, "was_cancelled": False,
             "result": [{**result, "value": value}]}
        ])  # fmt: skip
    imported = import_label_studio(copy.deepcopy(tasks))
    assert [r["ranked_outputs"] for r in imported] == [r["responses"] for r in records]
    with pytest.raises(
        PreferenceDataError, match=r"records\[0\]: field 'responses\[1\]' duplicates"
    ):
        label_studio_tasks([{"prompt": "q", "responses": ["a", "a"]}])
    with pytest.raises(PreferenceDataError, match="responses_field='ranked_outputs'"):
        label_studio_tasks([RANKED])
    assert len(label_studio_tasks([RANKED], responses_field="ranked_outputs")) == 1


# --- agreement -------------------------------------------------------------------------------


def test_agreement_hand_computed():
    assert agreement(["a", "b", "c"], ["a", "b", "c"]) == 1.0
    assert agreement(["a", "b", "c", "d"], ["d", "c", "b", "a"]) == 0.0
    # one swap of neighbours in K=3: (a,b) flips, (a,c) and (b,c) agree
    assert agreement(["a", "b", "c"], ["b", "a", "c"]) == pytest.approx(2 / 3)
    # pooled over rankings: 3 agreed of 3 plus 0 of 1 = 3/4
    assert agreement([["a", "b", "c"], ["x", "y"]], [["a", "b", "c"], ["y", "x"]]) == 0.75
    assert agreement(RANKED, {**RANKED, "ranked_outputs": ["x", "9", "2"]}) == 0.0


def test_agreement_errors():
    with pytest.raises(
        PreferenceDataError, match="ranking 0: the two rankings hold different items"
    ):
        agreement(["a", "b"], ["a", "c"])
    with pytest.raises(ValueError, match="rankings_a has 2 rankings but rankings_b has 1"):
        agreement([["a", "b"], ["c", "d"]], [["a", "b"]])
    with pytest.raises(PreferenceDataError, match="appears twice"):
        agreement(["a", "a"], ["a", "a"])
