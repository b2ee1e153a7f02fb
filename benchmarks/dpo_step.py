"""DPO training speed and memory: our trainer (``rlhf_lessons.alignment.dpo.train_dpo``) against TRL's
``DPOTrainer``, on the same model, LoRA adapter, pairs, batches and sequence lengths.

Setting: SmolLM2-135M-Instruct (the course's offline model), a rank-8 LoRA adapter on the
attention queries and values (same seed, so the same initial weights), the course's shipped
preference data (each ranking's best and worst response, chat template), ``--pairs`` pairs in
minibatches of ``--batch`` pairs, one epoch, beta 0.1, Adam(W) at 1e-3 with no weight decay,
fp32, dropout off, no gradient checkpointing, the same number of torch threads. TRL gets the
same minibatches in the same order (``rlhf_lessons.trl_runs.dpo``); both take the reference from
the base model with the adapter disabled and compute its log-probs once before training, in
minibatches of the same size (TRL's ``precompute_ref_log_probs=True``; our trainer always does). The two loss curves are printed
side by side as a check that both did the same work.

Measured per run, each in a fresh Python process (so neither inherits the other's memory):

- **speed**: tokens per second = non-padding tokens of all chosen and rejected sequences
  trained on / wall-clock of the whole training call (tokenising, the reference pass, the
  steps);
- **peak memory**: the process's peak resident memory during that call above its resident
  memory just before it (the loaded model), from Linux's ``VmHWM`` after resetting it through
  ``/proc/self/clear_refs``.

Runs alternate ours, TRL, ours, TRL, ... (``--repeats`` each); the table shows every run and the
ratios use the medians. The last line is

    DPO step ratio ours/TRL: speed X.XX, peak memory Y.YY

(speed above 1: ours is faster; memory below 1: ours needs less). Run from the repository root::

    .venv/bin/python benchmarks/dpo_step.py                      # 32 pairs, batch 4, 2 repeats
    .venv/bin/python benchmarks/dpo_step.py --pairs 16 --repeats 1

Timings depend on the machine and on what else runs on it; compare ratios, not seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import warnings


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status (Linux only)")


def _reset_peak() -> None:
    # "5" resets the peak RSS (VmHWM) to the current RSS (Linux >= 4.0, own process)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def run_one(impl: str, n_pairs: int, batch: int, threads: int) -> dict:
    """Train once with ``impl`` ("ours" or "trl") in this process and measure it."""
    import torch

    from rlhf_lessons.alignment.dpo import DPOConfig, add_lora, tokenize_preferences, train_dpo
    from rlhf_lessons.course.data import load_preferences
    from rlhf_lessons.models import load_causal_lm
    from rlhf_lessons.rewards.preference_data import best_vs_worst, to_conversational
    from rlhf_lessons.trl_runs.dpo import train_with_trl

    warnings.simplefilter("ignore")
    torch.set_num_threads(threads)
    model, tok = load_causal_lm()
    pairs = [to_conversational(p) for p in best_vs_worst(load_preferences("train"))][:n_pairs]
    # the reference pass runs on minibatches of the same size too (TRL's precompute batch is
    # per_device_train_batch_size)
    config = DPOConfig.dpo(beta=0.1, lr=1e-3, batch_size=batch, epochs=1, max_prompt_length=None,
                           max_completion_length=None, threads=None,
                           ref_chunk_size=2 * batch)  # fmt: skip
    tokens = int(tokenize_preferences(tok, pairs, None, None).attention_mask.sum())
    policy = add_lora(model, r=8, alpha=16, seed=0)
    _reset_peak()
    before = _rss_kib("VmRSS")
    start = time.perf_counter()
    if impl == "ours":
        losses = train_dpo(policy, tok, pairs, config, show_progress=False).loss
    else:
        losses = train_with_trl(policy, tok, pairs, config).loss
    seconds = time.perf_counter() - start
    peak = _rss_kib("VmHWM")
    return {"impl": impl, "seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds,
            "rss_before_mib": before / 1024, "peak_mib": peak / 1024,
            "peak_above_mib": (peak - before) / 1024, "losses": losses}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=32, help="training pairs (one epoch)")
    parser.add_argument("--batch", type=int, default=4, help="pairs per step")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each implementation")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, both sides")
    parser.add_argument("--child", choices=["ours", "trl"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(args.child, args.pairs, args.batch, args.threads)))
        return

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RLHF_LESSONS_PROGRESS": "0", "TQDM_DISABLE": "1"}
    runs = []
    print(f"SmolLM2-135M-Instruct + LoRA r=8 (q, v), {args.pairs} pairs, batch {args.batch}, "
          f"{args.threads} thread(s), {args.repeats} run(s) each, alternating")  # fmt: skip
    print(f"{'run':>4} {'impl':>5} {'seconds':>8} {'tokens/s':>9} {'RSS before':>11} "
          f"{'peak RSS':>9} {'peak above':>11}")  # fmt: skip
    for i in range(args.repeats):
        for impl in ("ours", "trl") if i % 2 == 0 else ("trl", "ours"):
            cmd = [sys.executable, __file__, "--child", impl, "--pairs", str(args.pairs),
                   "--batch", str(args.batch), "--threads", str(args.threads)]  # fmt: skip
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                sys.exit(f"{impl} run failed:\n{out.stderr[-3000:]}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            runs.append(r)
            print(f"{len(runs):>4} {impl:>5} {r['seconds']:8.1f} {r['tokens_per_s']:9.1f} "
                  f"{r['rss_before_mib']:8.0f} MiB {r['peak_mib']:6.0f} MiB "
                  f"{r['peak_above_mib']:8.0f} MiB")  # fmt: skip

    def median(impl: str, key: str) -> float:
        return statistics.median(r[key] for r in runs if r["impl"] == impl)

    ours = next(r for r in runs if r["impl"] == "ours")["losses"]
    trl = next(r for r in runs if r["impl"] == "trl")["losses"]
    gap = max(abs(a - b) for a, b in zip(ours, trl, strict=True))
    print(f"loss curves (first run of each): {len(ours)} steps, largest difference {gap:.1e}")
    print(f"  ours {[round(x, 4) for x in ours]}")
    print(f"  TRL  {[round(x, 4) for x in trl]}")
    speed = median("ours", "tokens_per_s") / median("trl", "tokens_per_s")
    memory = median("ours", "peak_above_mib") / median("trl", "peak_above_mib")
    print(f"DPO step ratio ours/TRL: speed {speed:.2f}, peak memory {memory:.2f}")


if __name__ == "__main__":
    main()
