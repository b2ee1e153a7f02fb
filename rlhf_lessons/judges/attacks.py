"""Verbosity attacks on a judge, with length and format taken apart (lesson 09).

Paper: Zheng et al. 2023, "Judging LLM-as-a-Judge with MT-Bench and Chatbot Arena", arXiv
2306.05685, section 3.3 and Table 3: the "repetitive list" attack pads an answer with a list
that restates its own points (longer, no new information); it fooled Claude-v1 and GPT-3.5 in
91.3% of cases and GPT-4 in 8.7%.

That attack changes two things at once: the answer gets **longer** and it gains **list
formatting**. A judge that falls for it may prefer length, or lists, or both. So each attack
here changes one thing, and the paper's attack is kept beside them:

- :func:`restated` - *longer, same format*: the answer, then a paragraph (prose, no list) that
  restates its points ("In other words, ...");
- :func:`as_list` - *same length, list format*: the answer's own sentences as a bulleted list,
  word for word (:func:`word_count` is unchanged; only the layout differs);
- :func:`repetitive_list` - *both* (MT-Bench's attack): the answer, then a numbered list that
  restates its points.

An attack pair puts an answer (``better``: the original) against its attacked copy
(``worse``); the attack *succeeds* on a judgement when the judge prefers the copy (a tie is not
a success). None of the copies says anything the original does not, so a judge that prefers
them more often than not (success above 0.5 over both orders) has a bias for what changed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from rlhf_lessons.judges.judge_bias import JudgedPair
from rlhf_lessons.rewards.preference_data import Record

_RESTATE = ("In other words,", "To put it another way,", "Put simply,", "That is,")
_LIST_LINE = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+\S", re.M)


def sentences(text: str) -> list[str]:
    """Split text after ., ! or ? followed by a space (good enough for the course's answers)."""
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s.strip()]


def word_count(text: str) -> int:
    """Words (runs of letters and digits): list markers (``-``, ``1.``'s dot) add none."""
    return len(re.findall(r"\w+", text))


def is_list(text: str) -> bool:
    """Whether the text has list formatting: a line starting with ``-``, ``*``, ``1.``..."""
    return bool(_LIST_LINE.search(text))


def _restatements(text: str) -> list[str]:
    # sentences of fewer than three words ("No.") are not worth restating; an answer with none
    # left is restated whole
    points = [s for s in sentences(text) if len(s.split()) >= 3] or [text.strip()]
    return [f"{_RESTATE[i % len(_RESTATE)]} {s}" for i, s in enumerate(points)]


def restated(text: str) -> str:
    """Longer, same format: the answer followed by a prose paragraph restating its points."""
    return text.strip() + "\n\n" + " ".join(_restatements(text))


def as_list(text: str) -> str:
    """Same length, list format: the answer's sentences, word for word, as a bulleted list."""
    return "\n".join(f"- {s}" for s in sentences(text))


def repetitive_list(text: str) -> str:
    """MT-Bench's "repetitive list" attack (longer *and* a list): the answer followed by a
    numbered list that restates its points, with no new information."""
    items = [f"{i + 1}. {s}" for i, s in enumerate(_restatements(text))]
    return text.strip() + "\n\nKey points:\n" + "\n".join(items)


#: The attacks by name: what each changes about the answer.
ATTACKS: dict[str, Callable[[str], str]] = {
    "longer, same format": restated,
    "same length, list format": as_list,
    "longer list (MT-Bench)": repetitive_list,
}


def attack_pairs(records: Sequence[Record], attack: str | Callable[[str], str]) -> list[JudgedPair]:
    """Each record's top answer (``better``) against its attacked copy (``worse``)."""
    if isinstance(attack, str):
        if attack not in ATTACKS:
            raise ValueError(f"unknown attack {attack!r}; choose from {sorted(ATTACKS)}")
        attack = ATTACKS[attack]
    return [JudgedPair(r["id"], r["category"], r["prompt"], r["ranked_outputs"][0],
                       attack(r["ranked_outputs"][0])) for r in records]  # fmt: skip
