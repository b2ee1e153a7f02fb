import json
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from rlhf_lessons.course import lesson_runner
from rlhf_lessons.course.lesson_runner import dependencies, run_lessons, schedule


def _write(path, checkpoint_source, first="x = 41 + 1\nprint(x)", metadata=None):
    cp = new_code_cell(checkpoint_source)
    cp.metadata["tags"] = ["checkpoint"]
    nb = new_notebook(cells=[new_markdown_cell("# A lesson"), new_code_cell(first), cp])
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.metadata.update(metadata or {})
    nbformat.write(nb, path)


def test_runner_reports_passed_and_failed_checkpoints(tmp_path, capsys):
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    _write(nbs / "01_good.ipynb", "assert x == 42")
    _write(nbs / "02_bad.ipynb", "assert x == 43, 'claim failed'")
    reports = run_lessons(nbs, tmp_path / "build")
    assert [(r.lesson, r.checkpoint) for r in reports] == [
        ("01_good", "passed"),
        ("02_bad", "FAILED"),
    ]
    executed = nbformat.read(tmp_path / "build" / "01_good.ipynb", as_version=4)
    assert executed.cells[1].outputs[0]["text"] == "42\n"
    table = capsys.readouterr().out
    assert "01_good" in table and "1/2 passed" in table
    course = json.loads((tmp_path / "build" / "results" / "course.json").read_text())
    assert [(r["lesson"], r["checkpoint"]) for r in course["lessons"]] == [
        ("01_good", "passed"),
        ("02_bad", "FAILED"),
    ]
    assert course["passed"] == 1 and course["workers"] == 1 and "cores" in course["machine"]
    assert course["wall_seconds"] > 0 and all(r["seconds"] > 0 for r in course["lessons"])
    assert "AssertionError" in course["lessons"][1]["error"]
    assert "error" not in course["lessons"][0]
    from rlhf_lessons.course.report import runtimes_table  # the README's table renders from it

    table = runtimes_table(course)
    assert "| 01_good |" in table and "1/2 passed" in table and "Measured on" in table


# Each notebook records when it ran and what its kernel was given.
PROBE = """import json, os, time
start = time.time()
time.sleep(1.5)
seen = {{k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "RLHF_LESSONS_THREADS", "RLHF_LESSONS_BUILD")}}
with open(os.path.join(os.environ["PROBE_DIR"], os.path.basename(os.getcwd()) + "-{name}.json"), "w") as f:
    json.dump({{"start": start, "end": time.time(), "env": seen}}, f)
"""


def test_two_workers_overlap_with_one_thread_per_kernel_and_respect_order(tmp_path, monkeypatch):
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    probes = tmp_path / "probes"
    probes.mkdir()
    monkeypatch.setenv("PROBE_DIR", str(probes))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("RLHF_LESSONS_THREADS", raising=False)
    monkeypatch.setattr(lesson_runner, "AFTER", {"03": ("01",)})
    for name in ("01_a", "02_b", "03_c"):
        _write(nbs / f"{name}.ipynb", "assert True", first=PROBE.format(name=name))
    build = tmp_path / "build"
    reports = run_lessons(nbs, build, workers=2)
    assert [r.checkpoint for r in reports] == ["passed"] * 3
    runs = {p.stem.split("-")[1]: json.loads(p.read_text()) for p in probes.glob("*.json")}
    assert set(runs) == {"01_a", "02_b", "03_c"}
    for run in runs.values():
        assert run["env"] == {
            "OMP_NUM_THREADS": "1",
            "RLHF_LESSONS_THREADS": "1",
            "RLHF_LESSONS_BUILD": str(build.resolve()),
        }
    a, b, c = runs["01_a"], runs["02_b"], runs["03_c"]
    assert a["start"] < b["end"] and b["start"] < a["end"], "01 and 02 did not run side by side"
    assert c["start"] >= a["end"], "03 started before 01, which it must wait for"
    course = json.loads((build / "results" / "course.json").read_text())
    assert course["workers"] == 2 and course["passed"] == 3
    history = json.loads((build / "results" / "lesson_seconds.json").read_text())
    assert set(history) == {"01", "02", "03"}


def test_schedule_longest_first_and_dependencies_early(tmp_path):
    paths = [Path(f"{n}_x.ipynb") for n in ("01", "02", "03", "04")]
    seconds = {"01": 60.0, "02": 100.0, "03": 30.0}  # 04 unknown: scheduled as the longest
    order = schedule(paths, seconds, {"01": set(), "02": set(), "03": set(), "04": set()})
    assert [p.name[:2] for p in order] == ["04", "02", "01", "03"]
    # 02 waits for 01: 01's priority includes 02's time (the chain's), so 01 starts first
    order = schedule(paths, seconds, {"01": set(), "02": {"01"}, "03": set(), "04": set()})
    assert [p.name[:2] for p in order] == ["01", "04", "02", "03"]


def test_dependencies_from_metadata_and_defaults(tmp_path):
    for name, meta in [
        ("01_a", None),
        ("02_b", None),
        ("03_c", {"rlhf_lessons": {"after": ["02"]}}),
    ]:
        _write(tmp_path / f"{name}.ipynb", "assert True", metadata=meta)
    paths = sorted(tmp_path.glob("*.ipynb"))
    assert dependencies(paths) == {"01": set(), "02": {"01"}, "03": {"02"}}
    assert dependencies(paths[1:]) == {"02": set(), "03": {"02"}}  # 01 not selected: no wait


def test_kernels_are_this_interpreter_whatever_jupyter_finds(tmp_path, monkeypatch):
    # a user-level "python3" kernel that points elsewhere must not be used
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps({"argv": ["/bin/false", "{connection_file}"], "display_name": "elsewhere"})
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    _write(nbs / "01_which.ipynb", "import sys\nassert sys.executable == " + repr(sys.executable))
    [report] = run_lessons(nbs, tmp_path / "build")
    assert report.checkpoint == "passed", report.error
