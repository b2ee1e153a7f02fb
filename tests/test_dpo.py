"""The DPO / IPO / hinge / SimPO trainer (lessons 06-07): the facts at initialisation, the
reference computed once (also through a LoRA adapter switched off), clear errors on bad pairs,
then "it learns" in the review world."""

import copy
import math

import pytest
import torch

from rlhf_lessons.alignment.dpo import (
    DPOConfig,
    ReferenceLogps,
    adapter_disabled,
    implicit_reward_accuracy,
    is_peft_model,
    precompute_reference_logps,
    tokenize_preferences,
    train_dpo,
)
from rlhf_lessons.alignment.simpo import simpo_loss
from rlhf_lessons.lm import sequence_logprobs, token_logprobs
from rlhf_lessons.rewards.preference_data import PreferenceDataError

PAIRS = [
    {"prompt": "the movie was ", "chosen": "great", "rejected": "awful"},
    {"prompt": "the film is ", "chosen": "very good", "rejected": "very bad"},
    {"prompt": "the plot was ", "chosen": "good and great", "rejected": "bad"},
    {"prompt": "the acting is ", "chosen": "not bad", "rejected": "awful and bad"},
    {"prompt": "a movie ", "chosen": "was great", "rejected": "was not good"},
    {"prompt": "the film was ", "chosen": "good", "rejected": "bad but great"},
]


def _model(tiny_lm):
    model, tok = tiny_lm
    return copy.deepcopy(model), tok


def _train(tiny_lm, pairs=PAIRS, **config):
    policy, tok = _model(tiny_lm)
    config.setdefault("batch_size", 4)
    history = train_dpo(policy, tok, pairs, DPOConfig(**config), show_progress=False)
    return policy, tok, history


# --- Facts at initialisation (pi = pi_ref) -----------------------------------------------------


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_first_dpo_loss_is_log_2(tiny_lm, beta):
    _, _, h = _train(tiny_lm, loss="dpo", beta=beta, max_steps=1)
    assert h.loss[0] == pytest.approx(math.log(2), abs=1e-6)
    assert h.margin[0] == pytest.approx(0.0, abs=1e-6)
    assert h.accuracy[0] == 0.0  # every pair ties; TRL counts a tie as wrong
    assert h.reference == "policy before training"


@pytest.mark.parametrize("average", [True, False])
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_first_ipo_loss_is_one_over_four_beta_squared_summed_or_averaged(tiny_lm, beta, average):
    """h = 0 at the start whether the log-ratios are summed or token-averaged (TRL), so the
    first loss is (0 - 1/(2 beta))^2 = 1/(4 beta^2) either way: 25 at beta 0.1."""
    _, _, h = _train(tiny_lm, loss="ipo", beta=beta, ipo_average=average, max_steps=1)
    assert h.loss[0] == pytest.approx(1 / (4 * beta**2), rel=1e-6)
    assert DPOConfig(loss="ipo", ipo_average=average).average_logps is average


def test_first_hinge_loss_is_one(tiny_lm):
    _, _, h = _train(tiny_lm, loss="hinge", max_steps=1)
    assert h.loss[0] == pytest.approx(1.0, abs=1e-6)  # relu(1 - beta * 0)


def test_simpo_needs_no_reference_and_uses_average_logprobs(tiny_lm):
    policy, tok = _model(tiny_lm)
    cfg = DPOConfig.simpo(batch_size=len(PAIRS), max_steps=1)
    batch = tokenize_preferences(tok, PAIRS, cfg.max_prompt_length, cfg.max_completion_length)
    with torch.no_grad():
        avg = sequence_logprobs(token_logprobs(policy, batch), batch.completion_mask, True)
    n = len(PAIRS)
    expected, _ = simpo_loss(avg[:n], avg[n:], beta=2.0, gamma=0.5)
    h = train_dpo(policy, tok, PAIRS, cfg, show_progress=False)
    assert h.loss[0] == pytest.approx(expected.item(), rel=1e-5)
    assert h.reference.startswith("none") and h.ref_seconds == 0.0
    assert cfg.beta == 2.0 and cfg.average_logps and not cfg.needs_reference


# --- The reference, once -----------------------------------------------------------------------


def test_preference_batch_layout_chosen_rows_then_rejected_rows(tiny_lm):
    _, tok = tiny_lm
    batch = tokenize_preferences(tok, PAIRS[:2])
    assert len(batch) == 4
    words = lambda row: tok.decode(batch.input_ids[row][batch.completion_mask[row].bool()])  # noqa: E731
    assert words(0).startswith("great") and words(2).startswith("awful")
    assert words(1).startswith("very good") and words(3).startswith("very bad")


def test_precomputed_reference_logps_equal_on_the_fly_ones(tiny_lm):
    model, tok = tiny_lm
    batch = tokenize_preferences(tok, PAIRS)
    ref = precompute_reference_logps(model, batch, chunk_size=5)  # chunks of uneven widths
    with torch.no_grad():
        logp = token_logprobs(model, batch)  # one pass over the whole padded batch
    torch.testing.assert_close(ref.sum, sequence_logprobs(logp, batch.completion_mask))
    torch.testing.assert_close(ref.mean, sequence_logprobs(logp, batch.completion_mask, True))
    assert not ref.sum.requires_grad and ref.seconds > 0
    assert (ref.sum < 0).all()


def test_implicit_reward_accuracy_takes_its_threads_from_the_config(tiny_lm, monkeypatch):
    """A config's ``threads`` (None: leave torch's setting alone, as the SmolLM2 lessons use
    it) reaches every reference pass; without a config the default is 1."""
    import rlhf_lessons.alignment.dpo as dpo

    seen, real = [], dpo.precompute_reference_logps

    def spy(*args, threads=None, **kwargs):
        seen.append(threads)
        return real(*args, threads=threads, **kwargs)

    monkeypatch.setattr(dpo, "precompute_reference_logps", spy)
    model, tok = tiny_lm
    implicit_reward_accuracy(model, tok, PAIRS, model, config=DPOConfig(threads=None))
    implicit_reward_accuracy(model, tok, PAIRS, model, config=DPOConfig(threads=2))
    implicit_reward_accuracy(model, tok, PAIRS, model)
    assert seen == [None, None, 2, 2, 1, 1]  # policy then reference, per call


def test_rows_per_pass_keeps_the_logits_within_the_budget(tiny_lm):
    from rlhf_lessons.alignment.dpo_data import LOGITS_BUDGET, rows_per_pass

    model, tok = tiny_lm
    batch = tokenize_preferences(tok, PAIRS)
    # the logits are computed at the completion tokens only (lm.completion_logprobs)
    width, vocab = int(batch.completion_mask.sum(-1).max()), model.config.vocab_size
    assert rows_per_pass(model, batch, limit=10**9) == LOGITS_BUDGET // (width * vocab)
    assert rows_per_pass(model, batch) == 64  # a tiny vocabulary: the limit binds

    class HugeVocab:  # a 20M-token vocabulary: one row per pass, never zero
        config = type("Config", (), {"vocab_size": 20_000_000})()

    assert rows_per_pass(HugeVocab(), batch) == 1


class CountingLM(torch.nn.Module):
    """A causal LM that counts its forward passes."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm
        self.calls = 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.lm(*args, **kwargs)


def test_reference_runs_once_before_training_and_never_again(tiny_lm):
    policy, tok = _model(tiny_lm)
    ref = CountingLM(copy.deepcopy(tiny_lm[0]))
    cfg = DPOConfig(batch_size=2, epochs=3, ref_chunk_size=4)
    h = train_dpo(policy, tok, PAIRS, cfg, ref_model=ref, show_progress=False)
    assert h.steps == 9  # 3 epochs x 3 minibatches of 2 pairs
    assert ref.calls == math.ceil(2 * len(PAIRS) / 4)  # the precompute's chunks, and no more
    assert h.reference == "ref_model"


def test_reference_defaults_to_the_policy_before_training(tiny_lm):
    """No ref_model, no adapter: the policy's own log-probs at step 0 are pi_ref's, so the run
    equals one with an explicit copy of the starting model as reference."""
    _, _, h_self = _train(tiny_lm, max_steps=4, batch_size=3, lr=1e-2)
    policy, tok = _model(tiny_lm)
    h_ref = train_dpo(policy, tok, PAIRS, DPOConfig(max_steps=4, batch_size=3, lr=1e-2),
                      ref_model=copy.deepcopy(policy), show_progress=False)  # fmt: skip
    assert h_self.loss == pytest.approx(h_ref.loss, rel=1e-5, abs=1e-7)
    assert h_self.margin == pytest.approx(h_ref.margin, rel=1e-5, abs=1e-7)


def test_shared_ref_logps_give_the_same_run(tiny_lm):
    policy, tok = _model(tiny_lm)
    cfg = DPOConfig(max_steps=3, batch_size=3, lr=1e-2)
    batch = tokenize_preferences(tok, PAIRS, cfg.max_prompt_length, cfg.max_completion_length)
    ref = precompute_reference_logps(policy, batch)
    h1 = train_dpo(copy.deepcopy(policy), tok, PAIRS, cfg, ref_logps=ref, show_progress=False)
    h2 = train_dpo(policy, tok, PAIRS, cfg, show_progress=False)
    assert h1.loss == pytest.approx(h2.loss, rel=1e-5, abs=1e-7)
    assert h1.ref_seconds == 0.0 and h1.reference.startswith("ref_logps")
    short = ReferenceLogps(ref.sum[:-2], ref.mean[:-2])
    with pytest.raises(ValueError, match="ref_logps holds 10 rows"):
        train_dpo(policy, tok, PAIRS, cfg, ref_logps=short, show_progress=False)


# --- LoRA: the reference is the base model, with the adapter switched off ----------------------


# peft calls a transformers method that transformers 5 deprecates; not ours to fix
LORA_WARNING = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")


def _lora(model, init_lora_weights=True):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0,
                        init_lora_weights=init_lora_weights)  # fmt: skip
    return get_peft_model(model, config)


@LORA_WARNING
def test_adapter_disabled_reference_equals_the_base_model(tiny_lm):
    base, tok = _model(tiny_lm)
    batch = tokenize_preferences(tok, PAIRS)
    expected = precompute_reference_logps(base, batch)
    # a random (not zero-initialised) adapter, so that it really changes the model
    peft_model = _lora(copy.deepcopy(base), init_lora_weights=False)
    assert is_peft_model(peft_model) and not is_peft_model(base)
    with_adapter = precompute_reference_logps(peft_model, batch)
    assert not torch.allclose(with_adapter.sum, expected.sum, atol=1e-3)
    without = precompute_reference_logps(peft_model, batch, disable_adapter=True)
    torch.testing.assert_close(without.sum, expected.sum)
    torch.testing.assert_close(without.mean, expected.mean)
    # the adapter is back on afterwards
    again = precompute_reference_logps(peft_model, batch)
    torch.testing.assert_close(again.sum, with_adapter.sum)
    with pytest.raises(ValueError, match="needs a peft PeftModel"):
        with adapter_disabled(base):
            pass


@LORA_WARNING
def test_lora_dpo_trains_the_adapter_only_and_uses_the_base_as_reference(tiny_lm):
    base, tok = _model(tiny_lm)
    policy = _lora(base)
    frozen = {n: p.detach().clone() for n, p in policy.named_parameters() if "lora_" not in n}
    lora = {n: p.detach().clone() for n, p in policy.named_parameters() if "lora_" in n}
    h = train_dpo(policy, tok, PAIRS, DPOConfig(batch_size=3, epochs=2, lr=1e-2),
                  show_progress=False)  # fmt: skip
    assert h.reference == "policy with its adapter disabled"
    assert h.loss[0] == pytest.approx(math.log(2), abs=1e-6)  # B = 0 at init: policy = base
    params = dict(policy.named_parameters())
    for name, before in frozen.items():
        torch.testing.assert_close(params[name].detach(), before, rtol=0, atol=0)
    assert any(not torch.equal(params[n].detach(), v) for n, v in lora.items())
    # the policy with its adapter as pi, the same model without it as pi_ref
    acc = implicit_reward_accuracy(policy, tok, PAIRS, reference=policy)
    assert acc["ties"] < 1.0 and acc["margin"] > 0


@LORA_WARNING
def test_lora_with_trainable_base_weights_is_refused(tiny_lm):
    base, tok = _model(tiny_lm)
    policy = _lora(base)
    policy.base_model.model.lm_head.weight.requires_grad_(True)
    with pytest.raises(ValueError, match="trainable base weights"):
        train_dpo(policy, tok, PAIRS, DPOConfig(max_steps=1), show_progress=False)


# --- It moves the right way on a tiny synthetic set --------------------------------------------


@pytest.mark.parametrize("loss", ["dpo", "ipo", "hinge", "simpo"])
def test_training_raises_the_chosen_vs_rejected_margin(tiny_lm, loss):
    model, tok = tiny_lm
    cfg = DPOConfig(loss=loss, beta=0.5 if loss != "simpo" else 2.0, lr=3e-3, epochs=15,
                    batch_size=3)  # fmt: skip
    reference = None if loss == "simpo" else model
    before = implicit_reward_accuracy(model, tok, PAIRS, reference, config=cfg)
    policy, tok, h = _train(tiny_lm, **{k: getattr(cfg, k) for k in
                                        ("loss", "beta", "lr", "epochs", "batch_size")})  # fmt: skip
    after = implicit_reward_accuracy(policy, tok, PAIRS, reference, config=cfg)
    assert h.steps == 30
    assert after["margin"] > before["margin"] + 0.3, (before, after)
    if loss == "ipo":  # IPO stops at its target: beta h = beta / (2 beta) = 1/2
        assert after["margin"] == pytest.approx(0.5, abs=0.1)
    if loss == "hinge":  # pushed to beta h >= 1, where its gradient vanishes
        assert after["margin"] > 1.0
    assert after["accuracy"] == 1.0
    assert sum(h.loss[-3:]) / 3 < h.loss[0]
    if loss != "simpo":
        assert before == {"accuracy": 0.5, "ties": 1.0, "margin": 0.0, "rewards_chosen": 0.0,
                          "rewards_rejected": 0.0, "n_pairs": len(PAIRS),
                          "correct": [0.5] * len(PAIRS)}  # fmt: skip


def test_eval_fn_runs_at_the_start_every_k_steps_and_at_the_end(tiny_lm):
    policy, tok = _model(tiny_lm)
    seen = []

    def eval_fn(model):
        assert model is policy
        seen.append(1)
        return {"n": len(seen)}

    h = train_dpo(policy, tok, PAIRS, DPOConfig(batch_size=2, epochs=2), eval_fn=eval_fn,
                  eval_every=2, show_progress=False)  # fmt: skip
    assert [e["step"] for e in h.evaluations] == [0, 2, 4, 6]
    assert h.steps == 6 and len(h.seconds) == 6 and h.epoch[-1] == pytest.approx(2.0)
    assert h.seconds == sorted(h.seconds)


# --- Clear errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pairs", "match"),
    [
        ([PAIRS[0], {"prompt": "the film ", "chosen": "good"}], r"pairs\[1\]: field 'rejected'"),
        ([{"prompt": "a ", "chosen": "good", "rejected": " good "}], "identical to 'chosen'"),
        ([{"prompt": "a ", "chosen": "", "rejected": "bad"}], "'chosen' is empty"),
        ([{"prompt": "a ", "chosen": 3, "rejected": "bad"}], "'chosen' is a int"),
        ([], "pairs is empty"),
        (PAIRS[0], "a single dict"),
        ([{"prompt": "a ", "ranked_outputs": ["good", "bad"]}], "ranked_to_pairs"),
    ],
)
def test_bad_pairs_raise_clear_errors(tiny_lm, pairs, match):
    policy, tok = _model(tiny_lm)
    with pytest.raises(PreferenceDataError, match=match):
        train_dpo(policy, tok, pairs, DPOConfig(max_steps=1), show_progress=False)


def test_pairs_equal_after_truncation_are_refused(tiny_lm):
    policy, tok = _model(tiny_lm)
    pairs = [{"prompt": "the ", "chosen": "movie was good", "rejected": "movie was bad"}]
    with pytest.raises(PreferenceDataError, match="same tokens after tokenisation"):
        train_dpo(policy, tok, pairs, DPOConfig(max_completion_length=2), show_progress=False)


def test_conversational_pairs_are_accepted(tiny_lm):
    policy, tok = _model(tiny_lm)
    pair = {"prompt": [{"role": "user", "content": "the movie was "}],
            "chosen": [{"role": "assistant", "content": "great"}],
            "rejected": [{"role": "assistant", "content": "awful"}]}  # fmt: skip
    # no chat template: the user message is the prompt text, as for the standard record
    batch = tokenize_preferences(tok, [pair])
    torch.testing.assert_close(batch.input_ids, tokenize_preferences(tok, PAIRS[:1]).input_ids)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"loss": "kto"}, "loss must be one of"),
        ({"beta": 0.0}, "beta must be a number > 0"),
        ({"loss": "ipo", "label_smoothing": 0.1}, "'dpo' \\(cDPO\\) and 'simpo' only"),
        ({"label_smoothing": 0.7}, r"in \[0, 0.5\]"),
        ({"gamma": -1.0}, "gamma must be >= 0"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"max_steps": 0}, "max_steps must be >= 1"),
    ],
)
def test_bad_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DPOConfig(**kwargs)


def test_frozen_policy_and_policy_as_ref_model_are_refused(tiny_lm):
    policy, tok = _model(tiny_lm)
    with pytest.raises(ValueError, match="ref_model is the policy itself"):
        train_dpo(policy, tok, PAIRS, ref_model=policy, show_progress=False)
    policy.requires_grad_(False)
    with pytest.raises(ValueError, match="no parameter with requires_grad=True"):
        train_dpo(policy, tok, PAIRS, show_progress=False)


def test_default_beta_follows_the_loss():
    assert DPOConfig().beta == 0.1
    assert DPOConfig(loss="simpo").beta == 2.0
    assert DPOConfig.ipo(beta=1.0).beta == 1.0
    assert DPOConfig.simpo().gamma == 0.5


# --- It learns: the DPO paper's IMDb setup in the review world ---------------------------------


@pytest.mark.slow
def test_dpo_raises_the_true_reward_of_the_review_model():
    """The DPO paper's IMDb setup in small: 4 completions of 400 prompts sampled from the SFT
    model and ranked by VADER (the true reward), ~2000 pairs, one epoch (32 steps, ~6 s).

    The SFT model scores 0.075 +- 0.10 on the held-out prompts; DPO (beta 0.5) reached
    0.37-0.42 at KL 1.1-1.3 over training seeds 0-2, and its implicit reward ranked 73-75% of
    held-out pairs right."""
    from rlhf_lessons.course.device import torch_threads
    from rlhf_lessons.review_world.evaluation import evaluate_policy
    from rlhf_lessons.review_world.grammar import prompts
    from rlhf_lessons.review_world.preferences import sample_ranked_completions
    from rlhf_lessons.review_world.tiny_lm import load_sft_model
    from rlhf_lessons.rewards.preference_data import ranked_to_pairs

    sft, tok = load_sft_model()
    sft.eval()
    with torch_threads(1):
        records = sample_ranked_completions(sft, tok, prompts(400, seed=2), k=4, seed=0)
        held_out = sample_ranked_completions(sft, tok, prompts(100, seed=3), k=4, seed=1)

        def evaluate(policy):
            return evaluate_policy(policy, sft, tok, prompts(64, seed=1), n_samples=4,
                                   max_new_tokens=16, seed=0)  # fmt: skip

        before = evaluate(sft)
    pairs = [p for r in records for p in ranked_to_pairs(r)]
    held_pairs = [p for r in held_out for p in ranked_to_pairs(r)]
    policy = copy.deepcopy(sft)
    cfg = DPOConfig(beta=0.5)
    h = train_dpo(policy, tok, pairs, cfg, show_progress=False)
    with torch_threads(1):
        after = evaluate(policy)
    accuracy = implicit_reward_accuracy(policy, tok, held_pairs, sft, config=cfg)
    assert after["reward"] > before["reward"] + 0.2, (before["reward"], after["reward"])
    assert after["reward"] - after["reward_ci"] > before["reward"] + before["reward_ci"]
    assert 0.1 < after["kl"] < 5.0, after["kl"]
    assert accuracy["accuracy"] > 0.65, accuracy
    assert sum(h.accuracy[-5:]) / 5 > 0.6


def test_response_logps_are_the_rows_sequence_logprobs(tiny_lm):
    from rlhf_lessons.alignment.dpo import response_logps

    model, tok = tiny_lm
    batch = tokenize_preferences(tok, PAIRS, 32, 32)
    with torch.no_grad():
        summed = sequence_logprobs(token_logprobs(model, batch), batch.completion_mask)
    chosen, rejected = response_logps(model, tok, PAIRS)
    torch.testing.assert_close(torch.cat([chosen, rejected]), summed, atol=1e-5, rtol=1e-5)
    avg_w, _ = response_logps(model, tok, PAIRS, DPOConfig.simpo())  # SimPO: per-token means
    lengths = batch.completion_mask[: len(PAIRS)].sum(-1)
    torch.testing.assert_close(avg_w * lengths, chosen, atol=1e-5, rtol=1e-5)


def test_train_simpo_is_train_dpo_with_the_simpo_loss(tiny_lm):
    from rlhf_lessons.alignment.simpo import train_simpo

    cfg = DPOConfig.simpo(batch_size=3, max_steps=2, lr=1e-2)
    policy, tok = _model(tiny_lm)
    h = train_simpo(policy, tok, PAIRS, cfg, show_progress=False)
    _, _, h_dpo = _train(tiny_lm, loss="simpo", batch_size=3, max_steps=2, lr=1e-2)
    assert h.loss == pytest.approx(h_dpo.loss, rel=1e-6)
    with pytest.raises(ValueError, match="needs a SimPO config"):
        train_simpo(policy, tok, PAIRS, DPOConfig.dpo(), show_progress=False)


def test_implicit_reward_accuracy_scores_each_pair(tiny_lm):
    policy, tok, _ = _train(tiny_lm, lr=1e-2, epochs=5, batch_size=3)
    acc = implicit_reward_accuracy(policy, tok, PAIRS, reference=tiny_lm[0])
    assert len(acc["correct"]) == len(PAIRS) and set(acc["correct"]) <= {0.0, 0.5, 1.0}
    assert acc["accuracy"] == pytest.approx(sum(acc["correct"]) / len(PAIRS))


def test_ranking_accuracy_from_logps_equals_implicit_reward_accuracy(tiny_lm):
    # lesson 06 computes the held-out log-probs once and ranks from them: the same numbers
    from rlhf_lessons.alignment.dpo import ranking_accuracy, response_logps

    policy, tok, _ = _train(tiny_lm, lr=1e-2, epochs=5, batch_size=3)
    cfg = DPOConfig(beta=0.5)
    ref = precompute_reference_logps(tiny_lm[0], tokenize_preferences(tok, PAIRS, 32, 32))
    ref_w, ref_l = ref.sum.chunk(2)
    after_w, after_l = response_logps(policy, tok, PAIRS)
    fast = ranking_accuracy(cfg.beta * (after_w - ref_w), cfg.beta * (after_l - ref_l))
    assert fast == implicit_reward_accuracy(policy, tok, PAIRS, reference=ref, config=cfg)
    tie = ranking_accuracy(torch.zeros(4), torch.zeros(4))
    assert tie["accuracy"] == 0.5 and tie["ties"] == 1.0
    with pytest.raises(ValueError, match="same pairs"):
        ranking_accuracy(torch.zeros(3), torch.zeros(4))
