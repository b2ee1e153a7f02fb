import numpy as np
import pytest

from rlhf_lessons.judges.attacks import attack_pairs, repetitive_list, sentences
from rlhf_lessons.judges.judge_bias import (
    METRICS,
    PAPER_GPT4,
    JudgedPair,
    Outcomes,
    SwapRun,
    attack_metrics,
    best_worst_pairs,
    bias_table,
    judge_both_orders,
    judge_sets,
    position_metrics,
    reference_pairs,
    select_records,
)
from rlhf_lessons.judges.llm_judge import PairwiseResult
from rlhf_lessons.judges.planted import LengthJudge


def verbosity_pairs(records):
    return attack_pairs(records, "longer list (MT-Bench)")


RECORDS = [
    {"id": "x-2", "category": "factuality", "prompt": "p2", "ranked_outputs": ["a b", "c"]},
    {
        "id": "x-1",
        "category": "factuality",
        "prompt": "p1",
        "ranked_outputs": ["best one", "middle", "worst one here"],
    },  # fmt: skip
    {
        "id": "y-1",
        "category": "helpfulness",
        "prompt": "p3",
        "ranked_outputs": ["good long answer", "bad"],
    },  # fmt: skip
]


def fake_run(v1, v2, probs1=None, probs2=None):
    pairs = [JudgedPair(str(i), "c", "p", "good", "bad") for i in range(len(v1))]
    return SwapRun(pairs, PairwiseResult("text", v1, ["ok"] * len(v1), probs=probs1),
                   PairwiseResult("text", v2, ["ok"] * len(v2), probs=probs2))  # fmt: skip


def test_position_metrics_by_hand():
    # pair 0: better both times; 1: "A" both times; 2: "B" both times; 3: unparsable, then tie
    m = position_metrics(fake_run(["A", "A", "B", None], ["B", "A", "B", "tie"]))
    assert m["pairs"] == 4
    assert m["agreement"] == 4 / 8  # better picked in: pair 0 twice, pair 1 first, pair 2 second
    assert m["agreement (decided)"] == pytest.approx(4 / 6)
    assert m["first-position rate"] == 3 / 6
    assert m["consistency"] == 1 / 4
    assert m["biased to first"] == m["biased to second"] == m["error"] == 1 / 4
    assert m["unparsable"] == 1 / 8
    assert m["swap-and-agree agreement"] == 1 / 4 and m["swap-and-agree ties"] == 3 / 4
    assert "mean p(better)" not in m
    # a tie in both orders is consistent
    assert position_metrics(fake_run(["tie"], ["tie"]))["consistency"] == 1.0


def test_soft_metrics_and_swap_averaging():
    # order 1 (better shown first): P(A) 0.6, P(B) 0.2 -> p_first 0.75 = p(better)
    # order 2 (better shown second): P(A) 0.5, P(B) 0.3 -> p(better) = 1 - 0.625 = 0.375
    p1 = np.array([[0.6, 0.2, 0.2]])
    p2 = np.array([[0.5, 0.3, 0.2]])
    m = position_metrics(fake_run(["A"], ["A"], p1, p2))
    assert m["mean p(better)"] == pytest.approx((0.75 + 0.375) / 2)
    assert m["swap-averaged agreement"] == 1.0  # (0.75 + 0.375) / 2 > 0.5
    assert m["first-position rate"] == 1.0 and m["consistency"] == 0.0


def test_an_always_a_judge_is_fully_position_biased():
    class AlwaysA:
        def compare(self, prompts, a, b, config=None, mode="text", references=None,
                    few_shot=()):  # fmt: skip
            return PairwiseResult("rule", ["A"] * len(a), ["ok"] * len(a))

    pairs = best_worst_pairs(RECORDS)
    m = position_metrics(judge_both_orders(AlwaysA(), pairs, mode="text"))
    assert m["first-position rate"] == 1.0 and m["biased to first"] == 1.0
    assert m["consistency"] == 0.0 and m["agreement"] == 0.5
    assert m["swap-and-agree agreement"] == 0.0 and m["swap-and-agree ties"] == 1.0
    v = attack_metrics(judge_both_orders(AlwaysA(), verbosity_pairs(RECORDS), mode="text"))
    assert v["attack success"] == 0.5 and v["attack success, swap-and-agree"] == 0.0


def test_length_judge_is_consistent_and_falls_for_padding():
    run = judge_both_orders(LengthJudge(), best_worst_pairs(RECORDS), mode="text")
    # shows the better answer first, then second
    assert [r for r in run.first.verdicts] == ["A", "B", "A"]  # "worst one here" is longest
    assert run.second.verdicts == ["B", "A", "B"]
    m = position_metrics(run)
    assert m["consistency"] == 1.0 and m["biased to first"] == 0.0
    assert m["agreement"] == pytest.approx(2 / 3)
    v = attack_metrics(judge_both_orders(LengthJudge(), verbosity_pairs(RECORDS)))
    assert v["attack success"] == 1.0 and v["attack success, swap-and-agree"] == 1.0


def test_judge_sets_equals_one_call_per_set():
    calls = []

    class Counting(LengthJudge):
        def compare(self, prompts, *args, **kwargs):
            calls.append(len(prompts))
            return super().compare(prompts, *args, **kwargs)

    sets = {"pairs": best_worst_pairs(RECORDS), "attack": verbosity_pairs(RECORDS[:2])}
    runs = judge_sets(Counting(), sets, mode="text")
    assert calls == [2 * 5]  # one batched call, both orders of all five pairs
    for name, pairs in sets.items():
        alone = judge_both_orders(LengthJudge(), pairs, mode="text")
        assert runs[name].pairs == pairs
        assert runs[name].first.verdicts == alone.first.verdicts
        assert runs[name].second.verdicts == alone.second.verdicts
    with pytest.raises(ValueError, match="non-empty"):
        judge_sets(LengthJudge(), {"none": []})


def test_pairs_from_records():
    sel = select_records(RECORDS, 1)
    assert [r["id"] for r in sel] == ["x-1", "y-1"]  # first by id in each category
    pairs = best_worst_pairs(sel)
    assert (pairs[0].better, pairs[0].worse) == ("best one", "worst one here")
    refs = reference_pairs(RECORDS)
    assert len(refs) == 1  # only the K = 3 record
    assert (refs[0].better, refs[0].worse, refs[0].reference) == (
        "middle", "worst one here", "best one")  # fmt: skip
    with pytest.raises(ValueError, match="per_category"):
        select_records(RECORDS, 0)
    with pytest.raises(ValueError, match="needs pairs with a reference"):
        judge_both_orders(LengthJudge(), pairs, use_reference=True)


def test_repetitive_list_adds_no_new_content():
    text = "No. Chocolate is toxic to dogs. Dark chocolate is the worst, so call a vet!"
    assert sentences(text) == ["No.", "Chocolate is toxic to dogs.",
                               "Dark chocolate is the worst, so call a vet!"]  # fmt: skip
    padded = repetitive_list(text)
    assert padded.startswith(text) and len(padded) > 1.5 * len(text)
    assert "1. In other words, Chocolate is toxic to dogs." in padded
    assert "2. To put it another way, Dark chocolate" in padded and "No. No." not in padded
    restate = set("In other words, To put it another way, Put simply, That is, Key points:".split())
    assert set(padded.split()) - set(text.split()) <= restate | {"1.", "2."}
    assert repetitive_list("Yes.") == "Yes.\n\nKey points:\n1. In other words, Yes."
    pairs = verbosity_pairs(RECORDS)
    assert pairs[0].better == "a b" and pairs[0].worse == repetitive_list("a b")


def test_bias_table_has_the_paper_row():
    table = bias_table({"ours": {"consistency": 0.4, "agreement": 0.5}},
                       columns=["agreement", "consistency"])  # fmt: skip
    assert list(table.columns) == ["agreement", "consistency"]
    assert table.loc["GPT-4, MT-Bench paper", "consistency"] == PAPER_GPT4["consistency"]
    assert table.loc["GPT-4, MT-Bench paper, few-shot", "consistency"] == 0.775
    assert np.isnan(table.loc["GPT-4, MT-Bench paper", "agreement"])


def test_outcomes_and_position_pull_by_hand():
    # pair 0: better both times; 1: "A" both times; 2: "B" both times; 3: unparsable, then tie
    run = fake_run(["A", "A", "B", None], ["B", "A", "B", "tie"])
    o = Outcomes.of(run)
    assert o.shape == (1, 4, 2)
    assert o.better[0].tolist() == [[True, True], [True, False], [False, True], [False, False]]
    assert o.tie[0, 3].tolist() == [False, True] and o.parsed[0, 3].tolist() == [False, True]
    m = position_metrics(run)
    assert m["position pull"] == 2 * 3 / 6 - 1 == 0  # 3 of the 6 decisive verdicts pick A
    pulled = Outcomes.of(fake_run(["A", "A", "B", "A"], ["A", "A", "B", "B"]))
    assert METRICS["position pull"](pulled) == 2 * 5 / 8 - 1 == METRICS["|position pull|"](pulled)
    # two seeds of one judge: metrics are over both (here: the mean of the two runs')
    other = fake_run(["A", "A", "A", "A"], ["A", "A", "A", "A"])
    both = position_metrics([run, other])
    assert both["agreement"] == (position_metrics(run)["agreement"] + 0.5) / 2
    assert both["biased to first"] == (1 / 4 + 1) / 2
