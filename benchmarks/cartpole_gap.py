"""Where does a gap in env steps to solve CartPole between our PPO and stable-baselines3's come from?

Three pieces of evidence (issue 17, item 4), each printed by this script:

1. ``--diff``: the side-by-side configuration, SB3's side read from the constructed ``PPO``
   object and its policy (hyperparameters, schedules at progress 1 and 0.5, Adam's settings,
   the singular values of each layer's initial weights, i.e. the orthogonal gains), ours from
   ``PPOConfig.rl_zoo()`` and a fresh ``ActorCritic``. (``tests/test_ppo.py::
   test_one_update_equals_stable_baselines3`` checks the update itself: the same weights and
   rollout give the same parameters after the 20 epochs.)
2. ``--sides``: env steps to solve of both sides over many seeds, with 95% bootstrap intervals
   of the median, the mean and the ratio of means. Env steps are load-free, so this can run on a
   busy machine.
3. ``--ablations``: our PPO with one implementation detail changed at a time (the "37
   implementation details" checklist), all seeds of one setting trained as one batched run.

"Solved" is the benchmark's (``benchmarks/cartpole.py``): greedy mean return over 10 evaluation
episodes >= 475, checked every 2048 env steps. An unsolved run counts as 2 x the budget (it is
censored: only its rank matters to the median). Run from the repository root::

    .venv/bin/python benchmarks/cartpole_gap.py --diff
    .venv/bin/python benchmarks/cartpole_gap.py --sides --seeds 40
    .venv/bin/python benchmarks/cartpole_gap.py --ablations --seeds 20 --budget 51200
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import cartpole as bench  # noqa: E402  (benchmarks/cartpole.py: run_sb3, the SB3 settings)

from rlhf_lessons.rl.cartpole import first_solved  # noqa: E402
from rlhf_lessons.rl.ppo import ActorCritic, PPOConfig, train_ppo_seeds  # noqa: E402

ABLATIONS = {
    "rl_zoo (as SB3)": {},
    "clip range constant": dict(anneal_clip=False),
    "learning rate constant": dict(anneal_lr=False),
    "no advantage normalisation": dict(norm_adv=False),
    "no timeout bootstrap": dict(bootstrap_truncated=False),
    "value loss clipped (0.2)": dict(clip_value=0.2),
    "no grad-norm clip": dict(max_grad_norm=float("inf")),
    "Adam eps 1e-8": dict(adam_eps=1e-8),
    "value loss weight halved": dict(vf_coef=0.5),
}


def interval(x: np.ndarray, stat, n_boot: int = 10_000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    boots = stat(x[rng.integers(0, x.size, (n_boot, x.size))], axis=1)
    lo, hi = np.quantile(boots, [0.025, 0.975])
    return float(lo), float(hi)


def describe(name: str, steps: list[float], budget: int) -> str:
    x = np.array(steps, dtype=float)
    solved = int(np.isfinite(x).sum())
    x = np.where(np.isfinite(x), x, 2 * budget)  # censored: only its rank matters to the median
    med, mean = np.median(x), x.mean()
    (mlo, mhi), (alo, ahi) = interval(x, np.median), interval(x, np.mean)
    return (
        f"{name:<28} n={x.size:<3} solved {solved:>2}/{x.size:<3} median {med:7.0f} "
        f"[{mlo:6.0f}, {mhi:6.0f}]  mean {mean:7.0f} [{alo:6.0f}, {ahi:6.0f}]"
    )


def ours_steps(seeds: list[int], budget: int, **overrides) -> list[float]:
    cfg = PPOConfig.rl_zoo(
        total_timesteps=budget, eval_episodes=bench.EVAL_EPISODES, stop_when_solved=True,
        **overrides,
    )  # fmt: skip
    histories = train_ppo_seeds(seeds, cfg, eval_every=bench.EVAL_EVERY // bench.BATCH,
                                show_progress=False)  # fmt: skip
    return [float(p[0]) if (p := first_solved(h)) else float("inf") for h in histories]


def sb3_steps(seeds: list[int], budget: int) -> list[float]:
    out = []
    for seed in seeds:
        point = bench.run_sb3(seed, budget, time.thread_time)
        out.append(float(point[0]) if point else float("inf"))
        print(f"  SB3 seed {seed}: {out[-1]:.0f}", flush=True)
    return out


def config_diff() -> None:
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    env = make_vec_env(bench.ENV_ID, n_envs=bench.N_ENVS, seed=0)
    m = PPO("MlpPolicy", env, learning_rate=bench.linear_schedule(bench.LR),
            clip_range=bench.linear_schedule(bench.CLIP), seed=0, device="cpu",
            **bench.SB3_KWARGS)  # fmt: skip
    cfg, pol, adam = PPOConfig.rl_zoo(), m.policy, m.policy.optimizer.defaults
    ours = ActorCritic(hidden=cfg.hidden)

    def gains(module: torch.nn.Module) -> list[float]:
        return [round(float(torch.linalg.svdvals(p.detach()).mean()), 4)
                for p in module.parameters() if p.dim() == 2]  # fmt: skip

    sb3_gains = gains(pol.mlp_extractor.policy_net) + gains(pol.action_net)
    sb3_gains += gains(pol.mlp_extractor.value_net) + gains(pol.value_net)
    rows = [
        ("envs x steps per iteration", f"{cfg.num_envs} x {cfg.num_steps}",
         f"{m.n_envs} x {m.n_steps}"),
        ("minibatch size / epochs", f"{cfg.minibatch_size} / {cfg.epochs}",
         f"{m.batch_size} / {m.n_epochs}"),
        ("gamma / gae_lambda", f"{cfg.gamma} / {cfg.gae_lambda}", f"{m.gamma} / {m.gae_lambda}"),
        ("lr at progress 1, 0.5", f"{cfg.lr}, {cfg.lr * 0.5} (anneal={cfg.anneal_lr})",
         f"{m.lr_schedule(1.0)}, {m.lr_schedule(0.5)}"),
        ("clip at progress 1, 0.5", f"{cfg.clip_eps}, {cfg.clip_eps * 0.5} "
         f"(anneal={cfg.anneal_clip})", f"{m.clip_range(1.0)}, {m.clip_range(0.5)}"),
        ("schedule at update k of K", "1 - k/K", "1 - (k+1)/K (after the rollout's steps)"),
        ("value loss on mean (V-R)^2", f"{cfg.vf_coef} x 0.5 = {cfg.vf_coef * 0.5}",
         f"{m.vf_coef} x 1 = {m.vf_coef}"),
        ("value clip / target_kl", f"{cfg.clip_value} / None", f"{m.clip_range_vf} / "
         f"{m.target_kl}"),
        ("entropy coef", f"{cfg.ent_coef}", f"{m.ent_coef}"),
        ("advantage normalisation", f"per minibatch={cfg.norm_adv}",
         f"per minibatch={m.normalize_advantage}"),
        ("grad-norm clip (actor+critic)", f"{cfg.max_grad_norm}", f"{m.max_grad_norm}"),
        ("Adam lr/betas/eps", f"-/(0.9, 0.999)/{cfg.adam_eps}",
         f"-/{adam['betas']}/{adam['eps']}"),
        ("orthogonal gains pi / V", str(gains(ours.actor) + gains(ours.critic)), str(sb3_gains)),
        ("net", f"separate {cfg.hidden}-{cfg.hidden} tanh",
         f"{pol.net_arch} {pol.activation_fn.__name__}"),
        ("timeout bootstrap", f"{cfg.bootstrap_truncated}", "always (collect_rollouts)"),
    ]  # fmt: skip
    print(f"{'setting':<30} | {'ours':<36} | SB3 (read from the objects)")
    for name, a, b in rows:
        print(f"{name:<30} | {a:<36} | {b}")
    env.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--diff", action="store_true", help="print the configuration diff")
    parser.add_argument("--sides", action="store_true", help="ours vs SB3, env steps to solve")
    parser.add_argument("--ablations", action="store_true", help="ours, one detail changed")
    parser.add_argument("--only", help="comma-separated ablation names (default: all)")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--budget", type=int, default=99_840)
    args = parser.parse_args()
    os.environ["RLHF_LESSONS_PROGRESS"] = "0"
    torch.set_num_threads(1)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    budget = args.budget // bench.BATCH * bench.BATCH
    if args.diff:
        config_diff()
    print(f"env steps to solve, seeds {seeds[0]}-{seeds[-1]}, budget {budget}; 95% bootstrap")
    if args.sides:
        ours, sb3 = ours_steps(seeds, budget), sb3_steps(seeds, budget)
        print(describe("ours", ours, budget), flush=True)
        print(describe("SB3", sb3, budget))
        o, s = (np.where(np.isfinite(x), x, 2 * budget) for x in (np.array(ours), np.array(sb3)))
        rng = np.random.default_rng(3)
        boot = (o[rng.integers(0, o.size, (10_000, o.size))].mean(1)
                / s[rng.integers(0, s.size, (10_000, s.size))].mean(1))  # fmt: skip
        lo, hi = np.quantile(boot, [0.025, 0.975])
        print(f"mean env steps to solve ours/SB3: {o.mean() / s.mean():.2f} [{lo:.2f}, {hi:.2f}]")
    if args.ablations:
        names = args.only.split(",") if args.only else list(ABLATIONS)
        for name in names:
            print(describe(name, ours_steps(seeds, budget, **ABLATIONS[name]), budget), flush=True)


if __name__ == "__main__":
    main()
