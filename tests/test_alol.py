"""A-LoL's machinery (lesson 11): offline data, the reference's value head, advantages, the
good_priority sampler, the trainer; then "it learns" on the review world."""

import copy

import pytest
import torch

from rlhf_lessons.alignment.alol import (
    ALoLConfig,
    BatchSampler,
    resolve_sampling,
    sampling_weights,
    train_alol,
)
from rlhf_lessons.alignment.alol_data import (
    OfflineDataset,
    OfflineRLData,
    PromptValueHead,
    build_offline_dataset,
    dpo_pairs,
    fit_value_head,
    prepare_offline_data,
    prompt_state_mask,
    unit_rewards,
)
from rlhf_lessons.lm import Batch, tokenize_pairs

pytestmark = pytest.mark.usefixtures("one_thread")

POSITIVE, NEGATIVE = {"great", "good"}, {"bad", "awful"}


def word_reward(prompts, completions):
    """A toy reward in [-1, 1] for the tiny_lm fixture's words: positive minus negative."""
    out = []
    for p, c in zip(prompts, completions, strict=True):
        words = (p + " " + c).split()
        score = sum(w in POSITIVE for w in words) - sum(w in NEGATIVE for w in words)
        out.append(max(-1.0, min(1.0, score / 2)))
    return torch.tensor(out)


def toy_dataset() -> OfflineDataset:
    prompts = ["the movie was", "the movie was", "the plot is", "the plot is", "a film"]
    completions = ["great", "bad", "good and great", "awful", "not bad"]
    return OfflineDataset(prompts, completions, word_reward(prompts, completions),
                          ["sft"] * 4 + ["noisy"], [0, 0, 1, 1, 2])  # fmt: skip


# --- data ------------------------------------------------------------------------------------


def test_unit_rewards_rescales_and_refuses_out_of_range():
    torch.testing.assert_close(unit_rewards(torch.tensor([-1.0, 0.0, 1.0])),
                               torch.tensor([0.0, 0.5, 1.0]))  # fmt: skip
    torch.testing.assert_close(unit_rewards(torch.tensor([2.0]), (0.0, 4.0)), torch.tensor([0.5]))
    with pytest.raises(ValueError, match="outside reward_range"):
        unit_rewards(torch.tensor([1.5]))


def test_dpo_pairs_take_best_and_worst_and_skip_ties_and_empty():
    data = toy_dataset()
    pairs = dpo_pairs(data)
    assert pairs == [
        {"prompt": "the movie was", "chosen": "great", "rejected": "bad"},
        {"prompt": "the plot is", "chosen": "good and great", "rejected": "awful"},
    ]  # prompt 2 has a single response
    tied = OfflineDataset(["x", "x", "y", "y"], ["good", "great", "", "bad"],
                          torch.tensor([0.5, 0.5, 0.9, -0.5]), ["sft"] * 4, [0, 0, 1, 1])  # fmt: skip
    assert dpo_pairs(tied) == []  # a tie, and a group left with one non-empty response


def test_offline_dataset_checks_lengths():
    with pytest.raises(ValueError, match="one entry per response"):
        OfflineDataset(["a"], ["b", "c"], torch.zeros(1), ["sft"], [0])


def test_build_offline_dataset_mixes_sources_deterministically(tiny_lm):
    model, tok = tiny_lm
    prompts = ["the movie was", "the plot is", "a film"] * 4
    kwargs = dict(k=3, noisy_fraction=0.3, max_new_tokens=5, seed=3, reward_fn=word_reward)
    a = build_offline_dataset(model, tok, prompts, **kwargs)
    b = build_offline_dataset(model, tok, prompts, **kwargs)
    assert len(a) == 36 and a.completions == b.completions and a.sources == b.sources
    assert a.groups == [g for g in range(12) for _ in range(3)]
    assert 0 < a.sources.count("noisy") < 36
    torch.testing.assert_close(a.rewards, word_reward(a.prompts, a.completions))


# --- the value head and advantages -----------------------------------------------------------


def test_prompt_state_mask_marks_the_states_of_prompt_positions(word_tokenizer):
    tok = word_tokenizer(["a", "b", "c", "d"])
    batch = tokenize_pairs(tok, ["a b", "c"], ["c", "d a"])  # rows: a b c <eos> / c d a <eos>
    expected = torch.tensor([[0, 1, 1, 0, 0], [0, 1, 0, 0, 0]])
    assert torch.equal(prompt_state_mask(batch), expected[:, : batch.input_ids.shape[1]])


def test_value_head_is_in_range_and_ignores_masked_states():
    torch.manual_seed(0)
    head = PromptValueHead(16, heads=4).eval()
    states = torch.randn(3, 5, 16)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [0, 1, 1, 0, 0]])
    v = head(states, mask)
    assert v.shape == (3,) and ((v > 0) & (v < 1)).all()
    garbage = torch.where(mask.bool()[..., None], states, torch.full_like(states, 50.0))
    torch.testing.assert_close(head(garbage, mask), v)
    with pytest.raises(ValueError, match="no prompt state"):
        head(states, torch.zeros(3, 5, dtype=torch.long))


def test_fit_value_head_learns_a_prompt_dependent_value():
    g = torch.Generator().manual_seed(0)
    states = torch.randn(400, 4, 8, generator=g)
    mask = torch.ones(400, 4, dtype=torch.long)
    value = torch.sigmoid(states[:, :, 0].mean(1) * 3)  # the truth depends on the prompt
    targets = (value + 0.1 * torch.randn(400, generator=g)).clamp(0, 1)
    fit = fit_value_head(states, mask, targets, epochs=30, lr=1e-2, heads=2, seed=0)
    assert min(fit.heldout_mse) < 0.5 * fit.constant_mse
    assert fit.best_epoch == 1 + fit.heldout_mse.index(min(fit.heldout_mse))
    assert not any(p.requires_grad for p in fit.head.parameters())


def test_prepare_offline_data_gives_reference_logps_and_advantages(tiny_lm):
    model, tok = tiny_lm
    data = toy_dataset()
    head = PromptValueHead(model.config.hidden_size, heads=4).eval()
    prepared = prepare_offline_data(model, tok, data, head)
    assert len(prepared) == 5
    assert (prepared.ref_logp[prepared.batch.completion_mask == 0] == 0).all()
    assert (prepared.ref_logp[prepared.batch.completion_mask == 1] < 0).all()
    torch.testing.assert_close(prepared.rewards, (data.rewards + 1) / 2)
    torch.testing.assert_close(prepared.advantages, prepared.rewards - prepared.values)
    # the same prompt gets the same value (pi_ref's states of a prompt ignore what follows)
    torch.testing.assert_close(prepared.values[0], prepared.values[1])
    assert prepared.positive.dtype == torch.bool


# --- sampling --------------------------------------------------------------------------------


def _data(rewards, advantages):
    n = len(rewards)
    batch = Batch(torch.ones(n, 2, dtype=torch.long), torch.ones(n, 2, dtype=torch.long),
                  torch.tensor([[0, 1]] * n))  # fmt: skip
    return OfflineRLData(None, batch, torch.zeros(n, 2), torch.tensor(rewards),
                         None, None if advantages is None else torch.tensor(advantages))  # fmt: skip


def test_good_priority_weights():
    data = _data([0.2, 0.9, 0.5], [-0.3, 0.4, 0.1])
    assert resolve_sampling("a_lol", "good_priority") == "advantage"
    assert resolve_sampling("wbc", "good_priority") == "reward"
    assert resolve_sampling("wbc", "advantage") == "advantage"  # the control of lesson 11
    assert resolve_sampling("nll", "auto") == "uniform"
    assert resolve_sampling("a_lol", "auto") == "advantage"
    torch.testing.assert_close(sampling_weights("advantage", data), torch.tensor([0.0, 0.4, 0.1]))
    torch.testing.assert_close(sampling_weights("reward", data), torch.tensor([0.2, 0.9, 0.5]))
    assert sampling_weights("uniform", data) is None
    with pytest.raises(ValueError, match="use sampling='uniform'"):
        resolve_sampling("nll", "good_priority")
    with pytest.raises(ValueError, match="sampling must be one of"):
        resolve_sampling("a_lol", "priority")
    with pytest.raises(ValueError, match="needs advantages"):
        sampling_weights("advantage", _data([0.5], None))
    with pytest.raises(ValueError, match="every advantage sampling weight is 0"):
        sampling_weights("advantage", _data([0.5], [-0.1]))


def test_priority_sampler_draws_in_proportion_and_never_zero_weights():
    weights = torch.tensor([0.0, 1.0, 3.0, 0.0])
    sampler = BatchSampler(4, 1000, weights, seed=0)
    counts = torch.bincount(torch.cat([next(sampler) for _ in range(20)]), minlength=4)
    assert counts[0] == 0 and counts[3] == 0
    assert counts[2] / counts[1] == pytest.approx(3.0, rel=0.05)


def test_uniform_sampler_visits_every_response_once_per_pass():
    sampler = BatchSampler(10, 4, seed=1)
    drawn = torch.cat([next(sampler) for _ in range(5)])  # 20 = two passes
    assert sorted(drawn[:10].tolist()) == list(range(10))
    assert sorted(drawn[10:].tolist()) == list(range(10))


def test_config_sampling_and_step_scaling():
    assert ALoLConfig(method="nll").sampling == "uniform"
    assert ALoLConfig(method="wbc").sampling == "reward"
    assert ALoLConfig(method="a_lol", max_steps=100).total_steps(0.37) == 37
    assert ALoLConfig(method="a_lol", max_steps=100, sampling="uniform").total_steps(0.37) == 100
    assert ALoLConfig(method="r_lol", max_steps=100).total_steps(0.37) == 100
    # sampling by advantage sees only the positive part, whatever the weight
    assert ALoLConfig(method="wbc", max_steps=100, sampling="advantage").total_steps(0.37) == 37
    assert ALoLConfig(method="a_lol", max_steps=100, scale_steps=False).total_steps(0.37) == 100
    with pytest.raises(ValueError, match="nll clones the data"):
        ALoLConfig(method="nll", sampling="good_priority")
    with pytest.raises(ValueError, match="method must be one of"):
        ALoLConfig(method="alol")


# --- the trainer -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy_prepared(tiny_lm):
    model, tok = tiny_lm
    torch.manual_seed(0)
    head = PromptValueHead(model.config.hidden_size, heads=4).eval()
    return prepare_offline_data(model, tok, toy_dataset(), head)


@pytest.mark.parametrize("method", ["nll", "wbc", "r_gold", "r_lol", "a_lol", "a_lol_ref_free",
                                    "a_lol_seq", "a_lol_kl"])  # fmt: skip
def test_train_alol_runs_every_method_and_repeats(tiny_lm, toy_prepared, method):
    model, tok = tiny_lm
    config = ALoLConfig(method=method, max_steps=6, batch_size=4, lr=1e-2)
    runs = []
    for _ in range(2):
        policy = copy.deepcopy(model)
        history = train_alol(policy, tok, toy_prepared, config, eval_fn=lambda p: {"x": 1.0},
                             eval_every=2, show_progress=False)  # fmt: skip
        runs.append((history, policy))
    h = runs[0][0]
    assert h.steps == config.total_steps(toy_prepared.positive_fraction)
    assert h.loss == runs[1][0].loss  # seeded: the same run twice
    steps = [e["step"] for e in h.evaluations]  # before training, every 2 steps, at the end
    assert steps == [0, *range(2, h.steps, 2), h.steps]
    assert len(h.seconds) == h.steps and h.info["examples"] == len(toy_prepared)
    changed = any(not torch.equal(a, b) for a, b in zip(model.parameters(),
                  runs[0][1].parameters(), strict=True))  # fmt: skip
    assert changed
    if method in ("r_lol", "a_lol", "a_lol_seq"):
        # the clip is an identity of the trainer's every step, not a lesson's claim
        assert min(h.weight_min) >= 0.1 - 1e-6 and max(h.weight_max) <= 1.9 + 1e-6


def test_trained_importance_weights_stay_in_the_clip_range_as_the_policy_drifts(tiny_lm,
                                                                                 toy_prepared):  # fmt: skip
    model, tok = tiny_lm
    for method in ("r_lol", "a_lol", "a_lol_seq"):
        h = train_alol(copy.deepcopy(model), tok, toy_prepared,
                       ALoLConfig(method=method, max_steps=40, batch_size=4, lr=5e-2,
                                  scale_steps=False), show_progress=False)  # fmt: skip
        assert max(h.clipfrac) > 0, method  # the policy drifted far enough to be clipped
        assert min(h.weight_min) >= 0.1 - 1e-6 and max(h.weight_max) <= 1.9 + 1e-6, method


@pytest.mark.parametrize("method", ["a_lol", "wbc"])
def test_sampling_by_advantage_trains_only_on_positive_advantages(tiny_lm, toy_prepared, method):
    model, tok = tiny_lm
    h = train_alol(copy.deepcopy(model), tok, toy_prepared,
                   ALoLConfig(method=method, max_steps=10, batch_size=8, sampling="advantage"),
                   show_progress=False)  # fmt: skip
    assert h.info["sampling"] == "advantage"
    assert all(a > 0 for a in h.batch_advantage)  # every drawn response had A > 0


def test_uniform_sampling_draws_negative_advantages_too(tiny_lm, toy_prepared):
    model, tok = tiny_lm
    h = train_alol(copy.deepcopy(model), tok, toy_prepared,
                   ALoLConfig(method="a_lol", max_steps=10, batch_size=2, sampling="uniform"),
                   show_progress=False)  # fmt: skip
    assert h.steps == 10 and min(h.batch_advantage) < 0


def test_train_alol_refuses_advantage_methods_without_a_value(tiny_lm):
    model, tok = tiny_lm
    data = prepare_offline_data(model, tok, toy_dataset())
    with pytest.raises(ValueError, match="needs advantages"):
        train_alol(copy.deepcopy(model), tok, data, ALoLConfig(method="a_lol_ref_free"),
                   show_progress=False)  # fmt: skip


# --- it learns -------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_lol_beats_nll_on_the_true_reward_in_the_review_world():
    from rlhf_lessons.alignment.alol_data import fit_reference_value
    from rlhf_lessons.review_world.evaluation import evaluate_policy
    from rlhf_lessons.review_world.grammar import prompts
    from rlhf_lessons.review_world.tiny_lm import load_sft_model

    sft, tok = load_sft_model(show_progress=False)
    data = build_offline_dataset(sft, tok, prompts(300, seed=21), k=2, seed=0)
    value = fit_reference_value(sft, tok, prompts(500, seed=22), n_samples=1, epochs=5)
    prepared = prepare_offline_data(sft, tok, data, value)
    assert 0.2 < prepared.positive_fraction < 0.8
    rewards = {}
    for method in ("nll", "a_lol"):
        policy = copy.deepcopy(sft)
        train_alol(policy, tok, prepared, ALoLConfig(method=method, max_steps=40),
                   show_progress=False)  # fmt: skip
        rewards[method] = evaluate_policy(policy, sft, tok, prompts(32, seed=1), n_samples=4,
                                          max_new_tokens=16, seed=0)["reward"]  # fmt: skip
    print(rewards)
    assert rewards["a_lol"] > rewards["nll"] + 0.15, rewards
