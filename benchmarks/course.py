"""The whole course, timed: each lesson's wall time, the total, and the lessons over the target
(issue 17: at most 4 minutes per lesson at the learner's defaults, 20 minutes in all, on a 2-core
machine running two notebooks at a time). ``make bench-course``.

It runs the notebooks as ``make lessons`` does (``rlhf_lessons.course.lesson_runner``: WORKERS
at a time, one torch thread per kernel, the longest first), or with ``--from`` only reads a run
that already happened (``build/results/course.json``). Wall times depend on what else the
machine does: measure on an idle machine.

    .venv/bin/python benchmarks/course.py                      # the learner's defaults
    .venv/bin/python benchmarks/course.py --fast               # CI's budgets (RLHF_LESSONS_FAST=1)
    .venv/bin/python benchmarks/course.py --only 05 06 --workers 1
    .venv/bin/python benchmarks/course.py --from build/results/course.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

LESSON_LIMIT_S = 4 * 60
COURSE_LIMIT_S = 20 * 60


def summary(course: dict, lesson_limit: float = LESSON_LIMIT_S) -> tuple[str, list[str]]:
    """The table of a ``course.json`` and the lessons over ``lesson_limit`` seconds."""
    rows = course["lessons"]
    width = max([len(r["lesson"]) for r in rows] + [len("lesson")])
    lines = [f"{'lesson':<{width}}  {'wall':>8}  checkpoint"]
    over = []
    for r in rows:
        flag = ""
        if r["seconds"] > lesson_limit:
            over.append(r["lesson"])
            flag = f"  over {lesson_limit / 60:.0f} min"
        lines.append(
            f"{r['lesson']:<{width}}  {r['seconds'] / 60:>6.2f} m  {r['checkpoint']}{flag}"
        )
    total = sum(r["seconds"] for r in rows)
    workers = course.get("workers", 1)
    wall = course["wall_seconds"]
    lines += [
        f"{'sum of lesson times':<{width}}  {total / 60:>6.2f} m",
        f"{'course wall time':<{width}}  {wall / 60:>6.2f} m  ({workers} at a time; "
        f"target {COURSE_LIMIT_S / 60:.0f} min: {'met' if wall <= COURSE_LIMIT_S else 'MISSED'})",
        f"passed {course['passed']}/{len(rows)}; machine: {course.get('machine', '?')}",
        "over 4 minutes: " + (", ".join(over) if over else "none"),
    ]
    return "\n".join(lines), over


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="notebooks at a time (default 2)")
    parser.add_argument("--only", nargs="+", help="lesson number prefixes, e.g. 05 06")
    parser.add_argument("--fast", action="store_true", help="CI's budgets (RLHF_LESSONS_FAST=1)")
    parser.add_argument("--build", default="build", help="where the executed notebooks go")
    parser.add_argument("--from", dest="source", help="read this course.json instead of running")
    args = parser.parse_args(argv)

    if args.source:
        course = json.loads(Path(args.source).read_text())
    else:
        if args.fast:
            os.environ["RLHF_LESSONS_FAST"] = "1"
        from rlhf_lessons.cli import main as cli

        cli(["prepare-models"])  # once, before the notebooks (as make lessons does)
        from rlhf_lessons.course.lesson_runner import run_lessons

        run_lessons(Path("notebooks"), Path(args.build), args.only, workers=args.workers)
        course = json.loads((Path(args.build) / "results" / "course.json").read_text())
    text, _ = summary(course)
    print("\n" + text)
    return 0 if course["passed"] == len(course["lessons"]) else 1


if __name__ == "__main__":
    sys.exit(main())
