"""Collecting rankings from people (lesson 04): Label Studio tasks and exports, and how often
annotators agree.

Rankings are collected in Label Studio (labelstud.io) with a ``List`` + ``Ranker`` labelling
config (``data/label_studio/ranker_template.xml``): the labeller sees a prompt and drags its
responses into order, best on top. :func:`label_studio_tasks` builds the tasks to import
(responses shuffled), and :func:`import_label_studio` turns a JSON export back into the course's
ranked records ``{"prompt", "ranked_outputs": [best, ..., worst], "task_id", "annotator"}``
(:mod:`rlhf_lessons.rewards.preference_data` converts them to pairs).

Humans disagree: InstructGPT (Ouyang et al. 2022, arXiv 2203.02155) reports labeller-labeller
agreement of about 73% on pairwise comparisons, and Stiennon et al. 2020 (arXiv 2009.01325)
about 73% between researchers; :func:`agreement` measures it on two annotators' rankings of the
same items.

Every check raises :class:`~rlhf_lessons.rewards.preference_data.PreferenceDataError` naming the
task, the annotation and what to do about it.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping, Sequence
from itertools import combinations
from pathlib import Path
from typing import Any

from rlhf_lessons.rewards.preference_data import (
    PreferenceDataError,
    Record,
    _check_outputs,
    _check_record,
    _check_text,
    _error,
    _short,
    validate_ranked,
)

# --- Label Studio ----------------------------------------------------------------------------


class LabelStudioRankings(list):
    """The ranked records of a Label Studio import (a plain list of dicts), plus counts.

    Attributes:
        n_tasks: tasks in the export.
        n_cancelled: annotations skipped because the labeller cancelled ("skipped") the task.
        n_unlabelled: tasks without any annotation.
    """

    def __init__(
        self, records: Iterable[Record], n_tasks: int, n_cancelled: int, n_unlabelled: int
    ) -> None:
        super().__init__(records)
        self.n_tasks = n_tasks
        self.n_cancelled = n_cancelled
        self.n_unlabelled = n_unlabelled

    def summary(self) -> str:
        """One line for a notebook, e.g. "5 rankings from 4 tasks (1 cancelled ...)"."""
        return (
            f"{len(self)} rankings from {self.n_tasks} tasks ({self.n_cancelled} cancelled "
            f"annotation(s) skipped, {self.n_unlabelled} task(s) without annotations)"
        )


def _annotator(completed_by: Any) -> Any:
    # Label Studio's JSON export gives the user id; some versions give {"id", "email", ...}
    if isinstance(completed_by, Mapping):
        return completed_by.get("email") or completed_by.get("id")
    return completed_by


def _ranker_ids(annotation: Mapping[str, Any], ranker_name: str | None, where: str) -> list:
    """The item ids of an annotation's ranker result, best first."""
    results = annotation.get("result") or []
    rankers = [
        r
        for r in results
        if isinstance(r, Mapping)
        and r.get("type") == "ranker"
        and (ranker_name is None or r.get("from_name") == ranker_name)
    ]
    wanted = "ranker result" if ranker_name is None else f"ranker result from {ranker_name!r}"
    if not rankers:
        raise PreferenceDataError(
            f"{where}: no {wanted} (the result has {len(results)} entries). Check that the "
            "labelling config has a Ranker (and ranker_name matches its name), or delete "
            "the annotation in Label Studio"
        )
    if len(rankers) > 1:
        names = sorted({str(r.get("from_name")) for r in rankers})
        raise PreferenceDataError(
            f"{where}: {len(rankers)} ranker results (from {', '.join(names)}). Pass "
            "ranker_name= to pick one"
        )
    value = (rankers[0].get("value") or {}).get("ranker")
    # List + Ranker saves {"ranker": {<one key>: [ids]}}; the key is the Ranker's name in
    # Label Studio's source (some docs show the List's name), so take the only key. Several
    # keys mean Buckets, which sort items into groups rather than rank them.
    if not isinstance(value, Mapping) or len(value) != 1:
        keys = sorted(value) if isinstance(value, Mapping) else value
        raise PreferenceDataError(
            f"{where}: the ranker result's value.ranker is {keys!r}, expected one list of ids. "
            "Use a plain List + Ranker config without Buckets (ranker_template.xml)"
        )
    (ids,) = value.values()
    return list(ids)


def import_label_studio(
    path_or_tasks: str | Path | Sequence[Mapping[str, Any]],
    prompt_field: str = "prompt",
    items_field: str = "items",
    ranker_name: str | None = None,
) -> LabelStudioRankings:
    """Ranked records from a Label Studio JSON export of a List + Ranker project.

    Args:
        path_or_tasks: the export file (Export -> JSON), or its already-loaded list of tasks
            ``{"id", "data": {prompt_field: str, items_field: [{"id", "title", "body"}]},
            "annotations": [{"id", "completed_by", "was_cancelled", "result": [...]}]}``.
        prompt_field, items_field: the task-data keys the labelling config reads
            (``$prompt`` and ``$items`` in ``ranker_template.xml``).
        ranker_name: the Ranker tag's name; needed only if a config has several Rankers.

    Returns one record per non-cancelled annotation, in export order (annotator = Label Studio
    user id); cancelled annotations and tasks without annotations are skipped and counted.
    """
    if isinstance(path_or_tasks, str | Path):
        path = Path(path_or_tasks)
        tasks = json.loads(path.read_text(encoding="utf-8-sig"))
        source = path.name
    else:
        tasks, source = path_or_tasks, "tasks"
    if not isinstance(tasks, list):
        raise PreferenceDataError(
            f"{source}: expected Label Studio's JSON export (a list of tasks), got "
            f"{type(tasks).__name__}. Export with the 'JSON' format (JSON-MIN and CSV drop "
            "the annotation details)"
        )
    records: list[Record] = []
    n_cancelled = n_unlabelled = 0
    for t, task in enumerate(tasks):
        if not isinstance(task, Mapping) or not isinstance(task.get("data"), Mapping):
            raise PreferenceDataError(
                f"{source} task #{t}: expected a task dict with a 'data' dict. Export with the "
                "'JSON' format"
            )
        task_id = task.get("id", f"#{t}")
        where = f"task {task_id}"
        data = task["data"]
        for key in (prompt_field, items_field):
            if key not in data:
                fix = "Pass prompt_field=/items_field= to match the labelling config's $names"
                raise _error(where, f"data.{key}", f"is missing (data has {sorted(data)})", fix)
        items = data[items_field]
        if not isinstance(items, list) or not items:
            raise _error(where, f"data.{items_field}",
                         "must be a non-empty list of {'id', 'title', 'body'} items",
                         "Build tasks with label_studio_tasks()")  # fmt: skip
        bodies: dict[Any, Any] = {}
        for i, item in enumerate(items):
            if not isinstance(item, Mapping) or "id" not in item or "body" not in item:
                raise _error(where, f"data.{items_field}[{i}]",
                             "must be a dict with 'id' and 'body'",
                             "Build tasks with label_studio_tasks()")  # fmt: skip
            if item["id"] in bodies:
                raise _error(where, f"data.{items_field}[{i}].id", f"repeats the id {item['id']!r}",
                             "Give every item of a task its own id")  # fmt: skip
            bodies[item["id"]] = item["body"]
        annotations = task.get("annotations") or []
        if not annotations:
            n_unlabelled += 1
        for annotation in annotations:
            if annotation.get("was_cancelled"):
                n_cancelled += 1
                continue
            ann_where = f"{where} annotation {annotation.get('id')}"
            ids = _ranker_ids(annotation, ranker_name, ann_where)
            unknown = [i for i in ids if i not in bodies]
            missing = [i for i in bodies if i not in ids]
            if unknown or missing or len(ids) != len(set(ids)):
                raise PreferenceDataError(
                    f"{ann_where}: the ranking {ids} does not order the task's items "
                    f"{list(bodies)} exactly once each (unknown ids {unknown}, missing ids "
                    f"{missing}). Re-open the annotation in Label Studio and rank every "
                    "response, or delete it"
                )
            record = {
                "prompt": data[prompt_field],
                "ranked_outputs": [bodies[i] for i in ids],
                "task_id": task_id,
                "annotator": _annotator(annotation.get("completed_by")),
            }
            validate_ranked(record, ann_where)
            records.append(record)
    return LabelStudioRankings(records, len(tasks), n_cancelled, n_unlabelled)


def label_studio_tasks(
    records: Iterable[Mapping[str, Any]],
    seed: int = 0,
    responses_field: str = "responses",
    prompt_field: str = "prompt",
    items_field: str = "items",
) -> list[Record]:
    """Label Studio tasks (Import -> JSON) for ranking the responses to each prompt.

    Responses are shuffled with ``random.Random(seed)``: labellers should not see them in model
    order, and a Ranker saves the displayed order when a labeller submits without dragging
    anything, so an unshuffled list would turn inattention into a systematic preference.

    ``records``: ``{"prompt": str, responses_field: [str, ...], **extra}``; extra keys go into
    the task data (Label Studio shows only what the config references);
    ``responses_field="ranked_outputs"`` re-labels ranked records. Returns ``[{"data":
    {prompt_field: ..., items_field: [{"id": "r1", "title": "Response 1", "body": ...}, ...],
    **extra}}, ...]``; ids and titles follow the shuffled display order.
    """
    rng = random.Random(seed)
    tasks = []
    for n, record in enumerate(records):
        where = f"records[{n}]"
        _check_record(
            record,
            where,
            (prompt_field, responses_field),
            {"ranked": "pass responses_field='ranked_outputs'"},
        )
        _check_text(record[prompt_field], prompt_field, where)
        responses = record[responses_field]
        _check_outputs(responses, responses_field, where)
        if items_field in record:
            raise _error(where, items_field, "would be overwritten by the items", "Rename that key")
        order = list(range(len(responses)))
        rng.shuffle(order)
        items = [
            {"id": f"r{pos + 1}", "title": f"Response {pos + 1}", "body": responses[k]}
            for pos, k in enumerate(order)
        ]
        extra = {k: v for k, v in record.items() if k not in (prompt_field, responses_field)}
        tasks.append({"data": {prompt_field: record[prompt_field], items_field: items, **extra}})
    return tasks


# --- Agreement -------------------------------------------------------------------------------


def _as_rankings(value: Any, name: str) -> list[list]:
    """One ranking (a list of items or a ranked record) or a list of them -> list of lists."""
    if isinstance(value, Mapping):
        return [list(value["ranked_outputs"])]
    value = list(value)
    if not value:
        raise ValueError(f"{name} is empty; pass a ranking or a list of rankings")
    if not any(isinstance(v, list | tuple | Mapping) for v in value):
        return [value]
    return [list(v["ranked_outputs"]) if isinstance(v, Mapping) else list(v) for v in value]


def agreement(rankings_a: Any, rankings_b: Any) -> float:
    """Pairwise agreement between two annotators' rankings of the same items.

    For each ranking, every pair of items counts as agreed if both annotators put the two in
    the same order. The rate is agreed pairs / all pairs, pooled over the rankings (a
    ranking of K items contributes C(K, 2) pairs). 1.0 = same orders, 0.0 = reversed, 0.5 =
    what two random orders give on average; for one ranking it equals (1 + Kendall's tau) / 2.

    ``rankings_a``, ``rankings_b``: one ranking each (a list of items, best first, or a ranked
    record) or equally long lists of them; ranking t of a and of b must hold the same items.
    """
    a, b = _as_rankings(rankings_a, "rankings_a"), _as_rankings(rankings_b, "rankings_b")
    if len(a) != len(b):
        raise ValueError(f"rankings_a has {len(a)} rankings but rankings_b has {len(b)}")
    agreed = total = 0
    for t, (ra, rb) in enumerate(zip(a, b, strict=True)):
        if len(set(ra)) != len(ra) or len(set(rb)) != len(rb):
            raise PreferenceDataError(f"ranking {t}: an item appears twice in one ranking")
        if set(ra) != set(rb):
            only_a = [x for x in ra if x not in set(rb)]
            only_b = [x for x in rb if x not in set(ra)]
            raise PreferenceDataError(
                f"ranking {t}: the two rankings hold different items (only in a: "
                f"{[_short(x) for x in only_a]}, only in b: {[_short(x) for x in only_b]}). "
                "Agreement compares two orders of the same items: pair up rankings of the "
                "same task"
            )
        position = {item: i for i, item in enumerate(rb)}
        for x, y in combinations(ra, 2):  # a puts x above y
            agreed += position[x] < position[y]
            total += 1
    if total == 0:
        raise ValueError("no item pairs to compare: every ranking has fewer than 2 items")
    return agreed / total
