"""Self-rewarding LMs (lesson 10): the pair rule (checkable fact 11), the judge's scores parsed
with reasons on good and bad replies, prompt writing (the review world's judge: test_self_judge)."""

import math

import numpy as np
import pytest
import torch

from rlhf_lessons.alignment import self_rewarding as sr
from rlhf_lessons.alignment.self_rewarding import (
    PromptWriterConfig,
    SelfRewardConfig,
    build_pairs,
    pick_pair,
)

pytestmark = pytest.mark.usefixtures("one_thread")
nan = float("nan")

# --- the pair rule (fact sheet, checkable fact 11) -----------------------------------------------


def test_pair_is_argmax_and_argmin_of_the_averaged_scores():
    scores = [[4, nan, 5], [1, 2, nan], [nan, nan, nan], [3, 3, 3]]  # means 4.5, 1.5, -, 3
    choice = pick_pair(scores)
    assert choice.ok and (choice.chosen, choice.rejected) == (0, 1)
    assert choice.means[0] == 4.5 and choice.means[1] == 1.5 and math.isnan(choice.means[2])
    # the average decides, not the single best judgement: 5 in one row, 4.6 mean in another
    assert pick_pair([[5, 0, 0], [4.6, 4.6, 4.6], [1, 1, 1]]).chosen == 1


def test_tie_and_too_few_scores_give_no_pair():
    assert pick_pair([[3, 3], [3, 3], [3, 3]]).reason == "tie"
    assert pick_pair([[2, 4], [3, 3]]).reason == "tie"  # equal averages of different scores
    assert pick_pair([[nan, nan], [4, nan], [nan, nan]]).reason == "fewer than 2 scored"
    assert pick_pair([[nan], [nan]]).reason == "fewer than 2 scored"
    # two scored candidates are enough, whatever the others
    assert pick_pair([[nan], [1], [nan], [2]]).chosen == 3


def test_pair_rule_takes_the_first_of_equal_extremes_and_checks_shapes():
    choice = pick_pair([[5], [1], [5], [1]])
    assert (choice.chosen, choice.rejected) == (0, 1)
    with pytest.raises(ValueError, match="candidates, judgements"):
        pick_pair([1, 2, 3])


def test_build_pairs_counts_skips_and_drops_unusable_candidates():
    prompts = ["a", "b", "c", "d"]
    candidates = [["good", "bad"], ["same", "same"], ["", "x"], ["y", "z"]]
    scores = np.array([[[5], [1]], [[5], [1]], [[5], [1]], [[2], [2]]], dtype=float)
    choices, pairs, skipped = build_pairs(prompts, ["A", "B", "C", "D"], candidates, scores)
    assert [c.reason for c in choices] == ["ok", "tie", "fewer than 2 scored", "tie"]
    assert skipped == {"tie": 2, "fewer than 2 scored": 1}
    assert pairs == [{"prompt": "A", "chosen": "good", "rejected": "bad", "score_chosen": 5.0,
                      "score_rejected": 1.0, "index": 0, "user_prompt": "a"}]  # fmt: skip


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="n_candidates"):
        SelfRewardConfig(n_candidates=1)
    with pytest.raises(ValueError, match="temperature"):
        SelfRewardConfig(judge_temperature=0)
    with pytest.raises(ValueError, match="top_p"):
        SelfRewardConfig(top_p=1.5)
    with pytest.raises(TypeError, match="RewardPromptConfig"):
        SelfRewardConfig(reward_prompt="Score: {reward}")


# --- judging: scores parsed with reasons, never a crash on a match --------------------------------

REPLIES = ["Score: 4", "Score: five", "Score: 9", "I liked it", "Score: 2.5.", "Score: nan"]


def _canned_judge(monkeypatch, replies, seen=None):
    """Replace the judge's generation with canned replies, cycled over the rows and shifted by
    one per judgement sample (judge_candidates seeds sample s with seed + 1000 s)."""

    def reply(self, prompts, temperature=None, top_p=1.0, seed=0):
        if seen is not None:
            seen.extend(prompts)
        return [replies[(i + seed // 1000) % len(replies)] for i in range(len(prompts))]

    monkeypatch.setattr(sr.Judge, "reply", reply)


def test_judge_candidates_parses_good_and_bad_replies_with_reasons(tiny_lm, monkeypatch):
    model, tok = tiny_lm
    _canned_judge(monkeypatch, REPLIES)
    cfg = SelfRewardConfig(n_candidates=2, judge_samples=1)
    j = sr.judge_candidates(model, tok, ["p1", "p2", "p3"], [["a", "b"]] * 3, cfg, seed=0)
    assert j.scores.shape == (3, 2, 1)
    flat = j.scores.ravel()
    assert flat[0] == 4.0 and flat[4] == 2.5 and np.isnan(flat[[1, 2, 3, 5]]).all()
    assert [r[0] for row in j.reasons for r in row] == [
        "ok", "not a number", "out of range", "no score", "ok", "not a number"
    ]  # fmt: skip
    assert j.unparsed_reasons == {"not a number": 2, "out of range": 1, "no score": 1}
    assert j.parse_rate == pytest.approx(2 / 6)


def test_each_candidate_is_judged_s_times_and_the_prefix_is_parsed(tiny_lm, monkeypatch):
    model, tok = tiny_lm
    seen = []
    _canned_judge(monkeypatch, [" 1", " 2", " 3"], seen)
    cfg = SelfRewardConfig(n_candidates=2, judge_samples=3, judge_prefix="Score:")
    j = sr.judge_candidates(model, tok, ["the movie"], [["good", "bad"]], cfg, seed=0)
    assert len(seen) == 6 and all(p.endswith("Score:") for p in seen)
    assert "the movie" in seen[0] and "good" in seen[0]  # the rubric was filled in
    assert j.texts[0][0] == ["Score: 1", "Score: 2", "Score: 3"]  # a new seed per sample
    assert j.scores[0, 0].tolist() == [1, 2, 3]


def test_self_reward_round_end_to_end_with_a_canned_judge(tiny_lm, monkeypatch):
    model, tok = tiny_lm
    # rows are (prompt 0: cand 0..3, prompt 1: cand 0..3): distinct scores for prompt 0, one
    # valid score for prompt 1
    replies = ["Score: 5", "Score: 1", "Score: 3", "Score: 2", "Score: 4", "x", "y", "z"]
    _canned_judge(monkeypatch, replies)
    cfg = SelfRewardConfig(n_candidates=4, judge_samples=1, max_new_tokens=6, batch_size=16)
    data = sr.self_reward_round(model, tok, ["the movie was ", "the plot "], cfg)
    assert len(data.candidates) == 2 and all(len(c) == 4 for c in data.candidates)
    summary = data.summary()
    assert summary["prompts"] == 2 and summary["skipped_fewer_than_2_scored"] == 1
    if data.pairs:  # prompt 0 pairs candidate 0 (5) against candidate 1 (1), unless empty
        assert data.pairs[0]["score_chosen"] == 5.0 and data.pairs[0]["score_rejected"] == 1.0
        assert data.pairs[0]["prompt"] == "the movie was "  # no chat template: raw text
    table = data.table()
    assert len(table) == 8 and set(table["decision"]) <= {"ok", "tie", "fewer than 2 scored"}


def test_a_random_model_as_judge_gives_no_pairs_and_says_why(tiny_lm):
    model, tok = tiny_lm
    cfg = SelfRewardConfig(n_candidates=2, judge_samples=2, max_new_tokens=4,
                           judge_max_new_tokens=3)  # fmt: skip
    data = sr.self_reward_round(model, tok, ["the movie was "], cfg)
    # the tiny model's vocabulary has no "Score", so nothing parses
    assert data.pairs == [] and data.skipped == {"fewer than 2 scored": 1}
    assert data.judgements.unparsed_reasons.total() == 4


def test_judge_agreement_on_a_known_reward():
    j = sr.Judgements(
        np.array([[[5.0], [1.0]], [[2.0], [4.0]]]), [[["ok"]] * 2] * 2, [[[""]] * 2] * 2
    )
    choices, pairs, _ = build_pairs(["a", "b"], ["a", "b"], [["x", "y"], ["u", "v"]], j.scores)
    data = sr.SelfRewardData(["a", "b"], [["x", "y"], ["u", "v"]], j, choices, pairs)
    true = {"x": 1.0, "y": -1.0, "u": 0.5, "v": 0.0}
    out = sr.judge_agreement(data, lambda p, c: torch.tensor([true[t] for t in c]))
    assert out["pair_accuracy"] == 0.5  # right on prompt a, wrong on prompt b
    assert out["true_margin"] == pytest.approx((2.0 - 0.5) / 2)
    assert out["candidate_reward"] == pytest.approx(0.125)


# --- new prompts from few-shot examples ---------------------------------------------------------


def test_prompt_writer_formats_examples_and_extracts_the_new_prompt():
    cfg = PromptWriterConfig(n_shots=2)
    text = cfg.format(["What is 2 + 2?", "Name a colour. "])
    assert (
        text == "Questions that users asked an AI assistant:\n- What is 2 + 2?\n- Name a colour.\n-"
    )
    assert cfg.extract(" How tall is Everest?\n- Another one") == "How tall is Everest?"
    assert cfg.extract("\n\n1. Why is the sky blue?") == "Why is the sky blue?"
    assert PromptWriterConfig(stop=";").extract("the plot was ; the acting") == "the plot was"
    with pytest.raises(ValueError, match="examples"):
        PromptWriterConfig(template="no slot")


def test_generate_prompts_rejects_copies_and_counts_reasons(tiny_lm, monkeypatch):
    model, tok = tiny_lm
    seeds = ["the movie was", "the plot is", "a film", "the acting was"]
    cfg = PromptWriterConfig(n_shots=2, chat=False)
    new, rejected = sr.generate_prompts(model, tok, seeds, 3, cfg, seed=0)
    assert len(new) <= 3 and len(set(new)) == len(new)
    assert not {p.lower() for p in new} & {s.lower() for s in seeds}
    # a canned model: the same reply every time -> one new prompt, then duplicates and copies
    replies = iter([" The plot is\n", " good movie\n", " good movie\n", " x\n"] * 10)

    def fake_generate(model, tokenizer, prompts, **kw):
        return sr.lm.Generation(list(prompts), [next(replies) for _ in prompts], None)

    monkeypatch.setattr(sr.lm, "generate", fake_generate)
    new, rejected = sr.generate_prompts(model, tok, seeds, 2, cfg, seed=0, max_rounds=2)
    assert new == ["good movie"]
    assert rejected["copy of a seed"] >= 1 and rejected["duplicate"] >= 1 and rejected["empty"] >= 1
    with pytest.raises(ValueError, match="n_shots"):
        sr.generate_prompts(model, tok, seeds[:1], 2, cfg)
