"""REINFORCE: the Monte-Carlo policy gradient (Williams 1992), lesson 01.

Objective: J(theta) = E_{tau ~ pi_theta}[ sum_t r_t ]. The log-derivative trick gives

    grad J = E[ sum_t grad log pi_theta(a_t | s_t) * (G_t - b(s_t)) ],

where G_t is the reward-to-go (rewards before t cannot be influenced by a_t, so dropping them
keeps the estimate unbiased and lowers its variance) and b(s_t) is any baseline that does not
depend on the action (also unbiased, lower variance again). The loss whose gradient is minus
that estimate is ``-mean(log pi(a_t|s_t) * stopgrad(G_t - b(s_t)))``.

Reference point: pytorch/examples ``reinforcement_learning/reinforce.py`` (Adam lr 1e-2,
gamma 0.99, one 128-unit hidden layer, returns normalised per episode).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.distributions import Categorical

from rlhf_lessons.course.device import torch_threads
from rlhf_lessons.course.progress import progress
from rlhf_lessons.course.seeding import seed_everything
from rlhf_lessons.rl.advantages import normalize, reward_to_go
from rlhf_lessons.rl.cartpole import ENV_ID, evaluate

BASELINES = ("none", "normalize", "value")


@dataclass
class ReinforceConfig:
    """Settings of :func:`train_reinforce` (defaults: lesson 01's)."""

    episodes: int = 1000
    episodes_per_update: int = 4  # episodes collected (in lockstep) per gradient step
    lr: float = 1e-2
    gamma: float = 0.99
    hidden: int = 128
    baseline: str = "value"  # "none" | "normalize" (returns of the batch) | "value" (V(s))
    value_lr: float = 1e-2
    bootstrap_truncated: bool = True  # needs baseline="value": G at a time-limit end = V(s_T)
    max_grad_norm: float | None = 1.0
    eval_every: int = 10_000  # env steps between greedy evaluations (0: none)
    eval_episodes: int = 10

    def __post_init__(self) -> None:
        if self.baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {BASELINES}, got {self.baseline!r}")
        if self.bootstrap_truncated and self.baseline != "value":
            self.bootstrap_truncated = False  # nothing to bootstrap with
        if self.episodes < 1 or self.episodes_per_update < 1:
            raise ValueError("episodes and episodes_per_update must be >= 1")


class PolicyNet(nn.Module):
    """obs (B, 4) -> action logits (B, 2): one hidden ReLU layer, as in pytorch/examples."""

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
    """obs (B, 4) -> V(s) (B,)."""

    def __init__(self, obs_dim: int = 4, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(obs_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs).squeeze(-1)


def reinforce_loss(
    logp: torch.Tensor, advantages: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]:
    """REINFORCE surrogate loss.

    Args:
        logp: (T,) log pi_theta(a_t | s_t) of the actions taken (with gradient).
        advantages: (T,) G_t - b(s_t); treated as constants.

    Returns:
        ``(loss, metrics)`` with loss = -mean(logp * stopgrad(advantages)); its gradient is minus
        the policy-gradient estimate averaged over the T steps.
    """
    if logp.shape != advantages.shape:
        raise ValueError(
            f"logp and advantages must have the same shape, got {tuple(logp.shape)} "
            f"and {tuple(advantages.shape)}"
        )
    loss = -(logp * advantages.detach()).mean()
    return loss, {"loss": loss.item(), "adv_mean": advantages.mean().item()}


@dataclass
class Episode:
    obs: list[np.ndarray] = field(default_factory=list)
    actions: list[int] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    final_obs: np.ndarray | None = None
    truncated: bool = False


def collect_episodes(
    envs: list[gym.Env], obs: list[np.ndarray], policy: PolicyNet
) -> list[Episode]:
    """Play one episode in each env (already reset, first observations ``obs``) in lockstep,
    sampling actions from ``policy``; one batched forward pass per time step."""
    episodes = [Episode() for _ in envs]
    current = [np.asarray(o, dtype=np.float32) for o in obs]
    running = list(range(len(envs)))
    while running:
        batch = torch.as_tensor(np.stack([current[i] for i in running]))
        with torch.no_grad():  # sampling needs no graph: the update recomputes log-probs
            probs = torch.softmax(policy(batch), dim=-1)
            actions = torch.multinomial(probs, 1).squeeze(-1).numpy()
        still = []
        for i, a in zip(running, actions, strict=True):
            ep = episodes[i]
            ep.obs.append(current[i])
            ep.actions.append(int(a))
            o, r, terminated, truncated, _ = envs[i].step(int(a))
            ep.rewards.append(float(r))
            current[i] = np.asarray(o, dtype=np.float32)
            if terminated or truncated:
                ep.final_obs, ep.truncated = current[i], bool(truncated and not terminated)
            else:
                still.append(i)
        running = still
    return episodes


@dataclass
class TrainResult:
    """What a training run returns: per-episode returns and clocks, evaluations, the policy."""

    algo: str
    seed: int
    config: dict
    episode_returns: list[float]
    episode_end_steps: list[int]  # cumulative env steps when each episode ended
    episode_end_seconds: list[float]  # training wall-clock seconds when each episode ended
    evals: list[tuple[int, float, float]]  # (env steps, train seconds, mean greedy return)
    final_eval: list[float]  # greedy returns of the final policy
    policy: nn.Module

    @property
    def final_eval_mean(self) -> float:
        return float(np.mean(self.final_eval))


def train_reinforce(
    config: ReinforceConfig | None = None, seed: int = 0, show_progress: bool = True
) -> TrainResult:
    """Train a CartPole policy with REINFORCE; see the module docstring for the maths."""
    cfg = config or ReinforceConfig()
    seed_everything(seed)
    with torch_threads(1):
        policy = PolicyNet(hidden=cfg.hidden)
        opt = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
        value = ValueNet(hidden=cfg.hidden) if cfg.baseline == "value" else None
        vopt = torch.optim.Adam(value.parameters(), lr=cfg.value_lr) if value else None

        envs = [gym.make(ENV_ID) for _ in range(cfg.episodes_per_update)]
        first_obs = [env.reset(seed=seed * 1000 + i)[0] for i, env in enumerate(envs)]
        returns, end_steps, end_seconds, evals = [], [], [], []
        steps, train_seconds, next_eval = 0, 0.0, cfg.eval_every
        bar = progress(
            total=cfg.episodes, desc=f"REINFORCE seed {seed}", unit="ep", disable=not show_progress
        )
        while len(returns) < cfg.episodes:
            t0 = time.perf_counter()
            batch = collect_episodes(envs, first_obs, policy)
            first_obs = [env.reset()[0] for env in envs]

            obs = torch.as_tensor(np.concatenate([np.stack(ep.obs) for ep in batch]))
            actions = torch.as_tensor(np.concatenate([ep.actions for ep in batch]))
            targets = []
            for ep in batch:
                boot = 0.0
                if cfg.bootstrap_truncated and ep.truncated:
                    with torch.no_grad():
                        boot = float(value(torch.as_tensor(ep.final_obs)[None])[0])
                targets.append(reward_to_go(torch.tensor(ep.rewards), cfg.gamma, boot))
            g = torch.cat(targets)

            if cfg.baseline == "value":
                with torch.no_grad():
                    adv = normalize(g - value(obs))
                vloss = 0.5 * (value(obs) - g).pow(2).mean()
                vopt.zero_grad()
                vloss.backward()
                vopt.step()
            elif cfg.baseline == "normalize":
                adv = normalize(g)
            else:
                adv = g

            logp = Categorical(logits=policy(obs)).log_prob(actions)
            loss, _ = reinforce_loss(logp, adv)
            opt.zero_grad()
            loss.backward()
            if cfg.max_grad_norm:
                nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
            opt.step()
            train_seconds += time.perf_counter() - t0

            for ep in batch:
                if len(returns) == cfg.episodes:
                    break
                steps += len(ep.rewards)
                returns.append(sum(ep.rewards))
                end_steps.append(steps)
                end_seconds.append(train_seconds)
                bar.update(1)
            bar.set_postfix(ret100=f"{np.mean(returns[-100:]):.0f}")

            # greedy evaluation (not counted in train_seconds; uses no training randomness)
            if cfg.eval_every and steps >= next_eval:
                while next_eval <= steps:
                    next_eval += cfg.eval_every
                mean_eval = float(evaluate(policy.act_greedy, cfg.eval_episodes).mean())
                evals.append((steps, train_seconds, mean_eval))
        bar.close()
        for env in envs:
            env.close()
        final = evaluate(policy.act_greedy, cfg.eval_episodes)
    return TrainResult(
        algo="reinforce",
        seed=seed,
        config=asdict(cfg),
        episode_returns=returns,
        episode_end_steps=end_steps,
        episode_end_seconds=end_seconds,
        evals=evals,
        final_eval=final.tolist(),
        policy=policy,
    )


WEIGHTINGS = ("total return", "reward-to-go", "reward-to-go - baseline")


def gradient_variance(
    policy: PolicyNet, episodes: int = 200, gamma: float = 0.99, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Measure the variance of single-episode policy-gradient estimates under three weightings.

    For each of ``episodes`` episodes played by ``policy`` we compute the gradient of
    ``sum_t log pi(a_t|s_t) * w_t`` with

    - ``total return``: w_t = G_0 (every action credited with the whole episode's return),
    - ``reward-to-go``: w_t = G_t,
    - ``reward-to-go - baseline``: w_t = G_t - b_t, with b_t the mean reward-to-go at step t of
      the *other* episodes (leave-one-out, so it does not depend on this episode's actions).

    All three have the same expectation (the policy gradient); they differ in variance.
    Returns, per weighting, ``variance`` (sum over parameters of the across-episode variance),
    ``mean_norm`` (norm of the mean gradient) and ``cosine`` (between this weighting's mean
    gradient and the reward-to-go one).
    """
    seed_everything(seed)
    env = gym.make(ENV_ID)
    obs = [env.reset(seed=seed)[0]]
    batch = []
    for _ in range(episodes):
        batch.extend(collect_episodes([env], obs, policy))
        obs = [env.reset()[0]]
    env.close()

    rtg = [reward_to_go(torch.tensor(ep.rewards), gamma) for ep in batch]
    horizon = max(len(g) for g in rtg)
    padded = torch.zeros(len(rtg), horizon)
    counts = torch.zeros(horizon)
    for i, g in enumerate(rtg):
        padded[i, : len(g)] = g
        counts[: len(g)] += 1
    sums = padded.sum(0)

    grads: dict[str, list[torch.Tensor]] = {w: [] for w in WEIGHTINGS}
    params = [p for p in policy.parameters() if p.requires_grad]
    for i, ep in enumerate(batch):
        n = len(ep.rewards)
        others = (counts[:n] - 1).clamp(min=1)
        baseline = (sums[:n] - rtg[i]) / others
        weights = {
            "total return": torch.full((n,), float(rtg[i][0])),
            "reward-to-go": rtg[i],
            "reward-to-go - baseline": rtg[i] - baseline,
        }
        logp = Categorical(logits=policy(torch.as_tensor(np.stack(ep.obs)))).log_prob(
            torch.as_tensor(ep.actions)
        )
        for name, w in weights.items():
            g = torch.autograd.grad((logp * w).sum(), params, retain_graph=True)
            grads[name].append(torch.cat([x.reshape(-1) for x in g]))

    ref = torch.stack(grads["reward-to-go"]).mean(0)
    out = {}
    for name, gs in grads.items():
        g = torch.stack(gs)
        mean = g.mean(0)
        out[name] = {
            "variance": g.var(0).sum().item(),
            "mean_norm": mean.norm().item(),
            "cosine": torch.nn.functional.cosine_similarity(mean, ref, dim=0).item(),
        }
    return out
