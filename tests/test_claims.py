"""The claims conventions: the seeds switch, intervals, results files, the rendered README."""

import json
import math

import numpy as np
import pytest

from rlhf_lessons.course import report
from rlhf_lessons.course.results import Results, load_results
from rlhf_lessons.course.seeds import lesson_seed, lesson_seeds
from rlhf_lessons.course.stats import (
    Interval,
    bootstrap_ci,
    cluster_mean_ci,
    diff_ci,
    mean_ci,
    paired_bootstrap_diff,
    proportion_ci,
)


def test_lesson_seeds_default_base_and_list(monkeypatch):
    monkeypatch.delenv("RLHF_LESSONS_SEEDS", raising=False)
    assert lesson_seeds(3) == [0, 1, 2]
    assert lesson_seeds(2, default_base=10) == [10, 11]
    monkeypatch.setenv("RLHF_LESSONS_SEEDS", "1000")
    assert lesson_seeds(3, default_base=10) == [1000, 1001, 1002]
    assert lesson_seed(5) == 1000
    monkeypatch.setenv("RLHF_LESSONS_SEEDS", "7, 19,23")
    assert lesson_seeds(2) == [7, 19]
    with pytest.raises(ValueError, match="needs 5"):
        lesson_seeds(5)
    for bad in ("x", "-1", "3,3"):
        monkeypatch.setenv("RLHF_LESSONS_SEEDS", bad)
        with pytest.raises(ValueError, match="RLHF_LESSONS_SEEDS"):
            lesson_seeds(2)


def test_mean_ci_matches_the_t_formula_by_hand():
    iv = mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    # mean 3, s = sqrt(2.5), se = s / sqrt(5), t(0.975, 4) = 2.7764451
    h = 2.7764451 * math.sqrt(2.5) / math.sqrt(5)
    assert iv.mean == 3.0 and iv.low == pytest.approx(3 - h) and iv.high == pytest.approx(3 + h)
    assert iv.above(0.5) and not iv.above(1.5) and iv.excludes(0.0) and not iv.excludes(3.0)
    with pytest.raises(ValueError, match="at least 2"):
        mean_ci([1.0])


def test_paired_diff_removes_shared_seed_variation():
    base = np.array([0.0, 10.0, 20.0, 30.0])
    a, b = base + 1.0 + np.array([0.01, -0.01, 0.02, -0.02]), base
    paired, welch = diff_ci(a, b), diff_ci(a, b, paired=False)
    assert paired.low > 0.9 and paired.high < 1.1  # the seeds' spread cancels
    assert welch.low < 0 < welch.high  # unpaired, it drowns the difference


def test_proportion_ci_is_wilson():
    iv = proportion_ci(8, 10)
    # Wilson for 8/10 at 95%: [0.490, 0.943]
    assert iv.mean == 0.8 and iv.low == pytest.approx(0.4902, abs=1e-3)
    assert iv.high == pytest.approx(0.9433, abs=1e-3)
    assert proportion_ci(0, 5).low == 0.0


def test_bootstrap_intervals_cover_and_pair():
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 1.0, 400)
    iv = bootstrap_ci(x, seed=1)
    assert iv.low < 1.0 < iv.high and iv.half_width < 0.15
    before = rng.integers(0, 2, 200).astype(float)
    after = np.maximum(before, rng.integers(0, 2, 200))  # never worse, sometimes better
    d = paired_bootstrap_diff(after, before)
    assert d.low > 0 and d.method == "paired bootstrap"


def test_cluster_ci_uses_prompt_means():
    v = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    iv = cluster_mean_ci(v)
    assert iv.mean == 0.5 and iv.n == 2  # two units, not six


def test_claims_pass_and_fail_by_their_interval(tmp_path):
    r = Results("06", "DPO")
    gain = Interval(0.4, 0.3, 0.5, 5)
    assert r.claim("gain", gain, bar=0.25, reason="paper")
    assert not r.claim("big gain", gain, bar=0.35, reason="paper")
    assert r.claim(
        "differs", Interval(-0.2, -0.3, -0.1, 5), bar=0.0, reason="x", direction="excludes"
    )
    assert r.claim("small", 1e-6, bar=1e-3, reason="parity", direction="below")
    assert (
        not r.passed and "big gain" in r.failures() and "gain:" not in r.failures().split("big")[0]
    )
    with pytest.raises(ValueError, match="reason"):
        r.claim("no reason", gain, bar=0.0, reason=" ")
    r.record(curve=np.arange(3), interval=gain)
    r.seeds = [0, 1]
    path = r.save(tmp_path)
    data = json.loads(path.read_text())
    assert data["values"]["curve"] == [0, 1, 2] and data["values"]["interval"]["low"] == 0.3
    assert load_results(tmp_path)["06"]["claims"][0]["passed"] is True
    assert list(r.table().columns)[:3] == ["claim", "estimate", "95% low"]


def test_report_renders_claims_values_and_runtimes(tmp_path):
    r = Results("06", "DPO")
    r.claim("gain", Interval(0.4, 0.3, 0.5, 5), bar=0.25, reason="paper")
    r.record(smol={"after": 0.875})
    r.seeds = [0, 1, 2, 3, 4]
    results = {"06": r.as_dict()}
    readme = (
        "x <!-- value 06 smol.after .2f -->old<!-- /value --> y\n"
        "<!-- claims 06 -->\nstale\n<!-- /claims -->\n<!-- runtimes -->\nold\n<!-- /runtimes -->\n"
    )
    course = {
        "lessons": [{"lesson": "06_dpo", "seconds": 120.0, "checkpoint": "passed"}],
        "wall_seconds": 120.0,
        "passed": 1,
        "workers": 2,
    }
    out = report.render(readme, results, course)
    assert "x <!-- value 06 smol.after .2f -->0.88<!-- /value --> y" in out
    assert "| gain | above 0.25 (paper) | 0.4 [0.3, 0.5] | 5 | yes |" in out and "stale" not in out
    assert "| 06_dpo | 2.0 min | passed |" in out
    assert report.render(out, results, course) == out  # rendering is idempotent
    with pytest.raises(KeyError, match="lesson 07"):
        report.render("<!-- claims 07 -->\n<!-- /claims -->", results, course)


def test_readme_agrees_with_the_committed_results():
    """The README's generated blocks are exactly what docs/results/ renders to."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    diff = report.check(root)
    assert not diff, "README.md differs from docs/results (run `rlhf-lessons report`):\n" + diff


def test_a_lesson_without_claims_says_so():
    from rlhf_lessons.course.report import claims_table

    table = claims_table({"lesson": "08", "claims": [], "seeds": [0, 1]})
    assert table.startswith("No claim is asserted") and "docs/results/08.json" in table
