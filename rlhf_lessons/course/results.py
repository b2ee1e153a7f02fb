"""A lesson's findings and claims, written to ``build/results/<lesson>.json`` by the notebook.

Numbers a learner reads come from the run, never from typed text. A notebook collects what it
measured in a :class:`Results`, states each learning claim with :meth:`Results.claim` (the bar
and its reason fixed *before* the run, the estimate an :class:`~rlhf_lessons.course.stats.
Interval` over seeds), shows them (:meth:`Results.table`), saves them, and its checkpoint
asserts them::

    results = Results("06", "DPO and IPO")
    gain = diff_ci(dpo_rewards, sft_rewards)               # paired by seed
    results.claim("DPO (beta 0.1) raises the true reward", gain, bar=0.25,
                  reason="the DPO paper's IMDb gain at this KL, scaled to VADER's range")
    results.save()
    assert results.passed, results.failures()

``rlhf-lessons report`` renders the README's numbers and figures from a full run's files
(:mod:`rlhf_lessons.course.report`).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rlhf_lessons.course.budget import fast_mode
from rlhf_lessons.course.cache import is_checkout, write_atomically
from rlhf_lessons.course.seeds import ENV_VAR as SEEDS_VAR
from rlhf_lessons.course.stats import Interval
from rlhf_lessons.run_log import jsonable

DIRECTIONS = ("above", "below", "excludes", "within")


def repo_root(start: Path | None = None) -> Path | None:
    """The checkout this runs in (the folder with the course's ``pyproject.toml``), if any."""
    here = (start or Path.cwd()).resolve()
    return next((folder for folder in (here, *here.parents) if is_checkout(folder)), None)


def build_dir() -> Path:
    """``$RLHF_LESSONS_BUILD``, else ``build/`` in the checkout (else in the working folder)."""
    if os.environ.get("RLHF_LESSONS_BUILD"):
        return Path(os.environ["RLHF_LESSONS_BUILD"])
    return (repo_root() or Path.cwd()) / "build"


@dataclass
class Claim:
    """One checked statement: ``estimate`` compared with ``bar`` in ``direction``.

    - ``above``: the interval's lower bound is above the bar (a gain that clears it);
    - ``below``: the upper bound is below the bar;
    - ``excludes``: the bar (usually 0) lies outside the interval (a difference exists);
    - ``within``: the bar lies inside the interval (no difference detectable).

    A plain number (no interval) is compared as it is: use that only for checks that are not
    learning claims (a parity gap, a count).
    """

    name: str
    bar: float
    reason: str
    direction: str
    mean: float
    low: float
    high: float
    n: int
    method: str
    passed: bool

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        est = f"{self.mean:.4g}" if self.method == "point" else (
            f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}] ({self.method}, n={self.n})"
        )  # fmt: skip
        verdict = "passed" if self.passed else "FAILED"
        return f"{verdict}: {self.name}: {est} {self.direction} {self.bar:g} ({self.reason})"


def _judge(
    est: Interval | float, bar: float, direction: str
) -> tuple[float, float, float, int, str, bool]:
    if not isinstance(est, Interval):
        est = Interval(float(est), float(est), float(est), 1, method="point")
    passed = {
        "above": est.above(bar),
        "below": est.below(bar),
        "excludes": est.excludes(bar),
        "within": est.low <= bar <= est.high,  # (False for NaN, unlike not excludes)
    }[direction]
    return est.mean, est.low, est.high, est.n, est.method, bool(passed)


class Results:
    """What one lesson measured (``values``) and claimed (``claims``), for its results file."""

    def __init__(self, lesson: str, title: str = "") -> None:
        if not (len(lesson) == 2 and lesson.isdigit()):
            raise ValueError(f"lesson must be a two-digit number such as '06', got {lesson!r}")
        self.lesson, self.title = lesson, title
        self.values: dict[str, Any] = {}
        self.claims: list[Claim] = []
        self.seeds: list[int] = []

    def record(self, **values: Any) -> None:
        """Keep measured values (numbers, lists, dicts, intervals) for the results file."""
        self.values.update(values)

    def claim(
        self,
        name: str,
        estimate: Interval | float,
        *,
        bar: float,
        reason: str,
        direction: str = "above",
    ) -> Claim:
        """State and check one claim; returns the :class:`Claim` (truthy when it holds)."""
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        if not reason.strip():
            raise ValueError(f"claim {name!r} needs its reason: where the bar comes from")
        claim = Claim(name, float(bar), reason, direction, *_judge(estimate, bar, direction))
        self.claims = [c for c in self.claims if c.name != name] + [claim]
        return claim

    @property
    def passed(self) -> bool:
        return bool(self.claims) and all(self.claims)

    def failures(self) -> str:
        """The claims that failed, one per line (for the checkpoint's assert message)."""
        return "\n".join(str(c) for c in self.claims if not c) or "no claim was stated"

    def table(self):
        """The claims as a pandas DataFrame (what the notebook displays before its checkpoint)."""
        import pandas as pd

        rows = [{"claim": c.name, "estimate": c.mean, "95% low": c.low, "95% high": c.high,
                 "n": c.n, "test": f"{c.direction} {c.bar:g}", "passed": c.passed,
                 "why this bar": c.reason} for c in self.claims]  # fmt: skip
        return pd.DataFrame(rows)

    def as_dict(self) -> dict:
        return {
            "lesson": self.lesson,
            "title": self.title,
            "fast": fast_mode(),
            "seeds_switch": os.environ.get(SEEDS_VAR, ""),
            "seeds": list(self.seeds),
            "claims": [asdict(c) for c in self.claims],
            "values": jsonable(self.values),
        }

    def save(self, folder: Path | None = None) -> Path:
        """Write ``<build>/results/<lesson>.json`` (atomically) and return its path."""
        folder = Path(folder) if folder is not None else build_dir() / "results"
        text = json.dumps(self.as_dict(), indent=1) + "\n"
        return write_atomically(folder / f"{self.lesson}.json", text)

    def save_figure(self, fig, name: str, dpi: int = 110) -> Path:
        """Save the lesson's README figure as ``<build>/figures/<name>.png``."""
        from rlhf_lessons.course.plotting import save_figure

        return save_figure(fig, build_dir() / "figures" / f"{name}.png", dpi)


def load_results(folder: Path) -> dict[str, dict]:
    """Every ``NN.json`` in ``folder``, by lesson number."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(Path(folder).glob("[0-9][0-9].json"))}
