"""Execute the lesson notebooks headless and report which checkpoints passed (``make lessons``).

Each notebook is run top to bottom with nbclient in a fresh kernel; the executed copy (outputs
and figures included) is written under ``build/``. A lesson's *checkpoint* is its cell tagged
``checkpoint`` (the cell that asserts the lesson's claim): it passed when that cell ran without
an error. A notebook that fails before its checkpoint counts as not passed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

CHECKPOINT_TAG = "checkpoint"


@dataclass
class LessonReport:
    lesson: str
    seconds: float
    checkpoint: str  # "passed", "FAILED", "not reached" or "no checkpoint cell"
    error: str = ""


def _checkpoint_cells(nb) -> list[int]:
    return [
        i
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and CHECKPOINT_TAG in cell.get("metadata", {}).get("tags", [])
    ]


def run_notebook(path: Path, out_dir: Path, timeout: int = 1800) -> LessonReport:
    """Execute one notebook, save the executed copy in ``out_dir``, report its checkpoint."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)
    checks = _checkpoint_cells(nb)
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    start = time.perf_counter()
    error = ""
    try:
        client.execute()
    except CellExecutionError as err:
        error = str(err).strip().splitlines()[-1] if str(err).strip() else repr(err)
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


def run_lessons(
    notebooks_dir: Path = Path("notebooks"),
    out_dir: Path = Path("build"),
    only: list[str] | None = None,
) -> list[LessonReport]:
    """Run every ``NN_*.ipynb`` in ``notebooks_dir`` in order (or those whose name starts with one
    of ``only``), printing a table as it goes. Returns the reports."""
    paths = sorted(notebooks_dir.glob("[0-9][0-9]_*.ipynb"))
    if only:
        paths = [p for p in paths if any(p.name.startswith(o) for o in only)]
    if not paths:
        raise FileNotFoundError(f"no lesson notebooks (NN_*.ipynb) matched in {notebooks_dir}")
    reports = []
    print(f"{'lesson':<40} {'runtime':>9}  checkpoint", flush=True)
    for path in paths:
        report = run_notebook(path, out_dir)
        reports.append(report)
        print(f"{report.lesson:<40} {report.seconds:>8.1f}s  {report.checkpoint}", flush=True)
        if report.error:
            print(f"    error: {report.error}", flush=True)
    total = sum(r.seconds for r in reports)
    passed = sum(r.checkpoint == "passed" for r in reports)
    print(f"{'total':<40} {total:>8.1f}s  {passed}/{len(reports)} passed", flush=True)
    return reports
