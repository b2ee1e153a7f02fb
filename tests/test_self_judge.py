"""The review model as its own judge (lesson 10): vocabulary, formats, the two annotators, the
seed data, and the judge measured against the true grades."""

import copy

import numpy as np
import pytest
import torch

from rlhf_lessons.alignment import self_rewarding as sr
from rlhf_lessons.review_world import self_judge as sj

pytestmark = pytest.mark.usefixtures("one_thread")


def test_reward_to_grade_bins():
    cases = {-1.0: 0, -0.81: 0, -0.8: 1, -0.01: 2, 0.0: 3, 0.79: 4, 0.8: 5, 1.0: 5}
    assert {r: sj.reward_to_grade(r) for r in cases} == cases
    with pytest.raises(ValueError, match="reward"):
        sj.reward_to_grade(1.5)


def test_true_reward_grades_bin_vader():
    grades = sj.true_reward_grades(["the plot was ", "the plot was "], ["superb !", "awful ."])
    assert grades[0] >= 4 and grades[1] <= 1


def test_review_judge_prompt_and_pattern():
    text = sj.REVIEW_JUDGE.format("the plot was ", "great .")
    assert text == "judge : the plot was great . grade :"
    assert sr.parse_score(" 4", sj.REVIEW_JUDGE).value == 4.0
    assert sr.parse_score(" great", sj.REVIEW_JUDGE).reason == "not a number"
    assert sr.parse_score(" 7", sj.REVIEW_JUDGE).reason == "out of range"


# --- the lexicon annotator ------------------------------------------------------------------------


def test_lexicon_comes_from_the_grammar_word_lists():
    pos, neg = sj.lexicon()
    assert {"great", "superb", "loved", "masterpiece"} <= pos
    assert {"awful", "boring", "hated", "disaster"} <= neg
    assert not pos & neg and "the" not in pos | neg and "very" not in pos | neg


@pytest.mark.parametrize("text, score", [
    ("the plot was great .", 1),
    ("the plot was great and superb !", 2),
    ("the plot was awful .", -1),
    ("the plot was not bad at all .", 1),  # negation flips the next polar word
    ("the plot was never boring , and the acting was dull .", 0),  # the clause ends the flip
    ("the plot was very great , but the acting was awful .", 0),  # no weight for "but", "very"
    ("i watched it with my dad on a sunday .", 0),
])  # fmt: skip
def test_lexicon_score(text, score):
    assert sj.lexicon_score(text) == score


def test_lexicon_grades_are_3_plus_the_score_clipped():
    prompts = ["the plot was ", "the plot was ", "it was ", "the film "]
    completions = ["great .", "awful and dull and boring and bad .", "about a family .",
                   "was great , superb , brilliant and lovely ."]  # fmt: skip
    assert sj.lexicon_grades(prompts, completions) == [4, 0, 3, 5]


# --- vocabulary and seed data ---------------------------------------------------------------------


def test_add_judge_vocabulary_keeps_old_ids_and_logits(tiny_lm):
    model, tok = tiny_lm
    new_model, new_tok = sj.add_judge_vocabulary(model, tok, words=("grade", ":", "4"))
    assert len(new_tok) == len(tok) + 3
    assert {w: new_tok.get_vocab()[w] for w in tok.get_vocab()} == tok.get_vocab()
    ids = new_tok("the movie was grade : 4", add_special_tokens=False)["input_ids"]
    assert ids[-3:] == [len(tok), len(tok) + 1, len(tok) + 2]
    x = torch.tensor([tok("the movie was great", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        old, new = model(x).logits, new_model(x).logits
    assert new.shape[-1] == len(new_tok)
    torch.testing.assert_close(new[..., : len(tok)], old)  # the old vocabulary's logits
    assert model.get_input_embeddings().weight.shape[0] == len(tok)  # the input is untouched


def test_review_seed_data_builds_the_three_tasks_with_the_annotators_grades(tiny_lm):
    model, tok = tiny_lm
    model = copy.deepcopy(model)
    prompts = ["the movie was ", "the plot is ", "a film ", "the acting was ", "the film is "]

    def grader(ps, cs):  # a fake annotator: 5, 4, 3, ... cycling
        return [5 - i % 6 for i in range(len(cs))]

    data = sj.review_seed_data(model, tok, prompts, grader, fluency_fn=lambda text: True, k=2,
                               max_new_tokens=4, min_grade=0)  # fmt: skip
    assert all(r["completion"].strip() for r in data["ift"])
    for r in data["eft"]:
        assert r["prompt"] == sj.REVIEW_JUDGE.format(r["review_prompt"], r["review_completion"])
        assert r["completion"] == str(r["grade"]) and 0 <= r["grade"] <= 5
        # the true grade is kept for measuring the judge, whoever labelled the record
        truth = sj.true_reward_grades([r["review_prompt"]], [r["review_completion"]])[0]
        assert r["true_grade"] == truth
    assert len(data["writing"]) == 2
    w = data["writing"][0]
    assert w["prompt"].startswith("prompts : ") and w["prompt"].endswith(" ;")
    assert w["prompt"].count(" ; ") == 3 and w["completion"] in {p.strip() for p in prompts}
    # IFT keeps a prompt's best-graded sample only when it reaches min_grade
    strict = sj.review_seed_data(model, tok, prompts, grader, fluency_fn=lambda text: True, k=2,
                                 max_new_tokens=4, min_grade=6)  # fmt: skip
    assert strict["ift"] == []


# --- the judge against the true grades ------------------------------------------------------------


def _eft(grades):
    return [{"review_prompt": f"the plot was {i} ", "review_completion": ".", "true_grade": g}
            for i, g in enumerate(grades)]  # fmt: skip


def test_judge_accuracy_of_a_perfect_a_constant_and_a_broken_judge(tiny_lm, monkeypatch):
    model, tok = tiny_lm
    eft = _eft([0, 1, 3, 5, 5, 2])
    config = sr.SelfRewardConfig(reward_prompt=sj.REVIEW_JUDGE, chat=False, judge_samples=3)

    def judge(grade_of):
        def reply(self, prompts, *args, **kwargs):
            return [grade_of(p) for p in prompts]

        monkeypatch.setattr(sr.Judge, "reply", reply)
        return sj.judge_accuracy(model, tok, eft, config)

    truth = {f"judge : the plot was {i} . grade :": str(r["true_grade"]) for i, r in enumerate(eft)}
    perfect = judge(lambda p: " " + truth[p])
    assert perfect["parse_rate"] == 1.0 and perfect["mae"] == 0.0
    assert perfect["spearman"] == pytest.approx(1.0) and perfect["pair_accuracy"] == 1.0
    constant = judge(lambda p: " 3")  # no signal: the rank statistics are undefined
    assert np.isnan(constant["spearman"]) and np.isnan(constant["pair_accuracy"])
    broken = judge(lambda p: " great")
    assert broken["parse_rate"] == 0.0 and np.isnan(broken["mae"])
    reversed_ = judge(lambda p: " " + str(5 - int(truth[p])))
    assert reversed_["pair_accuracy"] == 0.0 and reversed_["spearman"] == pytest.approx(-1.0)
