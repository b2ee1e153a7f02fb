"""A command-line run's output folder: settings, checkpoints, metrics (CSV and TensorBoard).

    <output-dir>/
        run.json            what was run: algorithm, model, data, every setting, versions, result
        metrics.csv         one row per optimizer step (or rollout iteration): the History
        evaluations.csv     held-out evaluations, with the step they were taken at (a row
                            is added as each is taken)
        tensorboard/        the same as TensorBoard events (if the tensorboard package is there)
        checkpoint-<step>/  model (or LoRA adapter) + tokenizer every --save-every steps
        config.json ...     the final model (or adapter_config.json + adapter_model.safetensors)

CSV follows CleanRL's habit of plain files next to the run; the TensorBoard layout
(``train/<metric>``, ``eval/<metric>``) is TRL's and CleanRL's.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

RUN_FILE = "run.json"


def read_run_info(folder: str | Path) -> dict:
    """The ``run.json`` of a run folder ({} when there is none)."""
    try:
        return json.loads((Path(folder) / RUN_FILE).read_text())
    except (OSError, ValueError):
        return {}


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON values, for every results file of the package: mappings,
    lists, dataclasses (and objects with ``as_dict``, such as intervals), numpy and torch
    numbers and arrays; NaN and infinities become ``null``, anything else its ``str``."""
    if hasattr(value, "as_dict"):
        return jsonable(value.as_dict())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # numpy / torch arrays and numbers
        return jsonable(value.tolist())
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    return value if isinstance(value, str | int | bool | type(None)) else str(value)


def versions() -> dict:
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("transformers", "peft", "accelerate", "trl"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            pass
    return out


class RunLog:
    """Writes one run's folder (see the module's layout)."""

    def __init__(self, folder: str | Path, algo: str) -> None:
        self.folder = Path(folder)
        # in a data-parallel run every process trains the same model; only the first writes
        self.main = int(os.environ.get("RANK", "0")) == 0
        if self.main:
            self.folder.mkdir(parents=True, exist_ok=True)
        self.algo = algo
        self.info: dict = {}
        self.started = time.time()

    def _write(self, folder: Path | None = None, **extra: Any) -> None:
        if self.main:
            text = json.dumps(jsonable({**self.info, **extra}), indent=1)
            ((folder or self.folder) / RUN_FILE).write_text(text)

    def start(self, config, run, info: dict) -> None:
        """Record the settings before training (``status: running``)."""
        self.info = {"algo": self.algo, "status": "running", **info, "config": config,
                     "run": run, "versions": versions(),
                     "started": time.strftime("%Y-%m-%d %H:%M:%S")}  # fmt: skip
        self._write()
        if not self.main:
            return
        (self.folder / "evaluations.csv").unlink(missing_ok=True)  # an earlier run's, if any
        print(f"{self.algo}: {info.get('items', '?')} training items from "
              f"{getattr(run, 'data', '')}; writing to {self.folder}")  # fmt: skip

    def save_model(self, model, tokenizer, final: bool = False, step: int | None = None) -> Path:
        """The model (a LoRA adapter alone, for a peft model) and its tokenizer, to the run
        folder (``final``) or ``checkpoint-<step>/``. A policy with a value head (PPO) also
        writes the head to ``value_head.safetensors``."""
        folder = self.folder if final else self.folder / f"checkpoint-{step}"
        if not self.main:
            return folder
        model.save_pretrained(folder)  # a PolicyWithValueHead writes its value head too
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)
        if not final:
            self._write(folder, step=step)
        return folder

    def evaluation(self, step: int, metrics: dict) -> None:
        """One held-out evaluation, added to ``evaluations.csv`` as soon as it is taken (a long
        run can be watched; :meth:`finish` rewrites the file from the History)."""
        if not self.main or not metrics:
            return
        import pandas as pd

        path = self.folder / "evaluations.csv"
        row = pd.DataFrame([jsonable({"step": step, **metrics})])
        previous = pd.read_csv(path) if path.is_file() else None
        (row if previous is None else pd.concat([previous, row])).to_csv(path, index=False)

    def finish(self, history) -> None:
        """Metrics to CSV (and TensorBoard), the result into ``run.json``, a summary printed."""
        if not self.main:
            return
        frame = history.to_frame()
        frame.to_csv(self.folder / "metrics.csv")
        evaluations = [e for e in history.evaluations if len(e) > 1]
        if evaluations:
            import pandas as pd

            pd.DataFrame(evaluations).to_csv(self.folder / "evaluations.csv", index=False)
        board = write_tensorboard(self.folder / "tensorboard", frame, evaluations)
        last = evaluations[-1] if evaluations else {}
        seconds = frame["seconds"].iloc[-1] if "seconds" in frame and len(frame) else None
        self.info.update(status="done", steps=len(frame), seconds=seconds, final_evaluation=last,
                         finished=time.strftime("%Y-%m-%d %H:%M:%S"))  # fmt: skip
        self._write()
        shown = ", ".join(f"{k} {v:.4g}" for k, v in last.items()
                          if k != "step" and isinstance(v, int | float))  # fmt: skip
        print(f"{self.algo}: {len(frame)} steps in {time.time() - self.started:.0f} s"
              + (f"; held-out: {shown}" if shown else ""))  # fmt: skip
        print(f"saved the model, metrics.csv{' and tensorboard/' if board else ''} to "
              f"{self.folder}")  # fmt: skip
        if not board:
            print("(TensorBoard logs need the tensorboard package: pip install tensorboard; the "
                  "same numbers are in metrics.csv)")  # fmt: skip


def write_tensorboard(folder: Path, frame, evaluations: list[dict]) -> bool:
    """``train/<column>`` per step and ``eval/<metric>`` per evaluation as TensorBoard scalars;
    False (nothing written) when the tensorboard package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return False
    writer = SummaryWriter(str(folder))
    try:
        for column in frame.columns:
            for step, value in frame[column].items():
                if isinstance(value, int | float) and math.isfinite(value):
                    writer.add_scalar(f"train/{column}", value, int(step))
        for row in evaluations:
            for key, value in row.items():
                if key != "step" and isinstance(value, int | float) and math.isfinite(value):
                    writer.add_scalar(f"eval/{key}", value, int(row["step"]))
    finally:
        writer.close()
    return True


class StepCallback:
    """Checkpoints and held-out evaluations at fixed steps, through a trainer's ``eval_fn``.

    The course's trainers call ``eval_fn(policy)`` before the first step (when ``eval_every``),
    after every ``eval_every`` steps except the last, and after the last one. This callback is
    that ``eval_fn``, with ``every`` the trainer's ``eval_every``: it knows the step of each call
    from that schedule, saves a checkpoint every ``save_every`` steps and evaluates every
    ``eval_every`` steps and at the end."""

    def __init__(self, log: RunLog, tokenizer, total: int, save_every: int = 0,
                 eval_every: int = 0, eval_fn: Callable | None = None) -> None:  # fmt: skip
        if save_every < 0 or eval_every < 0:
            raise ValueError("save_every and eval_every must be >= 0")
        self.log, self.tokenizer, self.total, self.eval_fn = log, tokenizer, total, eval_fn
        self.save_every, self.eval_every = save_every, eval_every if eval_fn else 0
        both = [e for e in (self.save_every, self.eval_every) if e]
        self.every = math.gcd(*both) if both else 0
        self.plan = ([0] + list(range(self.every, total, self.every)) + [total]) if self.every \
            else [total]  # fmt: skip

    def __call__(self, policy) -> dict:
        step = self.plan.pop(0) if self.plan else self.total
        if self.save_every and 0 < step < self.total and step % self.save_every == 0:
            self.log.save_model(policy, self.tokenizer, step=step)
        due = step == self.total or (self.eval_every and step % self.eval_every == 0)
        metrics = dict(self.eval_fn(policy)) if self.eval_fn is not None and due else {}
        self.log.evaluation(step, metrics)
        return metrics
