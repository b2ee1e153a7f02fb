"""The one JSON converter of the package's results files (run.json, results, pipeline runs)."""

import json
import math
from dataclasses import dataclass

import numpy as np
import torch

from rlhf_lessons.course.stats import mean_ci
from rlhf_lessons.run_log import jsonable


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
