"""CartPole-v1 for lessons 01-02: seeds x environments stepped together, evaluation, "solved".

CartPole gives +1 per step while the pole stays up; an episode ends when it falls (terminated)
or at 500 steps (truncated), so the return is the episode length, at most 500. Gymnasium's
``reward_threshold`` for CartPole-v1 is 475: an agent whose average return reaches it is called
solved.

The lessons train several seeds at once (:mod:`rlhf_lessons.rl.batched`): :class:`CartPoles`
steps ``S`` seeds x ``N`` environments as one NumPy computation of gymnasium's dynamics
(gymnasium's own vector environments share one generator across their environments and check
every action on every step; here that costs more than the physics), and :class:`CartPoleLog`
turns what they report into one :class:`~rlhf_lessons.training.History` per seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict

import numpy as np
import torch
from torch import nn

from rlhf_lessons.rl.batched import load_seed_
from rlhf_lessons.training import EvalFn, History

ENV_ID = "CartPole-v1"
SOLVED_RETURN = 475.0  # gym.spec("CartPole-v1").reward_threshold
START_LOW, START_HIGH = -0.05, 0.05  # CartPole-v1 starts uniformly in [-0.05, 0.05]^4
ActFn = Callable[[np.ndarray], np.ndarray]  # a policy for evaluation: obs (..., 4) -> actions


def check_cartpole_args(tokenizer, data) -> None:
    """The CartPole trainers take the trainer contract's ``tokenizer`` and ``data`` only as
    ``None`` and the environment id."""
    if tokenizer is not None or data != ENV_ID:
        raise ValueError(
            f"the CartPole trainers take tokenizer=None and data={ENV_ID!r} (the environment), "
            f"got tokenizer={type(tokenizer).__name__}, data={data!r}"
        )


def one_seed_trainer(train_seeds: Callable[..., list[History]], config_class: type, name: str):
    """The trainer contract's ``train_<algo>`` for one seed (``config.seed``), from the
    seed-batched ``train_seeds`` (``name``: the algorithm, for the docstring)."""

    def train(
        policy: nn.Module | None = None,
        tokenizer: None = None,
        data: str = ENV_ID,
        config=None,
        *,
        eval_fn: EvalFn | None = None,
        eval_every: int = 0,
        show_progress: bool = True,
    ) -> History:
        cfg = config or config_class()
        check_cartpole_args(tokenizer, data)
        (history,) = train_seeds([cfg.seed], cfg, policy=policy, eval_fn=eval_fn,
                                 eval_every=eval_every, show_progress=show_progress)  # fmt: skip
        return history

    train.__name__ = train.__qualname__ = train_seeds.__name__.removesuffix("_seeds")
    train.__doc__ = (
        f"{name} on CartPole-v1 for one seed (``config.seed``, default config "
        f":class:`{config_class.__name__}`): the trainer contract's shape. ``policy=None`` "
        "builds a fresh network (returned as ``history.policy``); ``tokenizer`` must be None "
        f'and ``data`` the environment, ``"{ENV_ID}"``. The loop is '
        f":func:`{train_seeds.__name__}` with one seed."
    )
    return train


def start_state(seed: int) -> np.ndarray:
    """The start state (4,) of ``gym.make("CartPole-v1").reset(seed=seed)``, without the env."""
    return np.random.default_rng(seed).uniform(START_LOW, START_HIGH, size=4)


# CartPole-v1's physics constants, as in gymnasium/envs/classic_control/cartpole.py
GRAVITY, MASS_CART, MASS_POLE, HALF_LENGTH, FORCE, TAU = 9.8, 1.0, 0.1, 0.5, 10.0, 0.02
TOTAL_MASS, POLE_MASS_LENGTH = MASS_POLE + MASS_CART, MASS_POLE * HALF_LENGTH
X_LIMIT, THETA_LIMIT = 2.4, 12 * 2 * math.pi / 360  # beyond either: the episode terminates
MAX_STEPS = 500  # the time limit: the episode is truncated


def physics_step(state: np.ndarray, action: np.ndarray) -> np.ndarray:
    """One 0.02 s Euler step of gymnasium's CartPole-v1 dynamics, for any number of carts.

    ``state`` (4, ...) float64 holds (x, x_dot, theta, theta_dot), ``action`` (...) is 0 (push
    left) or 1 (push right); returns the next state (4, ...). The same arithmetic as gymnasium's
    ``CartPoleEnv.step`` (``tests/test_cartpole.py`` checks them step for step).
    """
    x, x_dot, theta, theta_dot = state
    force = np.where(action == 1, FORCE, -FORCE)
    cos, sin = np.cos(theta), np.sin(theta)
    temp = (force + POLE_MASS_LENGTH * np.square(theta_dot) * sin) / TOTAL_MASS
    theta_acc = (GRAVITY * sin - cos * temp) / (
        HALF_LENGTH * (4.0 / 3.0 - MASS_POLE * np.square(cos) / TOTAL_MASS)
    )
    x_acc = temp - POLE_MASS_LENGTH * theta_acc * cos / TOTAL_MASS
    # Euler: each of (x, x_dot, theta, theta_dot) plus TAU times its derivative
    return state + TAU * np.stack((x_dot, x_acc, theta_dot, theta_acc))


class CartPoles:
    """``S`` seeds x ``N`` CartPole-v1 environments, stepped as one batch.

    Args:
        rngs: one NumPy generator per seed (``S`` of them); seed ``i``'s start states are drawn
            from ``rngs[i]`` only, so its episodes do not depend on the other seeds.
        num_envs: ``N``, environments per seed.
        autoreset: ``True`` (PPO): an environment whose episode ends starts its next episode in
            the same ``step`` (gymnasium's same-step autoreset), and ``step`` also returns the
            last observation of the finished episode (``final_obs``, to bootstrap a truncation).
            ``False`` (REINFORCE, evaluation): an ended episode stays ended (its state frozen,
            its reward 0) until :meth:`reset`; :attr:`running` says which are still going.

    Shapes: observations ``(S, N, 4)`` float32, actions ``(S, N)`` in {0, 1}, rewards and the
    ``terminated`` / ``truncated`` flags ``(S, N)``. The dynamics are :func:`physics_step`.
    """

    def __init__(self, rngs: Sequence[np.random.Generator], num_envs: int, autoreset: bool = True):
        if num_envs < 1 or not rngs:
            raise ValueError(f"need >= 1 generator and num_envs >= 1, got {len(rngs)}, {num_envs}")
        self.rngs, self.num_envs, self.autoreset = list(rngs), num_envs, autoreset
        self.shape = (len(self.rngs), num_envs)
        self.state = np.zeros((4, *self.shape))
        self.steps = np.zeros(self.shape, dtype=np.int64)
        self.running = np.zeros(self.shape, dtype=bool)

    def _start(self, where: np.ndarray) -> None:
        """New episodes where ``where`` (S, N) is True, from each seed's own generator."""
        for i, rng in enumerate(self.rngs):
            if where[i].any():
                self.state[:, i, where[i]] = rng.uniform(START_LOW, START_HIGH, (4, where[i].sum()))
        self.steps[where] = 0

    def reset(self, states: np.ndarray | None = None) -> np.ndarray:
        """Start every episode, from each seed's generator or from ``states`` (S, N, 4)."""
        if states is None:
            self._start(np.ones(self.shape, dtype=bool))
        else:
            self.state[:] = np.moveaxis(np.asarray(states, dtype=np.float64), -1, 0)
            self.steps[:] = 0
        self.running[:] = True
        return self.observations()

    def observations(self) -> np.ndarray:
        return self.state.transpose(1, 2, 0).astype(np.float32)  # (4, S, N) -> (S, N, 4)

    def step(self, actions: np.ndarray | torch.Tensor):
        """Advance every environment one step.

        Returns ``(obs, reward, terminated, truncated, final_obs)``. With ``autoreset`` an
        environment that just ended already shows its next episode's first observation in
        ``obs``; ``final_obs`` holds the last one of the finished episode (elsewhere: ``obs``).
        """
        new = physics_step(self.state, np.asarray(actions))
        x, theta = new[0], new[2]
        terminated = (np.abs(x) > X_LIMIT) | (np.abs(theta) > THETA_LIMIT)
        self.steps += 1
        truncated = (self.steps >= MAX_STEPS) & ~terminated  # a fall on the last step terminates
        if not self.autoreset:  # ended episodes stay as they ended
            new = np.where(self.running, new, self.state)
            terminated &= self.running
            truncated &= self.running
        self.state = new
        final_obs = self.observations()
        reward = np.ones(self.shape, dtype=np.float32)
        if self.autoreset:
            done = terminated | truncated
            if not done.any():
                return final_obs, reward, terminated, truncated, final_obs
            self._start(done)
            return self.observations(), reward, terminated, truncated, final_obs
        reward *= self.running
        self.running &= ~(terminated | truncated)
        return final_obs, reward, terminated, truncated, final_obs


def evaluate(
    act: ActFn, episodes: int = 10, seed: int = 10_000, batch: int | None = None
) -> np.ndarray:
    """Play ``episodes`` episodes with ``act`` and return their returns.

    The episodes start where ``gym.make("CartPole-v1").reset(seed=seed + j)`` would, for
    ``j = 0 .. episodes - 1``: evaluation seeds of their own, apart from training's, so a policy
    is judged on starts it was not trained on. Pass a greedy ``act`` for a greedy evaluation.

    ``batch=None``: ``act`` maps (E, 4) observations to (E,) actions; returns (E,).
    ``batch=S``: ``act`` is ``S`` seed-batched policies, (S, E, 4) -> (S, E); returns (S, E), each
    policy on the same ``E`` starts.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    starts = np.stack([start_state(seed + j) for j in range(episodes)])
    envs = CartPoles([np.random.default_rng(0)] * (batch or 1), episodes, autoreset=False)
    obs = envs.reset(np.broadcast_to(starts, (*envs.shape, 4)))
    returns = np.zeros(envs.shape)
    while envs.running.any():
        actions = np.asarray(act(obs if batch else obs[0]))
        obs, reward, *_ = envs.step(actions)
        returns += reward
    return returns if batch else returns[0]


def first_solved(evaluations: Sequence[dict] | History) -> tuple[int, float] | None:
    """``(env_steps, seconds)`` of the first evaluation whose ``greedy_return`` reaches
    :data:`SOLVED_RETURN`, or None if none does. Takes a History or its ``evaluations``."""
    if isinstance(evaluations, History):
        evaluations = evaluations.evaluations
    for e in evaluations:
        if e["greedy_return"] >= SOLVED_RETURN:
            return int(e["env_steps"]), float(e["seconds"])
    return None


class CartPoleLog:
    """The bookkeeping of a batched CartPole run: one :class:`History` per seed.

    - :meth:`steps` after every environment step: counts env steps and collects each finished
      episode's return, end step and end time (``info``: ``episode_returns``,
      ``episode_end_steps``, ``episode_end_seconds``);
    - :meth:`log` once per update: one row per seed (``seconds``, ``env_steps``, ``episodes``,
      ``episode_return``: the mean return of the episodes that ended since the last row, and the
      update's metrics, one value per seed);
    - :meth:`evaluate`: ``greedy_return``, the greedy policies' mean return on
      :func:`evaluate`'s starts, plus ``eval_fn(policy)`` of each seed if given, into
      ``evaluations`` (with ``env_steps`` and ``seconds``). The trainers evaluate before
      training and every ``eval_every`` updates if ``eval_every`` > 0, and after the last one;
    - :meth:`finish`: the final evaluation; each seed's trained network as ``history.policy``
      (a fresh one, or with one seed the trainer's ``policy`` argument, trained in place).
    """

    def __init__(
        self, algo: str, seeds: Sequence[int], config, num_envs: int, *,
        agent: nn.Module | None = None, members: Sequence[nn.Module] = (),
        eval_fn: EvalFn | None = None,
    ) -> None:  # fmt: skip
        self.seeds = list(seeds)
        # what evaluate and finish judge: the seed-batched agent, one plain network per seed
        # to hand each seed its weights, config.eval_episodes greedy episodes, eval_fn
        self.agent, self.members, self.eval_fn = agent, list(members), eval_fn
        self.episodes = config.eval_episodes
        cfg = asdict(config)
        self.histories = [History(algo, {**cfg, "seed": s}) for s in self.seeds]
        for h in self.histories:
            h.info.update(episode_returns=[], episode_end_steps=[], episode_end_seconds=[])
            h.info["batch_seeds"] = self.seeds
        self.env_steps = np.zeros(len(self.seeds), dtype=np.int64)
        self.running_return = np.zeros((len(self.seeds), num_envs))
        self._since_row = [[] for _ in self.seeds]

    def steps(self, reward: np.ndarray, done: np.ndarray, counted: np.ndarray | None = None):
        """One environment step: ``reward`` and ``done`` (S, N); ``counted`` (S, N) says which
        environments really stepped (default: all)."""
        self.env_steps += done.shape[1] if counted is None else counted.sum(1)
        self.running_return += reward
        for i, j in zip(*np.nonzero(done), strict=True):
            h = self.histories[i]
            h.info["episode_returns"].append(float(self.running_return[i, j]))
            h.info["episode_end_steps"].append(int(self.env_steps[i]))
            self._since_row[i].append(float(self.running_return[i, j]))
            self.running_return[i, j] = 0.0

    def log(self, seconds: float, **metrics) -> None:
        """One row per seed; ``metrics`` are (S,) arrays or tensors (or one shared number)."""
        per_seed = {k: torch.as_tensor(v).float().expand(len(self.seeds)).tolist()
                    for k, v in metrics.items()}  # fmt: skip
        for i, h in enumerate(self.histories):
            ended = self._since_row[i]
            h.info["episode_end_seconds"].extend([seconds] * len(ended))
            h.log(
                seconds=seconds,
                env_steps=int(self.env_steps[i]),
                episodes=len(h.info["episode_returns"]),
                episode_return=float(np.mean(ended)) if ended else float("nan"),
                **{k: v[i] for k, v in per_seed.items()},
            )
            self._since_row[i] = []

    def evaluate(self, seconds: float) -> np.ndarray:
        """Greedy evaluation of every seed at once; returns the (S,) mean returns."""
        means = evaluate(self.agent.act_greedy, self.episodes, batch=len(self.seeds)).mean(1)
        for i, h in enumerate(self.histories):
            extra = {}
            if self.eval_fn is not None:
                extra = self.eval_fn(load_seed_(self.members[i], self.agent, i))
            h.evaluations.append({"step": h.steps, "env_steps": int(self.env_steps[i]),
                                  "seconds": seconds, "greedy_return": float(means[i]), **extra})  # fmt: skip
        return means

    def finish(self, seconds: float) -> list[History]:
        """Evaluate the final policies, hand each seed its trained network, return the
        histories (``info["final_return"]``: the final greedy mean return)."""
        means = self.evaluate(seconds)
        for i, h in enumerate(self.histories):
            h.policy = load_seed_(self.members[i], self.agent, i)
            h.info["final_return"] = float(means[i])
        return self.histories
