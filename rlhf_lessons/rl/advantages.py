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


def check_same_shape(**tensors: torch.Tensor | None) -> None:
    """The losses' input check: every tensor given (``None``: an optional one left out) must
    have one shape."""
    shapes = {name: tuple(t.shape) for name, t in tensors.items() if t is not None}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"{', '.join(shapes)} must share one shape, got {shapes}")


def reward_to_go(
    rewards: torch.Tensor, gamma: float, bootstrap: float | torch.Tensor = 0.0
) -> torch.Tensor:
    """Discounted reward-to-go ``G_t = r_t + gamma * G_{t+1}``, with ``G_T = bootstrap``.

    ``rewards`` (..., T): r_0 .. r_{T-1} of an episode, or of a batch of episodes padded with
    zeros after their end (padding adds nothing). ``bootstrap``, a number or (...): the value of
    the state after step T-1 (0 if the episode terminated, V(s_T) if it was truncated).
    Returns (..., T).
    """
    if rewards.ndim < 1:
        raise ValueError(f"rewards must be (..., T), got shape {tuple(rewards.shape)}")
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    rewards = rewards.float()
    out = torch.empty_like(rewards)
    running = torch.as_tensor(bootstrap, dtype=torch.float32).expand(rewards.shape[:-1])
    for t in range(rewards.shape[-1] - 1, -1, -1):
        running = rewards[..., t] + gamma * running
        out[..., t] = running
    return out


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    dones: torch.Tensor,
    last_value: torch.Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over a time-major rollout of N parallel environments.

    (For S seeds of N environments each, every (T, N) below is (T, S, N) and ``last_value`` is
    (S, N): the recursion runs along the first dimension only.)

    Args:
        rewards: (T, N) reward of step t (with ``gamma * V(final state)`` already added at
            truncations, see the module docstring).
        values: (T, N) V(s_t) from the critic at rollout time.
        dones: (T, N) 1.0 where the episode ended *after* step t (terminated or truncated).
        last_value: (N,) V of the state after the last step of the rollout.
        gamma, gae_lambda: discount and GAE lambda in [0, 1].

    Returns:
        ``(advantages, returns)``, both (T, N); ``returns = advantages + values`` are the
        value-function targets. lambda = 1 gives Monte-Carlo returns minus V; lambda = 0 gives
        the one-step TD residual delta_t.
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
    if not (0.0 <= gamma <= 1.0 and 0.0 <= gae_lambda <= 1.0):
        raise ValueError(f"gamma and gae_lambda must be in [0, 1], got {gamma}, {gae_lambda}")
    alive = 1.0 - dones
    next_values = torch.cat((values[1:], last_value[None]))  # V(s_{t+1})
    # every delta_t at once; only the discounted sum runs step by step
    deltas = rewards + gamma * next_values * alive - values
    decay = gamma * gae_lambda * alive  # (gamma lambda) (1 - d_t): 0 cuts at an episode end
    advantages = torch.empty_like(deltas)
    next_adv = torch.zeros_like(last_value)
    for t in range(rewards.shape[0] - 1, -1, -1):
        # A_t = delta_t + gamma lambda (1 - d_t) A_{t+1}
        next_adv = torch.addcmul(deltas[t], decay[t], next_adv)
        advantages[t] = next_adv
    return advantages, advantages + values


def normalize(
    x: torch.Tensor, eps: float = 1e-8, dim: int | None = None, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Shift and scale to mean 0, standard deviation 1 (a no-op shift for a single element).

    ``dim=None``: over all elements; ``dim=-1``: each row on its own (one row per seed in a
    seed-batched run). ``mask`` (same shape): only the masked elements count, and the others
    come out as 0. The standard deviation is the unbiased one (``torch.std``).
    """
    if mask is None:
        if (x.numel() if dim is None else x.shape[dim]) < 2:
            return x - (x.mean() if dim is None else x.mean(dim, keepdim=True))
        if dim is None:
            return (x - x.mean()) / (x.std() + eps)
        return (x - x.mean(dim, keepdim=True)) / (x.std(dim, keepdim=True) + eps)
    m = mask.to(x.dtype)
    dims = tuple(range(x.dim())) if dim is None else (dim,)
    count = m.sum(dims, keepdim=True)
    mean = (x * m).sum(dims, keepdim=True) / count.clamp(min=1)
    var = ((x - mean).pow(2) * m).sum(dims, keepdim=True) / (count - 1).clamp(min=1)
    scale = torch.where(count > 1, var.sqrt() + eps, torch.ones_like(var))
    return (x - mean) / scale * m


# --- Language-model rollouts: masked statistics and group baselines ----------------------------


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over the positions where ``mask`` is 1 (all of them, or along ``dim``)."""
    mask = mask.to(x.dtype)
    if dim is None:
        count = mask.sum()
        if count == 0:
            raise ValueError("mask selects no element: the masked mean is undefined")
        return (x * mask).sum() / count
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """Normalise ``x`` to unit variance (and zero mean, with ``shift_mean``) over the masked
    positions only; padding keeps its value 0. (B, T), (B, T) -> (B, T).

    PPO for LMs whitens advantages this way ("N implementation details", no. 5); padding
    tokens must not pull the statistics.
    """
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask.to(x.dtype)


def _check_groups(rewards: torch.Tensor, k: str) -> None:
    if rewards.ndim != 2 or rewards.shape[1] < 2:
        raise ValueError(
            f"rewards must be (B, {k}) with {k} >= 2 samples per prompt, got {tuple(rewards.shape)}"
        )
    if not torch.isfinite(rewards).all():
        raise ValueError("rewards contain NaN or inf: check the reward function's output")


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """REINFORCE leave-one-out (Kool et al. 2019; Ahmadian et al. 2024, arXiv 2402.14740).

    Each of the k samples of a prompt is baselined by the mean reward of the *other* k - 1:
    ``A_i = r_i - mean_{j != i} r_j = k / (k - 1) * (r_i - mean_j r_j)``.

    ``rewards`` (B, k), k >= 2 samples per prompt -> (B, k) advantages; each row sums to 0.
    """
    _check_groups(rewards, "k")
    k = rewards.shape[1]
    return (rewards - rewards.mean(dim=1, keepdim=True)) * k / (k - 1)


def grpo_advantages(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """GRPO's group-normalised advantage (DeepSeekMath, arXiv 2402.03300):
    ``A_i = (r_i - mean(r)) / (std(r) + eps)`` within each prompt's group of G samples.

    ``rewards`` (B, G) -> (B, G); mean 0 and std ~1 per group, 0 for a group of equal rewards.
    """
    _check_groups(rewards, "G")
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True)
    return (rewards - mean) / (std + eps)
