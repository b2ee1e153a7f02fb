"""benchmarks/course.py's table and benchmarks/run_all.py's summary (the benchmarks themselves
belong to their lessons and run under `make bench`)."""

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(
        f"bench_{name}", ROOT / "benchmarks" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_course_summary_flags_lessons_over_four_minutes():
    course = _load("course")
    run = {
        "lessons": [
            {"lesson": "01_reinforce_cartpole", "seconds": 100.0, "checkpoint": "passed"},
            {"lesson": "04_reward_models", "seconds": 373.0, "checkpoint": "passed"},
        ],
        "wall_seconds": 400.0,
        "passed": 2,
        "workers": 2,
        "machine": "test cpu, 2 cores",
    }
    text, over = course.summary(run)
    assert over == ["04_reward_models"]
    assert "over 4 minutes: 04_reward_models" in text
    assert "6.22 m  passed  over 4 min" in text and "course wall time" in text
    assert "(2 at a time; target 20 min: met)" in text


def test_run_all_prints_each_last_line_and_skips_missing(tmp_path, monkeypatch, capsys):
    run_all = _load("run_all")
    (tmp_path / "cartpole.py").write_text("print('details')\nprint('ratio ours/SB3: 0.40')\n")
    (tmp_path / "dpo_step.py").write_text("import sys\nprint('half way')\nsys.exit(3)\n")
    monkeypatch.setattr(run_all, "HERE", tmp_path)
    status = run_all.main(["--out", str(tmp_path / "out")])
    out = capsys.readouterr().out.split("=== summary")[1]
    assert status == 1  # dpo_step failed
    assert "cartpole   ratio ours/SB3: 0.40" in out
    assert "dpo_step   FAILED (exit 3): half way" in out
    assert "grpo_step  skipped: benchmarks/grpo_step.py is not present yet" in out
    assert (tmp_path / "out" / "cartpole.txt").read_text().endswith("0.40\n")
    assert sys.executable  # the scripts run with this interpreter
