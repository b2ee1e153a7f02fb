"""Time to solve CartPole-v1: our PPO (``rlhf_lessons.rl.ppo``) against stable-baselines3's PPO.

Both sides use rl-baselines3-zoo's tuned CartPole-v1 hyperparameters (``hyperparams/ppo.yml``):
8 envs x 32 steps, one minibatch of 256, 20 epochs, gamma 0.98, GAE lambda 0.8, learning rate
linear 1e-3 -> 0, clip range linear 0.2 -> 0, no entropy bonus, max_grad_norm 0.5, and the
same value-loss weight (SB3: 0.5 * MSE; ours: vf_coef 1.0 * 0.5 * MSE). One seed at a time on
each side (ours is not batched over seeds here), one torch thread.

"Solved" is defined the same way for both. Every 2048 env steps (checked after an iteration's
PPO update; 256 steps per iteration on both sides, so the evaluation points coincide) the greedy
policy plays the 10 episodes of :func:`rlhf_lessons.rl.cartpole.evaluate` (same starts for
both); the run is solved at the first point where their mean return is >= 475, and stops there
(or at the budget).

Time to solve = training time up to that point, evaluation excluded. The clock is this
thread's CPU time by default (``--clock cpu``: steady when other processes share the machine)
or the wall clock (``--clock wall``); both sides use the same one. SB3's time runs from
``on_training_start`` (after model, env and reset, as ours) and includes everything SB3 does
from there (rollouts, updates, its logging); ours includes rollouts, GAE, updates and the
per-update statistics it logs.

Both samples of runs are independent (the same seed numbers do not give the same random
numbers on both sides), so the intervals are percentile bootstraps that resample each side's
seeds on their own: of mean env steps to solve (ours / SB3: sample efficiency; 1 means none
detectable) and of mean time to solve (ours / SB3; below 1: ours is faster). A separate line
reports throughput: the same seeds of ours trained as one batched run (as lessons 01-02 train
them), its training time until every seed had solved, per seed, against SB3's mean time to
solve; it is not the per-run ratio. The last line is

    CartPole PPO time-to-solve ratio ours/SB3: X.XX [lo, hi] over N seeds; solved a/N vs b/N

Run it from the repository root (needs the ``bench`` extra, i.e. stable-baselines3)::

    .venv/bin/python benchmarks/cartpole.py                # seeds 0-19, 100k-step budget
    .venv/bin/python benchmarks/cartpole.py --seeds 5 --first-seed 100

Timings depend on the machine and on what else runs on it; compare ratios, not seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import time
import types
from collections.abc import Callable, Iterator

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env

import rlhf_lessons.training as training
from rlhf_lessons.rl.cartpole import ENV_ID, SOLVED_RETURN, evaluate, first_solved
from rlhf_lessons.rl.ppo import PPOConfig, train_ppo, train_ppo_seeds

EVAL_EVERY = 2048  # env steps between greedy evaluations (both sides)
EVAL_EPISODES = 10

# rl-baselines3-zoo hyperparams/ppo.yml, CartPole-v1 (everything else: SB3 defaults).
N_ENVS = 8
SB3_KWARGS = dict(
    n_steps=32,
    batch_size=256,
    n_epochs=20,
    gamma=0.98,
    gae_lambda=0.8,
    ent_coef=0.0,
)
LR, CLIP = 1e-3, 0.2  # both annealed linearly to 0 ("lin_1e-3", "lin_0.2" in the zoo)
BATCH = N_ENVS * SB3_KWARGS["n_steps"]  # env steps per iteration: 256
CLOCKS = {"cpu": time.thread_time, "wall": time.perf_counter}

Point = tuple[int, float] | None  # (env steps, seconds) at the first solved evaluation


def linear_schedule(initial: float):
    """The zoo's ``lin_<x>``: SB3 calls it with progress_remaining, 1 at the start -> 0."""

    def schedule(progress_remaining: float) -> float:
        return progress_remaining * initial

    return schedule


# ---------------------------------------------------------------------------------------------
# Ours
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def training_clock(clock: Callable[[], float]) -> Iterator[None]:
    """Make :class:`rlhf_lessons.training.Stopwatch` (which reads ``time.perf_counter`` of its
    module) read ``clock`` instead, for the duration of the block."""
    saved = training.time
    training.time = types.SimpleNamespace(perf_counter=clock)
    try:
        yield
    finally:
        training.time = saved


def run_ours(seed: int, budget: int, clock: Callable[[], float]) -> Point:
    """(env steps, train seconds) at the first solved evaluation, or None if never solved.

    The trainer's clock runs only inside its iterations (rollout + GAE + update + the
    statistics it logs): seeding, networks, env reset and the greedy evaluations are not
    counted.
    """
    config = PPOConfig.rl_zoo(
        total_timesteps=budget, eval_episodes=EVAL_EPISODES, stop_when_solved=True, seed=seed
    )
    with training_clock(clock):
        history = train_ppo(config=config, eval_every=EVAL_EVERY // BATCH, show_progress=False)
    return first_solved(history)


def run_ours_batched(seeds: list[int], budget: int, clock: Callable[[], float]) -> float | None:
    """Train seconds of one batched run of all ``seeds`` until the last of them first solved
    (each seed's own solved point, the same evaluations as :func:`run_ours`), or None if one
    never solved."""
    config = PPOConfig.rl_zoo(
        total_timesteps=budget, eval_episodes=EVAL_EPISODES, stop_when_solved=True, seed=seeds[0]
    )
    with training_clock(clock):
        histories = train_ppo_seeds(
            seeds, config, eval_every=EVAL_EVERY // BATCH, show_progress=False
        )
    points = [first_solved(h) for h in histories]
    return None if None in points else max(p[1] for p in points)


# ---------------------------------------------------------------------------------------------
# stable-baselines3
# ---------------------------------------------------------------------------------------------


class SolvedCallback(BaseCallback):
    """Greedy evaluation every EVAL_EVERY env steps with our ``evaluate``; stops SB3 once solved.

    SB3's ``learn`` loop is: collect_rollouts (on_rollout_start, env steps with on_step,
    on_rollout_end) -> train() (the PPO update). ``on_rollout_end`` therefore comes *before*
    the update of that iteration; to judge the policy after the update, as ours does, we
    evaluate at the start of the next rollout and, for the last iteration, at training end.

    The clock starts at ``on_training_start`` (after model construction, env creation and the
    env reset in ``learn``'s setup, matching ours) and includes everything SB3 does from there
    on (rollouts, updates, its logging) except our evaluations, whose time is subtracted.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        super().__init__()
        self.clock = clock
        self.evaluations: list[dict] = []
        self.next_eval = EVAL_EVERY
        self.solved = False
        self.start = 0.0
        self.eval_seconds = 0.0

    def _act_greedy(self, obs: np.ndarray) -> np.ndarray:
        return self.model.predict(obs, deterministic=True)[0]

    def _maybe_evaluate(self) -> None:
        if self.num_timesteps < self.next_eval:
            return
        t_eval = self.clock()
        train_seconds = t_eval - self.start - self.eval_seconds
        self.next_eval += EVAL_EVERY
        mean_return = float(evaluate(self._act_greedy, EVAL_EPISODES).mean())
        self.evaluations.append(
            {
                "env_steps": self.num_timesteps,
                "seconds": train_seconds,
                "greedy_return": mean_return,
            }
        )
        self.solved = mean_return >= SOLVED_RETURN
        self.eval_seconds += self.clock() - t_eval

    def _on_training_start(self) -> None:
        self.start = self.clock()

    def _on_rollout_start(self) -> None:
        self._maybe_evaluate()

    def _on_step(self) -> bool:
        # on_rollout_start cannot stop training; returning False here (after one more env step,
        # past the recorded point and so outside the measured time) does.
        return not self.solved

    def _on_training_end(self) -> None:
        if not self.solved:  # the update of the last iteration has not been evaluated yet
            self._maybe_evaluate()


def run_sb3(seed: int, budget: int, clock: Callable[[], float]) -> Point:
    """(env steps, train seconds) at the first solved evaluation, or None if never solved."""
    env = make_vec_env(ENV_ID, n_envs=N_ENVS, seed=seed)
    model = PPO(
        "MlpPolicy",
        env,
        learning_rate=linear_schedule(LR),
        clip_range=linear_schedule(CLIP),
        seed=seed,
        device="cpu",
        verbose=0,
        **SB3_KWARGS,
    )
    callback = SolvedCallback(clock)
    model.learn(total_timesteps=budget, callback=callback)
    env.close()
    return first_solved(callback.evaluations)


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def ratio_of_means(
    a: np.ndarray, b: np.ndarray, n_boot: int = 10_000, seed: int = 0
) -> tuple[float, float, float]:
    """mean(a) / mean(b) and its 95% percentile-bootstrap interval, each sample resampled on
    its own (the two sides' runs are independent)."""
    rng = np.random.default_rng(seed)
    ra = a[rng.integers(0, a.size, (n_boot, a.size))].mean(1)
    rb = b[rng.integers(0, b.size, (n_boot, b.size))].mean(1)
    lo, hi = np.quantile(ra / rb, [0.025, 0.975])
    return float(a.mean() / b.mean()), float(lo), float(hi)


def fmt(point: Point) -> str:
    if point is None:
        return f"{'unsolved':>8} {'':>7}"
    return f"{point[0]:8d} {point[1]:7.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=20, help="number of seeds per side")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds FIRST .. FIRST+SEEDS-1")
    parser.add_argument("--budget", type=int, default=100_000, help="env steps per run")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu")
    args = parser.parse_args()
    if args.seeds < 2 or args.budget < BATCH:
        parser.error(f"need --seeds >= 2 (for an interval) and --budget >= {BATCH}")
    # Whole iterations only, so both sides run the same number of iterations (ours does
    # budget // 256 of them; SB3 would start one more to reach the budget exactly).
    budget = args.budget // BATCH * BATCH
    clock = CLOCKS[args.clock]
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))

    os.environ["RLHF_LESSONS_PROGRESS"] = "0"  # no progress bars (show_progress=False too)
    torch.set_num_threads(1)  # our trainer also uses 1 thread (PPOConfig.threads)

    print(f"CartPole-v1 time to solve, seeds {seeds[0]}-{seeds[-1]}, budget {budget} env steps")
    print(
        f"solved: greedy mean return over {EVAL_EPISODES} eval episodes >= {SOLVED_RETURN:g}, "
        f"checked every {EVAL_EVERY} env steps; {args.clock} seconds, evaluation excluded"
    )
    cfg = PPOConfig.rl_zoo()
    print(
        f"ours: PPOConfig.rl_zoo() num_envs={cfg.num_envs} num_steps={cfg.num_steps} "
        f"minibatch_size={cfg.minibatch_size} epochs={cfg.epochs} gamma={cfg.gamma} "
        f"gae_lambda={cfg.gae_lambda} lr={cfg.lr} (anneal={cfg.anneal_lr}) "
        f"clip_eps={cfg.clip_eps} (anneal={cfg.anneal_clip}) ent_coef={cfg.ent_coef} "
        f"vf_coef={cfg.vf_coef} max_grad_norm={cfg.max_grad_norm}"
    )
    sb3_settings = " ".join(f"{k}={v}" for k, v in SB3_KWARGS.items())
    print(
        f"SB3:  PPO('MlpPolicy') n_envs={N_ENVS} {sb3_settings} learning_rate=lin_{LR:g} "
        f"clip_range=lin_{CLIP:g} (other settings: SB3 defaults)"
    )
    print(f"torch threads: {torch.get_num_threads()}; order alternates: ours first on even seeds")
    print()
    print(f"{'seed':>5} | ours: {'steps':>8} {'seconds':>7} | SB3: {'steps':>8} {'seconds':>7}")

    ours: list[Point] = []
    sb3: list[Point] = []
    for seed in seeds:
        # Alternate which side goes first, so neither always runs on a "fresh" process.
        if seed % 2 == 0:
            ours.append(run_ours(seed, budget, clock))
            sb3.append(run_sb3(seed, budget, clock))
        else:
            sb3.append(run_sb3(seed, budget, clock))
            ours.append(run_ours(seed, budget, clock))
        print(f"{seed:>5} |       {fmt(ours[-1])} |      {fmt(sb3[-1])}", flush=True)

    print()
    n = len(seeds)
    solved = {
        name: [p for p in runs if p is not None] for name, runs in (("ours", ours), ("SB3", sb3))
    }
    for name, points in solved.items():
        if points:
            steps, secs = np.array(points, dtype=float).T
            print(
                f"{name:<4} solved {len(points)}/{n}: mean {steps.mean():8.0f} steps "
                f"(median {np.median(steps):.0f}), mean {secs.mean():.2f} s, "
                f"{secs.sum() / steps.sum() * 1e3:.3f} ms per env step"
            )
    if len(solved["ours"]) < n or len(solved["SB3"]) < n:
        print("not every run solved CartPole: no ratio (an unsolved run has no time to solve)")
        print(
            f"CartPole PPO time-to-solve ratio ours/SB3: n/a over {n} seeds; "
            f"solved {len(solved['ours'])}/{n} vs {len(solved['SB3'])}/{n}"
        )
        return
    o, s = np.array(ours, dtype=float), np.array(sb3, dtype=float)
    batched = run_ours_batched(seeds, budget, clock)
    if batched is not None:
        print(
            f"ours, the {n} seeds as one batched run (as lessons 01-02 train them): "
            f"{batched:.2f} s until every seed had solved = {batched / n:.2f} s per seed; SB3 "
            f"one at a time: {s[:, 1].mean():.2f} s per seed; throughput ratio "
            f"{batched / n / s[:, 1].mean():.2f} (not the per-run ratio below)"
        )
    steps_ratio = ratio_of_means(o[:, 0], s[:, 0])
    step_time = (o[:, 1].sum() / o[:, 0].sum()) / (s[:, 1].sum() / s[:, 0].sum())
    if steps_ratio[1] <= 1.0 <= steps_ratio[2]:
        verdict = "the interval holds 1: no difference detectable"
    else:
        verdict = f"the interval excludes 1: ours needs {'more' if steps_ratio[1] > 1 else 'fewer'}"
        verdict += " env steps on these seeds"
    print(
        f"sample efficiency, mean env steps to solve ours/SB3: {steps_ratio[0]:.2f} "
        f"[{steps_ratio[1]:.2f}, {steps_ratio[2]:.2f}] ({verdict})"
    )
    print(f"time per env step ours/SB3: {step_time:.2f}")
    ratio, lo, hi = ratio_of_means(o[:, 1], s[:, 1])
    if not math.isfinite(ratio):
        ratio = lo = hi = math.inf
    print(
        f"CartPole PPO time-to-solve ratio ours/SB3: {ratio:.2f} [{lo:.2f}, {hi:.2f}] over {n} "
        f"seeds; solved {n}/{n} vs {n}/{n}"
    )


if __name__ == "__main__":
    main()
