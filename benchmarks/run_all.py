"""Every ratio benchmark (ours against a peer, same machine, same process), one after another:
``make bench``.

Each script in :data:`BENCHMARKS` that exists runs whole (its own defaults), its full output is
saved to ``build/bench/<name>.txt``, and at the end one line per benchmark is printed: the
script's last line (its ratio, with the interval it reports), or why there is none (not present
yet, or it failed). Scripts named here but not present yet are skipped with a note. Exit status 1
when a present benchmark failed.

    .venv/bin/python benchmarks/run_all.py                 # all of them
    .venv/bin/python benchmarks/run_all.py dpo_step        # some of them
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# name -> what it compares (the order they run in)
BENCHMARKS = {
    "cartpole": "CartPole PPO time to solve, ours vs stable-baselines3",
    "dpo_step": "DPO step with LoRA on SmolLM2, ours vs TRL's DPOTrainer",
    "grpo_step": "GRPO/RLOO step, ours vs TRL's GRPOTrainer",
}


def run(name: str, out_dir: Path) -> tuple[str, float]:
    """Run ``benchmarks/<name>.py``, stream its output, save it; return its last line."""
    script = HERE / f"{name}.py"
    if not script.exists():
        return f"skipped: benchmarks/{name}.py is not present yet", 0.0
    print(f"\n=== {name}: {BENCHMARKS.get(name, '')} ===", flush=True)
    start = time.perf_counter()
    lines: list[str] = []
    with subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    ) as proc:
        for line in proc.stdout:
            print(line, end="", flush=True)
            lines.append(line)
    seconds = time.perf_counter() - start
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.txt").write_text("".join(lines))
    last = next((ln.strip() for ln in reversed(lines) if ln.strip()), "(no output)")
    if proc.returncode != 0:
        return f"FAILED (exit {proc.returncode}): {last}", seconds
    return last, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help=f"some of {', '.join(BENCHMARKS)} (default all)")
    parser.add_argument("--out", default="build/bench", help="where each output is saved")
    args = parser.parse_args(argv)
    unknown = set(args.names) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s) {sorted(unknown)}; known: {list(BENCHMARKS)}")
    results = {name: run(name, Path(args.out)) for name in (args.names or BENCHMARKS)}
    print("\n=== summary (each benchmark's last line) ===")
    width = max(len(n) for n in results)
    for name, (line, seconds) in results.items():
        took = f" [{seconds / 60:.1f} min]" if seconds else ""
        print(f"{name:<{width}}  {line}{took}")
    return 1 if any(line.startswith("FAILED") for line, _ in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
