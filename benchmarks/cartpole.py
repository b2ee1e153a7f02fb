"""Time to solve CartPole-v1: our PPO (``rlhf_lessons.rl.ppo``) against stable-baselines3's PPO.

Both sides use rl-baselines3-zoo's tuned CartPole-v1 hyperparameters (``hyperparams/ppo.yml``):
8 envs x 32 steps, one minibatch of 256, 20 epochs, gamma 0.98, GAE lambda 0.8, learning rate
linear 1e-3 -> 0, clip range linear 0.2 -> 0, no entropy bonus, max_grad_norm 0.5, and the
same value-loss weight (SB3: 0.5 * MSE; ours: vf_coef 1.0 * 0.5 * MSE).

"Solved" is defined the same way for both. Every 2048 env steps (checked after an iteration's
PPO update, once the step count has crossed the next multiple of 2048; 256 steps per iteration
on both sides, so the evaluation points coincide) the greedy policy plays the 10 episodes of
:func:`rlhf_lessons.rl.cartpole.evaluate` (same evaluation seeds for both); the run is solved at
the first point where their mean return is >= 475. Each run stops there, or at the budget.

Time to solve = training wall-clock seconds up to that point, evaluation time excluded, and the
env steps at that point. Both sides run in this process, one after the other for each seed
(the order alternates from seed to seed), on one torch thread. An unsolved run counts as
+infinity in the medians. The last line printed is

    time-to-solve ratio ours/SB3: X.XX (solved ours N/5, SB3 M/5)

with X.XX = median seconds of ours / median seconds of SB3 (below 1: ours is faster).

Run it from the repository root (needs the ``bench`` extra, i.e. stable-baselines3)::

    .venv/bin/python benchmarks/cartpole.py               # seeds 0-4, 100k-step budget
    .venv/bin/python benchmarks/cartpole.py --seeds 2 --budget 50000

Timings depend on the machine and on what else runs on it; compare ratios, not seconds.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env

from rlhf_lessons.rl.cartpole import ENV_ID, SOLVED_RETURN, evaluate, first_solved
from rlhf_lessons.rl.ppo import PPOConfig, train_ppo

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


def linear_schedule(initial: float):
    """The zoo's ``lin_<x>``: SB3 calls it with progress_remaining, 1 at the start -> 0."""

    def schedule(progress_remaining: float) -> float:
        return progress_remaining * initial

    return schedule


# ---------------------------------------------------------------------------------------------
# Ours
# ---------------------------------------------------------------------------------------------


def run_ours(seed: int, budget: int) -> tuple[int, float] | None:
    """(env steps, train seconds) at the first solved evaluation, or None if never solved.

    train_ppo's clock runs only inside its iterations (rollout + GAE + update): seeding, env
    and network construction, env reset and the greedy evaluations are not counted.
    """
    config = PPOConfig.rl_zoo(
        total_timesteps=budget,
        eval_every=EVAL_EVERY,
        eval_episodes=EVAL_EPISODES,
        stop_when_solved=True,
    )
    result = train_ppo(config, seed=seed, show_progress=False)
    return first_solved(result.evals)


# ---------------------------------------------------------------------------------------------
# stable-baselines3
# ---------------------------------------------------------------------------------------------


class SolvedCallback(BaseCallback):
    """Greedy evaluation every EVAL_EVERY env steps with our ``evaluate``; stops SB3 once solved.

    SB3's ``learn`` loop is: collect_rollouts (on_rollout_start, env steps with on_step,
    on_rollout_end) -> train() (the PPO update). ``on_rollout_end`` therefore comes *before*
    the update of that iteration; to judge the policy after the update, as train_ppo does, we
    evaluate at the start of the next rollout and, for the last iteration, at training end.

    The clock starts at ``on_training_start`` (after model construction, env creation and the
    env reset in ``learn``'s setup, matching train_ppo) and includes everything SB3 does from
    there on (rollouts, updates, its logging) except our evaluations, whose time is subtracted.
    """

    def __init__(self) -> None:
        super().__init__()
        self.evals: list[tuple[int, float, float]] = []  # (env steps, train seconds, mean)
        self.next_eval = EVAL_EVERY
        self.solved = False
        self.start = 0.0
        self.eval_seconds = 0.0

    def _act_greedy(self, obs: np.ndarray) -> np.ndarray:
        return self.model.predict(obs, deterministic=True)[0]

    def _maybe_evaluate(self) -> None:
        if self.num_timesteps < self.next_eval:
            return
        t_eval = time.perf_counter()
        train_seconds = t_eval - self.start - self.eval_seconds
        self.next_eval += EVAL_EVERY
        mean_return = float(evaluate(self._act_greedy, EVAL_EPISODES).mean())
        self.evals.append((self.num_timesteps, train_seconds, mean_return))
        self.solved = mean_return >= SOLVED_RETURN
        self.eval_seconds += time.perf_counter() - t_eval

    def _on_training_start(self) -> None:
        self.start = time.perf_counter()

    def _on_rollout_start(self) -> None:
        self._maybe_evaluate()

    def _on_step(self) -> bool:
        # on_rollout_start cannot stop training; returning False here (after one more env step,
        # past the recorded point and so outside the measured time) does.
        return not self.solved

    def _on_training_end(self) -> None:
        if not self.solved:  # the update of the last iteration has not been evaluated yet
            self._maybe_evaluate()


def run_sb3(seed: int, budget: int) -> tuple[int, float] | None:
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
    callback = SolvedCallback()
    model.learn(total_timesteps=budget, callback=callback)
    env.close()
    return first_solved(callback.evals)


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def steps_and_seconds(point: tuple[int, float] | None) -> tuple[float, float]:
    """An unsolved run counts as +infinity."""
    return (math.inf, math.inf) if point is None else (float(point[0]), point[1])


def fmt_steps(steps: float) -> str:
    return f"{'unsolved':>8}" if math.isinf(steps) else f"{steps:8.0f}"


def fmt_seconds(seconds: float) -> str:
    return f"{'inf':>7}" if math.isinf(seconds) else f"{seconds:7.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="run seeds 0 .. SEEDS-1")
    parser.add_argument("--budget", type=int, default=100_000, help="env steps per run")
    args = parser.parse_args()
    if args.seeds < 1 or args.budget < BATCH:
        parser.error(f"need --seeds >= 1 and --budget >= {BATCH}")
    # Whole iterations only, so both sides run the same number of iterations (train_ppo does
    # budget // 256 of them; SB3 would start one more to reach the budget exactly).
    budget = args.budget // BATCH * BATCH

    os.environ["RLHF_LESSONS_PROGRESS"] = "0"  # no progress bars (show_progress=False too)
    torch.set_num_threads(1)  # train_ppo also sets 1 thread internally

    print(f"CartPole-v1 time to solve, seeds 0-{args.seeds - 1}, budget {budget} env steps")
    print(
        f"solved: greedy mean return over {EVAL_EPISODES} eval episodes >= {SOLVED_RETURN:g}, "
        f"checked every {EVAL_EVERY} env steps; seconds exclude evaluation"
    )
    ours_cfg = PPOConfig.rl_zoo()
    print(
        f"ours: PPOConfig.rl_zoo() num_envs={ours_cfg.num_envs} num_steps={ours_cfg.num_steps} "
        f"num_minibatches={ours_cfg.num_minibatches} update_epochs={ours_cfg.update_epochs} "
        f"gamma={ours_cfg.gamma} gae_lambda={ours_cfg.gae_lambda} lr={ours_cfg.lr} "
        f"(anneal={ours_cfg.anneal_lr}) clip={ours_cfg.clip_coef} (anneal={ours_cfg.anneal_clip}) "
        f"ent_coef={ours_cfg.ent_coef} vf_coef={ours_cfg.vf_coef} "
        f"max_grad_norm={ours_cfg.max_grad_norm}"
    )
    sb3_settings = " ".join(f"{k}={v}" for k, v in SB3_KWARGS.items())
    print(
        f"SB3:  PPO('MlpPolicy') n_envs={N_ENVS} {sb3_settings} learning_rate=lin_{LR:g} "
        f"clip_range=lin_{CLIP:g} (other settings: SB3 defaults)"
    )
    print(f"torch threads: {torch.get_num_threads()}; order alternates: ours first on even seeds")
    print()

    ours: list[tuple[float, float]] = []
    sb3: list[tuple[float, float]] = []
    for seed in range(args.seeds):
        # Alternate which side goes first, so neither always runs on a "fresh" process.
        if seed % 2 == 0:
            ours.append(steps_and_seconds(run_ours(seed, budget)))
            sb3.append(steps_and_seconds(run_sb3(seed, budget)))
        else:
            sb3.append(steps_and_seconds(run_sb3(seed, budget)))
            ours.append(steps_and_seconds(run_ours(seed, budget)))
        (o_steps, o_secs), (s_steps, s_secs) = ours[-1], sb3[-1]
        print(
            f"seed {seed}: ours  steps={fmt_steps(o_steps)}  seconds={fmt_seconds(o_secs)}  "
            f"| SB3 steps={fmt_steps(s_steps)}  seconds={fmt_seconds(s_secs)}",
            flush=True,
        )

    print()
    medians = {}
    for name, runs in (("ours", ours), ("SB3", sb3)):
        med_steps = statistics.median(steps for steps, _ in runs)
        med_secs = statistics.median(secs for _, secs in runs)
        medians[name] = med_secs
        print(f"median {name:<4}  steps={fmt_steps(med_steps)}  seconds={fmt_seconds(med_secs)}")

    n_ours = sum(not math.isinf(secs) for _, secs in ours)
    n_sb3 = sum(not math.isinf(secs) for _, secs in sb3)
    # Ours unsolved in the median -> inf (even if SB3's is too); SB3's alone -> 0.00.
    if math.isinf(medians["ours"]):
        ratio = "inf"
    else:
        ratio = f"{medians['ours'] / medians['SB3']:.2f}"
    print(
        f"time-to-solve ratio ours/SB3: {ratio} "
        f"(solved ours {n_ours}/{args.seeds}, SB3 {n_sb3}/{args.seeds})"
    )


if __name__ == "__main__":
    main()
