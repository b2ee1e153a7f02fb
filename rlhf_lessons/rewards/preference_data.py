"""Preference data (lesson 04): pairwise and ranked records, checked, converted and stored.

A reward model learns from human judgements of the form "for this prompt, response A is better
than response B". Two record formats carry them here, both plain dicts (one JSON object per line
in a ``.jsonl`` file, or one row of a ``datasets.Dataset``):

- **Pairwise**, TRL's preference format (TRL docs, "Dataset formats and types"), in its
  *standard* form ``{"prompt": str, "chosen": str, "rejected": str}`` or its *conversational*
  form, where each field is a list of chat messages ``{"role": ..., "content": ...}``::

      {"prompt": [{"role": "system", "content": ...}, {"role": "user", "content": ...}],
       "chosen": [{"role": "assistant", "content": ...}],
       "rejected": [{"role": "assistant", "content": ...}]}

- **Ranked** (K-wise): ``{"prompt": str, "ranked_outputs": [best, ..., worst]}`` with K >= 2.
  A ranking of K responses holds C(K, 2) pairwise judgements at the labelling cost of one task;
  InstructGPT (Ouyang et al. 2022, arXiv 2203.02155) had labellers rank K = 4..9 responses.
  The K-wise (Plackett-Luce, "multinomial") likelihood over a whole ranking and its pairwise
  (Bradley-Terry) reduction are compared by Zhu, Jordan & Jiao 2023 (arXiv 2301.11270).

Any other keys of a record ("id", "category", ...) are carried through every conversion.

Collecting rankings from people (Label Studio) and measuring how often they agree is in
:mod:`rlhf_lessons.rewards.label_studio`.

Every check raises :class:`PreferenceDataError` naming the record (``where``, e.g.
``"train.jsonl line 17"``), the field (e.g. ``ranked_outputs[2]``) and what to do about it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from graphlib import TopologicalSorter
from itertools import combinations, pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import datasets

Record = dict[str, Any]

PAIR_FIELDS = ("prompt", "chosen", "rejected")
RANKED_FIELDS = ("prompt", "ranked_outputs")
RANK_FIELDS = ("chosen_rank", "rejected_rank")  # added by ranked_to_pairs
ROLES = ("system", "user", "assistant")


class PreferenceDataError(ValueError):
    """Malformed preference data; the message names the record, the field and the fix."""


def _short(text: Any, n: int = 40) -> str:
    """A one-line, quoted excerpt of ``text`` for error messages."""
    text = " ".join(str(text).split())
    return repr(text if len(text) <= n else text[: n - 3] + "...")


def _error(where: str, field: str, problem: str, fix: str) -> PreferenceDataError:
    return PreferenceDataError(f"{where or 'record'}: field '{field}' {problem}. {fix}")


def _check_record(
    record: Any, where: str, fields: tuple[str, ...], hints: Mapping[str, str]
) -> None:
    """The record is a dict holding ``fields``; ``hints[kind]`` helps when it is another kind."""
    if not isinstance(record, Mapping):
        raise PreferenceDataError(
            f"{where or 'record'}: expected a dict (JSON object) with keys "
            f"{', '.join(map(repr, fields))}, got {type(record).__name__}"
        )
    for field in fields:
        if field not in record:
            looks = "ranked" if "ranked_outputs" in record else "pairwise"
            hint = hints.get(looks) if {"ranked_outputs", "chosen"} & set(record) else None
            fix = f"Every record here needs {', '.join(map(repr, fields))}" + (
                f" (this looks like a {looks} record: {hint})" if hint else ""
            )
            raise _error(where, field, "is missing", fix)


def _check_text(value: Any, field: str, where: str) -> None:
    if not isinstance(value, str):
        fix = "Store the text itself as a JSON string (not a number, null or nested object)"
        raise _error(where, field, f"must be a string, got {type(value).__name__}", fix)
    if not value.strip():
        fix = "Fill in the text or drop the record: there is nothing to compare"
        raise _error(where, field, "is empty or whitespace-only", fix)


def _check_outputs(outputs: Any, field: str, where: str) -> None:
    """K >= 2 distinct non-empty strings (distinct after stripping whitespace)."""
    if not isinstance(outputs, list | tuple):
        problem = f"must be a list of response strings, got {type(outputs).__name__}"
        raise _error(where, field, problem, "Write the responses as a JSON list, best first")
    if len(outputs) < 2:
        fix = "A ranking needs K >= 2 responses to compare; add responses or drop the record"
        raise _error(where, field, f"has {len(outputs)} response(s)", fix)
    seen: dict[str, int] = {}
    for i, text in enumerate(outputs):
        _check_text(text, f"{field}[{i}]", where)
        key = text.strip()
        if key in seen:
            problem = f"duplicates {field}[{seen[key]}] (after stripping whitespace)"
            fix = "A ranking orders distinct responses: remove the duplicate"
            raise _error(where, f"{field}[{i}]", problem, fix)
        seen[key] = i


def _check_messages(messages: Any, field: str, where: str, completion: bool) -> None:
    """A non-empty list of ``{"role", "content"}`` dicts; a completion starts with the assistant."""
    if not messages:
        raise _error(where, field, "is an empty list of messages", "Give at least one message")
    for i, message in enumerate(messages):
        name = f"{field}[{i}]"
        if not isinstance(message, Mapping):
            problem = f"must be a message dict {{'role', 'content'}}, got {type(message).__name__}"
            fix = "Write each message as a JSON object with 'role' and 'content'"
            raise _error(where, name, problem, fix)
        if message.get("role") not in ROLES:
            fix = f"Use one of {', '.join(map(repr, ROLES))}"
            raise _error(where, f"{name}.role", f"is {message.get('role')!r}", fix)
        if "content" not in message:
            raise _error(where, f"{name}.content", "is missing", "Give the message text")
        _check_text(message["content"], f"{name}.content", where)
    if completion and messages[0]["role"] != "assistant":
        problem = f"is {messages[0]['role']!r}, but a response must start with an assistant message"
        fix = "If it repeats the prompt turns, remove them (e.g. with trl.extract_prompt)"
        raise _error(where, f"{field}[0].role", problem, fix)


def _normalized(value: str | list[dict]) -> Any:
    if isinstance(value, str):
        return value.strip()
    return [(m["role"], m["content"].strip()) for m in value]


def validate_pair(record: Any, where: str = "") -> str:
    """Check one pairwise record, standard or conversational (module docstring); returns its
    format, ``"standard"`` or ``"conversational"``."""
    _check_record(record, where, PAIR_FIELDS, {"ranked": "use validate_ranked or ranked_to_pairs"})
    prompt = record["prompt"]
    if isinstance(prompt, str):
        fmt, expected = "standard", str
    elif isinstance(prompt, list):
        fmt, expected = "conversational", list
    else:
        problem = (f"must be a string (standard format) or a list of messages (conversational "
                   f"format), got {type(prompt).__name__}")  # fmt: skip
        fix = "Write the prompt text, or a list of {'role', 'content'} messages"
        raise _error(where, "prompt", problem, fix)
    for field in PAIR_FIELDS:
        value = record[field]
        if not isinstance(value, expected):
            problem = f"is a {type(value).__name__} but 'prompt' is a {expected.__name__} ({fmt})"
            fix = "Use one format for all three fields (to_conversational/to_standard convert)"
            raise _error(where, field, problem, fix)
        if fmt == "standard":
            _check_text(value, field, where)
        else:
            _check_messages(value, field, where, completion=field != "prompt")
    if _normalized(record["chosen"]) == _normalized(record["rejected"]):
        fix = "A pair must compare two different responses: drop the record or replace one"
        raise _error(
            where, "rejected", "is identical to 'chosen' (after stripping whitespace)", fix
        )
    return fmt


def validate_ranked(record: Any, where: str = "") -> None:
    """Check one ranked record ``{"prompt": str, "ranked_outputs": [best, ..., worst], ...}``:
    K >= 2 non-empty strings, distinct after stripping whitespace."""
    _check_record(
        record, where, RANKED_FIELDS, {"pairwise": "use validate_pair or pairs_to_ranked"}
    )
    if not isinstance(record["prompt"], str):
        problem = f"must be a string, got {type(record['prompt']).__name__}"
        fix = "Ranked records use plain-text prompts; render chat prompts to text first"
        raise _error(where, "prompt", problem, fix)
    _check_text(record["prompt"], "prompt", where)
    _check_outputs(record["ranked_outputs"], "ranked_outputs", where)


# --- Standard <-> conversational -------------------------------------------------------------


def to_conversational(pair: Mapping[str, Any], system: str | None = None) -> Record:
    """A pairwise record in TRL's conversational format (a new dict; extra keys kept).

    Standard fields become one message each: the prompt a user message, chosen and rejected an
    assistant message. A system message goes first if given by ``system`` or by the record's
    ``"system"`` key (where :func:`to_standard` keeps it; the key is consumed). A record that is
    already conversational is returned as a copy, with ``system`` prepended if it has none.

    Returns:
        ``{"prompt": [..., {"role": "user", ...}], "chosen": [{"role": "assistant", ...}],
        "rejected": [{"role": "assistant", ...}], **extra keys}``.
    """
    out = dict(pair)
    if validate_pair(pair) == "standard":
        stored = out.pop("system", None)
        if system is not None and stored is not None and system != stored:
            raise PreferenceDataError(
                f"to_conversational: the record's 'system' key {_short(stored)} differs from "
                f"system={_short(system)}. Pass system=None to use the record's, or drop the key"
            )
        system = system if system is not None else stored
        out["prompt"] = [{"role": "user", "content": pair["prompt"]}]
        out["chosen"] = [{"role": "assistant", "content": pair["chosen"]}]
        out["rejected"] = [{"role": "assistant", "content": pair["rejected"]}]
    if system is None:
        return out
    first = out["prompt"][0]
    if first["role"] == "system":  # only a conversational record can have one
        if first["content"] == system:
            return out
        raise PreferenceDataError(
            f"to_conversational: the record already has the system message "
            f"{_short(first['content'])}, which differs from system={_short(system)}. "
            "Pass system=None to keep the record's, or edit the record"
        )
    _check_text(system, "system", "to_conversational")
    out["prompt"] = [{"role": "system", "content": system}, *out["prompt"]]
    return out


def to_standard(pair: Mapping[str, Any]) -> Record:
    """A pairwise record in TRL's standard (plain-text) format (a new dict; extra keys kept).

    Only lossless flattening is done, so that ``to_conversational(to_standard(p)) == p``:

    - the prompt must be one user message, optionally preceded by one system message; the
      system text moves to the record's ``"system"`` key;
    - chosen and rejected must each be exactly one assistant message;
    - messages must have no keys besides ``role`` and ``content``.

    Anything else (a multi-turn prompt, say) raises :class:`PreferenceDataError`: flattening it
    means choosing a chat template, which is the tokenizer's job (``apply_chat_template``), and
    TRL's trainers accept the conversational format as it is. A standard record is returned as a
    copy.
    """
    if validate_pair(pair) == "standard":
        return dict(pair)
    for field in PAIR_FIELDS:
        for i, message in enumerate(pair[field]):
            extra = sorted(set(message) - {"role", "content"})
            if extra:
                problem = f"has keys besides role and content ({', '.join(extra)})"
                fix = "The standard format cannot hold them: keep the record conversational"
                raise _error("to_standard", f"{field}[{i}]", problem, fix)
    out = dict(pair)
    roles = [m["role"] for m in pair["prompt"]]
    if roles not in (["user"], ["system", "user"]):
        problem = f"has the turns {roles}; only [user] or [system, user] flatten to one string"
        fix = "Keep it conversational (TRL accepts it), or render it: tokenizer.apply_chat_template"
        raise _error("to_standard", "prompt", problem, fix)
    if len(roles) == 2:
        if "system" in pair:
            problem = "already exists as an extra key, and the system message would overwrite it"
            raise _error("to_standard", "system", problem, "Rename the extra key")
        out["system"] = pair["prompt"][0]["content"]
    out["prompt"] = pair["prompt"][-1]["content"]
    for field in ("chosen", "rejected"):
        roles = [m["role"] for m in pair[field]]
        if roles != ["assistant"]:
            problem = f"has the turns {roles}; the standard format holds one assistant response"
            raise _error("to_standard", field, problem, "Keep the record conversational")
        out[field] = pair[field][0]["content"]
    return out


# --- Ranked <-> pairwise ---------------------------------------------------------------------


def ranked_to_pairs(record: Mapping[str, Any], where: str = "") -> list[Record]:
    """All C(K, 2) pairs of a ranking, better response as ``chosen``.

    Pairs come in the order (0, 1), (0, 2), ..., (0, K-1), (1, 2), ..., (K-2, K-1): for
    i < j, chosen = ranked_outputs[i] and rejected = ranked_outputs[j]. They are returned
    together because they are not independent samples: InstructGPT found that shuffling the
    C(K, 2) pairs of a prompt into separate batches overfits, and trains on all of a prompt's
    pairs as one batch element.

    Returns C(K, 2) standard pairwise records ``{"prompt", "chosen", "rejected", **the record's
    extra keys, "chosen_rank": i, "rejected_rank": j}`` (0-based positions, 0 = best).
    """
    validate_ranked(record, where)
    clash = [k for k in ("chosen", "rejected", *RANK_FIELDS) if k in record]
    if clash:
        fix = "Rename or drop that key of the ranked record"
        raise _error(where, clash[0], "would be overwritten by the pairs", fix)
    extra = {k: v for k, v in record.items() if k not in RANKED_FIELDS}
    outputs = record["ranked_outputs"]
    return [
        {
            "prompt": record["prompt"],
            "chosen": outputs[i],
            "rejected": outputs[j],
            **extra,
            "chosen_rank": i,
            "rejected_rank": j,
        }
        for i, j in combinations(range(len(outputs)), 2)
    ]


def best_vs_worst(records: Iterable[Mapping[str, Any]]) -> list[Record]:
    """One pair per ranked record: its best response as ``chosen``, its worst as ``rejected``
    (ranks 0 and K - 1 of :func:`ranked_to_pairs`). The widest gap of each ranking, and
    independent pairs: the usual way to turn rankings into a small DPO set (Zephyr's
    UltraFeedback pairs take the best response and a random other one)."""
    out = []
    for i, record in enumerate(records):
        worst = len(record.get("ranked_outputs") or []) - 1
        pairs = ranked_to_pairs(record, f"records[{i}]")
        out.append(next(p for p in pairs if p["chosen_rank"] == 0 and p["rejected_rank"] == worst))
    return out


def _find_cycle(nodes: Sequence[str], succ: Mapping[str, list[str]]) -> list[str] | None:
    """A cycle [a, b, ..., a] of the directed graph, or None (iterative depth-first search)."""
    state = dict.fromkeys(nodes, 0)  # 0 unseen, 1 on the current path, 2 finished
    for root in nodes:
        if state[root]:
            continue
        path, stack = [root], [iter(succ[root])]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state[nxt] == 1:
                return path[path.index(nxt) :] + [nxt]
            elif state[nxt] == 0:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(succ[nxt]))
    return None


def _unique_order(nodes: Sequence[str], succ: Mapping[str, list[str]]) -> list[str] | None:
    """The topological order of an acyclic graph if it is unique (a total order), else None:
    it is unique iff exactly one node is ready at every step."""
    graph = TopologicalSorter({n: [] for n in nodes})
    for node in nodes:
        for nxt in succ[node]:
            graph.add(nxt, node)
    graph.prepare()
    order = []
    while graph.is_active():
        (node, *others) = graph.get_ready()
        if others:
            return None
        order.append(node)
        graph.done(node)
    return order


def pairs_to_ranked(
    pairs: Iterable[Mapping[str, Any]], group_by: Sequence[str] = ("prompt",)
) -> tuple[list[Record], list[Record]]:
    """Merge pairwise judgements back into rankings wherever they determine one.

    Pairs are grouped by ``group_by`` (the prompt; add ``"annotator"`` to keep annotators
    apart). Within a group each pair is an edge chosen -> rejected between responses
    (responses equal after stripping whitespace are one response). Then:

    - a cycle (a > b > a, or a > b > c > a) raises :class:`PreferenceDataError` naming the
      prompt, the cycle and the pairs that make it;
    - if the edges admit exactly one order of all the group's responses (a total order), the
      group becomes one ranked record;
    - otherwise (a partial order, e.g. only best-vs-each) the group's pairs are left as they were.

    The ranked record keeps the extra keys whose value is the same in all of the group's pairs
    (``chosen_rank``/``rejected_rank`` are dropped), so ``pairs_to_ranked(ranked_to_pairs(r))``
    gives back ``r``. Returns ``(ranked_records, leftover_pairs)``: ranked records in order of
    each group's first pair; leftover pairs in input order.
    """
    groups: dict[str, list[tuple[int, Mapping[str, Any]]]] = {}
    for index, pair in enumerate(pairs):
        where = f"pairs[{index}]"
        if validate_pair(pair, where) != "standard":
            raise PreferenceDataError(
                f"{where}: pairs_to_ranked needs standard (plain-text) pairs. Convert "
                "conversational ones with to_standard() first"
            )
        for key in group_by:
            if key not in pair:
                raise _error(
                    where, key, "is missing but is in group_by", "Add it or change group_by"
                )
        group_key = json.dumps([pair[k] for k in group_by], sort_keys=True, default=str)
        groups.setdefault(group_key, []).append((index, pair))

    ranked: list[Record] = []
    leftover: list[tuple[int, Mapping[str, Any]]] = []
    for group in groups.values():
        texts: dict[str, str] = {}  # stripped text -> the text as first seen
        succ: dict[str, list[str]] = {}
        edge_source: dict[tuple[str, str], int] = {}
        for index, pair in group:
            better, worse = pair["chosen"].strip(), pair["rejected"].strip()
            for key, text in ((better, pair["chosen"]), (worse, pair["rejected"])):
                texts.setdefault(key, text)
                succ.setdefault(key, [])
            if (better, worse) not in edge_source:
                edge_source[(better, worse)] = index
                succ[better].append(worse)
        nodes = list(texts)
        prompt = group[0][1]["prompt"]
        cycle = _find_cycle(nodes, succ)
        if cycle is not None:
            sources = sorted({edge_source[edge] for edge in pairwise(cycle)})
            raise PreferenceDataError(
                f"pairs for prompt {_short(prompt)} contain a preference cycle: "
                + " > ".join(_short(texts[n], 30) for n in cycle)
                + f" (from {', '.join(f'pairs[{i}]' for i in sources)}). A ranking cannot "
                "hold a cycle: drop or relabel one of these pairs; if they come from different "
                "annotators, keep them apart with group_by=('prompt', 'annotator')"
            )
        order = _unique_order(nodes, succ)
        if order is None:
            leftover.extend(group)
            continue
        first = group[0][1]
        skip = {*PAIR_FIELDS, *RANK_FIELDS}
        extra = {
            k: v
            for k, v in first.items()
            if k not in skip and all(k in p and p[k] == v for _, p in group)
        }
        ranked.append({"prompt": prompt, "ranked_outputs": [texts[n] for n in order], **extra})
    leftover.sort(key=lambda item: item[0])
    return ranked, [dict(pair) for _, pair in leftover]


# --- Files and datasets ----------------------------------------------------------------------


def _detect_kind(record: Mapping[str, Any], where: str) -> str:
    if "ranked_outputs" in record:
        return "ranked"
    if "chosen" in record or "rejected" in record:
        return "pairwise"
    raise PreferenceDataError(
        f"{where}: cannot tell the record's kind from its keys {sorted(record)}: a ranked "
        "record has 'ranked_outputs', a pairwise one 'chosen' and 'rejected'. Fix the keys, "
        "or pass kind='pairwise' or kind='ranked'"
    )


def load_jsonl(path: str | Path, kind: str = "auto") -> list[Record]:
    """The validated records of a JSONL file (one JSON object per line, UTF-8; blank lines
    skipped), in file order; errors name ``"<file name> line <n>"``. ``kind="auto"`` requires
    of the whole file the kind of its first record (``"ranked_outputs"`` -> ranked,
    ``"chosen"``/``"rejected"`` -> pairwise)."""
    if kind not in ("auto", "pairwise", "ranked"):
        raise ValueError(f"kind must be 'auto', 'pairwise' or 'ranked', got {kind!r}")
    path = Path(path)
    records: list[Record] = []
    detected_on: int | None = None
    # utf-8-sig: a byte-order mark (some Windows editors write one) would break line 1's JSON
    with path.open(encoding="utf-8-sig") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path.name} line {n}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise PreferenceDataError(
                    f"{where}: invalid JSON ({e.msg}, column {e.colno}). JSONL needs one "
                    "complete JSON object per line: look for a missing quote, comma or brace, "
                    "or a record split over several lines"
                ) from None
            if not isinstance(record, dict):
                raise PreferenceDataError(
                    f"{where}: expected a JSON object, got {type(record).__name__}. Write one "
                    "record {...} per line"
                )
            if kind == "auto":
                kind, detected_on = _detect_kind(record, where), n
            elif detected_on is not None:
                looks = "ranked" if "ranked_outputs" in record else "pairwise"
                if {"ranked_outputs", "chosen"} & set(record) and looks != kind:
                    raise PreferenceDataError(
                        f"{where}: a {looks} record in a file whose first record (line "
                        f"{detected_on}) is {kind}. Keep one kind per file (ranked_to_pairs() "
                        "converts rankings to pairs)"
                    )
            if kind == "ranked":
                validate_ranked(record, where)
            else:
                validate_pair(record, where)
            records.append(record)
    return records


def write_jsonl(records: Iterable[Mapping[str, Any]], path: str | Path) -> Path:
    """Write records one JSON object per line (UTF-8, non-ASCII kept readable); returns the path.

    Parent folders are created. Records are written as given: validate them first, or read the
    file back with :func:`load_jsonl`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def to_dataset(records: Sequence[Mapping[str, Any]]) -> datasets.Dataset:
    """Records -> ``datasets.Dataset`` (one column per key), e.g. for TRL's RewardTrainer.

    All records must have the same keys: ``Dataset.from_list`` takes the columns from the first
    record and would silently drop keys that only later records have.
    """
    import datasets

    records = list(records)
    if records:
        keys = set(records[0])
        for i, record in enumerate(records):
            if set(record) != keys:
                missing, extra = sorted(keys - set(record)), sorted(set(record) - keys)
                raise PreferenceDataError(
                    f"records[{i}]: keys differ from records[0]'s (missing {missing}, extra "
                    f"{extra}). A Dataset is a table: give every record the same keys (use "
                    "None for a missing value) or drop the odd ones"
                )
    return datasets.Dataset.from_list([dict(r) for r in records])


def from_dataset(ds: datasets.Dataset) -> list[Record]:
    """``datasets.Dataset`` -> list of dicts (one per row).

    Arrow stores a list of message dicts as one struct type, so messages that lack a key some
    other message has come back with that key set to None.
    """
    import datasets

    if isinstance(ds, datasets.DatasetDict):
        raise PreferenceDataError(
            f"from_dataset got a DatasetDict with splits {list(ds)}; pass one split, e.g. "
            "ds['train']"
        )
    return ds.to_list()
