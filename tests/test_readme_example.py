"""The README's "Using the package outside a notebook" example runs as printed (at a tiny
budget: 4 training and 4 held-out pairs instead of 32 and 32)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def readme_example() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Using the package outside a notebook", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README's example is missing"
    return match.group(1)


def test_readme_example_runs_offline_at_a_tiny_budget(tmp_path):
    code = readme_example()
    budget = "N_TRAIN, N_HELDOUT = 32, 32"
    assert budget in code
    script = tmp_path / "example.py"
    script.write_text(code.replace(budget, "N_TRAIN, N_HELDOUT = 4, 4"))
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,  # not the checkout: the package is used as an installed library
        capture_output=True,
        text=True,
        timeout=600,
        env={**__import__("os").environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert re.fullmatch(r"DPO loss per step: \[0\.693\]", lines[0]), lines  # 4 pairs: one step
    assert re.fullmatch(r"held-out pairs ranked right by the implicit reward: [01]\.\d\d", lines[1])
