import math

import numpy as np
import pytest
import torch

from rlhf_lessons import lm
from rlhf_lessons.judges.llm_judge import (
    ADDITIVE_5_POINT,
    PAIRWISE_INSTRUCTIONS_FIRST,
    PAIRWISE_REFERENCE_TEMPLATE,
    SINGLE_1_TO_10,
    Judge,
    PairwiseConfig,
    RewardPromptConfig,
    choice_logprobs,
    parse_score,
    parse_verdict,
)

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = (
    "the movie was great bad good plot acting Q: X: Y: verdict A B C Score: "
    "0 1 2 3 4 5 6 user assistant system said"
).split()
# A word-level pairwise format: the verdicts differ in their last word
WORD_PAIRWISE = PairwiseConfig(
    "Q: {prompt} X: {response_a} Y: {response_b}", ("verdict A", "verdict B", "verdict C")
)
WORD_GRADING = RewardPromptConfig("Q: {prompt} X: {response}", "Score: {reward}", 0, 5)
CHAT = (
    "{% for m in messages %}{{ m['role'] }} said {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}assistant said {% endif %}"
)


@pytest.fixture(scope="module")
def judge_lm(word_tokenizer):
    """A tiny random Llama over WORDS, with a toy chat template (for few-shot turns)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = word_tokenizer(WORDS)
    tok.chat_template = CHAT
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok.get_vocab()), hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        max_position_embeddings=128, pad_token_id=0, eos_token_id=1, bos_token_id=None,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval(), tok


def by_hand_last_logits(model, tok, text):
    """Logits after the whole text, from one plain forward pass (no lm layer)."""
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        return model(input_ids=ids).logits[0, -1]


# --- parsing scores ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, value",
    [
        ("Score: 4", 4.0),
        ("The answer is relevant and clear.\nScore: 3\n", 3.0),
        ("Score:5.", 5.0),  # no space, a full stop after the number
        ("Score: 2.5 points", 2.5),
        ("Score: 0", 0.0),
        ("Score: 4 ... as I said, Score: 4", 4.0),  # the same number twice is fine
        ("Score:\n  1", 1.0),
    ],
)
def test_parse_score_good(text, value):
    parsed = parse_score(text, ADDITIVE_5_POINT)
    assert parsed.ok and parsed.value == value and parsed.reason == "ok"


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "no score"),
        ("I would give it four points.", "no score"),
        ('end with the line "Score: <total points>"', "no score"),  # the prompt echoed
        ("Score: five", "not a number"),
        ("Score: 4/5", "not a number"),
        ("Score: nan", "not a number"),  # float() would accept these two
        ("Score: inf", "not a number"),
        ("Score: **4**", "not a number"),
        ("Score: 7", "out of range"),
        ("Score: -1", "out of range"),
        ("Score: 2, no wait, Score: 5", "ambiguous"),
    ],
)
def test_parse_score_bad(text, reason):
    parsed = parse_score(text, ADDITIVE_5_POINT)
    assert not parsed.ok and parsed.value is None and parsed.reason == reason


def test_parse_score_mt_bench_pattern():
    assert parse_score("Rating: [[7]]", SINGLE_1_TO_10).value == 7.0
    assert parse_score("[[8.5]]", SINGLE_1_TO_10).value == 8.5
    assert parse_score("[[10]]", SINGLE_1_TO_10).value == 10.0
    assert parse_score("[[0]]", SINGLE_1_TO_10).reason == "out of range"
    assert parse_score("[[seven]]", SINGLE_1_TO_10).reason == "not a number"
    assert parse_score("[7]", SINGLE_1_TO_10).reason == "no score"
    # a custom pattern with text after the slot
    cfg = RewardPromptConfig("{prompt} {response}", "Rating: {reward}/10", 1, 10)
    assert parse_score("Rating: 6/10", cfg).value == 6.0
    assert parse_score("Rating: 6", cfg).reason == "no score"


def test_reward_prompt_config_validation():
    with pytest.raises(ValueError, match="missing.*response"):
        RewardPromptConfig("Rate {prompt}")
    with pytest.raises(ValueError, match="unknown fields.*answer"):
        RewardPromptConfig("{prompt} {response} {answer}")
    with pytest.raises(ValueError, match="exactly once"):
        RewardPromptConfig("{prompt} {response}", score_pattern="Score:")
    with pytest.raises(ValueError, match="min_score"):
        RewardPromptConfig("{prompt} {response}", min_score=5, max_score=5)
    with pytest.raises(ValueError, match="valid format string"):
        RewardPromptConfig("{prompt} {response} {")
    cfg = RewardPromptConfig("Q {prompt} R {response} with {{braces}}")
    assert cfg.format("p", "r") == "Q p R r with {braces}"
    with pytest.raises(ValueError, match="no \\{reference\\} field"):
        cfg.format("p", "r", reference="ref")
    ref = RewardPromptConfig("{prompt} {reference} {response}")
    with pytest.raises(ValueError, match="pass references"):
        ref.format("p", "r")
    assert ref.format("p", "r", "x") == "p x r"
    assert ADDITIVE_5_POINT.choices() == [0, 1, 2, 3, 4, 5]
    assert SINGLE_1_TO_10.answer_prefix == "[["


# --- parsing verdicts ---------------------------------------------------------------------------


def test_parse_verdict():
    assert parse_verdict("[[A]]").verdict == "A"
    assert parse_verdict("Answer B is more precise. [[B]]").verdict == "B"
    assert parse_verdict("[[C]]").verdict == "tie"
    assert parse_verdict("[A]") == parse_verdict("A is better")
    assert parse_verdict("[A]").reason == "no verdict" and parse_verdict("[A]").verdict is None
    assert parse_verdict("[[A]] or maybe [[B]]").reason == "ambiguous"
    assert parse_verdict("verdict B", WORD_PAIRWISE).verdict == "B"


def test_instructions_first_prompt_ends_with_the_answers():
    config = PairwiseConfig(PAIRWISE_INSTRUCTIONS_FIRST)
    assert config.split_verdicts() == ("[[", ["A", "B", "C"])
    one, two = config.format("Q?", "yes", "no"), config.format("Q?", "no", "yes")
    assert one.endswith("Answer B: no") and two.endswith("Answer B: yes")
    # every instruction (the reply format included) comes before the question
    start = one.index("Question: Q?")
    assert one[:start] == two[:start] and "[[A]]" in one[:start] and "[[" not in one[start:]


def test_pairwise_config():
    assert PairwiseConfig().split_verdicts() == ("[[", ["A", "B", "C"])
    assert WORD_PAIRWISE.split_verdicts() == ("verdict ", ["A", "B", "C"])
    assert PairwiseConfig(verdicts=("<A>", "<B>", "<tie>")).split_verdicts() == (
        "<", ["A", "B", "tie"])  # fmt: skip
    with pytest.raises(ValueError, match="three different"):
        PairwiseConfig(verdicts=("[[A]]", "[[A]]", "[[C]]"))
    with pytest.raises(ValueError, match="contain another"):
        PairwiseConfig(verdicts=("A", "AB", "C"))
    with pytest.raises(ValueError, match="missing.*response_b"):
        PairwiseConfig("{prompt} {response_a}")
    ref = PairwiseConfig(PAIRWISE_REFERENCE_TEMPLATE)
    assert ref.uses_reference and "Reference answer: R" in ref.format("q", "a", "b", "R")
    with pytest.raises(ValueError, match="pass references"):
        ref.format("q", "a", "b")


# --- log-prob mode --------------------------------------------------------------------------


def test_choice_logprobs_single_token_is_the_next_token_log_softmax(judge_lm):
    model, tok = judge_lm
    contexts = ["the movie was", "Q: the plot X: good acting Y: bad Score:", "the"]
    choices = ["great", "bad", "5"]
    out = choice_logprobs(model, tok, contexts, choices, batch_size=2)
    assert out.shape == (3, 3)
    ids = [tok.convert_tokens_to_ids(c) for c in choices]
    for i, ctx in enumerate(contexts):  # rows come back in input order despite the sorting
        expected = torch.log_softmax(by_hand_last_logits(model, tok, ctx), -1)[ids]
        torch.testing.assert_close(out[i], expected, atol=1e-5, rtol=1e-5)


def test_choice_logprobs_multi_token_sums_the_tokens(judge_lm):
    model, tok = judge_lm
    contexts = ["the movie was", "Q: the plot"]
    choices = ["great", "very bad", "good acting"]  # "very" is <unk>: still a token
    out = choice_logprobs(model, tok, contexts, choices, batch_size=3)
    for i, ctx in enumerate(contexts):
        for k, choice in enumerate(choices):
            words = choice.split()
            total, text = 0.0, ctx
            for w in words:  # chain rule by hand: log p(w1 | ctx) + log p(w2 | ctx w1)
                logp = torch.log_softmax(by_hand_last_logits(model, tok, text), -1)
                total += logp[tok(w, add_special_tokens=False)["input_ids"][0]].item()
                text = f"{text} {w}"
            assert out[i, k].item() == pytest.approx(total, abs=1e-5)
    # the single-token choice agrees with the one-pass path
    single = choice_logprobs(model, tok, contexts, ["great", "bad"])
    torch.testing.assert_close(out[:, 0], single[:, 0], atol=1e-5, rtol=1e-5)


def test_compare_logprob_mode_is_the_softmax_over_the_verdict_options(judge_lm):
    model, tok = judge_lm
    judge = Judge(model, tok, show_progress=False)
    res = judge.compare(["the plot", "the acting"], ["good", "great"], ["bad", "bad good"],
                        WORD_PAIRWISE, mode="logprob")  # fmt: skip
    assert res.n_unparsed == 0 and res.mode == "logprob"
    ids = [tok.convert_tokens_to_ids(c) for c in "ABC"]
    for i, (p, a, b) in enumerate([("the plot", "good", "bad"),
                                   ("the acting", "great", "bad good")]):  # fmt: skip
        context = lm.format_prompt(tok, WORD_PAIRWISE.format(p, a, b)) + "verdict "
        probs = torch.softmax(by_hand_last_logits(model, tok, context)[ids], -1).numpy()
        np.testing.assert_allclose(res.probs[i], probs, atol=1e-5)
        assert res.verdicts[i] == ("A", "B", "tie")[int(np.argmax(probs))]
        assert res.p_first[i] == pytest.approx(probs[0] / (probs[0] + probs[1]))


def test_grade_logprob_mode_is_the_expected_score(judge_lm):
    model, tok = judge_lm
    judge = Judge(model, tok, show_progress=False)
    res = judge.grade(["the plot"], ["good acting"], WORD_GRADING, mode="logprob")
    context = lm.format_prompt(tok, "Q: the plot X: good acting") + "Score: "
    ids = [tok.convert_tokens_to_ids(str(k)) for k in range(6)]
    probs = torch.softmax(by_hand_last_logits(model, tok, context)[ids], -1).numpy()
    np.testing.assert_allclose(res.probs[0], probs, atol=1e-5)
    assert res.mean[0] == pytest.approx(float(probs @ np.arange(6)), abs=1e-5)
    assert res.choices == [0, 1, 2, 3, 4, 5] and res.n_unparsed == 0


def test_few_shot_turns_come_before_the_question(judge_lm):
    model, tok = judge_lm
    judge = Judge(model, tok, show_progress=False)
    [chat] = judge.chat(["Q: new"], few_shot=[("Q: old", "verdict A")])
    assert chat == "user said Q: old assistant said verdict A user said Q: new assistant said "
    # and the few-shot context changes the log-prob judgement
    plain = judge.compare(["the"], ["good"], ["bad"], WORD_PAIRWISE)
    shot = judge.compare(["the"], ["good"], ["bad"], WORD_PAIRWISE,
                         few_shot=[("Q: the X: bad Y: good", "verdict B")])  # fmt: skip
    assert not np.allclose(plain.probs, shot.probs)


# --- text mode ----------------------------------------------------------------------------------


def test_text_mode_counts_unparsable_replies(judge_lm, monkeypatch):
    model, tok = judge_lm
    judge = Judge(model, tok, max_new_tokens=4, show_progress=False)
    # a real (random) model: its replies never contain a verdict, and every one is reported
    res = judge.compare(["the", "the plot"], ["good", "bad"], ["bad", "good"], WORD_PAIRWISE,
                        mode="text")  # fmt: skip
    assert len(res.texts) == 2 and res.n_unparsed == 2
    assert res.unparsed_reasons == {"no verdict": 2}
    # canned replies: each parsed, the failures counted by reason
    canned = ["verdict A", "I like it", "verdict A or verdict B", "so verdict C"]
    monkeypatch.setattr(judge, "reply", lambda prompts, *a, **k: canned[: len(prompts)])
    res = judge.compare(["q"] * 4, ["a"] * 4, ["b"] * 4, WORD_PAIRWISE, mode="text")
    assert res.verdicts == ["A", None, None, "tie"]
    assert res.unparsed_reasons == {"no verdict": 1, "ambiguous": 1} and res.n_unparsed == 2
    with pytest.raises(ValueError, match="p_first needs the log-prob mode"):
        _ = res.p_first


def test_grade_text_mode_averages_valid_samples(judge_lm, monkeypatch):
    model, tok = judge_lm
    judge = Judge(model, tok, show_progress=False)
    replies = iter([["Score: 4", "Score: 9"], ["Score: 2", "none"], ["Score: 3", "Score: x"]])
    monkeypatch.setattr(judge, "reply", lambda prompts, *a, **k: next(replies))
    res = judge.grade(["q1", "q2"], ["r1", "r2"], WORD_GRADING, mode="text", samples=3,
                      temperature=0.7)  # fmt: skip
    assert res.scores.shape == (2, 3)
    np.testing.assert_array_equal(res.mean, [3.0, np.nan])  # (4 + 2 + 3) / 3; none valid
    assert res.reasons[1] == ["out of range", "no score", "not a number"]
    assert res.n_unparsed == 3
    assert res.unparsed_reasons == {"out of range": 1, "no score": 1, "not a number": 1}
    with pytest.raises(ValueError, match="set temperature"):
        judge.grade(["q"], ["r"], WORD_GRADING, mode="text", samples=3)


def test_sampled_replies_repeat_with_the_seed(judge_lm):
    model, tok = judge_lm
    judge = Judge(model, tok, max_new_tokens=5, show_progress=False)
    prompts = judge.chat(["Q: the plot", "Q: the"])
    a = judge.reply(prompts, temperature=1.0, seed=3)
    assert a == judge.reply(prompts, temperature=1.0, seed=3)
    assert judge.reply(prompts) == judge.reply(prompts)  # greedy


def test_bad_input_is_named(judge_lm):
    model, tok = judge_lm
    judge = Judge(model, tok, show_progress=False)
    with pytest.raises(ValueError, match="2 prompts but 1 responses_b"):
        judge.compare(["a", "b"], ["x", "y"], ["z"], WORD_PAIRWISE)
    with pytest.raises(ValueError, match="mode must be one of"):
        judge.compare(["a"], ["x"], ["y"], WORD_PAIRWISE, mode="vibes")
    with pytest.raises(ValueError, match="no \\{reference\\} field"):
        judge.compare(["a"], ["x"], ["y"], WORD_PAIRWISE, references=["r"])
    with pytest.raises(ValueError, match="prompts is empty"):
        judge.grade([], [], WORD_GRADING)
    with pytest.raises(ValueError, match="integer scale"):
        RewardPromptConfig("{prompt} {response}", integer=False).choices()
    with pytest.raises(ValueError, match="non-empty"):
        choice_logprobs(model, tok, ["the"], [])


@pytest.mark.slow
def test_smollm2_judge_runs_both_modes():
    from rlhf_lessons.models import load_causal_lm

    model, tok = load_causal_lm()
    judge = Judge(model, tok, max_new_tokens=6, show_progress=False)
    q, good, bad = "What is 2 + 2?", "4.", "5."
    res = judge.compare([q], [good], [bad], mode="logprob")
    assert res.probs.shape == (1, 3) and math.isclose(res.probs.sum(), 1.0, rel_tol=1e-5)
    text = judge.compare([q], [good], [bad], mode="text")
    assert isinstance(text.texts[0], str) and (text.verdicts[0] is None) == (text.n_unparsed == 1)
    grade = judge.grade([q], [good], mode="logprob")
    assert 0.0 <= grade.mean[0] <= 5.0


def test_next_token_logits_at_matches_the_full_logits(judge_lm):
    # lm.next_token_logits_at was added for the judges: one position per row, same numbers
    model, tok = judge_lm
    batch = lm.tokenize_pairs(tok, ["the movie was", "the"], ["great plot", "bad"])
    index = torch.tensor([3, 2])
    with torch.no_grad():
        full = lm.next_token_logits(model, batch, temperature=0.7)
        at = lm.next_token_logits_at(model, batch, index, temperature=0.7)
    torch.testing.assert_close(at, full[torch.arange(2), index], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="position >= 1"):
        lm.next_token_logits_at(model, batch, torch.tensor([0, 2]))
