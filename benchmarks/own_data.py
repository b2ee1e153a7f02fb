"""The README's "Use it on your own data" examples at their real budgets, measured.

Each step is the command a learner types (``rlhf-lessons train ...`` / ``eval ...``), run in a
fresh process on the course's shipped data and models, at the command line's defaults (not
tuned: seed 0, one run each) unless a flag below says otherwise:

1. ``train reward``: MiniLM on ``data/preferences/train.jsonl`` (one epoch over every pair), then
   ``eval --baseline`` on ``heldout.jsonl``: held-out pairwise accuracy, trained and untrained.
2. ``train dpo``: SmolLM2 with a rank-8 LoRA adapter on each ranking's best-vs-worst pair (one
   epoch), then ``eval`` on the held-out best-vs-worst pairs (the untrained policy scores 0.5).
3. ``train grpo``: SmolLM2 with LoRA, the reward model of step 1 as its reward, at the learning
   rate and budget in :data:`GRPO_LR` / :data:`GRPO_ITERATIONS`; every held-out prompt's reward
   (that reward model's, one sample, the same sampling seed) before and after, their paired
   change with its 95% interval, and the KL. ``--grpo-validation`` first re-runs the choice of
   those settings on a validation split of the training prompts (:func:`grpo_validation_step`).
4. The data-parallel demo loop and the course's SFT, DPO and reward-model trainers on tiny models
   (:mod:`rlhf_lessons.distributed`) in one process and in two (``torchrun --nproc_per_node
   2``): the loss curves and the wall times.

Every number is written to ``build/results/own_data.json`` (``values``, read by ``rlhf-lessons
report``) with each step's command line, wall time and CPU time (user + system of the child
processes; on a shared machine the CPU time is the steadier figure). Run from the repository
root::

    .venv/bin/python benchmarks/own_data.py                 # everything (~40 CPU minutes)
    .venv/bin/python benchmarks/own_data.py --only 4        # one step
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "preferences"


def timed(cmd: list[str], env: dict | None = None) -> dict:
    """Run ``cmd``; its wall time, the CPU time of the processes it started, and its output."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        sys.exit(f"failed: {shlex.join(cmd)}\n{done.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(f"{wall:7.0f} s wall {cpu:7.0f} s CPU  {shlex.join(cmd[2:])}", flush=True)
    shown = "rlhf-lessons " + shlex.join(cmd[3:]) if cmd[1:3] == ["-m", "rlhf_lessons"] \
        else "python " + shlex.join(cmd[1:])  # fmt: skip
    shown = shown.replace(f"{ROOT}/", "")  # paths as a learner types them, from the root
    return {"command": shown, "wall_seconds": wall, "cpu_seconds": cpu, "stdout": done.stdout}


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "rlhf_lessons", *args]


def reward_step(out: Path, threads: str) -> dict:
    rm = out / "reward"
    train = timed(cli("train", "reward", "--data", str(DATA / "train.jsonl"), "--output-dir",
                      str(rm), "--threads", threads))  # fmt: skip
    ev = timed(cli("eval", "--model", str(rm), "--data", str(DATA / "heldout.jsonl"),
                   "--baseline", "--output", str(out / "reward_eval.json"), "--threads", threads))  # fmt: skip
    result = json.loads((out / "reward_eval.json").read_text())
    info = json.loads((rm / "run.json").read_text())
    return {"train": _drop_stdout(train), "eval": _drop_stdout(ev), "steps": info["steps"],
            "accuracy": result["accuracy"], "interval": result["interval"],
            "baseline": result["baseline"]["accuracy"], "n_pairs": result["n_pairs"],
            "per_category": result["per_category"]}  # fmt: skip


def dpo_step(out: Path, threads: str) -> dict:
    run = out / "dpo"
    train = timed(cli("train", "dpo", "--data", str(DATA / "train.jsonl"), "--ranked-pairs",
                      "best_vs_worst", "--lora-r", "8", "--output-dir", str(run), "--threads",
                      threads))  # fmt: skip
    ev = timed(cli("eval", "--model", str(run), "--data", str(DATA / "heldout.jsonl"), "--output",
                   str(out / "dpo_eval.json"), "--threads", threads))  # fmt: skip
    result = json.loads((out / "dpo_eval.json").read_text())
    info = json.loads((run / "run.json").read_text())
    return {"train": _drop_stdout(train), "eval": _drop_stdout(ev), "steps": info["steps"],
            "lr": info["config"]["lr"], "accuracy": result["accuracy"],
            "interval": result["interval"], "n_pairs": result["n_pairs"],
            "margin": result["margin"], "ties": result["ties"]}  # fmt: skip


#: GRPO's settings for the example: the learning rate with the largest validation gain among
#: GRPO_CANDIDATES (``--grpo-validation``); the iterations fit ~15 CPU minutes.
GRPO_LR, GRPO_ITERATIONS, HELDOUT_PROMPTS = "5e-4", "16", 64


def grpo_args(data: Path, out: Path, run: Path, eval_data: Path, iterations: str, lr: str,
              threads: str, seed: str = "0") -> list[str]:  # fmt: skip
    """``train grpo`` with LoRA and the reward model of step 1; evaluated before and after only
    (``--eval-every`` = the iterations), on the same prompts with the same sampling seed."""
    return cli("train", "grpo", "--data", str(data), "--reward-model", str(out / "reward"),
               "--lora-r", "8", "--lr", lr, "--iterations", iterations, "--eval-data",
               str(eval_data), "--eval-every", iterations, "--seed", seed, "--output-dir",
               str(run), "--threads", threads)  # fmt: skip


def grpo_result(run: Path) -> dict:
    """Before/after of a GRPO run folder: the held-out reward (the reward model's, one sample
    per prompt), its paired change with the 95% interval, and the KL to the reference."""
    import pandas as pd

    evals = pd.read_csv(run / "evaluations.csv")
    first, last = evals.iloc[0], evals.iloc[-1]
    return {"reward_before": float(first["reward"]), "reward_after": float(last["reward"]),
            "reward_change": float(last["reward_change"]),
            "reward_change_low": float(last["reward_change_low"]),
            "reward_change_high": float(last["reward_change_high"]),
            "kl_after": float(last["kl"]), "length_before": float(first["length"]),
            "length_after": float(last["length"])}  # fmt: skip


def grpo_step(out: Path, threads: str, iterations: str, lr: str) -> dict:
    run = out / "grpo"
    train = timed(grpo_args(DATA / "train.jsonl", out, run, DATA / "heldout.jsonl", iterations,
                            lr, threads))  # fmt: skip
    return {"train": _drop_stdout(train), "iterations": int(iterations), "lr": float(lr),
            "eval_prompts": HELDOUT_PROMPTS, **grpo_result(run)}  # fmt: skip


#: The short validation runs that chose GRPO_LR and GRPO_ITERATIONS: the CLI's former LoRA
#: default (a full-fine-tuning rate) against 10x and 25x, evaluated every 4 iterations.
GRPO_CANDIDATES, VALIDATION_ITERATIONS, VALIDATION_EVERY = ("2e-5", "2e-4", "5e-4"), 8, 4


def grpo_validation_step(out: Path, threads: str) -> dict:
    """Choose GRPO's learning rate and budget on a validation split of the training prompts
    (seed 5000, never reported): the group diagnosis, then one short run per candidate."""
    folder = out / "grpo_validation"
    train, val = grpo_validation_split(folder)
    found = {"validation_prompts": VALIDATION_PROMPTS, "seed": 5000,
             "diagnosis": group_diagnosis(out / "reward", val), "runs": {}}  # fmt: skip
    for lr in GRPO_CANDIDATES:
        run = folder / f"lr{lr}"
        args = grpo_args(train, out, run, val, str(VALIDATION_ITERATIONS), lr, threads, "5000")
        args[args.index("--eval-every") + 1] = str(VALIDATION_EVERY)
        step = timed(args)
        import pandas as pd

        curve = pd.read_csv(run / "evaluations.csv")
        found["runs"][lr] = {"train": _drop_stdout(step), **grpo_result(run),
                             "curve": curve.to_dict(orient="list")}  # fmt: skip
    return found


# GRPO's settings are chosen on a validation split of the TRAINING prompts (never heldout.jsonl):
# a fixed shuffle (seed 5000, not a reported seed) keeps VALIDATION_PROMPTS of them aside.
VALIDATION_PROMPTS = 32


def grpo_validation_split(out: Path) -> tuple[Path, Path]:
    """train.jsonl -> (the rest, VALIDATION_PROMPTS records) as two files under ``out``."""
    import random

    lines = (DATA / "train.jsonl").read_text().splitlines()
    order = list(range(len(lines)))
    random.Random(5000).shuffle(order)
    held = set(order[:VALIDATION_PROMPTS])
    out.mkdir(parents=True, exist_ok=True)
    train, val = out / "train.jsonl", out / "validation.jsonl"
    train.write_text("".join(f"{x}\n" for i, x in enumerate(lines) if i not in held))
    val.write_text("".join(f"{lines[i]}\n" for i in sorted(held)))
    return train, val


def group_diagnosis(reward: Path, val: Path, k: int = 4, n: int = 16, tokens: int = 64) -> dict:
    """Do the reward model's scores of SmolLM2's own samples differ within a group of ``k``
    (else GRPO's advantages are zero)? ``k`` samples of ``n`` validation prompts, scored: the
    spread within groups, between the prompts' group means, and, for scale, the reward model's
    gap between the best and the worst ranked answer of the same prompts."""
    import torch

    from rlhf_lessons.alignment.rollouts import collect_rollout
    from rlhf_lessons.data_io import read_records
    from rlhf_lessons.lm import format_prompt
    from rlhf_lessons.models import load_causal_lm
    from rlhf_lessons.rewards.reward_io import load_reward_model, reward_function

    torch.set_num_threads(1)
    records = read_records(str(val))[:n]
    policy, tokenizer = load_causal_lm("smollm2")
    scorer = load_reward_model(str(reward), "cpu")
    texts = [r["prompt"] for r in records]
    formatted = [format_prompt(tokenizer, t) for t in texts]
    reward_fn = reward_function(scorer, dict(zip(formatted, texts, strict=True)))
    start = time.process_time()
    ro = collect_rollout(policy, policy, tokenizer, [p for p in formatted for _ in range(k)],
                         reward_fn, tokens, 1.0, seed=5000)  # fmt: skip
    scores = ro.raw_scores.view(n, k).double()
    best = scorer.score(texts, [r["ranked_outputs"][0] for r in records]).double()
    worst = scorer.score(texts, [r["ranked_outputs"][-1] for r in records]).double()
    return {"prompts": n, "k": k, "max_new_tokens": tokens,
            "within_group_std": scores.std(1).mean().item(),
            "zero_std_groups": int((scores.std(1) == 0).sum()),
            "between_prompt_std": scores.mean(1).std().item(),
            "best_minus_worst": (best - worst).mean().item(),
            "ended": ro.ended.float().mean().item(),
            "cpu_seconds": time.process_time() - start}  # fmt: skip


# rlhf_lessons.distributed's demos: the loop, and the course's SFT, DPO and reward-model trainers
DEMOS = [{"demo": "dpo"}, {"demo": "sft"}, {"demo": "dpo_trainer"}, {"demo": "reward_trainer"}]


def parallel_step(out: Path) -> dict:
    """The demo loop and the course's SFT, DPO and reward trainers (:data:`DEMOS`), tiny models:
    one process (plain), then two under torchrun; each one's loss curves."""
    runs = json.dumps(DEMOS)
    one = timed([sys.executable, "-m", "rlhf_lessons.distributed", str(out / "one.json"), runs])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    two = timed([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                 "--master_addr", "127.0.0.1", "--master_port", port, "-m",
                 "rlhf_lessons.distributed", str(out / "two.json"), runs])  # fmt: skip
    curves = [json.loads((out / f).read_text())["curves"] for f in ("one.json", "two.json")]
    loss = {d["demo"]: [[r["loss"] for r in c[i]] for c in curves] for i, d in enumerate(DEMOS)}
    return {"one_process": {"loss": {k: v[0] for k, v in loss.items()}, **_drop_stdout(one)},
            "two_processes": {"loss": {k: v[1] for k, v in loss.items()}, **_drop_stdout(two)},
            "max_loss_difference": {k: max(abs(a - b) for a, b in zip(*v, strict=True))
                                    for k, v in loss.items()}}  # fmt: skip


def _drop_stdout(step: dict) -> dict:
    return {k: v for k, v in step.items() if k != "stdout"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "build" / "own_data"))
    parser.add_argument("--only", nargs="+", type=int, default=[1, 2, 3, 4])
    parser.add_argument("--threads", default="1")
    parser.add_argument("--grpo-iterations", default=GRPO_ITERATIONS)
    parser.add_argument("--grpo-lr", default=GRPO_LR)
    parser.add_argument(
        "--grpo-validation",
        action="store_true",
        help="first choose GRPO's settings on a validation split (GRPO_CANDIDATES)",
    )
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_file = ROOT / "build" / "results" / "own_data.json"
    values = json.loads(results_file.read_text())["values"] if results_file.exists() else {}
    os.environ.setdefault("RLHF_LESSONS_PROGRESS", "0")
    if 1 in args.only:
        values["reward"] = reward_step(out, args.threads)
    if 2 in args.only:
        values["dpo"] = dpo_step(out, args.threads)
    if args.grpo_validation:
        values["grpo_validation"] = grpo_validation_step(out, args.threads)
    if 3 in args.only:
        values["grpo"] = grpo_step(out, args.threads, args.grpo_iterations, args.grpo_lr)
    if 4 in args.only:
        values["parallel"] = parallel_step(out)
    results_file.parent.mkdir(parents=True, exist_ok=True)
    results_file.write_text(json.dumps({"lesson": "own_data", "title": "Use it on your own data",
                                        "values": values, "claims": []}, indent=1))  # fmt: skip
    print(f"wrote {results_file}")


if __name__ == "__main__":
    main()
