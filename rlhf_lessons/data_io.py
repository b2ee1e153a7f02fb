"""Your own data: read it, recognise its format, and turn it into what each trainer takes.

The course's trainers take plain Python records. This module reads them from where a learner
keeps them and converts between the formats TRL documents ("Dataset formats and types"), so
that ``rlhf-lessons train <algo> --data ...`` accepts the same files as ``trl <algo>``:

=====================  ==================================================================
kind                   keys (each value a string: *standard*; or chat messages
                       ``[{"role", "content"}, ...]``: *conversational*)
=====================  ==================================================================
``preference``         ``prompt``, ``chosen``, ``rejected`` (explicit prompt)
``preference``         ``chosen``, ``rejected`` only (**implicit prompt**, e.g. Anthropic HH:
                       both texts repeat the prompt; :func:`extract_prompt` splits it off)
``ranked``             ``prompt``, ``ranked_outputs`` = [best, ..., worst] (the course's own
                       data, :mod:`rlhf_lessons.rewards.preference_data`)
``prompt_completion``  ``prompt``, ``completion``
``messages``           ``messages`` (a whole conversation; the last assistant turn is the
                       completion)
``prompt_only``        ``prompt``
``text``               ``text`` (language modelling; no prompt to condition on)
=====================  ==================================================================

Sources (:func:`read_records`): a ``.jsonl`` file (one JSON object per line), a ``.json`` file
(a list of objects), ``.parquet`` or ``.csv`` (through ``datasets``), a folder written by
``datasets``' ``save_to_disk`` (a ``Dataset`` or a ``DatasetDict``, whose ``split`` is taken),
a ``datasets.Dataset``, a list of dicts, or, online, a dataset name on the Hugging Face hub.

Converters, one per kind of trainer: :func:`preference_pairs` (DPO family),
:func:`ranked_records` (reward models), :func:`sft_records` (SFT), :func:`prompts` (PPO, RLOO,
GRPO). :func:`length_report` counts what a token limit would cut, before any training.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhf_lessons.rewards.preference_data import (
    PreferenceDataError,
    best_vs_worst,
    ranked_to_pairs,
    validate_pair,
    validate_ranked,
)

Record = dict[str, Any]
TEXT_FILES = (".jsonl", ".json")
TABLE_FILES = {".parquet": "parquet", ".csv": "csv"}


class DataFormatError(PreferenceDataError):
    """Data in a format the trainer cannot use; the message names the record and the fix."""


# --- Reading ---------------------------------------------------------------------------------


def read_records(source: Any, split: str = "train", limit: int | None = None) -> list[Record]:
    """Records (a list of dicts) from a file, a saved ``datasets`` folder, a ``Dataset``, a
    list of dicts, or a hub dataset name. ``limit`` keeps the first ``limit`` records."""
    if isinstance(source, list | tuple):
        records = [dict(r) if isinstance(r, Mapping) else r for r in source]
    elif hasattr(source, "column_names"):  # a datasets.Dataset or DatasetDict
        records = _dataset_records(source, split, "the dataset")
    else:
        records = _read_path(str(source), split)
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1 or None, got {limit}")
        records = records[:limit]
    if not records:
        raise DataFormatError(f"{source}: no records (the file or split is empty)")
    bad = next((i for i, r in enumerate(records) if not isinstance(r, Mapping)), None)
    if bad is not None:
        raise DataFormatError(
            f"{source}: record {bad} is a {type(records[bad]).__name__}, not a JSON object; "
            "write one {...} object per record"
        )
    return records


def _read_path(name: str, split: str) -> list[Record]:
    path = Path(name).expanduser()
    if path.is_dir():
        if not any((path / f).exists() for f in ("dataset_dict.json", "dataset_info.json",
                                                 "state.json")):  # fmt: skip
            files = sorted(p.name for p in path.glob(f"*{split}*.jsonl"))
            hint = f" (did you mean {path / files[0]}?)" if files else ""
            raise DataFormatError(
                f"{path} is a folder but not one written by datasets' save_to_disk{hint}: pass "
                "a .jsonl/.json/.parquet/.csv file or a saved datasets folder"
            )
        import datasets

        return _dataset_records(datasets.load_from_disk(str(path)), split, str(path))
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in TEXT_FILES:
            return _read_json(path)
        if suffix in TABLE_FILES:
            import datasets

            table = datasets.load_dataset(TABLE_FILES[suffix], data_files=str(path))
            return _dataset_records(table, "train", str(path))
        raise DataFormatError(
            f"{path}: unknown file type {suffix!r}; use .jsonl (one JSON object per line), "
            ".json (a list of objects), .parquet or .csv"
        )
    looks_like_hub = name.count("/") == 1 and not name.startswith((".", "/", "~"))
    if not looks_like_hub:
        raise FileNotFoundError(f"{name}: no such file or folder; check the path given to --data")
    import datasets

    try:
        return _dataset_records(datasets.load_dataset(name, split=split), split, name)
    except Exception as err:  # offline, unknown name, no such split: say which and how to fix
        raise FileNotFoundError(
            f"{name} is not a local file or folder, and loading it from the Hugging Face hub "
            f"failed ({type(err).__name__}: {str(err)[:160]}); offline, pass a local .jsonl file "
            "or a folder saved with Dataset.save_to_disk"
        ) from None


def _read_json(path: Path) -> list[Record]:
    text = path.read_text(encoding="utf-8-sig")  # a byte-order mark would break line 1
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        try:
            return list(json.loads(text))
        except json.JSONDecodeError as e:
            raise DataFormatError(f"{path.name}: invalid JSON ({e.msg}, line {e.lineno})") from None
    records = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise DataFormatError(
                f"{path.name} line {n}: invalid JSON ({e.msg}, column {e.colno}). JSONL needs one "
                "complete JSON object per line"
            ) from None
    return records


def _dataset_records(data, split: str, name: str) -> list[Record]:
    if not hasattr(data, "to_list"):  # a DatasetDict: one split
        if split not in data:
            raise DataFormatError(
                f"{name} has the splits {sorted(data)}, not {split!r}: pick one with --split"
            )
        data = data[split]
    return data.to_list()


# --- Recognising the format ------------------------------------------------------------------


def is_messages(value: Any) -> bool:
    """A list of chat messages (dicts with a ``role``)."""
    return isinstance(value, list) and bool(value) and isinstance(value[0], Mapping) \
        and "role" in value[0]  # fmt: skip


def is_conversational(record: Mapping) -> bool:
    """Whether the record's text fields are chat messages (TRL's ``is_conversational``)."""
    return any(is_messages(record.get(k)) for k in ("prompt", "chosen", "rejected",
                                                     "completion", "messages"))  # fmt: skip


def record_kind(record: Mapping, where: str = "record") -> str:
    """The kind of one record (see the module's table), from its keys."""
    if not isinstance(record, Mapping):
        raise DataFormatError(f"{where}: expected a JSON object, got {type(record).__name__}")
    keys = set(record)
    if "ranked_outputs" in keys:
        return "ranked"
    if {"chosen", "rejected"} <= keys:
        return "preference"
    if "chosen" in keys or "rejected" in keys:
        missing = "rejected" if "chosen" in keys else "chosen"
        raise DataFormatError(f"{where}: has no '{missing}'; a preference record needs both "
                              "'chosen' and 'rejected'")  # fmt: skip
    if "messages" in keys:
        return "messages"
    if "completion" in keys and "prompt" not in keys:
        raise DataFormatError(
            f"{where}: has a 'completion' but no 'prompt'; add the 'prompt' it answers (or give "
            "the whole conversation as 'messages')"
        )
    if "prompt" in keys:
        return "prompt_completion" if "completion" in keys else "prompt_only"
    if "text" in keys:
        return "text"
    raise DataFormatError(
        f"{where}: keys {sorted(keys)} match no known format; preference data needs 'prompt', "
        "'chosen', 'rejected' (or only 'chosen' and 'rejected', the prompt inside both), SFT data "
        "'prompt' and 'completion' (or 'messages'), RL data 'prompt'. Rename the keys"
    )


def data_kind(records: Sequence[Mapping], name: str = "data") -> str:
    """The one kind of every record (the first record's); an error names the first that
    differs, or that mixes standard and conversational fields."""
    kind, chat = record_kind(records[0], f"{name}[0]"), is_conversational(records[0])
    for i, record in enumerate(records):
        if record_kind(record, f"{name}[{i}]") != kind:
            raise DataFormatError(
                f"{name}[{i}] is a {record_kind(record)} record but {name}[0] is {kind}: keep one "
                "format per file"
            )
        if is_conversational(record) != chat:
            raise DataFormatError(
                f"{name}[{i}] is {'conversational' if not chat else 'standard'} but {name}[0] "
                f"is {'conversational' if chat else 'standard'}: use one format per file"
            )
    return kind


# --- Implicit prompts ------------------------------------------------------------------------


def extract_prompt(record: Mapping, where: str = "record") -> Record:
    """Split an implicit-prompt pair ``{"chosen", "rejected"}`` into ``{"prompt", "chosen",
    "rejected"}``: the prompt is the longest shared prefix (characters of a string, or whole
    messages of a conversation), as ``trl.extract_prompt`` does: a space just before the first
    difference stays with the completions. Other keys are kept.

    Unlike TRL's, it refuses, with the fix, a pair that shares no prefix (there is no prompt to
    find) and one whose response is a prefix of the other (nothing would be left to compare).
    """
    chosen, rejected = record["chosen"], record["rejected"]
    if type(chosen) is not type(rejected) or not isinstance(chosen, str | list):
        raise DataFormatError(
            f"{where}: 'chosen' and 'rejected' must both be strings or both lists of messages"
        )
    shorter = min(len(chosen), len(rejected))
    n = next((i for i in range(shorter) if chosen[i] != rejected[i]), shorter)  # shared prefix
    if isinstance(chosen, str) and 0 < n < shorter and chosen[n - 1] == " ":
        n -= 1  # TRL: "remove space before the prompt"
    if n == 0:
        raise DataFormatError(
            f"{where}: has no 'prompt', and 'chosen' and 'rejected' share no prefix to take as "
            "the prompt; add a 'prompt' field (TRL's explicit-prompt format), or give chosen and "
            "rejected the same conversation before the answers"
        )
    if n == shorter:
        raise DataFormatError(
            f"{where}: has no 'prompt', and one of 'chosen' and 'rejected' is a prefix of the "
            "other, so no split leaves both a response; add an explicit 'prompt' field"
        )
    out = {k: v for k, v in record.items() if k not in ("chosen", "rejected")}
    return {"prompt": chosen[:n], "chosen": chosen[n:], "rejected": rejected[n:], **out}


# --- One converter per trainer ---------------------------------------------------------------


def preference_pairs(records: Sequence[Mapping], ranked: str = "all") -> list[Record]:
    """Pairs ``{"prompt", "chosen", "rejected"}`` for the DPO family (standard or
    conversational, as given). Implicit prompts are extracted; rankings give all their C(K, 2)
    pairs (``ranked="all"``) or best vs worst (``"best_vs_worst"``)."""
    kind = data_kind(records)
    if kind == "ranked":
        if ranked not in ("all", "best_vs_worst"):
            raise ValueError(f"ranked must be 'all' or 'best_vs_worst', got {ranked!r}")
        if ranked == "best_vs_worst":
            return best_vs_worst(records)
        return [p for i, r in enumerate(records) for p in ranked_to_pairs(r, f"data[{i}]")]
    if kind != "preference":
        raise DataFormatError(
            f"data holds {kind} records; preference training needs 'chosen' and 'rejected' "
            "responses (and a 'prompt'), or 'ranked_outputs'"
        )
    out = []
    for i, record in enumerate(records):
        where = f"data[{i}]"
        pair = dict(record) if "prompt" in record else extract_prompt(record, where)
        validate_pair(pair, where)
        out.append(pair)
    return out


def ranked_records(records: Sequence[Mapping]) -> list[Record]:
    """Ranked records ``{"prompt", "ranked_outputs": [best, ..., worst]}`` for a reward model:
    rankings as they are, each pair as a ranking of two. Prompts must be text (a reward
    model scores text pairs): a conversational record needs one user turn and one answer."""
    kind = data_kind(records)
    if kind == "ranked":
        for i, r in enumerate(records):
            validate_ranked(r, f"data[{i}]")
        return [dict(r) for r in records]
    out = []
    for pair in preference_pairs(records):
        if is_conversational(pair):
            pair.update({k: _single_turn(pair[k], k) for k in ("prompt", "chosen", "rejected")})
        ranking = [pair.pop("chosen"), pair.pop("rejected")]
        out.append({"prompt": pair.pop("prompt"), "ranked_outputs": ranking, **pair})
    return out


def _single_turn(messages: list, field: str) -> str:
    turns = [m for m in messages if m["role"] != "system"]
    if len(turns) != 1:
        raise DataFormatError(
            f"'{field}' has {len(turns)} turns; a reward model here scores one prompt turn and "
            "one answer: keep the last user turn and the final answer"
        )
    return turns[0]["content"]


def sft_records(records: Sequence[Mapping]) -> list[Record]:
    """``{"prompt", "completion"}`` records for SFT. The prompt stays a string or becomes a list
    of messages (conversational data); the completion is a string. Preference data gives its
    chosen response, rankings their best; ``messages`` split before the last assistant turn."""
    kind = data_kind(records)
    if kind == "text":
        raise DataFormatError(
            "data holds 'text' records (language modelling); SFT here trains on a completion "
            "given a prompt: give 'prompt' and 'completion' (or 'messages')"
        )
    if kind == "prompt_only":
        raise DataFormatError(
            "data holds prompts only; SFT needs the answers too: add a 'completion' field"
        )
    out = []
    for i, record in enumerate(records):
        where = f"data[{i}]"
        if kind == "messages":
            messages = list(record["messages"])
            if not messages or messages[-1].get("role") != "assistant" or len(messages) < 2:
                raise DataFormatError(f"{where}: 'messages' must end with an assistant turn that "
                                      "answers at least one earlier turn")  # fmt: skip
            out.append({"prompt": messages[:-1], "completion": messages[-1]["content"]})
            continue
        if kind == "ranked":
            prompt, completion = record["prompt"], record["ranked_outputs"][0]
        elif kind == "preference":
            pair = record if "prompt" in record else extract_prompt(record, where)
            prompt, completion = pair["prompt"], pair["chosen"]
        else:
            prompt, completion = record["prompt"], record["completion"]
        if is_messages(completion):
            if len(completion) != 1 or completion[0].get("role") != "assistant":
                raise DataFormatError(f"{where}: the completion must be one assistant message")
            completion = completion[0]["content"]
        if not isinstance(completion, str) or not completion.strip():
            raise DataFormatError(f"{where}: the completion is empty or not text; drop the record")
        out.append({"prompt": prompt, "completion": completion})
    return out


def prompts(records: Sequence[Mapping]) -> list[Any]:
    """The distinct prompts (strings or message lists) in order of first appearance, for
    on-policy RL (PPO, RLOO, GRPO): any kind with a prompt, or with an implicit one."""
    kind = data_kind(records)
    if kind == "text":
        raise DataFormatError("data holds 'text' records: RL needs a 'prompt' field to sample from")
    distinct = {}  # in order of first appearance
    for i, record in enumerate(records):
        if kind == "messages":
            prompt = sft_records([record])[0]["prompt"]
        elif "prompt" in record:
            prompt = record["prompt"]
        else:
            prompt = extract_prompt(record, f"data[{i}]")["prompt"]
        distinct.setdefault(json.dumps(prompt, sort_keys=True), prompt)
    return list(distinct.values())


# --- Token lengths, before training ----------------------------------------------------------


@dataclass
class LengthReport:
    """What limits of ``max_prompt_length`` / ``max_completion_length`` tokens would cut from
    ``records`` rows (prompt + completion)."""

    records: int
    longest_prompt: int
    longest_completion: int
    max_prompt_length: int | None
    max_completion_length: int | None
    prompts_cut: int
    completions_cut: int
    cut: int  # rows that lose at least one token (of the prompt, the completion or both)

    @property
    def share_cut(self) -> float:
        return self.cut / self.records

    def __str__(self) -> str:
        return (f"{self.records} rows, {self.cut} cut; longest prompt {self.longest_prompt} tokens "
                f"(limit {self.max_prompt_length}, {self.prompts_cut} cut), longest completion "
                f"{self.longest_completion} tokens (limit {self.max_completion_length}, "
                f"{self.completions_cut} cut)")  # fmt: skip


def length_report(
    tokenizer,
    prompt_texts: Sequence[str],
    completion_texts: Sequence[str],
    max_prompt_length: int | None = None,
    max_completion_length: int | None = None,
    add_eos: bool = True,
) -> LengthReport:
    """Token lengths of formatted prompts and completions (EOS counted, as
    :func:`rlhf_lessons.lm.tokenize_pairs` appends it) and how many a limit would cut."""
    from rlhf_lessons.lm import _encode

    eos = int(add_eos and tokenizer.eos_token_id is not None)
    p = [len(ids) for ids in _encode(tokenizer, prompt_texts)]
    c = [len(ids) + eos for ids in _encode(tokenizer, completion_texts)]
    p_cut = [bool(max_prompt_length) and n > max_prompt_length for n in p]
    c_cut = [bool(max_completion_length) and n > max_completion_length for n in c]
    return LengthReport(
        records=len(p), longest_prompt=max(p), longest_completion=max(c),
        max_prompt_length=max_prompt_length, max_completion_length=max_completion_length,
        prompts_cut=sum(p_cut), completions_cut=sum(c_cut),
        cut=sum(a or b for a, b in zip(p_cut, c_cut, strict=True)),
    )  # fmt: skip


def fit_lengths(report: LengthReport, model_limit: int | None) -> tuple[int, int]:
    """Default limits from the data: the longest prompt and completion, unless together they
    exceed the model's context ``model_limit``; then completions keep up to half of it and
    prompts the rest (prompts lose their start, completions their end)."""
    p, c = report.longest_prompt, report.longest_completion
    if model_limit is None or p + c <= model_limit:
        return p, c
    c = min(c, max(model_limit // 2, model_limit - p))
    return model_limit - c, c
