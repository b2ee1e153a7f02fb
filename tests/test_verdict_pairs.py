"""Judge verdicts in both orders -> preference pairs, agreeing verdicts only."""

import pytest

from rlhf_lessons.judges.llm_judge import PairwiseResult
from rlhf_lessons.judges.verdict_pairs import judge_pairs, outcome, verdict_pairs

PROMPTS = ["q1", "q2", "q3", "q4", "q5", "q6"]
A = ["a1", "a2", "a3", "a4", "a5", "a6"]
B = ["b1", "b2", "b3", "b4", "b5", "b6"]


@pytest.mark.parametrize(
    ("ab", "ba", "expected"),
    [("A", "B", "a"), ("B", "A", "b"), ("A", "A", "position"), ("B", "B", "position"),
     ("tie", "tie", "tie"), ("tie", "A", "half tie"), ("B", "tie", "half tie"),
     (None, "A", "unparsed"), ("A", None, "unparsed")],
)  # fmt: skip
def test_outcome_table(ab, ba, expected):
    assert outcome(ab, ba) == expected


def test_only_agreeing_verdicts_become_pairs():
    ab = ["A", "B", "A", "tie", None, "B"]
    ba = ["B", "A", "A", "tie", "A", "tie"]
    out = verdict_pairs(PROMPTS, A, B, ab, ba, extra=[{"id": i} for i in range(6)])
    assert out.pairs == [
        {"prompt": "q1", "chosen": "a1", "rejected": "b1", "id": 0, "pair_index": 0},
        {"prompt": "q2", "chosen": "b2", "rejected": "a2", "id": 1, "pair_index": 1},
    ]
    assert out.kept_share == pytest.approx(2 / 6)
    assert out.counts == {"a": 1, "b": 1, "position": 1, "tie": 1, "half tie": 1, "unparsed": 1}
    assert out.position_slot == {"first": 1}
    assert out.summary().startswith("kept 2 of 6 pairs (33%)")
    assert "1 position" in out.summary() and "1 first slot" in out.summary()


class _Judge:
    """A stand-in judge: ``prefer(prompt, a, b)`` -> "A", "B" or "tie" for each question."""

    def __init__(self, prefer):
        self.prefer, self.calls = prefer, 0

    def compare(self, prompts, responses_a, responses_b, config=None, mode="logprob",
                references=None, few_shot=()):  # fmt: skip
        self.calls += 1
        verdicts = [
            self.prefer(p, a, b) for p, a, b in zip(prompts, responses_a, responses_b, strict=True)
        ]
        return PairwiseResult(mode, verdicts, ["ok"] * len(verdicts))


def test_a_consistent_judge_keeps_every_pair_with_the_right_winner():
    """A judge that prefers the longer answer, whatever the order: every pair is kept, and
    the longer answer is always the chosen one."""
    longer = _Judge(lambda p, a, b: "A" if len(a) > len(b) else "B")
    b = ["b1 is longer", "b", "b3 is longer", "b", "b", "b6 is longer"]
    out = judge_pairs(longer, PROMPTS, A, b)
    assert longer.calls == 1  # both orders in one batched call
    assert out.kept == 6 and out.kept_share == 1.0
    assert all(len(p["chosen"]) >= len(p["rejected"]) for p in out.pairs)


def test_a_planted_position_bias_yields_no_pairs():
    """A judge that always names the first answer has no preference between the answers:
    the both-orders rule detects it (nothing kept, all 'position' in the first slot), where
    a single order would have kept every pair with answer a as the winner."""
    first = _Judge(lambda p, a, b: "A")
    out = judge_pairs(first, PROMPTS, A, B)
    assert out.kept == 0 and out.kept_share == 0.0
    assert out.counts["position"] == 6 and out.position_slot == {"first": 6}


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="ab has 1 entries but there are 6 prompts"):
        verdict_pairs(PROMPTS, A, B, ["A"], ["B"] * 6)
    with pytest.raises(ValueError, match=r"verdict '\[\[C\]\]'.*map the judge's own labels"):
        verdict_pairs(PROMPTS, A, B, ["[[C]]"] * 6, ["A"] * 6)
    with pytest.raises(ValueError, match="prompts is empty"):
        verdict_pairs([], [], [], [], [])
    with pytest.raises(TypeError, match="must be a list"):
        verdict_pairs(PROMPTS, "a", B, ["A"] * 6, ["B"] * 6)
