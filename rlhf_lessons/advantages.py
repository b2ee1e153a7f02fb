"""Returns and advantages: what a policy-gradient update multiplies ``grad log pi`` by.

- Reward-to-go (REINFORCE, Williams 1992): ``G_t = sum_{t' >= t} gamma^(t'-t) r_t'``.
- Generalised advantage estimation (GAE, Schulman et al. 2015, arXiv 1506.02438):
  ``delta_t = r_t + gamma * V(s_{t+1}) * (1 - d_t) - V(s_t)`` and
  ``A_t = sum_l (gamma * lambda)^l delta_{t+l}``, cut at episode ends; returns ``R_t = A_t + V(s_t)``.

Episode ends come in two kinds (gymnasium's 5-tuple API keeps them apart):
*terminated* (the pole fell: no future reward) and *truncated* (the 500-step time limit: the
future was cut off, not zero). Treating a truncation as a termination tells the agent that
balancing for 500 steps leads to a dead end. The fix used here (as in stable-baselines3): at a
truncation, fold ``gamma * V(final state)`` into that step's reward, then cut the recursion.
"""

from __future__ import annotations

import torch


def reward_to_go(rewards: torch.Tensor, gamma: float, bootstrap: float = 0.0) -> torch.Tensor:
    """Discounted reward-to-go of one episode.

    Args:
        rewards: (T,) rewards r_0 .. r_{T-1}.
        gamma: discount in [0, 1].
        bootstrap: value of the state after the last step (0 if the episode terminated,
            V(s_T) if it was truncated).

    Returns:
        (T,) tensor with ``G_t = r_t + gamma * G_{t+1}`` and ``G_T = bootstrap``.
    """
    if rewards.ndim != 1:
        raise ValueError(f"rewards must be 1-D (T,), got shape {tuple(rewards.shape)}")
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    out = torch.empty_like(rewards, dtype=torch.float32)
    running = float(bootstrap)
    for t in range(len(rewards) - 1, -1, -1):
        running = float(rewards[t]) + gamma * running
        out[t] = running
    return out


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    dones: torch.Tensor,
    last_value: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over a time-major rollout of N parallel environments.

    Args:
        rewards: (T, N) reward of step t (with ``gamma * V(final state)`` already added at
            truncations, see the module docstring).
        values: (T, N) V(s_t) from the critic at rollout time.
        dones: (T, N) 1.0 where the episode ended *after* step t (terminated or truncated).
        last_value: (N,) V of the state after the last step of the rollout.
        gamma, lam: discount and GAE lambda in [0, 1].

    Returns:
        ``(advantages, returns)``, both (T, N); ``returns = advantages + values`` are the
        value-function targets. lam = 1 gives Monte-Carlo returns minus V; lam = 0 gives the
        one-step TD residual delta_t.
    """
    if rewards.shape != values.shape or rewards.shape != dones.shape:
        raise ValueError(
            "rewards, values and dones must share shape (T, N), got "
            f"{tuple(rewards.shape)}, {tuple(values.shape)}, {tuple(dones.shape)}"
        )
    if last_value.shape != rewards.shape[1:]:
        raise ValueError(
            f"last_value must have shape (N,) = {tuple(rewards.shape[1:])}, "
            f"got {tuple(last_value.shape)}"
        )
    if not (0.0 <= gamma <= 1.0 and 0.0 <= lam <= 1.0):
        raise ValueError(f"gamma and lam must be in [0, 1], got {gamma}, {lam}")
    num_steps = rewards.shape[0]
    advantages = torch.zeros_like(rewards)
    next_adv = torch.zeros_like(last_value)
    next_value = last_value
    for t in range(num_steps - 1, -1, -1):
        alive = 1.0 - dones[t]
        delta = rewards[t] + gamma * next_value * alive - values[t]
        next_adv = delta + gamma * lam * alive * next_adv
        advantages[t] = next_adv
        next_value = values[t]
    return advantages, advantages + values


def normalize(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Shift and scale to mean 0, standard deviation 1 (a no-op shift for a single element)."""
    if x.numel() < 2:
        return x - x.mean()
    return (x - x.mean()) / (x.std() + eps)
