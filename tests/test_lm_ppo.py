"""PPO for language models (lesson 05): the pieces by hand, then "it learns" on the review world."""

import copy
import math

import pytest
import torch

from rlhf_lessons.alignment.lm_ppo import (
    LMPPOConfig,
    PolicyWithValueHead,
    completion_dones,
    lm_advantages,
    train_lm_ppo,
)
from rlhf_lessons.alignment.rollouts import collect_rollout, score_completions
from rlhf_lessons.lm import generate, token_logprobs, token_logprobs_and_states
from rlhf_lessons.rl.advantages import gae
from rlhf_lessons.rl.ppo import clipped_surrogate_loss, value_loss


def _prompts():
    return ["the movie was", "the plot is very", "a film", "the acting was not"]


def _rollout(tiny_lm, reward_fn=None, **kw):
    model, tok = tiny_lm
    reward_fn = reward_fn or (lambda p, c: torch.tensor([float(len(x.split())) for x in c]))
    return collect_rollout(model, model, tok, _prompts(), reward_fn, max_new_tokens=6, seed=0, **kw)


# --- the shared LM layer --------------------------------------------------------------------


def test_logprobs_and_states_match_token_logprobs(tiny_lm):
    model, tok = tiny_lm
    batch = generate(model, tok, _prompts(), max_new_tokens=5, seed=0).batch
    logp, states, entropy = token_logprobs_and_states(model, batch, temperature=0.7)
    torch.testing.assert_close(logp, token_logprobs(model, batch, temperature=0.7))
    assert states.shape == (*batch.input_ids.shape, model.config.hidden_size)
    assert (states[:, 0] == 0).all()
    # states[:, t] is the hidden state at t - 1: the one the lm_head turned into logits_{t-1}
    # (row 1, "the plot is very", is the longest prompt: no left padding)
    out = model(input_ids=batch.input_ids[1:2, :4], output_hidden_states=True)
    torch.testing.assert_close(states[1, 1:4], out.hidden_states[-1][0, :3])
    assert (entropy[:, 1:] > 0).all() and (
        entropy <= math.log(model.config.vocab_size) + 1e-5
    ).all()


# --- rollouts -------------------------------------------------------------------------------


def test_rollout_records_logprobs_on_completion_tokens_only(tiny_lm):
    ro = _rollout(tiny_lm, temperature=0.7)
    assert len(ro) == 4 and ro.logp.shape == ro.batch.input_ids.shape
    assert (ro.logp[ro.mask == 0] == 0).all()
    # policy and ref are the same model here: the recorded log-probs agree exactly
    torch.testing.assert_close(ro.logp, ro.ref_logp)
    # recorded at the sampling temperature (detail no. 6)
    model, _ = tiny_lm
    again = token_logprobs(model, ro.batch, temperature=0.7) * ro.mask
    torch.testing.assert_close(ro.logp, again)


def test_missing_eos_penalty_lowers_only_cut_off_completions(tiny_lm):
    ro = _rollout(tiny_lm, missing_eos_penalty=2.0)
    torch.testing.assert_close(ro.scores, ro.raw_scores - 2.0 * (~ro.ended).float())
    assert (ro.lengths()[~ro.ended] == 6).all()


def test_bad_rewards_are_refused_with_a_clear_error():
    with pytest.raises(ValueError, match="finite"):
        score_completions(lambda p, c: torch.tensor([0.0, float("nan")]), ["a", "b"], ["x", "y"])
    with pytest.raises(ValueError, match="shape"):
        score_completions(lambda p, c: torch.zeros(3), ["a", "b"], ["x", "y"])


# --- advantages and losses with masks --------------------------------------------------------


def test_completion_dones_start_at_the_last_completion_token():
    mask = torch.tensor([[0, 1, 1, 0], [0, 0, 1, 1]])
    assert completion_dones(mask).tolist() == [[0, 0, 1, 1], [0, 0, 0, 1]]


def test_lm_advantages_by_hand():
    # one row: prompt token, then 3 completion tokens, then padding
    mask = torch.tensor([[0.0, 1, 1, 1, 0]])
    rewards = torch.tensor([[0.0, -0.1, -0.2, 1.0, 0.0]])
    values = torch.tensor([[9.0, 0.5, 0.4, 0.3, 9.0]])  # garbage outside the mask is ignored
    gamma, lam = 1.0, 0.5
    adv, ret = lm_advantages(rewards, values, mask, gamma, lam)
    d3 = 1.0 - 0.3  # last token: no next value
    d2 = -0.2 + 0.3 - 0.4
    d1 = -0.1 + 0.4 - 0.5
    a3, a2 = d3, d2 + lam * d3
    a1 = d1 + lam * a2
    raw = torch.tensor([a1, a2, a3])
    torch.testing.assert_close(ret[0, 1:4], raw + torch.tensor([0.5, 0.4, 0.3]))
    assert ret[0, 0] == 0 and ret[0, 4] == 0
    whitened = (raw - raw.mean()) / raw.var(unbiased=False).sqrt()
    torch.testing.assert_close(adv[0, 1:4], whitened, atol=1e-5, rtol=1e-5)
    assert adv[0, 0] == 0 and adv[0, 4] == 0


def test_lm_advantages_with_lambda_one_are_the_return_minus_value():
    mask = torch.tensor([[1.0, 1, 1], [1, 1, 0]])
    rewards = torch.tensor([[0.1, 0.2, 0.3], [1.0, 2.0, 0.0]])
    values = torch.tensor([[0.5, 0.1, 0.2], [0.3, 0.4, 0.0]])
    _, ret = lm_advantages(rewards, values, mask, 1.0, 1.0)
    torch.testing.assert_close(ret, torch.tensor([[0.6, 0.5, 0.3], [3.0, 2.0, 0.0]]))
    # the same as the CartPole GAE on each row alone
    adv, _ = gae(rewards[:1].T, values[:1].T, torch.tensor([[0.0], [0], [1]]), torch.zeros(1), 1, 1)
    torch.testing.assert_close(adv.T + values[:1], ret[:1])


def test_masked_losses_ignore_padding():
    new = torch.tensor([[0.1, -0.5, 3.0]], requires_grad=True)
    old = torch.tensor([[0.0, -0.4, -7.0]])
    adv = torch.tensor([[1.0, -1.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, m = clipped_surrogate_loss(new, old, adv, 0.2, mask)
    ref, _ = clipped_surrogate_loss(new[:, :2], old[:, :2], adv[:, :2], 0.2)
    torch.testing.assert_close(loss, ref)
    loss.backward()
    assert new.grad[0, 2] == 0
    v = torch.tensor([[1.0, 2.0, 50.0]])
    vl, _ = value_loss(v, v * 0, torch.tensor([[0.0, 0.0, 0.0]]), None, mask)
    assert vl.item() == pytest.approx(0.5 * (1 + 4) / 2)


# --- the trainer ----------------------------------------------------------------------------


def test_first_minibatch_ratio_is_exactly_one(tiny_lm):
    """Dropout off and the same temperature: recomputed log-probs equal the rollout's."""
    model, tok = tiny_lm
    policy = PolicyWithValueHead(copy.deepcopy(model))
    ro = collect_rollout(policy.lm, model, tok, _prompts(), lambda p, c: torch.zeros(len(c)),
                         max_new_tokens=5, temperature=0.7, seed=1)  # fmt: skip
    logp, values, _ = policy(ro.batch, 0.7)
    torch.testing.assert_close(logp * ro.mask, ro.logp)
    assert (values == 0).all()  # the value head starts at zero


def test_policy_must_not_share_weights_with_ref(tiny_lm):
    model, tok = tiny_lm
    with pytest.raises(ValueError, match="copy"):
        train_lm_ppo(PolicyWithValueHead(model), tok, _prompts(),
                     LMPPOConfig(batch_size=4, minibatch_size=2), ref=model,
                     reward_fn=lambda p, c: torch.zeros(len(c)))  # fmt: skip


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="minibatch_size"):
        LMPPOConfig(batch_size=10, minibatch_size=4)
    with pytest.raises(ValueError, match="kl_estimator"):
        LMPPOConfig(kl_estimator="k2")


def test_ppo_pushes_a_tiny_model_toward_the_reward(tiny_lm):
    """Reward = number of "great" tokens: a few iterations raise it, with beta > 0."""
    model, tok = tiny_lm
    policy = PolicyWithValueHead(copy.deepcopy(model))

    def reward(prompts, completions):
        return torch.tensor([float(c.split().count("great")) for c in completions])

    cfg = LMPPOConfig(iterations=12, batch_size=32, minibatch_size=8, lr=1e-2, max_new_tokens=6,
                      beta=0.01, missing_eos_penalty=None, seed=0)  # fmt: skip
    h = train_lm_ppo(
        policy, tok, _prompts() * 8, cfg, ref=model, reward_fn=reward, show_progress=False
    )
    assert len(h.score) == 12 and h.kl[0] == pytest.approx(0.0, abs=1e-5)
    assert sum(h.score[-3:]) / 3 > sum(h.score[:3]) / 3 + 1.0, h.score
    assert h.kl[-1] > 0.1


@pytest.mark.slow
def test_ppo_raises_the_true_reward_of_the_review_model():
    """Lesson 05's claim in small: PPO on the true (VADER) reward at lesson 05's settings."""
    from rlhf_lessons.course.device import torch_threads
    from rlhf_lessons.review_world.evaluation import evaluate_policy
    from rlhf_lessons.review_world.splits import train_prompts, validation_prompts
    from rlhf_lessons.review_world.tiny_lm import load_sft_model
    from rlhf_lessons.review_world.true_reward import reward_of

    with torch_threads(1):
        ref, tok = load_sft_model(show_progress=False)
        ev = validation_prompts()[:32]
        sft = evaluate_policy(ref, ref, tok, ev, n_samples=4, max_new_tokens=16)
        policy = PolicyWithValueHead(copy.deepcopy(ref))
        config = LMPPOConfig(iterations=30, batch_size=32, minibatch_size=16, epochs=2, beta=0.1)
        train_lm_ppo(policy, tok, train_prompts(256, seed=0), config, ref=ref,
                     reward_fn=reward_of, show_progress=False)  # fmt: skip
        after = evaluate_policy(policy.lm, ref, tok, ev, n_samples=4, max_new_tokens=16)
    assert after["reward"] > sft["reward"] + 0.2, (sft["reward"], after["reward"])
    assert after["kl"] < 10.0
