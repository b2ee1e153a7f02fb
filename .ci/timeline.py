"""Per-worker timeline of a test run, from the files tests/conftest.py writes when
``RLHF_LESSONS_TIMELINE=dir`` is set:

    RLHF_LESSONS_TIMELINE=$PWD/build/test-timeline bash .ci/run
    .venv/bin/python .ci/timeline.py build/test-timeline

prints, per worker, every file it ran (notebook or test module) with its start and end in
seconds from the start of the run, its wall and CPU seconds, and what the other worker was
running at the same time; then when each worker finished. CPU seconds include the subprocesses
that ended during the file (a notebook's kernel, a test's torchrun)."""

import sys
from collections import defaultdict
from pathlib import Path


def load(folder: Path) -> dict[str, list[dict]]:
    """Per worker, its files in the order it ran them: start, end, wall, cpu, items."""
    workers = {}
    for path in sorted(folder.glob("*.tsv")):
        files: list[dict] = []
        for line in path.read_text().splitlines():
            start, wall, cpu, nodeid = line.split("\t", 3)
            name = nodeid.split("::")[0]
            if not files or files[-1]["file"] != name:
                files.append({"file": name, "start": float(start), "cpu": 0.0, "items": 0})
            entry = files[-1]
            entry["end"] = float(start) + float(wall)
            entry["cpu"] += float(cpu)
            entry["items"] += 1
        workers[path.stem] = files
    return workers


def beside(entry: dict, others: list[dict]) -> str:
    """The other worker's files that overlapped ``entry`` for more than a second."""
    names = [
        o["file"].split("/")[-1]
        for o in others
        if min(o["end"], entry["end"]) - max(o["start"], entry["start"]) > 1.0
    ]
    return ", ".join(names[:3]) + (f" (+{len(names) - 3})" if len(names) > 3 else "")


def main(folder: str) -> None:
    workers = load(Path(folder))
    if not workers:
        sys.exit(f"no timeline files in {folder}")
    t0 = min(f[0]["start"] for f in workers.values() if f)
    totals: dict[str, float] = defaultdict(float)
    for name, files in workers.items():
        others = [f for other, fs in workers.items() if other != name for f in fs]
        print(f"worker {name}: {len(files)} files")
        print(f"  {'start':>7} {'end':>7} {'wall':>6} {'cpu':>6}  file  [beside]")
        for f in files:
            wall = f["end"] - f["start"]
            totals[name] += f["cpu"]
            print(f"  {f['start'] - t0:7.0f} {f['end'] - t0:7.0f} {wall:6.0f} {f['cpu']:6.0f}  "
                  f"{f['file']}  [{beside(f, others)}]")  # fmt: skip
    print("finished (s from the start; CPU s of the worker and its subprocesses):")
    ends = {name: max(f["end"] for f in files) - t0 for name, files in workers.items() if files}
    for name, end in ends.items():
        print(f"  {name}: {end:.0f} s, {totals[name]:.0f} CPU s")
    print(f"  gap between the workers' ends: {max(ends.values()) - min(ends.values()):.0f} s")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "build/test-timeline")
