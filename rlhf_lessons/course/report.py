"""Render the README's numbers and figures from a full run's results (``rlhf-lessons report``).

No measured number is typed into the README. After ``make lessons`` (the learner's defaults,
the default seeds) each notebook has written ``build/results/NN.json`` and its figure
``build/figures/*.png``, and the lesson runner ``build/results/course.json`` (runtimes).
``rlhf-lessons report`` copies them to ``docs/results/`` and ``docs/figures/`` (committed) and
rewrites the generated blocks of ``README.md``:

- ``<!-- claims NN -->`` ... ``<!-- /claims -->``: lesson NN's claims, bars, means and 95%
  intervals;
- ``<!-- value NN path fmt -->`` ... ``<!-- /value -->``: one recorded value inline, e.g.
  ``<!-- value 06 smol.after .3f -->`` (``path`` walks ``values`` by dots; a claim's mean is
  ``claims.<name>``);
  ``<!-- value own_data grpo.reward_change .3f -->`` quotes ``build/results/own_data.json``
  (``benchmarks/own_data.py``: the "Use it on your own data" examples at their real budgets);
- ``<!-- runtimes -->`` ... ``<!-- /runtimes -->``: the per-lesson wall times.

``rlhf-lessons report --check`` renders from the committed ``docs/results/`` and fails when the
README differs: a test runs it, so the README and the results file cannot drift apart.
"""

from __future__ import annotations

import difflib
import json
import re
import shutil
from pathlib import Path

from rlhf_lessons.course.results import load_results

CLAIMS = re.compile(r"(<!-- claims (\d\d) -->\n).*?(<!-- /claims -->)", re.S)
VALUE = re.compile(
    r"(<!-- value (\d\d|own_data) ([\w.\-]+) ?([^ ]*?) -->).*?(<!-- /value -->)", re.S
)
EXTRA_RESULTS = ("own_data",)  # results files that are not a lesson's (the module docstring)
RUNTIMES = re.compile(r"(<!-- runtimes -->\n).*?(<!-- /runtimes -->)", re.S)


def _fmt(x: float) -> str:
    return "n/a" if x is None else f"{x:.3g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.1e}"


def claims_table(result: dict) -> str:
    """A lesson's claims as a Markdown table."""
    lines = ["| claim | test (why this bar) | estimate [95% interval] | n | holds |",
             "|---|---|---|---|---|"]  # fmt: skip
    if not result["claims"]:
        lines = ["No claim is asserted in this lesson's run; its recorded values are in "
                 f"`docs/results/{result['lesson']}.json`."]  # fmt: skip
    for c in result["claims"]:
        est = _fmt(c["mean"]) if c["method"] == "point" else (
            f"{_fmt(c['mean'])} [{_fmt(c['low'])}, {_fmt(c['high'])}]"
        )  # fmt: skip
        lines.append(f"| {c['name']} | {c['direction']} {c['bar']:g} ({c['reason']}) | {est} | "
                     f"{c['n']} | {'yes' if c['passed'] else '**no**'} |")  # fmt: skip
    if result.get("seeds"):
        lines += ["", f"Seeds: {', '.join(str(s) for s in result['seeds'])}."]
    return "\n".join(lines) + "\n"


def lookup(result: dict, path: str):
    """``values.a.b`` by dots (``claims.<name>`` gives that claim's mean)."""
    if path.startswith("claims."):
        name = path[len("claims.") :]
        for c in result["claims"]:
            if c["name"] == name:
                return c["mean"]
        raise KeyError(f"lesson {result['lesson']} has no claim named {name!r}")
    node = result["values"]
    for part in path.split("."):
        if isinstance(node, list):
            node = node[int(part)]
        elif part in node:
            node = node[part]
        else:
            raise KeyError(f"lesson {result['lesson']}: no value {path!r} (stopped at {part!r})")
    return node


def runtimes_table(course: dict) -> str:
    lines = ["| lesson | wall time | checkpoint |", "|---|---|---|"]
    for row in course["lessons"]:
        lines.append(f"| {row['lesson']} | {row['seconds'] / 60:.1f} min | {row['checkpoint']} |")
    lines.append(f"| **all lessons** ({course.get('workers', 1)} at a time) | "
                 f"**{course['wall_seconds'] / 60:.1f} min** | {course['passed']}/{len(course['lessons'])} passed |")  # fmt: skip
    if course.get("machine"):
        lines += ["", f"Measured on {course['machine']}."]
    return "\n".join(lines) + "\n"


def render(readme: str, results: dict[str, dict], course: dict | None) -> str:
    """The README with every generated block filled from ``results`` (and ``course``)."""

    def result(lesson: str, use: str) -> dict:
        if lesson not in results:
            raise KeyError(f"README {use} lesson {lesson}, but there is no results file for it")
        return results[lesson]

    def claims(m: re.Match) -> str:
        return m.group(1) + claims_table(result(m.group(2), "shows the claims of")) + m.group(3)

    def value(m: re.Match) -> str:
        x, spec = lookup(result(m.group(2), "quotes"), m.group(3)), m.group(4)
        return m.group(1) + (format(x, spec) if spec else str(x)) + m.group(5)

    out = CLAIMS.sub(claims, readme)
    out = VALUE.sub(value, out)
    if course is not None:
        out = RUNTIMES.sub(lambda m: m.group(1) + runtimes_table(course) + m.group(2), out)
    return out


def publish(build: Path, root: Path) -> list[str]:
    """Copy a full run's results and figures from ``build`` into ``docs/`` and re-render the
    README. Refuses results from the fast switch or from overridden seeds."""
    found = load_results(build / "results")
    if not found:
        raise FileNotFoundError(f"no results in {build / 'results'}: run `make lessons` first")
    for lesson, r in found.items():
        if r.get("fast") or r.get("seeds_switch"):
            raise ValueError(
                f"build/results/{lesson}.json comes from a run with RLHF_LESSONS_FAST or "
                "RLHF_LESSONS_SEEDS set: the README shows the learner's defaults only; run "
                "`make lessons` without them"
            )
    (root / "docs" / "results").mkdir(parents=True, exist_ok=True)
    copied = []
    for files, folder in (("results/*.json", "results"), ("figures/*.png", "figures")):
        for src in sorted(build.glob(files)):
            copied.append(str(shutil.copy2(src, root / "docs" / folder / src.name)))
    (root / "README.md").write_text(render_committed(root))
    return copied


def render_committed(root: Path) -> str:
    """The README as rendered from the committed ``docs/results/``."""
    docs = root / "docs" / "results"
    course_file = docs / "course.json"
    course = json.loads(course_file.read_text()) if course_file.exists() else None
    return render((root / "README.md").read_text(), with_extra_results(docs), course)


def with_extra_results(folder: Path) -> dict[str, dict]:
    """The lessons' results in ``folder`` and the :data:`EXTRA_RESULTS` files present there."""
    found = load_results(folder)
    for name in EXTRA_RESULTS:
        path = Path(folder) / f"{name}.json"
        if path.exists():
            found[name] = json.loads(path.read_text())
    return found


def check(root: Path) -> str:
    """An empty string when the README equals its rendering, else a unified diff."""
    current = (root / "README.md").read_text()
    rendered = render_committed(root)
    if current == rendered:
        return ""
    return "".join(difflib.unified_diff(current.splitlines(True), rendered.splitlines(True),
                                        "README.md", "README.md (rendered from docs/results)"))  # fmt: skip
