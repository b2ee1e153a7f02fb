"""Execute the lesson notebooks headless and report which checkpoints passed (``make lessons``).

Each notebook runs top to bottom with nbclient in a fresh kernel; the executed copy (outputs and
figures included) is written under ``build/``. A lesson's *checkpoint* is its cell tagged
``checkpoint`` (the cell that asserts the lesson's claim): it passed when that cell ran without an
error. A notebook that fails before its checkpoint counts as not passed.

``workers`` notebooks run side by side (``make lessons`` runs two, one per core), each kernel on
one thread (:func:`kernel_env`), the longest first (:func:`schedule`), a lesson that reuses
another's cached runs after it (:func:`dependencies`). While they run, a bar per notebook shows
which cell is running; a line is printed as each lesson finishes. The run is written to
``build/results/course.json`` (``rlhf-lessons report`` renders it into the README).
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rlhf_lessons.course.progress import progress, progress_enabled

CHECKPOINT_TAG = "checkpoint"
# lesson -> lessons it must run after: lesson 02 compares PPO with lesson 01's REINFORCE runs,
# which it loads from the cache (running both at once would train them twice)
AFTER = {"02": ("01",)}
HISTORY_FILE = "lesson_seconds.json"


@dataclass
class LessonReport:
    lesson: str
    seconds: float
    checkpoint: str  # "passed", "FAILED", "not reached" or "no checkpoint cell"
    error: str = ""


def kernel_env(workers: int, out_dir: Path) -> dict[str, str]:
    """The kernels' environment: this process's, the build folder for their results, and one
    thread per kernel when several run at once (``OMP_NUM_THREADS`` for torch's default,
    ``RLHF_LESSONS_THREADS`` for :func:`~rlhf_lessons.course.device.lm_threads`), so two kernels
    never fight over the cores (unless the caller set the thread variables)."""
    env = dict(os.environ)
    env["RLHF_LESSONS_BUILD"] = str(Path(out_dir).resolve())
    if workers > 1:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "RLHF_LESSONS_THREADS"):
            env.setdefault(var, "1")
    return env


class _Display:
    """A bar per running notebook (cells done of its code cells, the running cell's first line),
    or, when stderr is not a terminal, one line per cell started."""

    def __init__(self):
        self.enabled = progress_enabled()
        self.bars: dict[str, object] = {}
        self.started: dict[str, float] = {}
        self.tty = sys.stderr.isatty()

    def start(self, lesson: str, cells: int, slot: int) -> None:
        self.started[lesson] = time.perf_counter()
        if self.enabled and self.tty:
            self.bars[lesson] = progress(
                total=cells, desc=f"{lesson[:28]:<28}", unit="cell", position=slot, leave=False
            )

    def cell(self, lesson: str, number: int, cells: int, source: str) -> None:
        if not self.enabled:
            return
        first = next((ln.strip() for ln in source.splitlines() if ln.strip()), "")[:60]
        if lesson in self.bars:
            bar = self.bars[lesson]
            bar.n = number - 1
            bar.set_postfix_str(f"cell {number}/{cells}: {first}")
        else:
            took = time.perf_counter() - self.started.get(lesson, time.perf_counter())
            line = (
                f"  [{took // 60:02.0f}:{took % 60:02.0f}] {lesson}: cell {number}/{cells}: {first}"
            )
            print(line, file=sys.stderr, flush=True)

    def write(self, line: str) -> None:
        if self.bars:
            from tqdm import tqdm

            tqdm.write(line)
        else:
            print(line, flush=True)

    def finish(self, lesson: str) -> None:
        bar = self.bars.pop(lesson, None)
        if bar is not None:
            bar.close()


def _this_python_kernel():
    """A kernel manager that always starts this interpreter's ipykernel (the checkout's .venv),
    whatever kernels the notebook's metadata or the user's Jupyter folders name."""
    from jupyter_client import AsyncKernelManager
    from jupyter_client.kernelspec import KernelSpec, KernelSpecManager

    class ThisPython(KernelSpecManager):
        def get_kernel_spec(self, kernel_name):
            argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
            return KernelSpec(argv=argv, display_name="Python", language="python")

    return AsyncKernelManager(kernel_name="python3", kernel_spec_manager=ThisPython())


async def _run_one(path: Path, out_dir: Path, timeout: int, env, display, slot) -> LessonReport:
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    checks = [i for i in code if CHECKPOINT_TAG in nb.cells[i].get("metadata", {}).get("tags", [])]

    def on_cell_start(cell, cell_index):
        if cell.cell_type == "code":  # nbclient calls this for markdown cells too
            display.cell(path.stem, code.index(cell_index) + 1, len(code), cell.source)

    client = NotebookClient(
        nb,
        km=_this_python_kernel(),
        # the kernel's own log: errors only (ipykernel warns at every start that its TCP socket
        # on 127.0.0.1 is not encrypted)
        extra_arguments=["--IPKernelApp.log_level=ERROR"],
        timeout=timeout,
        resources={"metadata": {"path": str(path.parent)}},
        on_cell_start=on_cell_start,
    )
    display.start(path.stem, len(code), slot)
    start = time.perf_counter()
    error = ""
    try:
        await client.async_execute(env=env)
    except CellExecutionError as err:
        error = str(err).strip().splitlines()[-1] if str(err).strip() else repr(err)
    except Exception as err:  # a dead kernel or a timeout: report it, go on with the others
        error = f"{type(err).__name__}: {err}".splitlines()[0]
    finally:
        display.finish(path.stem)
    seconds = time.perf_counter() - start
    out_dir.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out_dir / path.name)

    if not checks:
        status = "no checkpoint cell"
    else:
        cell = nb.cells[checks[-1]]
        ran = cell.get("execution_count") is not None
        failed = any(o.get("output_type") == "error" for o in cell.get("outputs", []))
        status = "FAILED" if failed else ("passed" if ran and not error else "not reached")
    return LessonReport(path.stem, seconds, status, error)


def _lesson_number(path: Path) -> str:
    return path.name[:2]


def dependencies(paths: list[Path]) -> dict[str, set[str]]:
    """lesson number -> the selected lessons it must wait for (:data:`AFTER` and the notebooks'
    ``rlhf_lessons.after`` metadata)."""
    import nbformat

    selected = {_lesson_number(p) for p in paths}
    deps = {}
    for p in paths:
        meta = nbformat.read(p, as_version=4).metadata.get("rlhf_lessons", {})
        after = set(meta.get("after", AFTER.get(_lesson_number(p), ())))
        deps[_lesson_number(p)] = after & selected
    return deps


def previous_seconds(out_dir: Path) -> dict[str, float]:
    """Each lesson's last measured time (``lesson_seconds.json`` in ``out_dir/results``, else
    the committed ``docs/results/course.json``), keyed by lesson number."""
    from rlhf_lessons.course.cache import checkout_root

    candidates = [Path(out_dir) / "results" / HISTORY_FILE]
    root = checkout_root()
    if root is not None:
        candidates.append(root / "docs" / "results" / "course.json")
    for path in candidates:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        rows = data.get("lessons", data) if isinstance(data, dict) else data
        if isinstance(rows, dict):
            return {str(k)[:2]: float(v) for k, v in rows.items()}
        return {str(r["lesson"])[:2]: float(r["seconds"]) for r in rows}
    return {}


def schedule(paths: list[Path], seconds: dict[str, float], deps: dict[str, set[str]]) -> list[Path]:
    """Longest first (times: :func:`previous_seconds`): by a lesson's own time plus the time of
    the lessons waiting for it (so a lesson others depend on is not left to the end). Unknown
    lessons count as the longest."""
    longest = max(seconds.values(), default=0.0) + 1.0

    def cost(n: str) -> float:
        return seconds.get(n, longest)

    def priority(p: Path) -> float:
        n = _lesson_number(p)
        return cost(n) + sum(cost(m) for m, after in deps.items() if n in after)

    return sorted(paths, key=lambda p: (-priority(p), p.name))


def machine_description() -> str:
    """CPU model and core count, for the runtimes table."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}"


async def _run_all(paths, out_dir, workers, timeout, display, report_line):
    deps = dependencies(paths)
    queue = schedule(paths, previous_seconds(out_dir), deps)
    env = kernel_env(workers, out_dir)
    done: dict[str, LessonReport] = {}
    finished = asyncio.Condition()
    free_slots = list(range(workers))

    async def worker():
        while True:
            async with finished:
                while True:
                    if not queue:
                        return
                    ready = [p for p in queue if deps[_lesson_number(p)] <= set(done)]
                    if not ready and len(free_slots) == workers:
                        ready = queue[:1]  # nothing runs, nothing is ready: a cycle; break it
                    if ready:
                        path = ready[0]
                        queue.remove(path)
                        slot = free_slots.pop(0)
                        break
                    await finished.wait()
            report = await _run_one(path, out_dir, timeout, env, display, slot)
            report_line(report)
            async with finished:
                done[_lesson_number(path)] = report
                free_slots.append(slot)
                finished.notify_all()

    await asyncio.gather(*(worker() for _ in range(min(workers, len(paths)))))
    return [done[_lesson_number(p)] for p in paths]


def run_lessons(
    notebooks_dir: Path = Path("notebooks"),
    out_dir: Path = Path("build"),
    only: list[str] | None = None,
    workers: int = 1,
    timeout: int = 1800,
) -> list[LessonReport]:
    """Run every ``NN_*.ipynb`` in ``notebooks_dir`` (or those whose name starts with one of
    ``only``), ``workers`` at a time, longest first, printing a line as each finishes and the
    table at the end; write ``out_dir/results/course.json``. Returns the reports in lesson order.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    paths = sorted(Path(notebooks_dir).glob("[0-9][0-9]_*.ipynb"))
    if only:
        paths = [p for p in paths if any(p.name.startswith(o) for o in only)]
    if not paths:
        raise FileNotFoundError(f"no lesson notebooks (NN_*.ipynb) matched in {notebooks_dir}")
    out_dir = Path(out_dir)
    display = _Display()
    header = f"{'lesson':<40} {'runtime':>9}  checkpoint"

    def report_line(r: LessonReport) -> None:
        display.write(f"{r.lesson:<40} {r.seconds:>8.1f}s  {r.checkpoint}")
        if r.error:
            display.write(f"    error: {r.error}")

    print(f"{len(paths)} notebooks, {workers} at a time; finished:", flush=True)
    print(header, flush=True)
    start = time.perf_counter()
    reports = asyncio.run(_run_all(paths, out_dir, workers, timeout, display, report_line))
    wall = time.perf_counter() - start

    passed = sum(r.checkpoint == "passed" for r in reports)
    print(f"\nin lesson order ({workers} at a time):\n{header}", flush=True)
    for r in reports:
        print(f"{r.lesson:<40} {r.seconds:>8.1f}s  {r.checkpoint}", flush=True)
    total = sum(r.seconds for r in reports)
    print(f"{'sum of lesson times':<40} {total:>8.1f}s", flush=True)
    print(f"{'wall time':<40} {wall:>8.1f}s  {passed}/{len(reports)} passed", flush=True)
    write_course_json(out_dir, reports, wall, workers)
    return reports


def write_course_json(out_dir: Path, reports: list[LessonReport], wall: float, workers: int):
    """``out_dir/results/course.json`` (this run) and ``lesson_seconds.json`` (every lesson's
    latest time, kept across partial runs for the scheduler)."""
    results = Path(out_dir) / "results"
    results.mkdir(parents=True, exist_ok=True)
    rows = []
    for r in reports:
        row = {k: v for k, v in asdict(r).items() if k != "error" or v}
        row["seconds"] = round(r.seconds, 1)
        rows.append(row)
    course = {
        "lessons": rows,
        "wall_seconds": round(wall, 1),
        "passed": sum(r.checkpoint == "passed" for r in reports),
        "workers": workers,
        "machine": machine_description(),
    }
    (results / "course.json").write_text(json.dumps(course, indent=2) + "\n")
    history_path = results / HISTORY_FILE
    try:
        history = json.loads(history_path.read_text())
    except (OSError, ValueError):
        history = {}
    history.update({r.lesson[:2]: round(r.seconds, 1) for r in reports})
    history_path.write_text(json.dumps(dict(sorted(history.items())), indent=2) + "\n")
