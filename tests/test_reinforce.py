import numpy as np
import pytest
import torch

from rlhf_lessons.rl.reinforce import (
    PolicyNet,
    ReinforceConfig,
    gradient_variance,
    reinforce_loss,
    train_reinforce,
)


def test_loss_hand_computed_and_advantages_are_constants():
    logp = torch.tensor([-0.5, -1.0], requires_grad=True)
    adv = torch.tensor([2.0, -1.0], requires_grad=True)
    loss, metrics = reinforce_loss(logp, adv)
    assert loss.item() == pytest.approx(-(-0.5 * 2.0 + -1.0 * -1.0) / 2)
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([-1.0, 0.5]))
    assert adv.grad is None  # stop-gradient on the weights
    assert set(metrics) == {"loss", "adv_mean"}


def test_loss_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        reinforce_loss(torch.zeros(3), torch.zeros(2))


def test_config_validation():
    with pytest.raises(ValueError, match="baseline"):
        ReinforceConfig(baseline="mean")
    assert ReinforceConfig(baseline="normalize").bootstrap_truncated is False


def test_same_seed_same_run():
    cfg = ReinforceConfig(episodes=12)
    a = train_reinforce(cfg, seed=1, show_progress=False)
    b = train_reinforce(cfg, seed=1, show_progress=False)
    assert a.episode_returns == b.episode_returns
    assert len(a.episode_returns) == 12
    assert a.episode_end_steps[-1] == sum(a.episode_returns)  # +1 per step


def test_reward_to_go_and_baseline_reduce_gradient_variance():
    torch.manual_seed(0)
    v = gradient_variance(PolicyNet(), episodes=150, seed=0)
    var = {k: x["variance"] for k, x in v.items()}
    assert var["total return"] > var["reward-to-go"] > var["reward-to-go - baseline"]
    assert all(x["cosine"] > 0.9 for x in v.values())  # same direction in expectation


@pytest.mark.slow
def test_reinforce_learns_cartpole():
    result = train_reinforce(ReinforceConfig(episodes=400), seed=0, show_progress=False)
    assert np.mean(result.episode_returns[:50]) < 100
    assert np.mean(result.episode_returns[-100:]) > 300
