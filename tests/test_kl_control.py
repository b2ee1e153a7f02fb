import pytest
import torch

from rlhf_lessons.alignment.kl_control import (
    AdaptiveKLController,
    FixedKLController,
    shape_rewards,
    token_kl,
)
from rlhf_lessons.rl.advantages import grpo_advantages, masked_whiten, rloo_advantages


def test_rloo_sums_to_zero_and_is_leave_one_out():
    # Checkable fact 6: advantages sum to 0 in a group and equal k/(k-1) (r_i - mean r).
    r = torch.tensor([[1.0, 2.0, 6.0], [0.0, 0.0, 3.0]])
    a = rloo_advantages(r)
    torch.testing.assert_close(a.sum(1), torch.zeros(2))
    # leave-one-out by hand: r_0 - mean(r_1, r_2) = 1 - 4 = -3
    assert a[0, 0].item() == pytest.approx(-3.0)
    torch.testing.assert_close(a, 1.5 * (r - r.mean(1, keepdim=True)))


def test_grpo_mean_zero_std_one_and_equal_rewards_give_zero():
    torch.manual_seed(0)
    a = grpo_advantages(torch.randn(4, 8) * 3 + 1)
    torch.testing.assert_close(a.mean(1), torch.zeros(4), atol=1e-6, rtol=0)
    torch.testing.assert_close(a.std(1), torch.ones(4), atol=1e-3, rtol=0)
    assert torch.equal(grpo_advantages(torch.full((2, 4), 0.7)), torch.zeros(2, 4))
    assert torch.equal(rloo_advantages(torch.full((2, 4), 0.7)), torch.zeros(2, 4))


@pytest.mark.parametrize("fn", [rloo_advantages, grpo_advantages])
def test_group_advantages_reject_bad_input(fn):
    with pytest.raises(ValueError, match="k >= 2|G >= 2"):
        fn(torch.zeros(3, 1))
    with pytest.raises(ValueError, match="NaN"):
        fn(torch.tensor([[1.0, float("nan")]]))


def test_masked_whiten_ignores_padding():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 4.0, -50.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    w = masked_whiten(x, mask)
    kept = w[mask.bool()]
    assert kept.mean().abs() < 1e-6 and kept.var(unbiased=False).item() == pytest.approx(
        1.0, abs=1e-4
    )
    assert (w[~mask.bool()] == 0).all()


def test_token_kl_estimators():
    logp = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-1.5, -1.0]])
    torch.testing.assert_close(token_kl(logp, ref, "k1"), torch.tensor([[0.5, -1.0]]))
    k3 = token_kl(logp, ref, "k3")
    assert (k3 >= 0).all()
    assert token_kl(ref, ref, "k3").abs().max() == 0
    with pytest.raises(ValueError, match="estimator"):
        token_kl(logp, ref, "k2")


def test_shape_rewards_puts_the_score_on_the_last_completion_token():
    logp = torch.tensor([[0.0, -1.0, -1.0, -1.0], [0.0, -1.0, -2.0, 0.0]])
    ref = torch.tensor([[0.0, -1.5, -1.5, -1.5], [0.0, -1.0, -1.0, 0.0]])
    mask = torch.tensor([[0, 1, 1, 1], [0, 1, 1, 0]])
    rewards, m = shape_rewards(torch.tensor([2.0, -1.0]), logp, ref, mask, beta=0.1)
    # row 0: k1 = 0.5 per token -> -0.05 each, +2 at t=3; row 1: k1 = [0, -1] -> [0, +0.1], -1 at t=2
    torch.testing.assert_close(
        rewards, torch.tensor([[0.0, -0.05, -0.05, 1.95], [0.0, 0.0, -0.9, 0.0]])
    )
    assert m["kl"] == pytest.approx((1.5 + -1.0) / 2)
    assert m["reward"] == pytest.approx(((2 - 0.15) + (-1 + 0.1)) / 2)
    with pytest.raises(ValueError, match="NaN"):
        shape_rewards(torch.tensor([float("nan"), 0.0]), logp, ref, mask, 0.1)
    with pytest.raises(ValueError, match="empty completion"):
        shape_rewards(torch.zeros(2), logp, ref, torch.zeros_like(mask), 0.1)


def test_beta_zero_rewards_are_just_the_score():
    logp, ref = torch.randn(2, 5), torch.randn(2, 5)
    mask = torch.ones(2, 5)
    rewards, _ = shape_rewards(torch.tensor([1.0, 2.0]), logp, ref, mask, beta=0.0)
    assert rewards.sum().item() == pytest.approx(3.0)


def test_adaptive_kl_controller():
    # Checkable fact 8: KL at the target leaves beta unchanged; one update changes it by at most
    # a factor 1 +- 0.2 * n_steps / horizon (1 +- 0.00256 for batch 128, horizon 10k).
    c = AdaptiveKLController(0.2, target=6.0, horizon=10_000)
    assert c.update(6.0, 128) == pytest.approx(0.2)
    assert c.update(1000.0, 128) == pytest.approx(0.2 * 1.00256)
    c = AdaptiveKLController(0.2, target=6.0, horizon=10_000)
    assert c.update(0.0, 128) == pytest.approx(0.2 * (1 - 0.00256))
    assert FixedKLController(0.05).update(100.0, 128) == 0.05
    with pytest.raises(ValueError):
        AdaptiveKLController(0.2, target=0.0)
