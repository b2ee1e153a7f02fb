"""The notebooks' setup cell, run as Colab would run it (outside Jupyter: the cell is plain
Python), and the one repository address everything is rendered from."""

import importlib.util
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from rlhf_lessons.course import colab

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _run_cell(monkeypatch, *, colab_runtime: bool, env: dict | None = None, spy=None):
    """Execute the setup cell with ``rlhf_lessons`` missing, as in a fresh Colab runtime."""
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "rlhf_lessons" else real(name, *a),
    )
    if colab_runtime:
        monkeypatch.setenv("COLAB_RELEASE_TAG", "test")
    else:
        monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    if spy is not None:
        monkeypatch.setattr(subprocess, "run", spy)
    exec(compile(colab.setup_cell(ROOT), "setup-cell", "exec"), {})


def test_every_notebook_starts_with_the_setup_cell():
    cell = colab.setup_cell(ROOT)
    for path in NOTEBOOKS:
        nb = json.loads(path.read_text())
        first = next(c for c in nb["cells"] if c["cell_type"] == "code")
        assert "".join(first["source"]) == cell, (
            f"{path.name}: run `python -m rlhf_lessons colab` to write the setup cell"
        )
    assert colab.sync(ROOT, check=True) == []  # nothing to write: the command is idempotent


def test_a_failing_clone_on_colab_stops_with_a_clear_message(monkeypatch, tmp_path):
    missing = tmp_path / "no-such-repository"
    with pytest.raises(RuntimeError) as err:
        _run_cell(
            monkeypatch,
            colab_runtime=True,
            env={"RLHF_LESSONS_REPO": str(missing), "RLHF_LESSONS_COLAB_DIR": str(tmp_path / "c")},
        )  # a real `git clone` of a repository that does not exist
    message = str(err.value)
    assert type(err.value).__name__ == "CourseSetupError"
    assert f"Cloning the course from {missing}" in message and "failed (exit code" in message
    assert "does not exist" in message or "not appear to be a git repository" in message
    assert "RLHF_LESSONS_REPO" in message and "run this cell again" in message
    assert not (tmp_path / "c" / "pyproject.toml").exists()


def test_a_failing_install_on_colab_stops_with_a_clear_message(monkeypatch, tmp_path):
    checkout = tmp_path / "rlhf-lessons"
    checkout.mkdir()
    (checkout / "pyproject.toml").write_text("[project\nname = broken")  # an earlier clone, broken
    calls = []

    def fake_pip(command, **kwargs):  # never install into the test's environment
        calls.append(command)
        return subprocess.CompletedProcess(command, 1, "", "ERROR: invalid pyproject.toml\n")

    with pytest.raises(
        RuntimeError, match=r"Installing the course .* failed \(exit code 1\)"
    ) as err:
        _run_cell(
            monkeypatch,
            colab_runtime=True,
            env={"RLHF_LESSONS_COLAB_DIR": str(checkout)},
            spy=fake_pip,
        )
    assert "invalid pyproject.toml" in str(err.value) and "Restart the session" in str(err.value)
    assert len(calls) == 1 and calls[0][:4] == [sys.executable, "-m", "pip", "install"]
    assert calls[0][-1] == f"{checkout}[lm]"  # no clone: the checkout was there


def test_outside_colab_the_cell_installs_nothing_and_says_how_to_fix_it(monkeypatch):
    def no_subprocess(*args, **kwargs):
        raise AssertionError("the setup cell ran a command outside Colab")

    with pytest.raises(RuntimeError, match="make lab") as err:
        _run_cell(monkeypatch, colab_runtime=False, spy=no_subprocess)
    assert sys.executable in str(err.value)


def test_with_the_package_installed_the_cell_does_nothing(monkeypatch):
    monkeypatch.setenv("COLAB_RELEASE_TAG", "test")
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("ran a command"))
    namespace = {}
    exec(colab.setup_cell(ROOT), namespace)
    assert set(namespace) - {"__builtins__"} == {"_setup_course"}  # leaves the notebook clean


def test_the_repository_address_is_written_once():
    urls = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]
    address = urls["Repository"]
    assert colab.repository_url(ROOT) == address
    assert f'"{address}"' in colab.setup_cell(ROOT)
    # no file but pyproject.toml spells it (the notebooks' cell and the README's badges are
    # rendered from it; the Colab form "github/<owner>/<name>" is derived)
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    spelled = [
        f
        for f in tracked
        if f.endswith((".py", ".md", ".toml", ".yml", ".cfg", "Makefile", ".ipynb"))
        and address in (ROOT / f).read_text()
    ]
    assert set(spelled) == {"pyproject.toml"} | {f"notebooks/{p.name}" for p in NOTEBOOKS}
    for path in NOTEBOOKS:  # and in a notebook only inside the rendered setup cell
        nb = json.loads(path.read_text())
        rest = [c for c in nb["cells"] if "".join(c["source"]) != colab.setup_cell(ROOT)]
        assert not any(address in "".join(c["source"]) for c in rest), path.name


def test_badges_in_the_readme_are_rendered_from_the_address():
    readme = (ROOT / "README.md").read_text()
    assert colab.render_readme(readme, ROOT) == readme, "run `python -m rlhf_lessons colab`"
    for path in NOTEBOOKS:
        badge = colab.colab_badge(path, ROOT)
        assert badge in readme
        assert badge.endswith(f"/blob/main/notebooks/{path.name})")


def test_badges_placed_in_notebooks_point_to_their_own_notebook():
    # the lead places colab_badge(path) at the top of each notebook; any badge there must be it
    for path in NOTEBOOKS:
        nb = json.loads(path.read_text())
        text = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
        for url in re.findall(r"https://colab\.research\.google\.com/github/[^)\s]+", text):
            assert url == colab.colab_url(path, ROOT), f"{path.name}: {url}"


def test_every_notebook_opens_with_its_colab_badge():
    for path in NOTEBOOKS:
        nb = json.loads(path.read_text())
        first = next(c for c in nb["cells"] if c["cell_type"] == "markdown")
        assert "".join(first["source"]).startswith(colab.colab_badge(path, ROOT)), path.name
