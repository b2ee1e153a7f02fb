import pytest
import torch

from rlhf_lessons.rl.advantages import gae, normalize, reward_to_go


def test_reward_to_go_hand_computed():
    g = reward_to_go(torch.tensor([1.0, 2.0, 3.0]), gamma=0.5)
    # G2 = 3, G1 = 2 + 0.5*3 = 3.5, G0 = 1 + 0.5*3.5 = 2.75
    torch.testing.assert_close(g, torch.tensor([2.75, 3.5, 3.0]))


def test_reward_to_go_bootstrap_is_discounted_into_every_step():
    g = reward_to_go(torch.tensor([0.0, 0.0]), gamma=0.9, bootstrap=10.0)
    torch.testing.assert_close(g, torch.tensor([8.1, 9.0]))


def test_reward_to_go_of_a_padded_batch_is_each_episodes():
    rewards = torch.tensor([[1.0, 2.0, 3.0], [1.0, 1.0, 0.0]])  # the second ends after 2 steps
    g = reward_to_go(rewards, 0.5, bootstrap=torch.tensor([4.0, 0.0]))
    torch.testing.assert_close(g[0], reward_to_go(rewards[0], 0.5, bootstrap=4.0))
    torch.testing.assert_close(g[1, :2], reward_to_go(rewards[1, :2], 0.5))
    # a padded episode's bootstrap goes into its last real reward (gamma * V(s_T))
    folded = torch.tensor([1.0, 1.0 + 0.5 * 4.0, 0.0])
    torch.testing.assert_close(
        reward_to_go(folded, 0.5)[:2], reward_to_go(rewards[1, :2], 0.5, bootstrap=4.0)
    )


def test_reward_to_go_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\(\.\.\., T\)"):
        reward_to_go(torch.tensor(1.0), 0.9)
    with pytest.raises(ValueError, match="gamma"):
        reward_to_go(torch.ones(2), 1.5)


def _rollout():
    torch.manual_seed(0)
    rewards = torch.rand(6, 3)
    values = torch.rand(6, 3)
    dones = torch.zeros(6, 3)
    dones[2, 0] = dones[4, 1] = 1.0
    last = torch.rand(3)
    return rewards, values, dones, last


def test_gae_lambda_zero_is_td_residual():
    rewards, values, dones, last = _rollout()
    adv, ret = gae(rewards, values, dones, last, gamma=0.9, gae_lambda=0.0)
    next_values = torch.cat([values[1:], last[None]])
    delta = rewards + 0.9 * next_values * (1 - dones) - values
    torch.testing.assert_close(adv, delta)
    torch.testing.assert_close(ret, adv + values)


def test_gae_lambda_one_is_monte_carlo_return_minus_value():
    rewards, values, dones, last = _rollout()
    adv, _ = gae(rewards, values, dones, last, gamma=0.9, gae_lambda=1.0)
    for n in range(3):
        # Monte-Carlo return within each episode segment, bootstrapped with `last` at the end
        running = last[n].item()
        for t in range(5, -1, -1):
            if dones[t, n]:
                running = 0.0
            running = rewards[t, n].item() + 0.9 * running
            assert adv[t, n].item() == pytest.approx(running - values[t, n].item(), abs=1e-5)


def test_gae_hand_computed_three_steps():
    rewards = torch.tensor([[1.0], [1.0], [1.0]])
    values = torch.tensor([[0.5], [0.4], [0.3]])
    dones = torch.tensor([[0.0], [0.0], [1.0]])
    adv, _ = gae(rewards, values, dones, torch.tensor([9.9]), gamma=0.9, gae_lambda=0.5)
    d = [1 + 0.9 * 0.4 - 0.5, 1 + 0.9 * 0.3 - 0.4, 1 - 0.3]
    a2 = d[2]
    a1 = d[1] + 0.45 * a2
    a0 = d[0] + 0.45 * a1
    torch.testing.assert_close(adv.squeeze(), torch.tensor([a0, a1, a2]))


def test_gae_shape_errors_name_the_argument():
    with pytest.raises(ValueError, match="share shape"):
        gae(torch.zeros(3, 2), torch.zeros(3, 1), torch.zeros(3, 2), torch.zeros(2), 0.9, 0.9)
    with pytest.raises(ValueError, match="last_value"):
        gae(torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(3), 0.9, 0.9)


def test_normalize():
    x = normalize(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert x.mean().abs() < 1e-6
    assert x.std().item() == pytest.approx(1.0, abs=1e-6)
    assert normalize(torch.tensor([5.0])).item() == 0.0


def test_normalize_per_row_and_over_a_mask():
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0], [10.0, 30.0, 0.0, 0.0]])
    rows = normalize(x, dim=-1)
    torch.testing.assert_close(rows[0], normalize(x[0]))
    torch.testing.assert_close(rows[1], normalize(x[1]))
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]])
    masked = normalize(x, dim=-1, mask=mask)
    torch.testing.assert_close(masked[1, :2], normalize(x[1, :2]))
    assert masked[1, 2:].abs().sum() == 0  # padding stays 0
    torch.testing.assert_close(normalize(x, mask=mask)[mask.bool()], normalize(x[mask.bool()]))
    one = normalize(torch.tensor([[2.0, 5.0]]), dim=-1, mask=torch.tensor([[1.0, 0.0]]))
    torch.testing.assert_close(one, torch.zeros(1, 2))
