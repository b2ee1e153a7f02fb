"""REINFORCE: the Monte-Carlo policy gradient (Williams 1992), lesson 01.

Objective: J(theta) = E_{tau ~ pi_theta}[ sum_t r_t ]. The log-derivative trick gives

    grad J = E[ sum_t grad log pi_theta(a_t | s_t) * (G_t - b(s_t)) ],

where G_t is the reward-to-go (rewards before t cannot be influenced by a_t, so dropping them
keeps the estimate unbiased and lowers its variance) and b(s_t) is any baseline that does not
depend on the action (also unbiased, lower variance again). The loss whose gradient is minus
that estimate is ``-mean(log pi(a_t|s_t) * stopgrad(G_t - b(s_t)))``.

Reference point: pytorch/examples ``reinforcement_learning/reinforce.py`` (Adam lr 1e-2,
gamma 0.99, one 128-unit hidden layer, returns normalised per episode).

:func:`train_reinforce_seeds` trains several seeds as one batched computation
(:mod:`rlhf_lessons.rl.batched`); :func:`train_reinforce` is the same loop for one seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.distributions import Categorical

from rlhf_lessons.course.device import torch_threads
from rlhf_lessons.course.progress import progress
from rlhf_lessons.rl.advantages import check_same_shape, normalize, reward_to_go
from rlhf_lessons.rl.batched import SeedRandom, clip_grad_norm_per_seed_, stack_seeds
from rlhf_lessons.rl.cartpole import (
    MAX_STEPS,
    CartPoleLog,
    CartPoles,
    one_seed_trainer,
)
from rlhf_lessons.training import EvalFn, History, Stopwatch

BASELINES = ("none", "normalize", "value")


@dataclass
class ReinforceConfig:
    """Settings of :func:`train_reinforce` (defaults: lesson 01's)."""

    episodes: int = 1000  # per seed; a multiple of batch_size
    batch_size: int = 4  # episodes per gradient step, played side by side
    lr: float = 1e-2
    gamma: float = 0.99
    hidden: int = 128
    baseline: str = "value"  # "none" | "normalize" (returns of the batch) | "value" (V(s))
    value_lr: float = 1e-2
    bootstrap_truncated: bool = True  # needs baseline="value": G at a time-limit end = V(s_T)
    max_grad_norm: float | None = 1.0
    eval_episodes: int = 10  # greedy evaluation episodes
    threads: int | None = 1  # one thread: these networks are far too small to split
    seed: int = 0

    def __post_init__(self) -> None:
        if self.baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {BASELINES}, got {self.baseline!r}")
        if self.bootstrap_truncated and self.baseline != "value":
            self.bootstrap_truncated = False  # nothing to bootstrap with
        if self.batch_size < 1 or self.episodes < self.batch_size:
            raise ValueError(
                f"need batch_size >= 1 and episodes >= batch_size, got {self.batch_size}, "
                f"{self.episodes}"
            )
        if self.episodes % self.batch_size:
            raise ValueError(
                f"episodes ({self.episodes}) must be a multiple of batch_size ({self.batch_size})"
            )


class PolicyNet(nn.Module):
    """obs (..., 4) -> action logits (..., 2): one hidden ReLU layer, as in pytorch/examples."""

    def __init__(self, obs_dim: int = 4, n_actions: int = 2, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(obs_dim, hidden), nn.ReLU(), nn.Linear(hidden, n_actions)
        )

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs)

    @torch.no_grad()
    def act_greedy(self, obs: np.ndarray) -> np.ndarray:
        return self(torch.as_tensor(obs, dtype=torch.float32)).argmax(-1).numpy()


class ValueNet(nn.Module):
    """obs (..., 4) -> V(s) (...)."""

    def __init__(self, obs_dim: int = 4, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(obs_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs).squeeze(-1)


def reinforce_loss(
    logp: torch.Tensor, advantages: torch.Tensor, weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """REINFORCE surrogate loss.

    Args:
        logp: (T,) log pi_theta(a_t | s_t) of the actions taken (with gradient); any shape.
        advantages: same shape, G_t - b(s_t); treated as constants.
        weights: same shape, optional: w_t, the weight of step t (default 1/T each: the mean).
            Several seeds' episodes padded into one tensor use w = 1/T_s on seed s's T_s real
            steps and 0 on padding, which makes the loss the sum of the seeds' own losses.

    Returns:
        ``(loss, metrics)`` with loss = -sum_t w_t logp_t stopgrad(A_t), by default
        -mean(logp * stopgrad(A)): its gradient is minus the policy-gradient estimate averaged
        over the T steps.
    """
    check_same_shape(logp=logp, advantages=advantages, weights=weights)
    terms = logp * advantages.detach()
    loss = -(terms.mean() if weights is None else (weights * terms).sum())
    return loss, {"loss": loss.item(), "adv_mean": advantages.mean().item()}


@dataclass
class Episodes:
    """``K`` episodes per seed, played side by side and padded to the longest (``T`` steps).

    ``obs`` (S, K, T, 4), ``actions`` and ``rewards`` (S, K, T), ``mask`` (S, K, T) True on real
    steps, ``final_obs`` (S, K, 4) the state after the last step, ``truncated`` (S, K) True
    where the 500-step limit (not a fall) ended the episode.
    """

    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    mask: torch.Tensor
    final_obs: torch.Tensor
    truncated: torch.Tensor


def play_episodes(
    envs: CartPoles, policy: nn.Module, rand: SeedRandom, log: CartPoleLog | None = None
) -> Episodes:
    """One episode in each of ``envs`` (``autoreset=False``), actions sampled from the
    seed-batched ``policy`` with each seed's own random numbers; one forward pass per step."""
    obs = envs.reset()
    trace, final_obs = [], np.zeros((*envs.shape, 4), dtype=np.float32)
    truncated = np.zeros(envs.shape, dtype=bool)
    # noise for the longest possible episode, so that each seed uses the same random numbers
    # however long the other seeds' episodes last
    noise = rand.gumbel(MAX_STEPS, envs.num_envs, 2)  # (S, 500, K, 2)
    for t in range(MAX_STEPS):
        if not envs.running.any():
            break
        running = envs.running.copy()
        with torch.no_grad():  # sampling needs no graph: the update recomputes log-probs
            log_pi = torch.log_softmax(policy(torch.from_numpy(obs)), dim=-1)
        actions = (log_pi + noise[:, t]).argmax(-1).numpy()  # Gumbel-max: a sample of pi
        next_obs, reward, terminated, trunc, last = envs.step(actions)
        ended = terminated | trunc
        final_obs[ended], truncated[ended] = last[ended], trunc[ended]
        trace.append((obs, actions, reward, running))
        if log is not None:
            log.steps(reward, ended, counted=running)
        obs = next_obs
    obs, actions, rewards, mask = (np.stack(x, axis=2) for x in zip(*trace, strict=True))
    return Episodes(torch.from_numpy(obs), torch.from_numpy(actions),
                    torch.from_numpy(rewards).float(), torch.from_numpy(mask),
                    torch.from_numpy(final_obs), torch.from_numpy(truncated))  # fmt: skip


def train_reinforce_seeds(
    seeds: Sequence[int],
    config: ReinforceConfig | None = None,
    *,
    policy: PolicyNet | None = None,
    eval_fn: EvalFn | None = None,
    eval_every: int = 0,
    show_progress: bool = True,
) -> list[History]:
    """Train one CartPole policy per seed with REINFORCE, all seeds in one batched computation.

    Each update: every seed plays ``batch_size`` episodes (:func:`play_episodes`), computes
    G_t (bootstrapped with V at a time-limit end), subtracts its baseline and takes one clipped
    Adam step on :func:`reinforce_loss`. ``policy``, ``eval_every`` and the Histories (one row
    per update): see :class:`~rlhf_lessons.rl.cartpole.CartPoleLog`.
    """
    cfg = config or ReinforceConfig()
    rand, K = SeedRandom(seeds), cfg.batch_size
    with torch_threads(cfg.threads):
        nets = rand.build(lambda: (PolicyNet(hidden=cfg.hidden), ValueNet(hidden=cfg.hidden)))
        members = [n[0] for n in nets] if policy is None else rand.only(policy)
        pi, critic = stack_seeds(members), stack_seeds([n[1] for n in nets])
        opt = torch.optim.Adam(pi.parameters(), lr=cfg.lr)
        critic_opt = torch.optim.Adam(critic.parameters(), lr=cfg.value_lr)
        envs = CartPoles(rand.numpy, K, autoreset=False)
        log = CartPoleLog("reinforce", rand.seeds, cfg, K, agent=pi, members=members,
                          eval_fn=eval_fn)  # fmt: skip
        watch = Stopwatch()
        updates = cfg.episodes // K
        if eval_every:
            log.evaluate(0.0)
        for _ in progress(range(updates), desc=f"REINFORCE, {len(rand)} seeds", unit="update",
                          disable=not show_progress):  # fmt: skip
            with watch:
                ep = play_episodes(envs, pi, rand, log)
                # G_t per episode; a time-limit end is worth V(s_T) more (folded into r_{T-1})
                rewards = ep.rewards.clone()
                if cfg.bootstrap_truncated:
                    with torch.no_grad():
                        boot = cfg.gamma * critic(ep.final_obs) * ep.truncated
                    last = ep.mask.sum(-1, keepdim=True) - 1
                    rewards.scatter_add_(-1, last, boot.unsqueeze(-1))
                g = reward_to_go(rewards, cfg.gamma).flatten(1)  # (S, K*T)
                obs, actions, mask = ep.obs.flatten(1, 2), ep.actions.flatten(1), ep.mask.flatten(1)
                weights = mask / mask.sum(-1, keepdim=True)  # each seed: the mean of its steps
                if cfg.baseline == "value":
                    v = critic(obs)
                    adv = normalize(g - v.detach(), dim=-1, mask=mask)
                    critic_loss = 0.5 * (weights * (v - g).pow(2)).sum()
                    critic_opt.zero_grad()
                    critic_loss.backward()
                    critic_opt.step()
                else:
                    adv = normalize(g, dim=-1, mask=mask) if cfg.baseline == "normalize" else g
                logp = Categorical(logits=pi(obs)).log_prob(actions)
                loss, _ = reinforce_loss(logp, adv, weights)
                opt.zero_grad()
                loss.backward()
                grad_norm = clip_grad_norm_per_seed_(pi.parameters(), cfg.max_grad_norm or np.inf)
                opt.step()
            log.log(watch.seconds, grad_norm=grad_norm)
            if log.histories[0].due(eval_every, updates):
                log.evaluate(watch.seconds)
        return log.finish(watch.seconds)


train_reinforce = one_seed_trainer(train_reinforce_seeds, ReinforceConfig, "REINFORCE")


WEIGHTINGS = ("total return", "reward-to-go", "reward-to-go - baseline")


def gradient_variance(
    policy: PolicyNet, episodes: int = 200, gamma: float = 0.99, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Measure the variance of single-episode policy-gradient estimates under three weightings.

    For each of ``episodes`` episodes played by ``policy`` (start states from ``seed``) we
    compute the gradient of ``sum_t log pi(a_t|s_t) * w_t`` with

    - ``total return``: w_t = G_0 (every action credited with the whole episode's return),
    - ``reward-to-go``: w_t = G_t,
    - ``reward-to-go - baseline``: w_t = G_t - b_t, with b_t the mean reward-to-go at step t of
      the *other* episodes (leave-one-out, so it does not depend on this episode's actions).

    All three have the same expectation (the policy gradient); they differ in variance.
    Returns, per weighting, ``variance`` (sum over parameters of the across-episode variance),
    ``mean_norm`` (norm of the mean gradient) and ``cosine`` (between this weighting's mean
    gradient and the reward-to-go one).
    """
    rand = SeedRandom([seed])
    envs = CartPoles(rand.numpy, episodes, autoreset=False)
    ep = play_episodes(envs, stack_seeds([policy]), rand)
    mask, rewards = ep.mask[0], ep.rewards[0]  # (E, T)
    rtg = reward_to_go(rewards, gamma)  # padding adds nothing: G_t is exact on real steps
    counts = mask.sum(0)  # episodes still running at step t
    others = (counts - mask.float()).clamp(min=1)
    baseline = (rtg.sum(0) - rtg) / others  # leave-one-out mean of the other episodes' G_t

    weights = {
        "total return": rtg[:, :1].expand_as(rtg),
        "reward-to-go": rtg,
        "reward-to-go - baseline": rtg - baseline,
    }
    # one copy of the policy per episode (a seed-batched stack): copy i's gradient is episode
    # i's, so one backward pass per weighting gives all the single-episode estimates
    copies = stack_seeds([policy] * episodes)
    params = list(copies.parameters())
    logp = torch.log_softmax(copies(ep.obs[0]), -1)  # (E, T, 2)
    logp = logp.gather(-1, ep.actions[0].unsqueeze(-1)).squeeze(-1) * mask  # 0 after the end
    grads = {}
    for name, w in weights.items():
        g = torch.autograd.grad((logp * w).sum(), params, retain_graph=True)
        grads[name] = torch.cat([x.reshape(episodes, -1) for x in g], dim=1)  # (E, parameters)

    ref = grads["reward-to-go"].mean(0)
    return {
        name: {
            "variance": g.var(0).sum().item(),
            "mean_norm": g.mean(0).norm().item(),
            "cosine": torch.nn.functional.cosine_similarity(g.mean(0), ref, dim=0).item(),
        }
        for name, g in grads.items()
    }
