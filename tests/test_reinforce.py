import numpy as np
import pytest
import torch

from rlhf_lessons.rl.reinforce import (
    PolicyNet,
    ReinforceConfig,
    gradient_variance,
    reinforce_loss,
    train_reinforce,
    train_reinforce_seeds,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_loss_hand_computed_and_advantages_are_constants():
    logp = torch.tensor([-0.5, -1.0], requires_grad=True)
    adv = torch.tensor([2.0, -1.0], requires_grad=True)
    loss, metrics = reinforce_loss(logp, adv)
    assert loss.item() == pytest.approx(-(-0.5 * 2.0 + -1.0 * -1.0) / 2)
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([-1.0, 0.5]))
    assert adv.grad is None  # stop-gradient on the weights
    assert set(metrics) == {"loss", "adv_mean"}


def test_weights_make_the_loss_a_sum_of_per_seed_means():
    logp = torch.tensor([[-0.5, -1.0, -2.0], [-0.1, -0.2, -0.3]])
    adv = torch.tensor([[1.0, 2.0, 0.0], [3.0, -1.0, 2.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])  # seed 0 has two real steps
    weights = mask / mask.sum(-1, keepdim=True)
    loss, _ = reinforce_loss(logp, adv, weights)
    expected = reinforce_loss(logp[0, :2], adv[0, :2])[0] + reinforce_loss(logp[1], adv[1])[0]
    torch.testing.assert_close(loss, expected)


def test_loss_shape_mismatch():
    with pytest.raises(ValueError, match="one shape"):
        reinforce_loss(torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match="one shape"):
        reinforce_loss(torch.zeros(3), torch.zeros(3), torch.zeros(2))


def test_config_validation():
    with pytest.raises(ValueError, match="baseline"):
        ReinforceConfig(baseline="mean")
    assert ReinforceConfig(baseline="normalize").bootstrap_truncated is False
    with pytest.raises(ValueError, match="multiple of batch_size"):
        ReinforceConfig(episodes=10, batch_size=4)


def test_a_baseline_keeps_the_policy_gradient_unbiased():
    """E_a[grad log pi(a|s) * b(s)] = b(s) grad sum_a pi(a|s) = 0, exactly (all actions)."""
    torch.manual_seed(0)
    policy = PolicyNet()
    s = torch.randn(4)
    logp = torch.log_softmax(policy(s), -1)
    total = sum(
        logp[a].exp().detach() * torch.autograd.grad(logp[a] * 7.0, policy.parameters(), retain_graph=True)[0]
        for a in range(2)
    )  # fmt: skip
    torch.testing.assert_close(total, torch.zeros_like(total), atol=1e-6, rtol=0)


def test_same_seed_same_run_and_the_contract():
    cfg = ReinforceConfig(episodes=12, seed=1)
    a = train_reinforce(config=cfg, eval_every=1, show_progress=False)
    b = train_reinforce(config=cfg, eval_every=1, show_progress=False)
    assert a.info["episode_returns"] == b.info["episode_returns"]
    assert len(a.info["episode_returns"]) == 12 and len(a) == 3  # one row per 4 episodes
    assert a.env_steps[-1] == sum(a.info["episode_returns"])  # +1 per step
    assert [e["step"] for e in a.evaluations] == [0, 1, 2, 3]
    assert isinstance(a.policy, PolicyNet) and "grad_norm" in a.to_frame()
    for baseline in ("none", "normalize"):
        h = train_reinforce(
            config=ReinforceConfig(episodes=4, baseline=baseline), show_progress=False
        )
        assert np.isfinite(h.grad_norm).all()


def test_truncated_episodes_are_bootstrapped(monkeypatch):
    """With a 20-step limit a balanced start survives to truncation: its G_t then includes
    gamma^k * V(s_T), so the critic's target differs from the plain reward-to-go."""
    from rlhf_lessons.rl import cartpole, reinforce

    monkeypatch.setattr(cartpole, "MAX_STEPS", 20)
    seen = []
    real = reinforce.reward_to_go

    def spy(rewards, gamma, bootstrap=0.0):
        seen.append(rewards.max().item())
        return real(rewards, gamma, bootstrap)

    monkeypatch.setattr(reinforce, "reward_to_go", spy)
    train_reinforce_seeds([0], ReinforceConfig(episodes=16), show_progress=False)
    assert any(abs(m - 1.0) > 1e-6 for m in seen)  # r_{T-1} + gamma * V(s_T) at a truncation


def test_reward_to_go_and_baseline_reduce_gradient_variance():
    torch.manual_seed(0)
    v = gradient_variance(PolicyNet(), episodes=150, seed=0)
    var = {k: x["variance"] for k, x in v.items()}
    assert var["total return"] > var["reward-to-go"] > var["reward-to-go - baseline"]
    assert all(x["cosine"] > 0.9 for x in v.values())  # same direction in expectation


@pytest.mark.slow
def test_reinforce_learns_cartpole():
    h = train_reinforce(config=ReinforceConfig(episodes=400), show_progress=False)
    returns = h.info["episode_returns"]
    assert np.mean(returns[:50]) < 100
    assert np.mean(returns[-100:]) > 300
