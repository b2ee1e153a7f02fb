"""The one JSON converter of the package's results files (run.json, results, pipeline runs)."""

import json
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from rlhf_lessons.course.stats import mean_ci
from rlhf_lessons.run_log import RunLog, StepCallback, jsonable


@dataclass
class _Settings:
    lr: float
    tags: tuple


def test_jsonable_turns_every_kind_of_result_into_plain_json():
    value = {
        1: np.float64(0.5),
        "interval": mean_ci([1.0, 2.0, 3.0]),
        "settings": _Settings(1e-3, ("a", "b")),
        "array": np.array([1.0, math.nan]),
        "tensor": torch.tensor([[1, 2]]),
        "scalar": torch.tensor(2.5),
        "count": np.int64(3),
        "flags": [True, None, math.inf],
        "path": object,
    }
    out = jsonable(value)
    json.dumps(out, allow_nan=False)  # strict JSON: NaN and infinities became null
    assert out["1"] == 0.5 and out["count"] == 3 and out["scalar"] == 2.5
    assert out["interval"]["mean"] == 2.0 and set(out["interval"]) >= {"low", "high", "n"}
    assert out["settings"] == {"lr": 1e-3, "tags": ["a", "b"]}
    assert out["array"] == [1.0, None] and out["tensor"] == [[1, 2]]
    assert out["flags"] == [True, None, None] and out["path"] == str(object)


def test_evaluations_are_written_as_they_are_taken(tmp_path):
    log = RunLog(tmp_path, "sft")
    (tmp_path / "evaluations.csv").write_text("step,old\n9,1\n")  # an earlier run's file
    log.start({}, {}, {"items": 3})
    assert not (tmp_path / "evaluations.csv").exists()
    calls = iter([0.1, 0.2, 0.3])
    callback = StepCallback(
        log, None, total=4, eval_every=2, eval_fn=lambda _: {"loss": next(calls)}
    )
    seen = []
    for _ in range(3):  # the trainer's calls: before step 1, after step 2, after the last
        callback(None)
        seen.append(pd.read_csv(tmp_path / "evaluations.csv"))
    assert [len(f) for f in seen] == [1, 2, 3]  # readable while the run goes on
    assert seen[-1]["step"].tolist() == [0, 2, 4] and seen[-1]["loss"].tolist() == [0.1, 0.2, 0.3]
