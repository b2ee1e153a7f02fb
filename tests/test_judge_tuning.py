"""Lesson 09's judge with signal: the frozen-bottom cache and LoRA fine-tuning on verdicts."""

import numpy as np
import pytest
import torch

from rlhf_lessons.judges.frozen_bottom import CachedJudge, LayerCache, top_view
from rlhf_lessons.judges.judge_bias import JudgedPair, judge_both_orders, position_metrics
from rlhf_lessons.judges.llm_judge import Judge, PairwiseConfig
from rlhf_lessons.judges.tuning import (
    JudgeTuneConfig,
    add_judge_adapter,
    train_judge,
    verdict_data,
    verdict_loss,
)

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = (
    "the plot acting movie was good bad great awful Q: X: Y: A B C [[ user assistant said".split()
)
CHAT = (
    "{% for m in messages %}{{ m['role'] }} said {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}assistant said {% endif %}"
)
CONFIG = PairwiseConfig("Q: {prompt} X: {response_a} Y: {response_b}", ("[[ A", "[[ B", "[[ C"))


def make_lm(word_tokenizer, layers=4, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = word_tokenizer(WORDS)
    tok.chat_template = CHAT
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok.get_vocab()), hidden_size=32, intermediate_size=64,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=128, pad_token_id=0, eos_token_id=1, bos_token_id=None,
        initializer_range=0.3,  # (0.02 makes logits too flat for a 32-wide model to learn)
    )  # fmt: skip
    return LlamaForCausalLM(config).eval(), tok


def full_last_logits(model, tok, text):
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        return model(input_ids=ids).logits[0, -1]


TEXTS = ["the movie was great", "the plot", "Q: the acting X: good bad awful Y: great [["]


def distinct_beginnings(texts):
    """Tokens the bottom layers must read when every shared beginning is read once."""
    return len({tuple(t.split()[: k + 1]) for t in texts for k in range(len(t.split()))})


def test_top_layers_on_cached_states_give_the_model_logits(word_tokenizer):
    model, tok = make_lm(word_tokenizer)
    for top in (1, 3):
        cache = LayerCache(model, tok, top_layers=top, show_progress=False)
        logits = cache.next_token_logits(TEXTS)
        for i, text in enumerate(TEXTS):  # padded batches, sorted by length: same numbers
            torch.testing.assert_close(logits[i], full_last_logits(model, tok, text),
                                       atol=1e-5, rtol=1e-5)  # fmt: skip
        # only some vocabulary entries (the output layer's rows of those tokens): the same
        torch.testing.assert_close(cache.next_token_logits(TEXTS, tokens=[5, 3]), logits[:, [5, 3]],
                                   atol=1e-5, rtol=1e-5)  # fmt: skip
        assert cache.split == 4 - top and len(cache) == 3
        assert cache.bottom_tokens == distinct_beginnings(TEXTS)  # "the" read once
        cache.next_token_logits(TEXTS[:2])  # cached: the bottom layers do not run again
        assert cache.bottom_tokens == distinct_beginnings(TEXTS)
        # top_layers=1: the last layer runs at one position (checked against the whole layer)
        assert cache.one_position is (top == 1)
    view = top_view(model, 2)
    assert view.model.layers[0] is model.model.layers[2] and view.lm_head is model.lm_head
    with pytest.raises(ValueError, match="top_layers must be in 1..3"):
        LayerCache(model, tok, top_layers=4)
    with pytest.raises(TypeError, match="not a Llama-style decoder"):
        LayerCache(torch.nn.Linear(2, 2), tok, top_layers=1)


def test_a_shared_beginning_is_computed_once(word_tokenizer):
    model, tok = make_lm(word_tokenizer)
    start = "user said Q: the movie was good X: the plot was bad Y: "
    ends = ("great [[", "awful acting and bad [[", "awful acting [[", "good [[", "")
    texts = [start + end for end in ends]  # nested: two also share "awful acting", one is
    # the beginning of all the others
    shared = LayerCache(model, tok, top_layers=1, show_progress=False)
    shared.add(texts)
    alone = LayerCache(model, tok, top_layers=1, show_progress=False)
    for text in texts:  # one at a time: nothing shared
        alone.add([text])
        torch.testing.assert_close(shared.states[text], alone.states[text], atol=1e-4, rtol=1e-4)
    assert shared.bottom_tokens == distinct_beginnings(texts)
    assert shared.bottom_tokens == len(start.split()) + sum(len(e.split()) for e in ends) - 2
    assert alone.bottom_tokens == sum(len(t.split()) for t in texts)
    logits = shared.next_token_logits(texts)
    for i, text in enumerate(texts):
        torch.testing.assert_close(logits[i], full_last_logits(model, tok, text), atol=1e-4,
                                   rtol=1e-4)  # fmt: skip


def test_cached_judge_equals_the_plain_judge(word_tokenizer):
    model, tok = make_lm(word_tokenizer)
    cache = LayerCache(model, tok, top_layers=2, show_progress=False)
    plain = Judge(model, tok, show_progress=False, batch_size=3)
    cached = CachedJudge(model, tok, cache, show_progress=False, batch_size=3)
    args = (["the plot", "the acting", "the movie"], ["good", "bad awful", "great"],
            ["bad", "good", "the movie was bad"])  # fmt: skip
    np.testing.assert_allclose(cached.compare(*args, CONFIG).probs, plain.compare(*args, CONFIG).probs,
                               atol=1e-5)  # fmt: skip
    # options of several tokens: the whole-sequence path of the plain judge
    multi = PairwiseConfig(CONFIG.template, ("[[ A A", "[[ B B", "[[ C C"))
    np.testing.assert_allclose(cached.compare(*args, multi).probs, plain.compare(*args, multi).probs,
                               atol=1e-5)  # fmt: skip
    other, _ = make_lm(word_tokenizer, seed=1)
    with pytest.raises(ValueError, match="judge's own model"):
        CachedJudge(other, tok, cache)


def test_adapters_live_in_the_top_layers_and_switch(word_tokenizer):
    model, tok = make_lm(word_tokenizer)
    cfg = JudgeTuneConfig(top_layers=2, lora_rank=2, seed=0)
    policy = add_judge_adapter(model, cfg, name="seed0")
    names = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert names and all(".layers.2." in n or ".layers.3." in n for n in names)
    assert all("seed0" in n for n in names)
    policy = add_judge_adapter(policy, JudgeTuneConfig(top_layers=2, lora_rank=2, seed=1), "seed1")
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert trainable and all("seed1" in n for n in trainable)  # only the active adapter trains
    with pytest.raises(ValueError, match="already has an adapter"):
        add_judge_adapter(policy, cfg, name="seed0")


def test_keys_and_values_with_an_adapter_are_the_model_s(word_tokenizer):
    model, tok = make_lm(word_tokenizer)
    policy = add_judge_adapter(model, JudgeTuneConfig(top_layers=1, lora_rank=2, seed=0))
    torch.manual_seed(1)
    for name, p in policy.named_parameters():
        if "lora_B" in name:  # B = 0 would hide a missing adapter term
            p.data.normal_(0, 0.5)
    cache = LayerCache(policy, tok, top_layers=1, show_progress=False)
    for _ in range(2):  # the second pass reads the cached base projections
        logits = cache.next_token_logits(TEXTS, grad=True)
        for i, text in enumerate(TEXTS):
            torch.testing.assert_close(logits[i].detach(), full_last_logits(policy, tok, text),
                                       atol=1e-4, rtol=1e-4)  # fmt: skip
    assert cache.one_position and all(len(cache.kv[t]) == 3 for t in TEXTS)
    logits.sum().backward()  # the adapters on k_proj and v_proj get gradients
    attn = policy.base_model.model.model.layers[-1].self_attn
    assert attn.k_proj.lora_A["default"].weight.grad.abs().sum() > 0
    assert attn.v_proj.lora_B["default"].weight.grad.abs().sum() > 0


def toy_pairs(n=12):
    """The better answer says "good", the worse "bad": the verdict depends on the content."""
    rng = np.random.default_rng(0)
    fillers = ["the plot", "the acting", "the movie was", "great", "awful", "the"]
    return [JudgedPair(str(i), "toy", str(rng.choice(fillers)), f"good {rng.choice(fillers)}",
                       f"bad {rng.choice(fillers)}") for i in range(n)]  # fmt: skip


def test_verdict_data_has_both_orders(word_tokenizer):
    model, tok = make_lm(word_tokenizer)
    judge = Judge(model, tok, show_progress=False)
    pairs = toy_pairs(3)
    data = verdict_data(judge, pairs, CONFIG)
    assert [r["target"] for r in data] == ["A"] * 3 + ["B"] * 3
    p = pairs[0]
    assert data[0]["context"] == judge.chat([CONFIG.format(p.prompt, p.better, p.worse)])[0] + "[[ "
    assert data[3]["context"] == judge.chat([CONFIG.format(p.prompt, p.worse, p.better)])[0] + "[[ "
    logits = torch.tensor([[0.0, 2.0, 0.0], [1.0, 0.0, 0.0]])
    loss, m = verdict_loss(logits, torch.tensor([1, 2]))
    expected = -(torch.log_softmax(logits, -1)[0, 1] + torch.log_softmax(logits, -1)[1, 2]) / 2
    assert loss.item() == pytest.approx(expected.item()) and m["accuracy"] == 0.5


def test_train_judge_learns_the_verdict_and_shares_the_cache(word_tokenizer):
    model, tok = make_lm(word_tokenizer)
    cfg = JudgeTuneConfig(lr=1e-2, epochs=20, batch_size=8, top_layers=2, lora_rank=4,
                          warmup_steps=0, seed=0)  # fmt: skip
    cache = LayerCache(model, tok, top_layers=2, show_progress=False)
    judge = CachedJudge(model, tok, cache, show_progress=False)
    pairs = toy_pairs()
    data = verdict_data(judge, pairs, CONFIG)
    policy = add_judge_adapter(model, cfg, name="seed0")
    with policy.disable_adapter():
        before = position_metrics(judge_both_orders(judge, pairs, CONFIG))
    history = train_judge(policy, tok, data, cfg, cache=cache, show_progress=False,
                          eval_fn=lambda m: {"n": 1})  # fmt: skip
    assert history.steps == 20 * 3 and history.info["examples"] == 24
    # the zero-shot pass above read these same texts: training runs only the top layers
    assert history.info["bottom_tokens"] == 0 < cache.bottom_tokens
    assert len(history.evaluations) == 1
    assert np.mean(history.loss[-6:]) < 0.5 * np.mean(history.loss[:6])
    after = position_metrics(judge_both_orders(judge, pairs, CONFIG))
    assert after["agreement"] >= 0.9 > before["agreement"]
    # a second seed trains its own adapter on the same cached states
    policy = add_judge_adapter(policy, JudgeTuneConfig(**{**cfg.__dict__, "seed": 1}), "seed1")
    again = train_judge(policy, tok, data, JudgeTuneConfig(**{**cfg.__dict__, "max_steps": 2}),
                        cache=cache, show_progress=False)  # fmt: skip
    assert again.info["bottom_tokens"] == 0 and again.steps == 2
    policy.set_adapter("seed0")  # the first seed's judge is still there
    assert position_metrics(judge_both_orders(judge, pairs, CONFIG)) == after


@pytest.mark.parametrize("options", [("A", "B", "C"), None])
def test_train_judge_loss_is_over_the_verdict_options(word_tokenizer, options):
    model, tok = make_lm(word_tokenizer)
    judge = Judge(model, tok, show_progress=False)
    data = verdict_data(judge, toy_pairs(3), CONFIG)
    targets = torch.tensor([tok.convert_tokens_to_ids(r["target"]) for r in data])
    logits = torch.stack([full_last_logits(model, tok, r["context"]) for r in data])
    if options is None:  # the whole vocabulary
        expected = torch.nn.functional.cross_entropy(logits, targets)
    else:  # the softmax over A, B, C: the distribution the log-prob judge reads
        keep = [tok.convert_tokens_to_ids(o) for o in options]
        index = torch.tensor([keep.index(t) for t in targets.tolist()])
        expected = torch.nn.functional.cross_entropy(logits[:, keep], index)
    cfg = JudgeTuneConfig(top_layers=1, batch_size=len(data), max_steps=1, options=options)
    policy = add_judge_adapter(model, cfg)  # B = 0: the first step's loss is the model's
    history = train_judge(policy, tok, data, cfg, show_progress=False)
    assert history.loss[0] == pytest.approx(expected.item(), rel=1e-4)
    with pytest.raises(ValueError, match="not among"):
        train_judge(policy, tok, data, JudgeTuneConfig(top_layers=1, options=("B", "C")),
                    show_progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="at least two"):
        JudgeTuneConfig(options=("A",))


def test_train_judge_refuses_what_would_make_the_cache_stale(word_tokenizer):
    model, tok = make_lm(word_tokenizer)
    cfg = JudgeTuneConfig(top_layers=2)
    judge = Judge(model, tok, show_progress=False)
    data = verdict_data(judge, toy_pairs(2), CONFIG)
    model.model.layers[0].mlp.up_proj.weight.requires_grad_(True)
    with pytest.raises(ValueError, match="not in the top layers"):
        train_judge(model, tok, data, cfg, show_progress=False)
    model.requires_grad_(False)
    policy = add_judge_adapter(model, cfg)
    with pytest.raises(ValueError, match="config's top_layers"):
        train_judge(policy, tok, data, cfg, cache=LayerCache(model, tok, 1), show_progress=False)
    with pytest.raises(ValueError, match="must be one token"):
        train_judge(policy, tok, [{"context": "the", "target": "good bad"}], cfg,
                    show_progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="non-empty list"):
        train_judge(policy, tok, [], cfg, show_progress=False)
    with pytest.raises(ValueError, match="top_layers >= 1"):
        JudgeTuneConfig(top_layers=0)
