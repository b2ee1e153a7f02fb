"""CartPoles is gymnasium's CartPole-v1, seed by seed: same physics, rules, starts and
evaluation; each seed's episodes independent of its neighbours."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from rlhf_lessons.rl.cartpole import (
    MAX_STEPS,
    CartPoleLog,
    CartPoles,
    check_cartpole_args,
    evaluate,
    first_solved,
    physics_step,
    start_state,
)
from rlhf_lessons.rl.ppo import PPOConfig


def _gym_episode(seed: int, actions: np.ndarray):
    """Play gymnasium's CartPole-v1 from reset(seed) with the given actions until it ends."""
    env = gym.make("CartPole-v1")
    obs, _ = env.reset(seed=seed)
    trace = [obs]
    for a in actions:
        obs, r, terminated, truncated, _ = env.step(int(a))
        trace.append(obs)
        if terminated or truncated:
            break
    env.close()
    return np.stack(trace), terminated, truncated


def test_start_state_is_gymnasiums_reset():
    for seed in (0, 1, 12345):
        obs, _ = gym.make("CartPole-v1").reset(seed=seed)
        np.testing.assert_array_equal(start_state(seed).astype(np.float32), obs)


def test_physics_and_termination_match_gymnasium_step_for_step():
    rng = np.random.default_rng(0)
    for seed in range(20):
        actions = rng.integers(0, 2, size=MAX_STEPS)
        expected, terminated, truncated = _gym_episode(seed, actions)
        envs = CartPoles([np.random.default_rng(0)], 1, autoreset=False)
        obs = envs.reset(start_state(seed)[None, None])
        trace, t_flags = [obs[0, 0]], None
        for a in actions:
            obs, reward, term, trunc, _ = envs.step(np.array([[a]]))
            trace.append(obs[0, 0])
            assert reward[0, 0] == 1.0
            if term[0, 0] or trunc[0, 0]:
                t_flags = (bool(term[0, 0]), bool(trunc[0, 0]))
                break
        np.testing.assert_array_equal(np.stack(trace), expected)
        assert t_flags == (terminated, truncated)


def test_physics_step_is_vectorised_over_any_shape():
    state = np.random.default_rng(1).uniform(-0.2, 0.2, size=(4, 3, 5))
    action = np.random.default_rng(2).integers(0, 2, size=(3, 5))
    batched = physics_step(state, action)
    for i in range(3):
        for j in range(5):
            np.testing.assert_array_equal(
                batched[:, i, j], physics_step(state[:, i, j], action[i, j])
            )


def test_truncation_at_the_time_limit_is_not_a_termination():
    envs = CartPoles([np.random.default_rng(0)], 2)
    envs.reset()
    envs.steps[:] = MAX_STEPS - 1
    obs, reward, terminated, truncated, final_obs = envs.step(np.array([[0, 1]]))
    assert truncated.all() and not terminated.any()
    # same-step autoreset: a fresh start in obs, the last state of the episode in final_obs
    assert (np.abs(obs) <= 0.05).all() and not np.array_equal(obs, final_obs)
    assert (envs.steps == 0).all()


def test_hold_mode_freezes_ended_episodes():
    envs = CartPoles([np.random.default_rng(0)], 3, autoreset=False)
    envs.reset()
    actions = np.zeros((1, 3), dtype=int)  # always left: falls within ~10 steps
    total = np.zeros((1, 3))
    while envs.running.any():
        obs, reward, terminated, truncated, _ = envs.step(actions)
        total += reward
    frozen = obs.copy()
    obs, reward, terminated, truncated, _ = envs.step(actions)
    np.testing.assert_array_equal(obs, frozen)
    assert reward.sum() == 0 and not terminated.any() and not truncated.any()
    assert (total >= 8).all() and (total < 20).all()


def test_each_seed_draws_its_own_starts():
    alone = CartPoles([np.random.default_rng(7)], 4)
    together = CartPoles([np.random.default_rng(3), np.random.default_rng(7)], 4)
    np.testing.assert_array_equal(alone.reset()[0], together.reset()[1])
    actions = np.zeros((2, 4), dtype=int)
    for _ in range(40):  # several autoresets
        a, *_ = alone.step(actions[:1])
        b, *_ = together.step(actions)
        np.testing.assert_array_equal(a[0], b[1])


def test_evaluate_matches_gymnasium_and_batches_policies():
    def act(obs):  # a deterministic policy that balances for a while
        return (obs[..., 2] + 0.5 * obs[..., 3] > 0).astype(int)

    ours = evaluate(act, episodes=4, seed=50)
    ref = []
    for j in range(4):
        env = gym.make("CartPole-v1")
        obs, _ = env.reset(seed=50 + j)
        total, done = 0.0, False
        while not done:
            obs, r, terminated, truncated, _ = env.step(int(act(obs)))
            total, done = total + r, terminated or truncated
        ref.append(total)
    np.testing.assert_array_equal(ours, ref)
    always_left = evaluate(lambda obs: np.zeros(obs.shape[:-1], dtype=int), episodes=3)
    assert always_left.shape == (3,) and (always_left < 20).all()
    both = evaluate(lambda obs: np.stack([act(obs[0]), np.zeros(4, int)]), 4, 50, batch=2)
    assert both.shape == (2, 4)
    np.testing.assert_array_equal(both[0], ref)


def test_first_solved_reads_evaluations():
    evals = [
        {"env_steps": 10, "seconds": 1.0, "greedy_return": 100.0},
        {"env_steps": 20, "seconds": 2.0, "greedy_return": 480.0},
        {"env_steps": 30, "seconds": 3.0, "greedy_return": 500.0},
    ]
    assert first_solved(evals) == (20, 2.0)
    assert first_solved(evals[:1]) is None


def test_log_rows_episodes_and_evaluations():
    log = CartPoleLog("ppo", [4, 5], PPOConfig(), num_envs=2)
    log.steps(np.ones((2, 2)), np.array([[False, True], [False, False]]))
    log.steps(np.ones((2, 2)), np.array([[True, False], [False, False]]))
    log.log(0.5, approx_kl=torch.tensor([0.1, 0.2]), lr=1e-3)
    first, second = log.histories
    assert first.config["seed"] == 4 and second.config["seed"] == 5
    assert first.info["episode_returns"] == [1.0, 2.0]
    assert first.info["episode_end_steps"] == [2, 4]
    assert first.info["episode_end_seconds"] == [0.5, 0.5]
    assert first.episode_return == [1.5] and np.isnan(second.episode_return[0])
    assert second.env_steps == [4] and second.approx_kl == [pytest.approx(0.2)]
    frame = first.to_frame()
    assert {"seconds", "env_steps", "episodes", "episode_return", "approx_kl", "lr"} <= set(frame)


def test_trainers_take_no_tokenizer_and_the_environment_as_data():
    check_cartpole_args(None, "CartPole-v1")
    with pytest.raises(ValueError, match="tokenizer=None"):
        check_cartpole_args(object(), "CartPole-v1")
    with pytest.raises(ValueError, match="CartPole-v1"):
        check_cartpole_args(None, "MountainCar-v0")
