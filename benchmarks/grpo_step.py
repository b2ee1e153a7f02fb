"""GRPO and RLOO training speed: our trainer (``rlhf_lessons.alignment.rloo_grpo.train_group_pg``)
against TRL's ``GRPOTrainer`` / ``RLOOTrainer`` at matched settings.

Setting: lesson 05's. The review model (review-gpt, the course's SFT model of the review world)
as policy and reference, the true (VADER) reward plus the EOS penalty, the lesson's configs
(``GroupPGConfig.grpo()`` / ``.rloo()``: prompts x k samples of at most 16 tokens, one Adam step
per batch, the KL to the reference), fp32 on the CPU, one torch thread. TRL gets the same
settings through :mod:`rlhf_lessons.trl_runs.rloo_grpo` (its reference is the same model,
loaded from the same folder).

Measured: seconds per training step, each trainer's own clock, which leaves set-up out and
counts sampling, scoring, the reference pass and the update (ours: the history's ``seconds``;
TRL: its logged ``step_time``), the median over the steps of a run. Runs alternate ours, TRL,
ours, TRL, ... in one process (``--repeats`` pairs after one warm-up pair), so both see the same
machine; the ratio of a pair is TRL's seconds per step over ours (above 1: ours is faster). The
last line is GRPO's mean ratio with its 95% t-interval over the pairs::

    GRPO step ratio ours/TRL: 1.23 [1.11, 1.35] over 5 pairs

Run from the repository root::

    .venv/bin/python benchmarks/grpo_step.py                  # RLOO and GRPO, 5 pairs each
    .venv/bin/python benchmarks/grpo_step.py --algos grpo --repeats 3 --iterations 8

Timings depend on the machine and on what else runs on it; compare ratios, not seconds.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import warnings


def one_run(impl: str, algo: str, iterations: int, seed: int, sft, tok, prompts) -> dict:
    """Train a fresh copy of ``sft`` with ``impl`` ("ours" or "trl"); its seconds per step."""
    from rlhf_lessons.alignment.rloo_grpo import GroupPGConfig, train_group_pg
    from rlhf_lessons.review_world.true_reward import reward_of
    from rlhf_lessons.trl_runs import train_with_trl

    config = getattr(GroupPGConfig, algo)(iterations=iterations, seed=seed, threads=1)
    policy = copy.deepcopy(sft)
    if impl == "ours":
        h = train_group_pg(policy, tok, prompts, config, ref=sft, reward_fn=reward_of,
                           show_progress=False)  # fmt: skip
    else:
        h = train_with_trl(algo, policy, tok, prompts, config, reward_fn=reward_of).history
    steps = [b - a for a, b in zip([0.0, *h.seconds[:-1]], h.seconds, strict=True)]
    return {"step_seconds": statistics.median(steps), "reward": h.raw_score[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algos", nargs="+", default=["rloo", "grpo"], choices=["rloo", "grpo"])
    parser.add_argument("--iterations", type=int, default=12, help="training steps per run")
    parser.add_argument("--repeats", type=int, default=5, help="timed (ours, TRL) pairs")
    args = parser.parse_args()

    import torch

    from rlhf_lessons.course.stats import mean_ci
    from rlhf_lessons.review_world.splits import train_prompts
    from rlhf_lessons.review_world.tiny_lm import load_sft_model

    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    sft, tok = load_sft_model(show_progress=False)
    prompts = train_prompts(512, seed=0)
    lines = []
    for algo in sorted(args.algos, key=["rloo", "grpo"].index):  # GRPO's line comes last
        print(f"{algo.upper()}: review-gpt, {args.iterations} steps per run, seconds per step "
              "(median over the run's steps)")  # fmt: skip
        ratios = []
        for repeat in range(args.repeats + 1):  # the first pair warms up and is not counted
            ours = one_run("ours", algo, args.iterations, repeat, sft, tok, prompts)
            trl = one_run("trl", algo, args.iterations, repeat, sft, tok, prompts)
            ratio = trl["step_seconds"] / ours["step_seconds"]
            tag = "warm-up" if repeat == 0 else f"pair {repeat}"
            print(f"  {tag:>8}: ours {ours['step_seconds']:.3f} s, TRL {trl['step_seconds']:.3f} s,"
                  f" ratio {ratio:.2f}")  # fmt: skip
            if repeat:
                ratios.append(ratio)
        interval = mean_ci(ratios)
        lines.append(f"{algo.upper()} step ratio ours/TRL: {interval.mean:.2f} "
                     f"[{interval.low:.2f}, {interval.high:.2f}] over {len(ratios)} pairs")  # fmt: skip
    print("\n".join(lines))


if __name__ == "__main__":
    main()
