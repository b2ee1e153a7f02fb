"""``rlhf-lessons report`` quotes ``own_data.json`` (benchmarks/own_data.py) like a lesson's."""

import json

import pytest

from rlhf_lessons.course import report


def test_own_data_values_are_rendered_from_their_results_file(tmp_path):
    (tmp_path / "06.json").write_text(json.dumps({"lesson": "06", "values": {}, "claims": []}))
    own = {"lesson": "own_data", "values": {"grpo": {"reward_change": 0.1234,
                                                     "reward_change_low": 0.05}}, "claims": []}  # fmt: skip
    (tmp_path / "own_data.json").write_text(json.dumps(own))
    results = report.with_extra_results(tmp_path)
    assert sorted(results) == ["06", "own_data"]
    readme = ("change <!-- value own_data grpo.reward_change +.2f -->old<!-- /value --> "
              "[<!-- value own_data grpo.reward_change_low .2f --><!-- /value -->]")  # fmt: skip
    out = report.render(readme, results, None)
    assert out == ("change <!-- value own_data grpo.reward_change +.2f -->+0.12<!-- /value --> "
                   "[<!-- value own_data grpo.reward_change_low .2f -->0.05<!-- /value -->]")  # fmt: skip
    assert report.render(out, results, None) == out  # idempotent
    with pytest.raises(KeyError, match="own_data"):
        report.render(readme, report.with_extra_results(tmp_path / "missing"), None)


def test_without_an_own_data_file_only_the_lessons_are_loaded(tmp_path):
    (tmp_path / "06.json").write_text(json.dumps({"lesson": "06", "values": {}, "claims": []}))
    assert sorted(report.with_extra_results(tmp_path)) == ["06"]
