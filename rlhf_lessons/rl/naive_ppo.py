"""A naive "PPO" loop, as it circulates in tutorials, and why it does not learn (lesson 02,
first section).

The loop collects one episode, uses its normalised discounted returns as advantages, and runs
a few epochs of the clipped objective. Its update, however, computes the new log-probability
of a *freshly sampled* action at each state instead of the action that was actually taken:

    rho_t = pi_theta(a'_t | s_t) / pi_old(a_t | s_t),   a'_t ~ pi_theta(. | s_t)   (the bug)

The advantage A_t says how good the stored action a_t was; it carries no information about
a'_t. In expectation over a'_t, ``grad log pi(a'_t|s_t) * A_t`` is zero (the score function has
mean zero), so the update is noise and the policy random-walks: episodes stay near 20 steps,
the length of a random CartPole policy. Using the stored action restores the policy gradient.

The loop also lacks a value function (the per-episode normalised return is the only baseline)
and updates from a single episode; :mod:`rlhf_lessons.rl.ppo` fixes those as well.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from torch.distributions import Categorical

from rlhf_lessons.course.device import torch_threads
from rlhf_lessons.course.progress import progress
from rlhf_lessons.course.seeding import seed_everything
from rlhf_lessons.rl.advantages import normalize, reward_to_go
from rlhf_lessons.rl.cartpole import ENV_ID
from rlhf_lessons.rl.ppo import clipped_surrogate_loss
from rlhf_lessons.rl.reinforce import PolicyNet


def train_naive_ppo(
    episodes: int = 300,
    seed: int = 0,
    resample_actions: bool = True,
    lr: float = 1e-2,
    clip_coef: float = 0.2,
    n_epochs: int = 4,
    gamma: float = 0.99,
    show_progress: bool = True,
) -> list[float]:
    """Run the naive loop for ``episodes`` episodes and return each episode's length.

    ``resample_actions=True`` reproduces the bug; ``False`` evaluates the stored
    actions (the only change), which is enough to make the loop learn.
    """
    seed_everything(seed)
    lengths: list[float] = []
    with torch_threads(1):
        env = gym.make(ENV_ID)
        policy = PolicyNet(hidden=128)
        opt = torch.optim.Adam(policy.parameters(), lr=lr)
        obs, _ = env.reset(seed=seed)
        label = "naive (resampled actions)" if resample_actions else "stored actions"
        for _ in progress(range(episodes), desc=label, unit="ep", disable=not show_progress):
            states, actions, rewards = [], [], []
            done = False
            while not done:
                with torch.no_grad():
                    logits = policy(torch.as_tensor(obs, dtype=torch.float32))
                action = int(Categorical(logits=logits).sample())
                states.append(obs)
                actions.append(action)
                obs, r, terminated, truncated, _ = env.step(action)
                rewards.append(float(r))
                done = terminated or truncated
            obs, _ = env.reset()
            lengths.append(float(len(rewards)))

            s = torch.as_tensor(np.stack(states), dtype=torch.float32)
            a = torch.as_tensor(actions)
            adv = normalize(reward_to_go(torch.tensor(rewards), gamma))
            with torch.no_grad():
                old_logp = Categorical(logits=policy(s)).log_prob(a)
            for _ in range(n_epochs):
                dist = Categorical(logits=policy(s))
                if resample_actions:
                    new_logp = dist.log_prob(dist.sample())  # the bug: not the actions taken
                else:
                    new_logp = dist.log_prob(a)
                loss, _ = clipped_surrogate_loss(new_logp, old_logp, adv, clip_coef)
                opt.zero_grad()
                loss.backward()
                opt.step()
        env.close()
    return lengths
