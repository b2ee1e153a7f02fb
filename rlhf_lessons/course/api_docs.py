"""The API reference: every public module of ``rlhf_lessons`` rendered from its docstrings with
pdoc (``make docs`` or ``python -m rlhf_lessons docs``; open ``build/docs/index.html``).

The build fails on any warning pdoc (or our own code, while pdoc imports it) issues, so a broken
docstring reference or an import-time problem shows up in ``make test``
(``tests/test_api_docs.py``).
"""

from __future__ import annotations

import pkgutil
import warnings
from pathlib import Path

# Docstrings are written in reStructuredText-flavoured Markdown (``code``, :func:`name`).
DOCFORMAT = "restructuredtext"


def public_modules() -> list[str]:
    """``rlhf_lessons`` and its public subpackages and modules one level down (pdoc walks the
    subpackages itself; naming their modules again would document them twice)."""
    import rlhf_lessons

    names = [m.name for m in pkgutil.iter_modules(rlhf_lessons.__path__, "rlhf_lessons.")]
    return ["rlhf_lessons", *sorted(n for n in names if not n.rsplit(".", 1)[-1].startswith("_"))]


def _ours(w: warnings.WarningMessage) -> bool:
    path = str(w.filename).replace("\\", "/")
    return "/pdoc/" in path or "/rlhf_lessons/" in path


def build_api_docs(out: Path) -> list[str]:
    """Render the reference into ``out`` (``index.html`` and one page per module). Returns the
    warnings pdoc and the package raised (empty when the build is clean)."""
    import pdoc
    import pdoc.render

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pdoc.render.configure(
            docformat=DOCFORMAT,
            footer_text="rlhf-lessons: the package the lessons import",
            search=True,
            show_source=True,
        )
        pdoc.pdoc(*public_modules(), output_directory=out)
    return [
        f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})" for w in caught if _ours(w)
    ]
