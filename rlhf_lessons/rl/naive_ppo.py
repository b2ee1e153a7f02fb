"""A naive "PPO" loop, as it circulates in tutorials, and why it does not learn (lesson 02,
first section).

The loop collects one episode, uses its normalised discounted returns as advantages, and runs
a few epochs of the clipped objective. Its update, however, computes the new log-probability
of a *freshly sampled* action at each state instead of the action that was actually taken:

    rho_t = pi_theta(a'_t | s_t) / pi_old(a_t | s_t),   a'_t ~ pi_theta(. | s_t)   (the bug)

The advantage A_t says how good the stored action a_t was; it carries no information about
a'_t. In expectation over a'_t, ``grad log pi(a'_t|s_t) * A_t`` is zero (the score function has
mean zero), so the update is noise and the policy random-walks: episodes stay about as long as
a random CartPole policy's. Using the stored action restores the policy gradient.

The loop also lacks a value function (the per-episode normalised return is the only baseline)
and updates from a single episode; :mod:`rlhf_lessons.rl.ppo` fixes those as well. It is kept
as simple as the tutorials write it: one environment, one episode at a time, one seed per run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import gymnasium as gym
import numpy as np
import torch
from torch.distributions import Categorical

from rlhf_lessons.course.device import torch_threads
from rlhf_lessons.course.progress import progress
from rlhf_lessons.course.seeding import seed_everything
from rlhf_lessons.rl.advantages import normalize, reward_to_go
from rlhf_lessons.rl.cartpole import ENV_ID, check_cartpole_args
from rlhf_lessons.rl.ppo import clipped_surrogate_loss
from rlhf_lessons.rl.reinforce import PolicyNet
from rlhf_lessons.training import History, Stopwatch


@dataclass
class NaivePPOConfig:
    """Settings of :func:`train_naive_ppo` (the tutorial loop's)."""

    episodes: int = 200
    resample_actions: bool = True  # the bug; False: the log-prob of the stored action
    lr: float = 1e-2
    clip_eps: float = 0.2
    epochs: int = 4  # passes of the clipped objective over each episode
    gamma: float = 0.99
    hidden: int = 128
    threads: int | None = 1
    seed: int = 0


def train_naive_ppo(
    policy: PolicyNet | None = None,
    tokenizer: None = None,
    data: str = ENV_ID,
    config: NaivePPOConfig | None = None,
    *,
    show_progress: bool = True,
) -> History:
    """Run the naive loop for ``config.episodes`` episodes; one row per episode
    (``episode_length``, the return, and ``seconds``).

    ``resample_actions=True`` reproduces the bug; ``False`` evaluates the stored actions (the
    only change), which is enough to make the loop learn. ``policy=None``: a fresh
    :class:`~rlhf_lessons.rl.reinforce.PolicyNet` (returned as ``history.policy``).
    """
    cfg = config or NaivePPOConfig()
    check_cartpole_args(tokenizer, data)
    seed_everything(cfg.seed)
    history, watch = History("naive_ppo", asdict(cfg)), Stopwatch()
    with torch_threads(cfg.threads):
        policy = policy if policy is not None else PolicyNet(hidden=cfg.hidden)
        env = gym.make(ENV_ID)
        opt = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
        obs, _ = env.reset(seed=cfg.seed)
        label = "naive (resampled actions)" if cfg.resample_actions else "stored actions"
        for _ in progress(range(cfg.episodes), desc=label, unit="ep", disable=not show_progress):
            with watch:
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

                s = torch.as_tensor(np.stack(states), dtype=torch.float32)
                a = torch.as_tensor(actions)
                adv = normalize(reward_to_go(torch.tensor(rewards), cfg.gamma))
                with torch.no_grad():
                    old_logp = Categorical(logits=policy(s)).log_prob(a)
                for _ in range(cfg.epochs):
                    dist = Categorical(logits=policy(s))
                    if cfg.resample_actions:
                        new_logp = dist.log_prob(dist.sample())  # the bug: not the actions taken
                    else:
                        new_logp = dist.log_prob(a)
                    loss, _ = clipped_surrogate_loss(new_logp, old_logp, adv, cfg.clip_eps)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            history.log(seconds=watch.seconds, episode_length=len(rewards))
        env.close()
    history.policy = policy
    return history
