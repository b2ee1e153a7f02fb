"""PPO-clip with GAE on vectorised CartPole (lesson 02).

Paper: Schulman et al. 2017, "Proximal Policy Optimization Algorithms", arXiv 1707.06347;
advantages by GAE (arXiv 1506.02438, see :mod:`rlhf_lessons.rl.advantages`).

One iteration = collect ``num_steps`` steps in each of ``num_envs`` environments with the current
policy (pi_old), compute advantages, then take ``epochs`` passes of minibatch gradient steps on

    L = L_clip - c_ent * H[pi] + c_vf * L_V
    L_clip = -mean(min(rho * A, clip(rho, 1 - eps, 1 + eps) * A)),  rho = pi_theta(a|s) / pi_old(a|s)

where a is the action *stored* in the rollout. The ratio only means something for the stored
action: it re-weights a sample of pi_old into an estimate under pi_theta (importance sampling),
and the clip stops the update once pi_theta has moved more than eps away from pi_old on it.

Style follows CleanRL's ``ppo.py``: one loop, every detail in view, here with a leading seed
dimension so that a lesson's seeds train as one batched computation
(:mod:`rlhf_lessons.rl.batched`; :func:`train_ppo` is the same loop for one seed). Two presets
reproduce the reference settings: :meth:`PPOConfig.rl_zoo` (the default, tuned for CartPole-v1
in rl-baselines3-zoo, whose benchmark reports a return of 500 +- 0 after 100k steps) and
:meth:`PPOConfig.cleanrl`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from rlhf_lessons.course.device import torch_threads
from rlhf_lessons.course.progress import progress
from rlhf_lessons.rl.advantages import check_same_shape, gae, masked_mean, normalize
from rlhf_lessons.rl.batched import (
    SeedAdam,
    SeedRandom,
    TanhMLP,
    clip_grad_norm_per_seed_,
    clip_scale,
    minibatches,
    tanh_mlp,
    tanh_mlp_backward,
    tanh_mlp_forward,
)
from rlhf_lessons.rl.cartpole import (
    SOLVED_RETURN,
    CartPoleLog,
    CartPoles,
    one_seed_trainer,
)
from rlhf_lessons.rl.kl import kl_estimates
from rlhf_lessons.training import EvalFn, History, Stopwatch


@dataclass
class PPOConfig:
    """PPO settings. Defaults = rl-baselines3-zoo's tuned CartPole-v1 hyperparameters."""

    total_timesteps: int = 100_000  # environment steps per seed
    num_envs: int = 8
    num_steps: int = 32  # per environment per iteration
    minibatch_size: int = 256  # the whole batch of 8 x 32: one minibatch per epoch
    epochs: int = 20  # passes over each batch
    lr: float = 1e-3
    anneal_lr: bool = True  # linear decay to 0 over training
    gamma: float = 0.98
    gae_lambda: float = 0.8
    clip_eps: float = 0.2
    anneal_clip: bool = True  # rl-zoo's "lin_0.2"
    clip_value: float | None = None  # clip the value loss around V_old (CleanRL: clip_eps)
    ent_coef: float = 0.0
    # Our value loss is 0.5 * (V - R)^2 (CleanRL's convention); SB3's is (V - R)^2 with
    # vf_coef 0.5, so vf_coef 1.0 here is the same objective as rl-zoo's.
    vf_coef: float = 1.0
    max_grad_norm: float = 0.5
    norm_adv: bool = True  # per minibatch
    hidden: int = 64
    adam_eps: float = 1e-5
    bootstrap_truncated: bool = True  # add gamma * V(final obs) at the 500-step time limit
    eval_episodes: int = 10  # greedy evaluation episodes
    stop_when_solved: bool = False  # end once every seed's greedy evaluation reached 475
    threads: int | None = 1  # one thread: these networks are far too small to split
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("total_timesteps", "num_envs", "num_steps", "minibatch_size", "epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"PPOConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.total_timesteps < self.batch_size:
            raise ValueError(
                f"total_timesteps = {self.total_timesteps} is less than one iteration's batch "
                f"(num_envs * num_steps = {self.batch_size}): nothing would be trained"
            )
        if self.batch_size % self.minibatch_size:
            raise ValueError(
                f"num_envs * num_steps = {self.batch_size} must be a multiple of "
                f"minibatch_size = {self.minibatch_size}"
            )

    @property
    def batch_size(self) -> int:
        """Environment steps per iteration (per seed)."""
        return self.num_envs * self.num_steps

    @property
    def iterations(self) -> int:
        return self.total_timesteps // self.batch_size

    @classmethod
    def rl_zoo(cls, **overrides) -> PPOConfig:
        """rl-baselines3-zoo ``hyperparams/ppo.yml`` CartPole-v1 (the class defaults)."""
        return replace(cls(), **overrides)

    @classmethod
    def cleanrl(cls, **overrides) -> PPOConfig:
        """CleanRL ``ppo.py`` defaults (4 x 128 steps, 4 minibatches x 4 epochs, 500k steps)."""
        base = cls(
            total_timesteps=500_000, num_envs=4, num_steps=128, minibatch_size=128, epochs=4,
            lr=2.5e-4, anneal_lr=True, gamma=0.99, gae_lambda=0.95, clip_eps=0.2,
            anneal_clip=False, clip_value=0.2, ent_coef=0.01, vf_coef=0.5, max_grad_norm=0.5,
            bootstrap_truncated=False,
        )  # fmt: skip
        return replace(base, **overrides)


def layer_init(layer: nn.Linear, gain: float = float(np.sqrt(2)), bias: float = 0.0) -> nn.Linear:
    """Orthogonal weights, constant bias: the PPO implementations' initialisation."""
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.constant_(layer.bias, bias)
    return layer


class ActorCritic(nn.Module):
    """Separate 64-64 tanh actor and critic (CleanRL / SB3 MlpPolicy). obs (..., 4)."""

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
        """V(s): (..., 4) -> (...)"""
        return self.critic(obs).squeeze(-1)

    def log_probs(self, obs: torch.Tensor) -> torch.Tensor:
        """log pi(a|s) of every action: (..., 4) -> (..., 2)."""
        return torch.log_softmax(self.actor(obs), dim=-1)

    @torch.no_grad()
    def act_greedy(self, obs: np.ndarray) -> np.ndarray:
        return self.actor(torch.as_tensor(obs, dtype=torch.float32)).argmax(-1).numpy()


class SeedActorCritic(nn.Module):
    """S :class:`ActorCritic` networks computed as one: every layer is one batched matrix multiply
    over the 2S networks (each seed's actor and its critic), obs (S, ..., 4).

    The actor and the critic have the same shape up to their last layer (2 outputs vs 1), so
    both run side by side in the same three ``torch.baddbmm`` calls
    (:class:`~rlhf_lessons.rl.batched.TanhMLP`): half the operations of running them one after
    the other, and the count of operations is the cost. The critic's last layer gets a second
    output column of zeros, which nothing reads: its gradient is 0, so Adam never moves it and
    it adds nothing to the gradient norm. Parameters are (2S, in, out) weights and (2S, 1, out)
    biases in seed-major order (seed ``s``'s actor at row ``2s``, its critic at ``2s + 1``), so
    ``p.view(S, -1)`` is each seed's slice (``clip_grad_norm_per_seed_(..., seeds=S)``).
    """

    def __init__(self, members: Sequence[ActorCritic]) -> None:
        super().__init__()
        self.seeds = len(members)
        for k, i in enumerate((0, 2, 4)):  # weight0, bias0 .. from the nn.Sequential's Linears
            layers = [layer for m in members for layer in (m.actor[i], m.critic[i])]
            width = max(layer.out_features for layer in layers)  # pad the critic's 1 output to 2
            weights = [
                F.pad(layer.weight.detach().T, (0, width - layer.out_features)) for layer in layers
            ]
            biases = [
                F.pad(layer.bias.detach(), (0, width - layer.out_features)) for layer in layers
            ]
            setattr(self, f"weight{k}", nn.Parameter(torch.stack(weights)))
            setattr(self, f"bias{k}", nn.Parameter(torch.stack(biases)[:, None]))

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(S, ..., 4) -> (log pi of every action (S, ..., 2), V(s) (S, ...))."""
        if obs.shape[0] != self.seeds:
            raise ValueError(
                f"SeedActorCritic expects (seeds={self.seeds}, ..., 4), got {tuple(obs.shape)}"
            )
        # training: one autograd node for the three layers; rollouts and evaluation: plain ops
        mlp = TanhMLP.apply if torch.is_grad_enabled() else tanh_mlp
        out = mlp(self.pair(obs), *self.weights())  # (2S, B, actions)
        out = out.view(self.seeds, 2, -1, out.shape[-1])  # seed, actor|critic, B, actions
        log_pi, values = torch.log_softmax(out[:, 0], dim=-1), out[:, 1, :, 0]
        if obs.dim() == 3:  # (S, B, 4): the shapes already
            return log_pi, values
        return log_pi.view(*obs.shape[:-1], -1), values.view(obs.shape[:-1])

    def pair(self, obs: torch.Tensor) -> torch.Tensor:
        """Each seed's observations once for its actor, once for its critic: (2S, B, 4)."""
        return obs.reshape(self.seeds, 1, -1, obs.shape[-1]).expand(-1, 2, -1, -1).flatten(0, 1)

    def weights(self) -> tuple[nn.Parameter, ...]:
        """``(weight0, bias0, weight1, bias1, weight2, bias2)``, the MLP's arguments."""
        p = self._parameters  # (what self.weight0 etc. look up, one call each)
        return p["weight0"], p["bias0"], p["weight1"], p["bias1"], p["weight2"], p["bias2"]

    def log_probs(self, obs: torch.Tensor) -> torch.Tensor:
        return self(obs)[0]

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self(obs)[1]

    @torch.no_grad()
    def act_greedy(self, obs: np.ndarray) -> np.ndarray:
        return self.log_probs(torch.as_tensor(obs, dtype=torch.float32)).argmax(-1).numpy()

    @torch.no_grad()
    def unstack_(self, module: ActorCritic, seed_index: int) -> ActorCritic:
        """Copy seed ``seed_index``'s weights into the plain ``module`` (in place)."""
        for k, i in enumerate((0, 2, 4)):
            weight, bias = getattr(self, f"weight{k}"), getattr(self, f"bias{k}")
            for row, layer in ((0, module.actor[i]), (1, module.critic[i])):
                n = layer.out_features
                layer.weight.copy_(weight[2 * seed_index + row, :, :n].T)
                layer.bias.copy_(bias[2 * seed_index + row, 0, :n])
        return module


def _mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return x.mean() if mask is None else masked_mean(x, mask)


def clipped_surrogate_loss(
    new_logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    clip_eps: float,
    mask: torch.Tensor | None = None,
    *,
    metrics: bool = True,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO's clipped policy loss (arXiv 1707.06347, eq. 7), negated for minimisation.

    Args:
        new_logp: (B,) log pi_theta(a|s) of the stored actions, with gradient; or (B, T) per
            token for a language model, or (S, B) for S seeds trained side by side.
        old_logp: same shape, log pi_old(a|s) recorded at rollout time.
        advantages: same shape, advantage estimates (constants).
        clip_eps: the ratio is clipped to [1 - clip_eps, 1 + clip_eps].
        mask: optional, same shape: 1 where a sample is real (the completion tokens of an LM
            batch). Every mean below is over the masked elements only (old TRL's
            ``masked_mean`` over all tokens of the minibatch).
        metrics: ``False`` skips the diagnostics below (a loop that logs its own).

    Returns:
        ``(loss, metrics)``: loss = -mean(min(rho A, clip(rho) A)); metrics ``policy_loss``,
        ``approx_kl`` (the k3 estimator mean((rho - 1) - log rho) of KL(pi_old || pi_theta))
        and ``clipfrac`` (fraction of samples whose ratio lies outside the clip range).
    """
    check_same_shape(new_logp=new_logp, old_logp=old_logp, advantages=advantages, mask=mask)
    log_ratio = new_logp - old_logp.detach()
    ratio = log_ratio.exp()
    adv = advantages.detach()
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    loss = -_mean(torch.min(ratio * adv, clipped * adv), mask)
    if not metrics:
        return loss, {}
    with torch.no_grad():
        approx_kl = _mean((ratio - 1.0) - log_ratio, mask).item()
        clipfrac = _mean(((ratio - 1.0).abs() > clip_eps).float(), mask).item()
    return loss, {"policy_loss": loss.item(), "approx_kl": approx_kl, "clipfrac": clipfrac}


def value_loss(
    new_values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    clip_eps: float | None = None,
    mask: torch.Tensor | None = None,
    *,
    metrics: bool = True,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Critic loss 0.5 * (V - R)^2, optionally clipped around the rollout-time values.

    Args:
        new_values: (B,) V_theta(s), with gradient; or (B, T) per token for a language model.
        old_values: same shape, V(s) recorded at rollout time.
        returns: same shape, targets R = A + V_old.
        clip_eps: if set, 0.5 * max((V - R)^2, (V_old + clip(V - V_old, +-clip_eps) - R)^2).
        mask: optional, same shape: the mean is over the masked elements only.
        metrics: ``False`` returns no ``value_loss`` number (saves a synchronising ``.item()``).
    """
    check_same_shape(new_values=new_values, old_values=old_values, returns=returns, mask=mask)
    err = (new_values - returns).pow(2)
    if clip_eps is not None:
        v_clipped = old_values + torch.clamp(new_values - old_values, -clip_eps, clip_eps)
        err = torch.max(err, (v_clipped - returns).pow(2))
    loss = 0.5 * _mean(err, mask)
    return loss, ({"value_loss": loss.item()} if metrics else {})


class ZooGradient:
    """The gradient of ``S * ppo_loss(...)`` for the zoo's settings (no value clipping, no
    entropy bonus), written out without autograd: :meth:`backward_` sets every parameter's
    ``.grad`` to what ``agent.zero_grad(); (S * ppo_loss(agent, ...)).backward()`` leaves there,
    to the bit (``tests/test_ppo.py`` checks it), and :meth:`clip_grad_norm_` clips it per seed.

    Why: each autograd node (log-softmax, gather, exp, clamp, min, means...) costs more than its
    arithmetic. Here the forward keeps only what the gradient needs (the training loop never
    uses the loss value) and the backward repeats autograd's own operations in its order. With ``g = S`` (the gradient
    that reaches the loss) and n the number of samples: ``dL/d log pi(a|s) = ratio * A * (-g / n)``
    where the unclipped term is the smaller one (0 elsewhere), ``dL/dV = (g * vf_coef * 0.5 / n)
    * 2 (V - R)``, then log-softmax's backward and :func:`~rlhf_lessons.rl.batched.
    tanh_mlp_backward`. Constants are tensors made once, and the inputs that stay the same
    across epochs (one minibatch per epoch: the same tensors every time) are prepared once.
    """

    def __init__(self, agent: SeedActorCritic, vf_coef: float) -> None:
        self.agent, self.params = agent, agent.weights()
        self.g = torch.tensor(float(agent.seeds))  # d(S * loss)/d loss, as autograd passes it
        self.vf_coef, self.zero = vf_coef, torch.zeros(())
        self._inputs: tuple = ()
        # the gradients, written in place every step; one seed's are views of one flat buffer
        # laid out as clip_grad_norm_per_seed_ concatenates them, so clipping needs no copy
        # (several seeds' rows cannot be both contiguous per parameter, as Adam needs, and flat)
        sizes = [p.numel() for p in self.params]
        if agent.seeds == 1:
            self.flat = torch.zeros(1, sum(sizes))
            views = self.flat.split(sizes, dim=1)
            self.grads = [v.view(p.shape) for p, v in zip(self.params, views, strict=True)]
        else:
            self.flat, self.grads = None, [torch.zeros_like(p) for p in self.params]

    def _prepare(self, obs, actions, advantages, returns) -> None:
        """What depends on the minibatch only (done once while the same one comes back)."""
        n = actions.numel()
        self._inputs = (obs, actions, advantages, returns)
        self.obs2 = self.agent.pair(obs)
        self.index = actions.unsqueeze(-1)
        self.scaled_adv = (-self.g / n) * advantages
        self.value_coef2 = (self.g * self.vf_coef * 0.5 / n) * 2.0  # (x * 2: exact)
        self.g_out = torch.zeros(actions.shape[0], 2, actions.shape[1], 2)

    @torch.no_grad()
    def backward_(self, obs, actions, old_logp, advantages, returns, clip_eps: float) -> None:
        """``obs`` (S, M, 4), ``actions``, ``old_logp``, ``advantages``, ``returns`` (S, M):
        as :func:`ppo_loss`. Sets ``p.grad`` of the agent's parameters. The same tensor objects
        as last time are taken to hold the same values (do not change them in place)."""
        inputs = (obs, actions, advantages, returns)
        if len(self._inputs) != 4 or any(
            a is not b for a, b in zip(inputs, self._inputs, strict=True)
        ):
            self._prepare(*inputs)
        out, saved = tanh_mlp_forward(self.obs2, *self.params)  # (2S, M, 2)
        out = out.view(self.g_out.shape)  # seed, actor|critic, M, 2
        log_pi = torch.log_softmax(out[:, 0], dim=-1)
        ratio = (log_pi.gather(-1, self.index).squeeze(-1) - old_logp).exp()
        surrogate = ratio * advantages
        clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages
        # -mean(min(ratio A, clip(ratio) A)): the gradient reaches ratio through the smaller term
        # (at a tie autograd sends half through each, which adds up to the same)
        g_logp = torch.where(surrogate <= clipped, self.scaled_adv, self.zero) * ratio
        g_log_pi = torch.zeros_like(log_pi).scatter_add_(-1, self.index, g_logp.unsqueeze(-1))
        g_out = self.g_out  # its critic rows' second column stays 0 (the padding)
        # (copied in: the .out variant writes a non-contiguous out wrongly in torch 2.13)
        g_out[:, 0] = torch.ops.aten._log_softmax_backward_data(g_log_pi, log_pi, -1, log_pi.dtype)
        torch.mul(torch.sub(out[:, 1, :, 0], returns), self.value_coef2, out=g_out[:, 1, :, 0])
        tanh_mlp_backward(saved, g_out.flatten(0, 1), input_grad=False, out=self.grads)
        for p, grad in zip(self.params, self.grads, strict=True):
            p.grad = grad

    def clip_grad_norm_(self, max_norm: float, eps: float = 1e-6) -> torch.Tensor:
        """:func:`~rlhf_lessons.rl.batched.clip_grad_norm_per_seed_` of the gradients
        :meth:`backward_` wrote (the same numbers); for one seed, on its flat buffer."""
        if self.flat is None:
            return clip_grad_norm_per_seed_(self.params, max_norm, eps, seeds=self.agent.seeds)
        norms = torch.linalg.vector_norm(self.flat, dim=1)
        self.flat.mul_(clip_scale(norms, max_norm, eps))
        return norms


def ppo_loss(
    agent: SeedActorCritic, obs: torch.Tensor, actions: torch.Tensor, old_logp: torch.Tensor,
    old_values: torch.Tensor, advantages: torch.Tensor, returns: torch.Tensor, clip_eps: float,
    cfg: PPOConfig,
) -> torch.Tensor:  # fmt: skip
    """PPO's loss ``L_clip + c_vf * L_V - c_ent * H[pi]`` of the seed-batched ``agent`` on a
    minibatch (the mean over every seed's samples).

    ``obs`` (S, M, 4); ``actions`` (S, M) the stored actions; ``old_logp``, ``old_values``
    (S, M) their rollout-time log pi_old(a|s) and V_old(s); ``advantages``, ``returns`` (S, M).
    The terms are :func:`clipped_surrogate_loss` and :func:`value_loss`. The training loop takes
    the gradient of this loss by autograd, or for the zoo's settings (no value clipping, no
    entropy bonus) the same gradient by :class:`ZooGradient`.
    """
    log_pi, values = agent(obs)  # (S, M, 2), (S, M)
    new_logp = log_pi.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    pg_loss, _ = clipped_surrogate_loss(new_logp, old_logp, advantages, clip_eps, metrics=False)
    v_loss, _ = value_loss(values, old_values, returns, cfg.clip_value, metrics=False)
    loss = pg_loss + cfg.vf_coef * v_loss
    if cfg.ent_coef:
        loss = loss + cfg.ent_coef * (log_pi.exp() * log_pi).sum(-1).mean()
    return loss


@dataclass
class Rollout:
    """``num_steps`` steps of every environment, one row per seed: (S, T, N, ...); ``next_obs``
    (S, N, 4) is where the environments stand after them."""

    obs: torch.Tensor
    actions: torch.Tensor
    logp: torch.Tensor  # log pi_old(a|s) of the stored actions
    values: torch.Tensor  # V(s) under the rollout's critic
    rewards: torch.Tensor  # with gamma * V(final obs) added at time-limit ends
    dones: torch.Tensor  # 1.0 where the episode ended after this step
    next_obs: torch.Tensor


@torch.no_grad()
def collect_rollout(
    envs: CartPoles, agent: SeedActorCritic, obs: torch.Tensor, rand: SeedRandom,
    cfg: PPOConfig, log: CartPoleLog,
) -> Rollout:  # fmt: skip
    """Step the seed-batched ``agent`` (pi_old) ``cfg.num_steps`` times in ``envs`` from
    ``obs``, sampling each seed's actions with its own random numbers."""
    steps = []
    noise = rand.gumbel(cfg.num_steps, envs.num_envs, 2)  # (S, T, N, 2)
    for t in range(cfg.num_steps):
        log_pi, value = agent(obs)  # (S, N, 2), (S, N): the actor and V(s_t) in one pass
        action = (log_pi + noise[:, t]).argmax(-1)  # Gumbel-max: a sample of pi
        next_obs, reward, terminated, truncated, final_obs = envs.step(action.numpy())
        log.steps(reward, terminated | truncated)
        steps.append((obs, action, log_pi, value, reward, terminated | truncated, truncated,
                      final_obs))  # fmt: skip
        obs = torch.from_numpy(next_obs)
    # lists over t -> (S, T, N, ...) tensors
    obs_buf, actions, log_pi, values, rewards, dones, cut, final_obs = zip(*steps, strict=True)
    obs_buf, actions, log_pi, values = (
        torch.stack(x, dim=1) for x in (obs_buf, actions, log_pi, values)
    )
    rewards, dones, cut, final_obs = (
        torch.from_numpy(np.stack(x, axis=1)) for x in (rewards, dones, cut, final_obs)
    )
    logp = log_pi.gather(-1, actions.unsqueeze(-1)).squeeze(-1)  # pi_old's, of the stored actions
    if cfg.bootstrap_truncated and cut.any():
        # the time limit cut these episodes short: their future is V(final obs), not 0
        rewards += cfg.gamma * agent.value(final_obs) * cut
    return Rollout(obs_buf, actions, logp, values, rewards, dones.float(), next_obs=obs)


def annealed(cfg: PPOConfig, it: int) -> tuple[float, float]:
    """``(lr, clip_eps)`` at iteration ``it``: linear schedules as in CleanRL and the zoo, the
    full value at the first update and 1/N of it at the last (or constant if not annealed)."""
    frac = 1.0 - it / cfg.iterations
    return (
        cfg.lr * (frac if cfg.anneal_lr else 1.0),
        cfg.clip_eps * (frac if cfg.anneal_clip else 1.0),
    )


@torch.no_grad()
def training_batch(ro: Rollout, agent: SeedActorCritic, cfg: PPOConfig) -> list[torch.Tensor]:
    """A rollout as each seed's training batch, ``[obs, actions, logp, values, advantages,
    returns]``, (S, T * N, ...) each: GAE advantages and returns (bootstrapped from V of where
    the environments stand, ``ro.next_obs``), then each seed's T x N steps in one row.
    Advantages are normalised per minibatch; with one minibatch per epoch (the zoo's settings)
    that is the whole batch every epoch, so it is done here, once (each seed on its own)."""
    # gae runs along time: (T, S, N) views
    adv, ret = gae(*(x.transpose(0, 1) for x in (ro.rewards, ro.values, ro.dones)),
                   agent.value(ro.next_obs), cfg.gamma, cfg.gae_lambda)  # fmt: skip
    batch = [x.flatten(1, 2) for x in (ro.obs, ro.actions, ro.logp, ro.values)]
    batch += [x.transpose(0, 1).flatten(1, 2) for x in (adv, ret)]
    if cfg.norm_adv and cfg.minibatch_size == cfg.batch_size:
        batch[4] = normalize(batch[4], dim=-1)
    return batch


def train_ppo_seeds(
    seeds: Sequence[int],
    config: PPOConfig | None = None,
    *,
    policy: ActorCritic | None = None,
    eval_fn: EvalFn | None = None,
    eval_every: int = 0,
    show_progress: bool = True,
) -> list[History]:
    """Train one CartPole agent per seed with PPO, all seeds in one batched computation.

    Each iteration: :func:`collect_rollout` with pi_old, GAE (:func:`training_batch`), then
    ``epochs`` passes of clipped-surrogate + value-loss Adam steps over minibatches of each
    seed's batch. ``policy``, ``eval_every`` and the Histories (one row per iteration, here
    also with ``lr``, ``clip`` and the update's ``approx_kl``, ``clipfrac`` and ``entropy``):
    see :class:`~rlhf_lessons.rl.cartpole.CartPoleLog`.
    """
    cfg = config or PPOConfig()
    rand = SeedRandom(seeds)
    S = len(rand)
    with torch_threads(cfg.threads):
        make = lambda: ActorCritic(hidden=cfg.hidden)  # noqa: E731
        members = rand.build(make) if policy is None else rand.only(policy)
        agent = SeedActorCritic(members)
        params = list(agent.parameters())
        opt = SeedAdam(params, lr=cfg.lr, eps=cfg.adam_eps)  # torch's Adam, all seeds in one
        fast = cfg.clip_value is None and not cfg.ent_coef  # the zoo's: a written-out gradient
        zoo = ZooGradient(agent, cfg.vf_coef) if fast else None
        envs = CartPoles(rand.numpy, cfg.num_envs)
        log = CartPoleLog("ppo", rand.seeds, cfg, cfg.num_envs, agent=agent, members=members,
                          eval_fn=eval_fn)  # fmt: skip
        watch = Stopwatch()
        obs = torch.from_numpy(envs.reset())
        if eval_every:
            log.evaluate(0.0)
        for it in progress(range(cfg.iterations), desc=f"PPO, {S} seeds", unit="iteration",
                           disable=not show_progress):  # fmt: skip
            with watch:
                lr, clip = annealed(cfg, it)
                opt.lr = lr
                ro = collect_rollout(envs, agent, obs, rand, cfg, log)
                obs = ro.next_obs
                batch = training_batch(ro, agent, cfg)  # GAE; (S, T * N, ...): a row per seed
                for mb_obs, mb_act, mb_logp, mb_val, mb_adv, mb_ret in minibatches(
                    batch, cfg.minibatch_size, cfg.epochs, rand
                ):
                    if cfg.norm_adv and cfg.minibatch_size < cfg.batch_size:
                        mb_adv = normalize(mb_adv, dim=-1)  # (a whole batch: done once)
                    # every seed's minibatch has the same size, so S x (mean over all seeds)
                    # is the sum of the seeds' own losses: each seed gets its own gradient
                    if zoo is None:
                        loss = ppo_loss(agent, mb_obs, mb_act, mb_logp, mb_val, mb_adv, mb_ret,
                                        clip, cfg)  # (S, M, ...) each  # fmt: skip
                        opt.zero_grad()
                        (S * loss).backward()
                        clip_grad_norm_per_seed_(params, cfg.max_grad_norm, seeds=S)
                    else:  # the same gradient and clipping, without an autograd graph
                        zoo.backward_(mb_obs, mb_act, mb_logp, mb_adv, mb_ret, clip)
                        zoo.clip_grad_norm_(cfg.max_grad_norm)
                    opt.step()
                stats = update_stats(agent, batch, clip)
            log.log(watch.seconds, lr=lr, clip=clip, **stats)
            if log.histories[0].due(eval_every, cfg.iterations):
                greedy = log.evaluate(watch.seconds)
                if cfg.stop_when_solved and (greedy >= SOLVED_RETURN).all():
                    break
        return log.finish(watch.seconds)


@torch.no_grad()
def update_stats(agent: SeedActorCritic, batch: list[torch.Tensor], clip: float) -> dict:
    """How far an iteration's update moved each seed's policy on its own batch, (S,) each:
    ``approx_kl`` (k3 estimate of KL(pi_old || pi_new), see :mod:`rlhf_lessons.rl.kl`),
    ``clipfrac`` (share of ratios outside the clip range) and ``entropy`` of pi_new."""
    obs, actions, old_logp = batch[:3]
    log_pi = agent.log_probs(obs)
    log_ratio = log_pi.gather(-1, actions.unsqueeze(-1)).squeeze(-1) - old_logp
    return {
        "approx_kl": kl_estimates(log_ratio)["k3"].mean(-1),
        "clipfrac": ((log_ratio.exp() - 1).abs() > clip).float().mean(-1),
        "entropy": -(log_pi.exp() * log_pi).sum(-1).mean(-1),
    }


train_ppo = one_seed_trainer(train_ppo_seeds, PPOConfig, "PPO")
