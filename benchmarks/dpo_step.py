"""DPO training speed and memory: our trainer (``rlhf_lessons.alignment.dpo.train_dpo``) against
TRL's ``DPOTrainer``, on the same model, LoRA adapter, pairs, batches and sequence lengths.

Setting: SmolLM2-135M-Instruct (the course's offline model), a rank-8 LoRA adapter on the
attention queries and values (same seed, so the same initial weights), the course's shipped
preference data (each ranking's best and worst response, chat template), ``--pairs`` pairs in
minibatches of ``--batch`` pairs, one epoch, beta 0.1, Adam(W) at 1e-3 with no weight decay,
fp32, dropout off, no gradient checkpointing, ``--threads`` torch threads on both sides. TRL
gets the same minibatches in the same order (``rlhf_lessons.trl_runs.dpo``); both take the
reference from the base model with the adapter disabled and compute its log-probs once before
training, ``--batch`` pairs per pass (TRL's ``precompute_ref_log_probs=True``, whose batch is
``per_device_train_batch_size``). The loss curves are printed side by side as a check that
both did the same work.

What differs is how the work is done. Ours runs the output layer and its log-softmax at the
response tokens only, and runs each pair's prompt through the model once for both responses
(``rlhf_lessons.lm.completion_logprobs``); TRL 1.16 on a CPU scores every position of both rows
with its chunked "fused LM head" (its compact, response-only path needs Triton, i.e. a GPU).

Measured per run, each in a fresh Python process (so neither inherits the other's memory):

- **speed**: tokens per second = non-padding tokens of all chosen and rejected rows (prompt +
  response, the prompt counted in both) / the whole training call (tokenising, the reference
  pass, the steps), by the wall clock and by the process's CPU time (on a busy machine the CPU
  time is the steadier of the two; on an idle one they agree);
- **peak memory**: the process's peak resident memory during that call above its resident
  memory just before it (the loaded model, its memory-mapped weights read once so that their
  pages are in), from Linux's ``VmHWM`` after resetting it through ``/proc/self/clear_refs``.

Runs alternate ours, TRL, TRL, ours, ... (``--repeats`` each); repeat i gives one ratio
ours/TRL per measure, and the last lines give each ratio's mean over repeats with its 95%
t-interval (``rlhf_lessons.course.stats.mean_ci``; speed above 1: ours is faster; memory below
1: ours needs less). Run from the repository root::

    .venv/bin/python benchmarks/dpo_step.py                      # 32 pairs, batch 4, 3 repeats
    .venv/bin/python benchmarks/dpo_step.py --pairs 16 --repeats 2

Timings depend on the machine and on what else runs on it; compare ratios, not seconds.
"""

from __future__ import annotations

import argparse
import json
import os
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
    from rlhf_lessons.trl_runs import train_with_trl

    warnings.simplefilter("ignore")
    torch.set_num_threads(threads)
    model, tok = load_causal_lm()
    pairs = [to_conversational(p) for p in best_vs_worst(load_preferences("train"))][:n_pairs]
    config = DPOConfig.dpo(beta=0.1, lr=1e-3, batch_size=batch, epochs=1, max_prompt_length=None,
                           max_completion_length=None, threads=None,
                           ref_chunk_size=2 * batch)  # fmt: skip
    tokens = int(tokenize_preferences(tok, pairs, None, None).attention_mask.sum())
    policy = add_lora(model, r=8, alpha=16, seed=0)
    with torch.no_grad():  # page the memory-mapped weights in: the baseline is the loaded model
        for p in model.parameters():
            p.sum()
    _reset_peak()
    before = _rss_kib("VmRSS")
    start, cpu = time.perf_counter(), time.process_time()
    if impl == "ours":
        losses = train_dpo(policy, tok, pairs, config, show_progress=False).loss
    else:
        losses = train_with_trl("dpo", policy, tok, pairs, config).history.loss
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    peak = _rss_kib("VmHWM")
    return {"impl": impl, "seconds": seconds, "cpu_seconds": cpu_seconds, "tokens": tokens,
            "tokens_per_s": tokens / seconds, "tokens_per_cpu_s": tokens / cpu_seconds,
            "rss_before_mib": before / 1024, "peak_mib": peak / 1024,
            "peak_above_mib": (peak - before) / 1024, "losses": losses}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=32, help="training pairs (one epoch)")
    parser.add_argument("--batch", type=int, default=4, help="pairs per step")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each implementation")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, both sides")
    parser.add_argument("--child", choices=["ours", "trl"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(args.child, args.pairs, args.batch, args.threads)))
        return
    if args.repeats < 2:
        sys.exit("--repeats must be >= 2: the intervals need two ratios at least")

    from rlhf_lessons.course.stats import mean_ci

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RLHF_LESSONS_PROGRESS": "0", "TQDM_DISABLE": "1"}
    runs: dict[str, list[dict]] = {"ours": [], "trl": []}
    print(f"SmolLM2-135M-Instruct + LoRA r=8 (q, v), {args.pairs} pairs, batch {args.batch}, "
          f"{args.threads} thread(s), {args.repeats} run(s) each, alternating")  # fmt: skip
    print(f"{'run':>4} {'impl':>5} {'wall s':>7} {'CPU s':>7} {'tokens/s':>9} {'tok/CPU s':>9} "
          f"{'RSS before':>11} {'peak RSS':>9} {'peak above':>11}")  # fmt: skip
    count = 0
    for i in range(args.repeats):
        for impl in ("ours", "trl") if i % 2 == 0 else ("trl", "ours"):
            cmd = [sys.executable, __file__, "--child", impl, "--pairs", str(args.pairs),
                   "--batch", str(args.batch), "--threads", str(args.threads)]  # fmt: skip
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                sys.exit(f"{impl} run failed:\n{out.stderr[-3000:]}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            runs[impl].append(r)
            count += 1
            print(f"{count:>4} {impl:>5} {r['seconds']:7.1f} "
                  f"{r['cpu_seconds']:7.1f} {r['tokens_per_s']:9.1f} {r['tokens_per_cpu_s']:9.1f} "
                  f"{r['rss_before_mib']:7.0f} MiB {r['peak_mib']:5.0f} MiB "
                  f"{r['peak_above_mib']:7.0f} MiB", flush=True)  # fmt: skip

    ours, trl = runs["ours"][0]["losses"], runs["trl"][0]["losses"]
    gap = max(abs(a - b) for a, b in zip(ours, trl, strict=True))
    print(f"loss curves (first run of each): {len(ours)} steps, largest difference {gap:.1e}")
    print(f"  ours {[round(x, 4) for x in ours]}")
    print(f"  TRL  {[round(x, 4) for x in trl]}")

    def ratio(key: str):  # repeat i: ours_i / trl_i
        return mean_ci([o[key] / t[key] for o, t in zip(runs["ours"], runs["trl"], strict=True)])

    print(f"DPO step ratio ours/TRL, tokens/s (wall clock):  {ratio('tokens_per_s'):.2f}")
    print(f"DPO step ratio ours/TRL, tokens/s (CPU time):    {ratio('tokens_per_cpu_s'):.2f}")
    print(f"DPO step ratio ours/TRL, peak memory:            {ratio('peak_above_mib'):.2f}")


if __name__ == "__main__":
    main()
