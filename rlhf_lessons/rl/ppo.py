"""PPO-clip with GAE on vectorised CartPole (lesson 02).

Paper: Schulman et al. 2017, "Proximal Policy Optimization Algorithms", arXiv 1707.06347;
advantages by GAE (arXiv 1506.02438, see :mod:`rlhf_lessons.rl.advantages`).

One iteration = collect ``num_steps`` steps in each of ``num_envs`` environments with the current
policy (pi_old), compute advantages, then take ``update_epochs`` passes of minibatch gradient
steps on

    L = L_clip - c_ent * H[pi] + c_vf * L_V
    L_clip = -mean(min(rho * A, clip(rho, 1 - eps, 1 + eps) * A)),  rho = pi_theta(a|s) / pi_old(a|s)

where a is the action *stored* in the rollout. The ratio only means something for the stored
action: it re-weights a sample of pi_old into an estimate under pi_theta (importance sampling),
and the clip stops the update once pi_theta has moved more than eps away from pi_old on it.

Style follows CleanRL's ``ppo.py``: one loop, every detail in view. Two presets reproduce the
reference settings of the fact sheet (section 1): :meth:`PPOConfig.rl_zoo` (the default, tuned
for CartPole-v1 in rl-baselines3-zoo) and :meth:`PPOConfig.cleanrl`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from torch import nn
from torch.distributions import Categorical

from rlhf_lessons.course.device import torch_threads
from rlhf_lessons.course.progress import progress
from rlhf_lessons.course.seeding import seed_everything
from rlhf_lessons.rl.advantages import gae, masked_mean, normalize
from rlhf_lessons.rl.cartpole import SOLVED_RETURN, evaluate, make_vec_env
from rlhf_lessons.rl.reinforce import TrainResult


@dataclass
class PPOConfig:
    """PPO settings. Defaults = rl-baselines3-zoo's tuned CartPole-v1 hyperparameters."""

    total_timesteps: int = 100_000
    num_envs: int = 8
    num_steps: int = 32  # per environment per iteration
    num_minibatches: int = 1
    update_epochs: int = 20
    lr: float = 1e-3
    anneal_lr: bool = True  # linear decay to 0 over training
    gamma: float = 0.98
    gae_lambda: float = 0.8
    clip_coef: float = 0.2
    anneal_clip: bool = True  # rl-zoo's "lin_0.2"
    clip_vloss: bool = False
    ent_coef: float = 0.0
    # Our value loss is 0.5 * (V - R)^2 (CleanRL's convention); SB3's is (V - R)^2 with
    # vf_coef 0.5, so vf_coef 1.0 here is the same objective as rl-zoo's.
    vf_coef: float = 1.0
    max_grad_norm: float = 0.5
    norm_adv: bool = True  # per minibatch
    target_kl: float | None = None  # stop an iteration's epochs early above this approx KL
    hidden: int = 64
    adam_eps: float = 1e-5
    bootstrap_truncated: bool = True  # add gamma * V(final obs) at the 500-step time limit
    eval_every: int = 2048  # env steps between greedy evaluations (0: none)
    eval_episodes: int = 10
    stop_when_solved: bool = False  # end training at the first solved evaluation

    def __post_init__(self) -> None:
        for name in (
            "total_timesteps",
            "num_envs",
            "num_steps",
            "num_minibatches",
            "update_epochs",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"PPOConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.total_timesteps < self.batch_size:
            raise ValueError(
                f"total_timesteps = {self.total_timesteps} is less than one iteration's batch "
                f"(num_envs * num_steps = {self.batch_size}): nothing would be trained"
            )
        if self.batch_size % self.num_minibatches:
            raise ValueError(
                f"num_envs * num_steps = {self.batch_size} must be divisible by "
                f"num_minibatches = {self.num_minibatches}"
            )

    @property
    def batch_size(self) -> int:
        return self.num_envs * self.num_steps

    @property
    def minibatch_size(self) -> int:
        return self.batch_size // self.num_minibatches

    @property
    def num_iterations(self) -> int:
        return self.total_timesteps // self.batch_size

    @classmethod
    def rl_zoo(cls, **overrides) -> PPOConfig:
        """rl-baselines3-zoo ``hyperparams/ppo.yml`` CartPole-v1 (the class defaults)."""
        return replace(cls(), **overrides)

    @classmethod
    def cleanrl(cls, **overrides) -> PPOConfig:
        """CleanRL ``ppo.py`` defaults (4 x 128 steps, 4 minibatches x 4 epochs, 500k steps)."""
        base = cls(
            total_timesteps=500_000, num_envs=4, num_steps=128, num_minibatches=4,
            update_epochs=4, lr=2.5e-4, anneal_lr=True, gamma=0.99, gae_lambda=0.95,
            clip_coef=0.2, anneal_clip=False, clip_vloss=True, ent_coef=0.01, vf_coef=0.5,
            max_grad_norm=0.5, bootstrap_truncated=False,
        )  # fmt: skip
        return replace(base, **overrides)


def layer_init(layer: nn.Linear, gain: float = float(np.sqrt(2)), bias: float = 0.0) -> nn.Linear:
    """Orthogonal weights, constant bias: the PPO implementations' initialisation."""
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.constant_(layer.bias, bias)
    return layer


class ActorCritic(nn.Module):
    """Separate 64-64 tanh actor and critic (CleanRL / SB3 MlpPolicy). obs (B, 4)."""

    def __init__(self, obs_dim: int = 4, n_actions: int = 2, hidden: int = 64) -> None:
        super().__init__()
        self.critic = nn.Sequential(
            layer_init(nn.Linear(obs_dim, hidden)), nn.Tanh(),
            layer_init(nn.Linear(hidden, hidden)), nn.Tanh(),
            layer_init(nn.Linear(hidden, 1), gain=1.0),
        )  # fmt: skip
        self.actor = nn.Sequential(
            layer_init(nn.Linear(obs_dim, hidden)), nn.Tanh(),
            layer_init(nn.Linear(hidden, hidden)), nn.Tanh(),
            # a small last layer starts the policy near uniform
            layer_init(nn.Linear(hidden, n_actions), gain=0.01),
        )  # fmt: skip

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """(B, 4) -> (B,)"""
        return self.critic(obs).squeeze(-1)

    def dist(self, obs: torch.Tensor) -> Categorical:
        # logits straight from a Linear layer are always valid: skip the argument checks
        return Categorical(logits=self.actor(obs), validate_args=False)

    @torch.no_grad()
    def act_greedy(self, obs: np.ndarray) -> np.ndarray:
        return self.actor(torch.as_tensor(obs, dtype=torch.float32)).argmax(-1).numpy()


def _mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return x.mean() if mask is None else masked_mean(x, mask)


def clipped_surrogate_loss(
    new_logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    clip_coef: float,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO's clipped policy loss (arXiv 1707.06347, eq. 7), negated for minimisation.

    Args:
        new_logp: (B,) log pi_theta(a|s) of the stored actions, with gradient; or (B, T) per
            token for a language model.
        old_logp: same shape, log pi_old(a|s) recorded at rollout time.
        advantages: same shape, advantage estimates (constants).
        clip_coef: eps; the ratio is clipped to [1 - eps, 1 + eps].
        mask: optional, same shape: 1 where a sample is real (the completion tokens of an LM
            batch). Every mean below is over the masked elements only (old TRL's
            ``masked_mean`` over all tokens of the minibatch).

    Returns:
        ``(loss, metrics)``: loss = -mean(min(rho A, clip(rho) A)); metrics ``approx_kl``
        (the k3 estimator mean((rho - 1) - log rho) of KL(pi_old || pi_theta)) and ``clipfrac``
        (fraction of samples whose ratio lies outside the clip range).
    """
    if not new_logp.shape == old_logp.shape == advantages.shape:
        raise ValueError(
            "new_logp, old_logp and advantages must share one shape, got "
            f"{tuple(new_logp.shape)}, {tuple(old_logp.shape)}, {tuple(advantages.shape)}"
        )
    if mask is not None and mask.shape != new_logp.shape:
        raise ValueError(f"mask must have shape {tuple(new_logp.shape)}, got {tuple(mask.shape)}")
    log_ratio = new_logp - old_logp.detach()
    ratio = log_ratio.exp()
    adv = advantages.detach()
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - clip_coef, 1.0 + clip_coef) * adv
    loss = -_mean(torch.min(unclipped, clipped), mask)
    with torch.no_grad():
        approx_kl = _mean((ratio - 1.0) - log_ratio, mask).item()
        clipfrac = _mean(((ratio - 1.0).abs() > clip_coef).float(), mask).item()
    return loss, {"policy_loss": loss.item(), "approx_kl": approx_kl, "clipfrac": clipfrac}


def value_loss(
    new_values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    clip_coef: float | None = None,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Critic loss 0.5 * (V - R)^2, optionally clipped around the rollout-time values.

    Args:
        new_values: (B,) V_theta(s), with gradient; or (B, T) per token for a language model.
        old_values: same shape, V(s) recorded at rollout time.
        returns: same shape, targets R = A + V_old.
        clip_coef: if set, 0.5 * max((V - R)^2, (V_old + clip(V - V_old, +-eps) - R)^2).
        mask: optional, same shape: the mean is over the masked elements only.
    """
    if not new_values.shape == old_values.shape == returns.shape:
        raise ValueError(
            "new_values, old_values and returns must share one shape, got "
            f"{tuple(new_values.shape)}, {tuple(old_values.shape)}, {tuple(returns.shape)}"
        )
    if mask is not None and mask.shape != new_values.shape:
        raise ValueError(f"mask must have shape {tuple(new_values.shape)}, got {tuple(mask.shape)}")
    err = (new_values - returns).pow(2)
    if clip_coef is not None:
        v_clipped = old_values + torch.clamp(new_values - old_values, -clip_coef, clip_coef)
        err = torch.max(err, (v_clipped - returns).pow(2))
    loss = 0.5 * _mean(err, mask)
    return loss, {"value_loss": loss.item()}


def train_ppo(
    config: PPOConfig | None = None, seed: int = 0, show_progress: bool = True
) -> TrainResult:
    """Train PPO on CartPole-v1. Returns episode returns, greedy evaluations and the agent."""
    cfg = config or PPOConfig()
    seed_everything(seed)
    with torch_threads(1):
        envs = make_vec_env(cfg.num_envs)
        agent = ActorCritic(hidden=cfg.hidden)
        # fused Adam: one kernel for all parameters instead of one per tensor (~15% faster here)
        opt = torch.optim.Adam(agent.parameters(), lr=cfg.lr, eps=cfg.adam_eps, fused=True)

        T, N = cfg.num_steps, cfg.num_envs
        obs_buf = torch.zeros(T, N, 4)
        act_buf = torch.zeros(T, N, dtype=torch.long)
        logp_buf, rew_buf, done_buf, val_buf = (torch.zeros(T, N) for _ in range(4))

        obs = torch.as_tensor(envs.reset(seed=seed)[0], dtype=torch.float32)
        ep_return = np.zeros(N)
        returns, end_steps, end_seconds, evals = [], [], [], []
        steps, train_seconds, next_eval = 0, 0.0, cfg.eval_every
        bar = progress(
            total=cfg.num_iterations * cfg.batch_size,
            desc=f"PPO seed {seed}",
            unit="step",
            unit_scale=True,
            disable=not show_progress,
        )
        for iteration in range(cfg.num_iterations):
            t0 = time.perf_counter()
            # linear schedules as in CleanRL: full value at the first update, 1/N at the last
            frac = 1.0 - iteration / cfg.num_iterations
            if cfg.anneal_lr:
                opt.param_groups[0]["lr"] = frac * cfg.lr
            clip = cfg.clip_coef * frac if cfg.anneal_clip else cfg.clip_coef

            # ---- rollout with pi_old ----
            for t in range(T):
                with torch.no_grad():
                    dist = agent.dist(obs)
                    action = dist.sample()
                    val_buf[t] = agent.value(obs)
                obs_buf[t], act_buf[t], logp_buf[t] = obs, action, dist.log_prob(action)
                next_obs, reward, terminated, truncated, info = envs.step(action.numpy())
                ep_return += reward
                done = terminated | truncated
                reward = torch.as_tensor(reward, dtype=torch.float32)
                cut = truncated & ~terminated
                if cfg.bootstrap_truncated and cut.any():
                    # the time limit cut the episode short: its future is V(final obs), not 0
                    final = torch.as_tensor(np.stack(info["final_obs"][cut]), dtype=torch.float32)
                    with torch.no_grad():
                        reward[torch.as_tensor(cut)] += cfg.gamma * agent.value(final)
                rew_buf[t] = reward
                done_buf[t] = torch.as_tensor(done, dtype=torch.float32)
                obs = torch.as_tensor(next_obs, dtype=torch.float32)
                for i in np.flatnonzero(done):
                    returns.append(float(ep_return[i]))
                    end_steps.append(steps + (t + 1) * N)
                    ep_return[i] = 0.0
            steps += T * N

            # ---- advantages (GAE) ----
            with torch.no_grad():
                adv, ret = gae(
                    rew_buf, val_buf, done_buf, agent.value(obs), cfg.gamma, cfg.gae_lambda
                )

            # ---- update_epochs passes over minibatches of the flattened batch ----
            b_obs, b_act, b_logp = obs_buf.reshape(-1, 4), act_buf.reshape(-1), logp_buf.reshape(-1)
            b_adv, b_ret, b_val = adv.reshape(-1), ret.reshape(-1), val_buf.reshape(-1)
            for _epoch in range(cfg.update_epochs):
                perm = torch.randperm(cfg.batch_size)
                for start in range(0, cfg.batch_size, cfg.minibatch_size):
                    mb = perm[start : start + cfg.minibatch_size]
                    dist = agent.dist(b_obs[mb])
                    mb_adv = normalize(b_adv[mb]) if cfg.norm_adv else b_adv[mb]
                    pg_loss, stats = clipped_surrogate_loss(
                        dist.log_prob(b_act[mb]), b_logp[mb], mb_adv, clip
                    )
                    v_loss, _ = value_loss(
                        agent.value(b_obs[mb]),
                        b_val[mb],
                        b_ret[mb],
                        clip if cfg.clip_vloss else None,
                    )
                    entropy = dist.entropy().mean()
                    loss = pg_loss - cfg.ent_coef * entropy + cfg.vf_coef * v_loss
                    opt.zero_grad()
                    loss.backward()
                    nn.utils.clip_grad_norm_(agent.parameters(), cfg.max_grad_norm)
                    opt.step()
                if cfg.target_kl is not None and stats["approx_kl"] > cfg.target_kl:
                    break
            train_seconds += time.perf_counter() - t0
            end_seconds.extend([train_seconds] * (len(returns) - len(end_seconds)))
            bar.update(cfg.batch_size)

            # ---- greedy evaluation (not counted in train_seconds) ----
            if cfg.eval_every and steps >= next_eval:
                while next_eval <= steps:
                    next_eval += cfg.eval_every
                mean_eval = float(evaluate(agent.act_greedy, cfg.eval_episodes).mean())
                evals.append((steps, train_seconds, mean_eval))
                bar.set_postfix(eval=f"{mean_eval:.0f}")
                if cfg.stop_when_solved and mean_eval >= SOLVED_RETURN:
                    break
        bar.close()
        envs.close()
        final = evaluate(agent.act_greedy, cfg.eval_episodes)
    return TrainResult(
        algo="ppo",
        seed=seed,
        config=asdict(cfg),
        episode_returns=returns,
        episode_end_steps=end_steps,
        episode_end_seconds=end_seconds,
        evals=evals,
        final_eval=final.tolist(),
        policy=agent,
    )
