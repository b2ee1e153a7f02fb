"""The known-reward world: review grammar, tokenizer, prompts, VADER reward, evaluation, SFT model."""

import copy
import math

import matplotlib
import numpy as np
import pytest
import torch

from rlhf_lessons.course.stats import cluster_mean_ci, t_quantile
from rlhf_lessons.review_world import grammar as rc
from rlhf_lessons.review_world.evaluation import (
    KL_LABEL,
    METHOD_STYLES,
    REWARD_LABEL,
    distinct_n,
    evaluate_policy,
    plot_reward_vs_kl,
    to_point,
)
from rlhf_lessons.review_world.true_reward import reward_of, summarize, true_reward

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SMALL = rc.CorpusConfig(n_train=3000, n_val=300, seed=0)


# ---------------------------------------------------------------------------------- corpus
def test_corpus_is_deterministic_distinct_and_split():
    a = rc.build_corpus(SMALL)
    b = rc.build_corpus.__wrapped__(SMALL)  # bypass the per-process cache
    assert a == b
    assert len(set(a.train)) == 3000 and len(set(a.val)) == 300
    assert not set(a.train) & set(a.val)
    other = rc.build_corpus(rc.CorpusConfig(n_train=3000, n_val=300, seed=1))
    assert len(set(other.train) & set(a.train)) < 1500


def test_default_corpus_has_tens_of_thousands_of_short_reviews():
    corpus = rc.build_corpus()
    assert len(corpus.train) == 40_000 and len(set(corpus.train)) == 40_000
    tokens = [len(s.split()) for s in corpus.train]
    assert min(tokens) >= 4 and max(tokens) <= 30  # the model's 64 positions are plenty
    words = [len([t for t in s.split() if t not in ",.!"]) for s in corpus.train]
    assert min(words) >= 3 and max(words) <= 24  # measured: 3 to 22, median 11
    assert sum(6 <= w <= 20 for w in words) / len(words) > 0.8  # measured: 0.85


def test_corpus_mixes_sentiments_negation_intensifiers_and_contrast():
    train = rc.build_corpus(SMALL).train
    frac = {w: sum(f" {w} " in f" {s} " for s in train) / len(train)
            for w in ("but", "not", "never", "very", "!", "although")}  # fmt: skip
    assert frac["but"] > 0.1 and frac["not"] > 0.05 and frac["never"] > 0.01
    assert frac["very"] > 0.01 and frac["!"] > 0.05 and frac["although"] > 0.01
    stats = summarize(true_reward(train))
    assert stats["positive"] > 0.35 and stats["negative"] > 0.35 and stats["neutral"] > 0.05
    assert abs(stats["mean"]) < 0.15


def test_vocabulary_is_closed_over_the_grammar():
    vocab = rc.vocabulary()
    assert vocab[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    assert len(vocab) == len(set(vocab)) and 300 <= len(vocab) <= 1500
    terminals = {w for t in rc.grammar_words() for w in t.split()}
    assert set(vocab[4:]) == terminals
    corpus = rc.build_corpus()
    used = {w for s in corpus.train for w in s.split()}
    assert used <= set(vocab)
    assert len(used) / len(terminals) > 0.98  # the corpus uses (almost) every word


def test_grammar_recognizer_accepts_the_corpus_and_rejects_broken_text():
    corpus = rc.build_corpus(SMALL)
    assert all(rc.is_grammatical(s) for s in corpus.val)
    assert rc.is_grammatical("the acting was superb , but the plot dragged .")
    for bad in ("great great great !", "the plot was great", "the runs about two hours .", ""):
        assert not rc.is_grammatical(bad), bad


def test_entropy_per_token_is_a_sensible_floor():
    assert 1.0 < rc.entropy_per_token(n=2000) < 2.0


# ------------------------------------------------------------------------------- tokenizer
def test_tokenizer_round_trips_the_corpus():
    tok = rc.build_tokenizer()
    corpus = rc.build_corpus(SMALL)
    for s in corpus.train + corpus.val:
        ids = tok.encode(s)
        assert tok.unk_token_id not in ids
        assert tok.decode(ids) == s
    assert [tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id] == [0, 1, 2, 3]


def test_tokenizer_lowercases_splits_punctuation_and_maps_unknown_words():
    tok = rc.build_tokenizer()
    assert tok.encode("The plot was GREAT.") == tok.encode("the plot was great .")
    assert tok.decode(tok.encode("Great, really!")) == "great , really !"
    assert tok.encode("the zyzzyva")[-1] == tok.unk_token_id
    assert tok("<bos>", add_special_tokens=False)["input_ids"] == [tok.bos_token_id]


def test_tokenizer_saves_and_reloads(tmp_path):
    from transformers import AutoTokenizer

    tok = rc.build_tokenizer()
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    s = "the acting was superb , but the plot dragged on ."
    assert again.encode(s) == tok.encode(s) and again.decode(again.encode(s)) == s
    assert again.eos_token == "<eos>" and again.pad_token == "<pad>" and again.bos_token == "<bos>"


# --------------------------------------------------------------------------------- prompts
def test_prompts_are_short_deterministic_review_prefixes():
    ps = rc.prompts(300, seed=3, config=SMALL)
    assert len(ps) == 300
    assert all(2 <= len(p.split()) <= 8 for p in ps)
    assert {len(p.split()) for p in ps} == set(range(2, 9))
    assert ps == rc.prompts(300, seed=3, config=SMALL)
    assert ps != rc.prompts(300, seed=4, config=SMALL)
    vocab = set(rc.vocabulary())
    assert all(set(p.split()) <= vocab for p in ps)
    assert all(
        len(p.split()) == 3 for p in rc.prompts(20, min_tokens=3, max_tokens=3, config=SMALL)
    )
    # prompt + completion (string concatenation, as TRL does) tokenises as the two parts
    tok = rc.build_tokenizer()
    assert all(p.endswith(" ") and not p.endswith("  ") for p in ps)
    for p in ps[:50]:
        assert tok.encode(p + "great .") == tok.encode(p) + tok.encode("great .")
        assert tok.decode(tok.encode(p)) == p.strip()
    with pytest.raises(ValueError, match="n must be >= 1"):
        rc.prompts(0)
    with pytest.raises(ValueError, match="min_tokens"):
        rc.prompts(5, min_tokens=5, max_tokens=2)


# ---------------------------------------------------------------------------------- reward
POSITIVE = [
    "the acting was superb .",
    "not bad at all !",
    "the pacing was never boring .",
    "the plot was dull , but the ending was wonderful .",
    "i would recommend it to anyone .",
]
NEGATIVE = [
    "the plot was boring .",
    "i hated this film .",
    "the acting was superb , but the plot was awful .",
    "what a waste of time .",
    "the ending was not good at all .",
]


def test_vader_reward_has_the_right_sign():
    pos, neg = true_reward(POSITIVE), true_reward(NEGATIVE)
    assert pos.shape == (5,) and pos.dtype == torch.float32
    assert (pos > 0.05).all() and (neg < -0.05).all()
    assert true_reward(["the film runs about two hours ."]).item() == 0.0
    assert true_reward([""]).item() == 0.0
    assert ((true_reward(POSITIVE + NEGATIVE).abs()) <= 1).all()


def test_reward_of_scores_prompt_and_completion_together():
    together = reward_of(["the plot was not"], ["bad at all ."])
    assert together.item() == true_reward(["the plot was not bad at all ."]).item() > 0
    assert reward_of(["the plot was good ."], [""]).item() == true_reward(["the plot was good ."])
    with pytest.raises(ValueError, match="2 prompts but 1"):
        reward_of(["a", "b"], ["c"])


def test_reward_rejects_empty_nan_and_non_strings():
    with pytest.raises(ValueError, match="texts is empty"):
        true_reward([])
    with pytest.raises(ValueError, match=r"texts\[1\] is NaN"):
        true_reward(["good", float("nan")])
    with pytest.raises(TypeError, match="not one string"):
        true_reward("the plot was good")
    with pytest.raises(TypeError, match=r"texts\[0\] must be a string"):
        true_reward([3])
    with pytest.raises(ValueError, match="empty"):
        summarize([])


def test_summarize_counts_vader_classes():
    s = summarize([0.5, -0.5, 0.0, 0.01])
    assert s["positive"] == 0.25 and s["negative"] == 0.25 and s["neutral"] == 0.5
    assert math.isclose(s["mean"], 0.0025)


# ------------------------------------------------------------------------------ evaluation
def test_evaluation_intervals_use_per_prompt_means():
    # evaluate_policy's *_ci are cluster_mean_ci's half-widths: t over the per-prompt means
    v = np.array([[1.0, 3.0], [2.0, 2.0], [6.0, 4.0]])
    iv = cluster_mean_ci(v)
    assert math.isclose(iv.mean, 3.0) and iv.n == 3
    per_prompt = np.array([2.0, 2.0, 5.0])
    assert math.isclose(iv.half_width, t_quantile(2, 0.95) * per_prompt.std(ddof=1) / math.sqrt(3))
    one_prompt = cluster_mean_ci(np.array([[1.0, 3.0, 5.0]]))  # one prompt: over its samples
    assert math.isclose(one_prompt.half_width, t_quantile(2, 0.95) * 2.0 / math.sqrt(3))
    with pytest.raises(ValueError, match="prompts, samples"):
        cluster_mean_ci(np.array([1.0, 2.0]))


def test_distinct_n():
    assert distinct_n([[1, 2, 3], [1, 2, 4]], 1) == 4 / 6
    assert distinct_n([[1, 2, 3], [1, 2, 4]], 2) == 3 / 4
    assert distinct_n([[1]], 2) == 0.0


def _evaluate(model, ref, tok, **kw):
    kw = {"n_samples": 4, "max_new_tokens": 6, "seed": 0, **kw}
    return evaluate_policy(model, ref, tok, ["the movie was", "the plot", "a"], **kw)


def test_evaluate_policy_against_itself_has_zero_kl(tiny_lm):
    model, tok = tiny_lm
    model.train()
    out = _evaluate(model, model, tok)
    assert model.training  # the mode is restored
    model.eval()
    assert out["kl"] == 0.0 and out["kl_k3"] == 0.0 and out["kl_ci"] == 0.0
    for key in ("reward", "reward_ci", "kl_ci", "kl_k3_ci", "mean_length", "eos_fraction",
                "distinct_1", "distinct_2", "grammatical"):  # fmt: skip
        assert math.isfinite(out[key]), key
    assert -1 <= out["reward"] <= 1 and out["reward_ci"] >= 0
    assert 1 <= out["mean_length"] <= 6 and 0 <= out["eos_fraction"] <= 1
    assert 0 < out["distinct_1"] <= 1 and 0 <= out["distinct_2"] <= 1
    assert out["n_prompts"] == 3 and out["n_samples"] == 4 and len(out["samples"]) == 12
    assert {"prompt", "completion", "reward", "kl", "grammatical"} <= set(out["samples"][0])
    assert 0 <= out["grammatical"] <= 1  # a random model's text is rarely a review
    assert math.isnan(_evaluate(model, model, tok, fluency_fn=None, threads=1)["grammatical"])
    # a separate copy of the same weights: KL ~ 0 up to float noise
    copy_out = _evaluate(model, copy.deepcopy(model), tok)
    assert abs(copy_out["kl"]) < 1e-4 and abs(copy_out["kl_k3"]) < 1e-4
    assert copy_out["reward"] == out["reward"]  # same seed, same samples


def test_evaluate_policy_measures_a_positive_kl_to_another_model(tiny_lm):
    model, tok = tiny_lm
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.5 * torch.randn_like(p))
    out = _evaluate(model, other, tok, n_samples=16, max_new_tokens=8)
    assert out["kl"] > 0.1 and out["kl_k3"] > 0.1
    assert abs(out["kl"] - out["kl_k3"]) < 3 * (out["kl_ci"] + out["kl_k3_ci"])
    assert all(s["kl"] == s["kl"] for s in out["samples"])  # no NaN


def test_evaluate_policy_rejects_bad_arguments(tiny_lm):
    model, tok = tiny_lm
    with pytest.raises(ValueError, match="prompts is empty"):
        evaluate_policy(model, model, tok, [])
    with pytest.raises(ValueError, match="at least 2 samples"):
        evaluate_policy(model, model, tok, ["the movie"], n_samples=1)
    with pytest.raises(ValueError, match="temperature"):
        evaluate_policy(model, model, tok, ["the movie"], temperature=0)


# -------------------------------------------------------------------------------- the plot
def test_plot_reward_vs_kl_draws_one_style_per_method_across_calls():
    fig, ax = plt.subplots()
    first = [
        {"method": "SFT", "kl": 0.0, "kl_ci": 0.0, "reward": 0.05, "reward_ci": 0.03},
        {"method": "DPO", "kl": 2.0, "kl_ci": 0.3, "reward": 0.5, "reward_ci": 0.05,
         "label": "beta=0.1"},
        {"method": "DPO", "kl": 5.0, "kl_ci": (4.0, 6.5), "reward": 0.7, "reward_ci": 0.05},
    ]  # fmt: skip
    plot_reward_vs_kl(ax, first, connect=True)
    assert ax.get_xlabel() == KL_LABEL and ax.get_ylabel() == REWARD_LABEL
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["SFT", "DPO"]
    assert any(t.get_text() == "beta=0.1" for t in ax.texts)
    later = [to_point({"kl": 3.0, "kl_ci": 0.2, "reward": 0.6, "reward_ci": 0.04}, "PPO", "t=6"),
             {"method": "DPO", "kl": 8.0, "kl_ci": 1.0, "reward": 0.8, "reward_ci": 0.05},
             {"method": "my method", "kl": 1.0, "kl_ci": 0.1, "reward": 0.2, "reward_ci": 0.1},
             {"method": "another", "kl": 1.5, "reward": 0.3}]  # fmt: skip
    plot_reward_vs_kl(ax, later)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "SFT", "DPO", "PPO", "my method", "another"]  # fmt: skip
    styles = ax._rlhf_method_styles
    assert styles["DPO"] == METHOD_STYLES["dpo"] and styles["PPO"] == METHOD_STYLES["ppo"]
    assert len(set(styles.values())) == len(styles)
    with pytest.raises(ValueError, match=r"points\[0\] lacks \['kl'\]"):
        plot_reward_vs_kl(ax, [{"method": "x", "reward": 0.1}])
    with pytest.raises(ValueError, match="points is empty"):
        plot_reward_vs_kl(ax, [])
    plt.close(fig)


# ------------------------------------------------------------------------- the SFT model
# Measured: validation loss 1.507 nats/token (the grammar's entropy is <= 1.445); 0.74 of the
# unconditional samples parse under the grammar. The thresholds leave room for another
# machine's floats and sampling noise.
VAL_LOSS_MAX = 1.56
GRAMMATICAL_MIN = 0.6


@pytest.mark.slow
def test_sft_model_writes_fluent_reviews_of_both_polarities():
    from rlhf_lessons.course.device import torch_threads
    from rlhf_lessons.lm import generate
    from rlhf_lessons.models import load_causal_lm
    from rlhf_lessons.review_world.tiny_lm import (
        load_sft_model,
        sample_reviews,
        sft_model_path,
        training_metrics,
        validation_loss,
    )

    model, tok = load_sft_model(show_progress=False)
    metrics = training_metrics()
    assert metrics["val_loss"] < VAL_LOSS_MAX
    # prompts reach the model without <bos>: that must cost (almost) nothing
    assert metrics["prompted_loss_no_bos"] < metrics["prompted_loss_bos"] + 0.02
    model = model.cpu()
    val = rc.build_corpus().val[:500]
    assert validation_loss(model, tok, val) < VAL_LOSS_MAX  # the saved weights are the trained ones
    again, again_tok = load_causal_lm(sft_model_path(), device="cpu")
    assert again_tok.decode(again_tok.encode(val[0])) == val[0]

    # unconditional samples: end with <eos>, both polarities
    with torch_threads(1):  # several times faster for this tiny model on a busy machine
        gen = generate(model, tok, ["<bos>"] * 200, max_new_tokens=40, batch_size=100, seed=0)
    ended = (gen.batch.input_ids == tok.eos_token_id).any(-1).float().mean().item()
    assert ended > 0.95
    stats = summarize(true_reward(sample_reviews(model, tok, 300, seed=1)))
    assert stats["positive"] > 0.3 and stats["negative"] > 0.3
    # prompted samples: the reference policy of the later lessons, KL to itself is 0
    out = evaluate_policy(model, model, tok, rc.prompts(40, seed=0), n_samples=4, threads=1)
    assert out["kl"] == 0.0 and out["eos_fraction"] > 0.95 and out["grammatical"] > GRAMMATICAL_MIN
    assert abs(out["reward"]) < 0.3 and out["distinct_2"] > 0.2


def test_named_prompt_splits_are_fixed_distinct_and_disjoint(monkeypatch):
    from rlhf_lessons.review_world import splits

    test, val = splits.test_prompts(), splits.validation_prompts()
    assert len(set(test)) == len(test) == 64 and len(set(val)) == len(val) == 64
    assert not set(test) & set(val)
    monkeypatch.setenv("RLHF_LESSONS_SEEDS", "1000")  # the seeds switch does not move them
    assert splits.test_prompts() == test
    for seed in (0, 1, 1000):
        train = splits.train_prompts(500, seed)
        assert len(train) == 500 and not set(train) & (set(test) | set(val))


def test_scrambled_reviews_are_planted_broken_text():
    from rlhf_lessons.review_world.evaluation import scrambled

    texts = ["the plot was superb .", "great !", "."]
    out = scrambled(texts, seed=0)
    assert [sorted(t.split()) for t in out] == [sorted(t.split()) for t in texts]
    assert out[0] != texts[0] and out[1] == "! great" and out[2] == "."
    assert scrambled(texts, seed=0) == out  # deterministic in the seed
    assert rc.is_grammatical("the plot was superb .")
    assert not rc.is_grammatical(out[0])


def test_over_seeds_point_draws_intervals_as_error_bars():
    from rlhf_lessons.course.stats import mean_ci
    from rlhf_lessons.review_world.evaluation import over_seeds_point

    kl, reward = mean_ci([1.0, 2.0, 3.0]), mean_ci([0.5, 0.6, 0.7])
    p = over_seeds_point("grpo", kl, reward, label="30 it")
    assert p["kl"] == pytest.approx(2.0) and p["reward"] == pytest.approx(0.6)
    assert p["kl_ci"] == (kl.low, kl.high) and p["reward_ci"] == (reward.low, reward.high)
    fig, ax = plt.subplots()
    plot_reward_vs_kl(ax, [p])
    plt.close(fig)
