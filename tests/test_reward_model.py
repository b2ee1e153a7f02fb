import copy
import math

import pytest
import torch
from torch import nn

from rlhf_lessons.course.data import load_preferences
from rlhf_lessons.lm import Batch, tokenize_pairs
from rlhf_lessons.rewards.frozen_bottom import FrozenBottom
from rlhf_lessons.rewards.preference_data import PreferenceDataError
from rlhf_lessons.rewards.reward_losses import kwise_loss
from rlhf_lessons.rewards.reward_model import (
    CausalLMRewardModel,
    RewardModel,
    RewardModelConfig,
    evaluate_reward_model,
    kwise_batches,
    pair_batches,
    train_reward_model,
)

pytestmark = pytest.mark.usefixtures("one_thread")


RECORDS = [
    {"prompt": "Name a fruit.", "ranked_outputs": ["An apple.", "A car.", "Blue."],
     "category": "helpfulness"},
    {"prompt": "Say hi.", "ranked_outputs": ["Hi!", "Go away."], "category": "refusal"},
    {"prompt": "Two plus two?", "ranked_outputs": ["Four.", "Five.", "Twenty-two.", "Fish."],
     "category": "factuality"},
    {"prompt": "A colour?", "ranked_outputs": ["Red.", "Loud."], "category": "helpfulness"},
    {"prompt": "An animal?", "ranked_outputs": ["A cat.", "A rock.", "Tuesday."],
     "category": "factuality"},
    {"prompt": "Be brief: capital of France?", "ranked_outputs": ["Paris.", "It is Paris, a city."],
     "category": "concision"},
]  # fmt: skip
N_SEQ = sum(len(r["ranked_outputs"]) for r in RECORDS)  # 16
N_PAIRS = sum(math.comb(len(r["ranked_outputs"]), 2) for r in RECORDS)  # 3+1+6+1+3+1 = 15


@pytest.fixture(scope="module")
def tiny_bert():
    """A small random BERT with the real MiniLM tokenizer: the RewardModel code path, fast."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from rlhf_lessons.models import minilm_path

    tok = AutoTokenizer.from_pretrained(str(minilm_path()))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128,
    )  # fmt: skip
    return BertModel(config).eval(), tok


def tiny_reward_model(tiny_bert, **kwargs):
    model, tok = tiny_bert
    return RewardModel((copy.deepcopy(model), tok), max_length=64, **kwargs)


class CountingModel(nn.Module):
    """Reward = linear in the response's letter counts; counts every sequence it scores."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(27, 1)
        self.sequences = 0

    def rewards(self, prompts, responses):
        self.sequences += len(responses)
        feats = torch.zeros(len(responses), 27)
        for i, text in enumerate(responses):
            for ch in text.lower():
                feats[i, ord(ch) - 97 if "a" <= ch <= "z" else 26] += 1.0
        return self.linear(feats).squeeze(-1)

    @torch.no_grad()
    def score(self, prompts, responses, batch_size=32):
        return self.rewards(prompts, responses)


# --- RewardModel ------------------------------------------------------------------------------


def test_score_shapes_and_order(tiny_bert):
    rm = tiny_reward_model(tiny_bert)
    prompts = [r["prompt"] for r in RECORDS for _ in r["ranked_outputs"]]
    responses = [o for r in RECORDS for o in r["ranked_outputs"]]
    scores = rm.score(prompts, responses, batch_size=5)
    assert scores.shape == (N_SEQ,) and scores.dtype == torch.float32
    assert torch.isfinite(scores).all() and scores.std() > 0
    # batching, length-sorting and chunking do not change a pair's score
    one_by_one = torch.cat([rm.score([p], [r]) for p, r in zip(prompts, responses, strict=True)])
    torch.testing.assert_close(scores, one_by_one, atol=1e-5, rtol=1e-5)
    # rewards() (with gradient, chunked by length) agrees with score() in eval mode
    rm.chunk_size = 3
    with_grad = rm.rewards(prompts, responses)
    assert with_grad.requires_grad
    torch.testing.assert_close(with_grad.detach(), scores, atol=1e-5, rtol=1e-5)
    assert rm.score([], []).shape == (0,)


def test_cross_encoding_sees_the_prompt(tiny_bert):
    rm = tiny_reward_model(tiny_bert)
    enc = rm.tokenize(["Name a fruit."], ["An apple."])
    assert enc["token_type_ids"].sum() > 0  # the response is segment 1
    a, b = rm.score(["Name a fruit.", "Name a vegetable."], ["An apple.", "An apple."])
    assert a != b


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_pooling_choices(tiny_bert, pooling):
    rm = tiny_reward_model(tiny_bert, pooling=pooling)
    assert rm.score(["a", "b"], ["c", "d"]).shape == (2,)


def test_bad_arguments(tiny_bert):
    with pytest.raises(ValueError, match="pooling"):
        tiny_reward_model(tiny_bert, pooling="max")
    rm = tiny_reward_model(tiny_bert)
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        rm.score(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="lists of strings"):
        rm.score("a", "b")
    with pytest.raises(ValueError, match="mode"):
        RewardModelConfig(mode="listwise")
    with pytest.raises(PreferenceDataError, match=r"data\[0\]"):
        train_reward_model(CountingModel(), None, [{"prompt": "x", "ranked_outputs": ["only one"]}])
    with pytest.raises(ValueError, match="requires_grad"):
        train_reward_model(CountingModel().requires_grad_(False), None, RECORDS)
    with pytest.raises(ValueError, match="tokenizer"):
        train_reward_model(rm, object(), RECORDS)


def test_same_seed_same_model_and_same_training(tiny_bert):
    def run(seed):
        torch.manual_seed(123)  # the head's init must come from `seed`, not the global state
        model, tok = tiny_bert
        rm = RewardModel((copy.deepcopy(model), tok), max_length=64, seed=seed)
        cfg = RewardModelConfig(mode="kwise", batch_size=2, seed=seed)
        return rm, train_reward_model(rm, tok, RECORDS, cfg, show_progress=False)

    # train_reward_model seeds before anything random (shuffle, dropout)
    m1, h1 = run(0)
    m2, h2 = run(0)
    m3, h3 = run(1)
    assert h1.loss == h2.loss and h1.loss != h3.loss
    x = (["Name a fruit."], ["A pear."])
    assert m1.score(*x).item() == m2.score(*x).item()


def test_a_few_steps_on_six_records_lower_the_loss(tiny_bert):
    def loss_on(model):
        with torch.no_grad():
            flat = model.score([r["prompt"] for r in RECORDS for _ in r["ranked_outputs"]],
                               [o for r in RECORDS for o in r["ranked_outputs"]])  # fmt: skip
        rewards = torch.zeros(len(RECORDS), 4)
        mask = torch.zeros(len(RECORDS), 4, dtype=torch.bool)
        pos = 0
        for b, r in enumerate(RECORDS):
            k = len(r["ranked_outputs"])
            rewards[b, :k], mask[b, :k] = flat[pos : pos + k], True
            pos += k
        return kwise_loss(rewards, mask)[0].item()

    torch.manual_seed(0)
    rm = tiny_reward_model(tiny_bert)
    before = loss_on(rm)
    cfg = RewardModelConfig(mode="kwise", batch_size=6, epochs=8, lr=1e-3, dropout=False)
    history = train_reward_model(rm, rm.tokenizer, RECORDS, cfg, show_progress=False)
    assert history.steps == 8
    assert loss_on(rm) < before - 0.05, (before, loss_on(rm), history.loss)
    assert history.loss[-1] < history.loss[0]
    assert not rm.training  # returned in eval mode


# --- batching: K forward passes per prompt vs 2 per pair --------------------------------------


def test_kwise_and_pairs_batching_counts():
    gen = torch.Generator().manual_seed(0)
    kb = kwise_batches(RECORDS, 4, gen)
    assert [len(b) for b in kb] == [4, 2]
    assert sorted(r["prompt"] for b in kb for r in b) == sorted(r["prompt"] for r in RECORDS)
    pb = pair_batches(RECORDS, 4, gen)
    pairs = [p for b in pb for p in b]
    assert len(pairs) == N_PAIRS and len(pb) == math.ceil(N_PAIRS / 4)
    assert len({(p["prompt"], p["chosen"], p["rejected"]) for p in pairs}) == N_PAIRS
    assert all(p["chosen_rank"] < p["rejected_rank"] for p in pairs)

    for mode, batch, passes, steps in (
        ("kwise", 4, N_SEQ, 2),  # K forward passes per prompt
        ("pairs", 4, 2 * N_PAIRS, 4),  # 2 per pair, C(K, 2) pairs per prompt
    ):
        model = CountingModel()
        cfg = RewardModelConfig(mode=mode, batch_size=batch, epochs=2)
        h = train_reward_model(model, None, RECORDS, cfg, show_progress=False)
        assert h.forward_passes == model.sequences == sum(h.sequences) == 2 * passes, mode
        assert h.pairs_seen == 2 * N_PAIRS, mode  # the same comparisons either way
        assert h.steps == 2 * steps and len(h.seconds) == h.steps, mode
        assert h.seconds == sorted(h.seconds) and h.cpu_seconds > 0


def test_max_steps_stops_early_and_the_schedule_ends_there():
    model = CountingModel()
    cfg = RewardModelConfig(mode="pairs", batch_size=2, epochs=3, max_steps=5)
    h = train_reward_model(model, None, RECORDS, cfg, show_progress=False)
    assert h.steps == 5 and model.sequences == 5 * 2 * 2


def test_evaluation_during_training_and_dropout_mode(tiny_bert):
    rm = tiny_reward_model(tiny_bert)
    modes = []

    def eval_fn(model):
        modes.append(model.training)
        return {"acc": evaluate_reward_model(model, RECORDS).accuracy}

    cfg = RewardModelConfig(mode="kwise", batch_size=2, lr=1e-3)  # 3 steps
    h = train_reward_model(rm, rm.tokenizer, RECORDS, cfg, eval_fn=eval_fn, eval_every=2,
                           show_progress=False)  # fmt: skip
    assert [e["step"] for e in h.evaluations] == [0, 2, 3]
    assert modes == [False, False, False] and not rm.training


def test_pairs_batches_spread_a_prompts_pairs():
    # with shuffled pairs, one prompt's 6 pairs rarely share a batch; K-wise keeps them together
    gen = torch.Generator().manual_seed(0)
    batches = pair_batches(RECORDS, 5, gen)
    holding = [i for i, b in enumerate(batches) for p in b if p["prompt"] == "Two plus two?"]
    assert len(holding) == 6 and len(set(holding)) > 1


# --- evaluation -------------------------------------------------------------------------------


class FixedScorer:
    def __init__(self, scores):
        self.scores = torch.tensor(scores, dtype=torch.float32)

    def score(self, prompts, responses, batch_size=32):
        assert len(prompts) == len(self.scores)
        return self.scores


def test_evaluate_counts_pairs_categories_and_correlations():
    records = [
        {"prompt": "p1", "ranked_outputs": ["a", "b", "c"], "category": "x"},  # perfect
        {"prompt": "p2", "ranked_outputs": ["a", "b"], "category": "y"},  # reversed
        {"prompt": "p3", "ranked_outputs": ["a", "b", "c", "d"], "category": "x"},  # 1 swap
    ]
    scores = [3, 2, 1] + [0, 1] + [4, 2, 3, 1]
    ev = evaluate_reward_model(FixedScorer(scores), records)
    assert ev.n_pairs == 3 + 1 + 6 and ev.n_prompts == 3
    assert ev.accuracy == pytest.approx((3 + 0 + 5) / 10)
    assert ev.per_category == pytest.approx({"x": 8 / 9, "y": 0.0})
    assert ev.pairs_per_category == {"x": 9, "y": 1}
    # Kendall tau: 1, -1, (5 - 1) / 6; Spearman: 1, -1, 1 - 6 * 2 / (4 * 15) = 0.8
    assert ev.kendall_tau == pytest.approx((1 - 1 + 4 / 6) / 3)
    assert ev.spearman == pytest.approx((1 - 1 + 0.8) / 3)
    assert ev.scores[2] == [4, 2, 3, 1]
    # equal scores are no ranking at all: accuracy 0 (ties are wrong), correlation 0
    flat = evaluate_reward_model(FixedScorer([1.0] * 9), records)
    assert flat.accuracy == 0.0 and flat.kendall_tau == 0.0 and flat.spearman == 0.0


# --- CausalLMRewardModel on the tiny random Llama ---------------------------------------------


def test_causal_lm_reward_model_on_tiny_lm(tiny_lm):
    model, tok = tiny_lm
    torch.manual_seed(0)
    rm = CausalLMRewardModel(copy.deepcopy(model), tok)
    prompts = ["the movie was", "the plot was", "the acting was very"]
    completions = ["great", "bad and not good", "awful"]
    scores = rm.score(prompts, completions, batch_size=2)
    assert scores.shape == (3,) and torch.isfinite(scores).all()
    # the reward is read at the last real token: padding does not change it
    alone = torch.cat([rm.score([p], [c]) for p, c in zip(prompts, completions, strict=True)])
    torch.testing.assert_close(scores, alone, atol=1e-5, rtol=1e-5)
    # right-padded (tokenize_pairs) and left-padded rows give the same rewards
    right = tokenize_pairs(tok, prompts, completions)
    shift = right.attention_mask.shape[1] - right.attention_mask.sum(-1)
    left_ids = torch.stack(
        [torch.roll(r, int(s)) for r, s in zip(right.input_ids, shift, strict=True)]
    )
    left_mask = torch.stack(
        [torch.roll(r, int(s)) for r, s in zip(right.attention_mask, shift, strict=True)]
    )
    left = Batch(left_ids, left_mask, torch.zeros_like(left_mask))
    with torch.no_grad():
        torch.testing.assert_close(rm(left), rm(right), atol=1e-5, rtol=1e-5)
    # the head is fed the transformer body (no vocabulary logits)
    assert rm.body is not model and not hasattr(rm.body, "lm_head")


def test_causal_lm_reward_model_trains(tiny_lm):
    model, tok = tiny_lm
    records = [
        {"prompt": "the movie was", "ranked_outputs": ["great", "good", "bad", "awful"]},
        {"prompt": "the film was", "ranked_outputs": ["very good", "not good"]},
        {"prompt": "the plot was", "ranked_outputs": ["good", "bad", "very bad"]},
    ]
    torch.manual_seed(0)
    rm = CausalLMRewardModel(copy.deepcopy(model), tok)
    before = evaluate_reward_model(rm, records)
    cfg = RewardModelConfig(mode="kwise", batch_size=3, epochs=30, lr=1e-2)
    h = train_reward_model(rm, tok, records, cfg, show_progress=False)
    after = evaluate_reward_model(rm, records)
    assert h.loss[-1] < h.loss[0] and after.accuracy == 1.0 > before.accuracy
    # the shared fixture was copied, not trained
    assert all(p.grad is None for p in model.parameters())


# --- slow: the real MiniLM learns the course's preferences ------------------------------------


@pytest.mark.slow
def test_minilm_reward_model_learns_heldout_preferences():
    # Lesson 04's model at its defaults (MiniLM, top layer and head trained), one K-wise epoch
    # on every other training prompt (all categories) to keep the test short.
    from rlhf_lessons.models import load_encoder

    train, heldout = load_preferences("train"), load_preferences("heldout")
    encoder, tok = load_encoder("minilm")
    rm = RewardModel((encoder, tok), frozen=FrozenBottom(encoder, 5), seed=0)
    cfg = RewardModelConfig(mode="kwise", lr=1e-3, batch_size=2, seed=0)
    history = train_reward_model(rm, tok, train[::2], cfg, show_progress=False)
    assert history.forward_passes == sum(len(r["ranked_outputs"]) for r in train[::2])
    result = evaluate_reward_model(rm, heldout)
    assert result.n_pairs == 205 and result.n_prompts == 64
    assert result.accuracy >= 0.65, result.summary()  # chance is 0.5
    assert result.kendall_tau > 0.2
