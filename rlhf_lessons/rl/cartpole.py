"""CartPole-v1: environments, evaluation and the "solved" criterion shared by lessons 01-02.

CartPole gives +1 per step while the pole stays up; an episode ends when it falls (terminated)
or at 500 steps (truncated), so the return is the episode length, at most 500. Gymnasium's
``reward_threshold`` for CartPole-v1 is 475: an agent whose average return reaches it is called
solved.
"""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, SyncVectorEnv

ENV_ID = "CartPole-v1"
SOLVED_RETURN = 475.0  # gym.spec("CartPole-v1").reward_threshold
MAX_RETURN = 500.0

# A policy for evaluation maps a batch of observations (N, 4) to actions (N,).
ActFn = Callable[[np.ndarray], np.ndarray]


def make_env(seed: int | None = None) -> gym.Env:
    """One CartPole-v1 environment; its first ``reset`` uses ``seed``."""
    env = gym.make(ENV_ID)
    env.action_space.seed(seed)
    return env


def make_vec_env(num_envs: int) -> SyncVectorEnv:
    """``num_envs`` CartPoles stepped together.

    Same-step autoreset: when a sub-environment ends, ``step`` returns the first observation of
    its next episode and puts the last observation of the finished one in
    ``info["final_obs"]`` (needed to bootstrap truncated episodes).
    """
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    return SyncVectorEnv(
        [lambda: gym.make(ENV_ID) for _ in range(num_envs)],
        autoreset_mode=AutoresetMode.SAME_STEP,
    )


def evaluate(act: ActFn, episodes: int = 10, seed: int = 10_000) -> np.ndarray:
    """Run ``episodes`` episodes in parallel with ``act`` and return their returns, shape (E,).

    Evaluation uses its own seeds (``seed, seed+1, ...``), separate from training's, so a policy
    is judged on starts it was not trained on. Pass a greedy ``act`` for a greedy evaluation.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    envs = [gym.make(ENV_ID) for _ in range(episodes)]
    obs = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(envs)])
    returns = np.zeros(episodes)
    running = np.ones(episodes, dtype=bool)
    while running.any():
        idx = np.flatnonzero(running)
        actions = np.asarray(act(obs[idx]))
        for j, a in zip(idx, actions, strict=True):
            o, r, terminated, truncated, _ = envs[j].step(int(a))
            returns[j] += r
            obs[j] = o
            if terminated or truncated:
                running[j] = False
    for env in envs:
        env.close()
    return returns


def first_solved(points: list[tuple[int, float, float]]) -> tuple[int, float] | None:
    """The first evaluation point whose mean return reaches :data:`SOLVED_RETURN`.

    ``points`` are ``(env_steps, train_seconds, mean_eval_return)`` in training order.
    Returns ``(env_steps, train_seconds)`` at that point, or None if never solved.
    """
    for steps, seconds, mean_return in points:
        if mean_return >= SOLVED_RETURN:
            return steps, seconds
    return None
