"""The same runs through TRL, side by side with ours: one entry point, one result type.

Each lesson that has a TRL counterpart trains the same policy on the same data at the same
settings through TRL's trainer, and checks that the two agree (loss curves, rewards):

    run = train_with_trl("dpo", policy, tokenizer, pairs, DPOConfig(...))
    run = train_with_trl("grpo", policy, tokenizer, prompts, GroupPGConfig.grpo(...), reward_fn=r)
    run = train_with_trl("reward", model, tokenizer, records, RewardConfig(...))

``algo`` picks the module that maps our config to TRL's (:data:`BACKENDS`). Every one returns a
:class:`TRLRun`, whose ``history`` uses the column names of our trainer's
:class:`~rlhf_lessons.training.History` where TRL logs the same quantity.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from rlhf_lessons.course.progress import progress
from rlhf_lessons.training import History, RewardFn

#: algo -> the module that runs it through TRL (each defines ``run(...) -> TRLRun``)
BACKENDS = {
    "dpo": "dpo", "ipo": "dpo", "hinge": "dpo", "simpo": "dpo",
    "rloo": "rloo_grpo", "grpo": "rloo_grpo",
    "reward": "reward",
}  # fmt: skip


@dataclass
class TRLRun:
    """What :func:`train_with_trl` returns."""

    algo: str
    trainer: str  # TRL's class, e.g. "DPOTrainer"
    policy: Any  # the trained model (TRL's wrappers removed)
    history: History  # one row per optimizer step, our column names
    seconds: float  # wall-clock of trainer.train()
    log_history: list[dict] = field(default_factory=list)  # everything TRL logged

    def __getattr__(self, name: str) -> Any:
        # ``run.loss`` reads the history's column, as on our own trainers' results
        if name.startswith("__") or "history" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.__dict__["history"], name)


@contextlib.contextmanager
def quiet_bars(quiet: bool = True) -> Iterator[None]:
    """No progress bars while a TRL trainer is built (it maps its datasets, a bar each, and may
    load a reference model): ``datasets``' switch and tqdm's ``TQDM_DISABLE``, restored after.
    ``quiet=False`` leaves both as they are."""
    import datasets

    if not quiet:
        yield
        return
    bars, tqdm_off = datasets.is_progress_bar_enabled(), os.environ.get("TQDM_DISABLE")
    datasets.disable_progress_bars()
    os.environ["TQDM_DISABLE"] = "1"
    try:
        yield
    finally:
        if bars:
            datasets.enable_progress_bars()
        if tqdm_off is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = tqdm_off


def train_with_trl(
    algo: str,
    policy,
    tokenizer,
    data,
    config=None,
    *,
    reward_fn: RewardFn | None = None,
    show_progress: bool = False,
) -> TRLRun:
    """Train ``policy`` (changed in place) on ``data`` with TRL's trainer for ``algo``, at the
    settings of ``config`` (our config dataclass for that algorithm)."""
    if algo not in BACKENDS:
        raise ValueError(f"algo must be one of {sorted(BACKENDS)}, got {algo!r}")
    backend = importlib.import_module(f"rlhf_lessons.trl_runs.{BACKENDS[algo]}")
    return backend.run(algo, policy, tokenizer, data, config, reward_fn=reward_fn,
                       show_progress=show_progress)  # fmt: skip


def in_order(trainer_cls):
    """``trainer_cls`` reading its dataset front to back: our runs shuffle the rows themselves,
    so TRL sees the same minibatches, in the same order, as our trainer."""
    from torch.utils.data import SequentialSampler

    class InOrder(trainer_cls):
        def _get_train_sampler(self, *args, **kwargs):
            return SequentialSampler(self.train_dataset)

    InOrder.__name__ = trainer_cls.__name__
    return InOrder


def step_clock(columns: dict[str, str], total: int = 0, desc: str | None = None):
    """A TRL callback that keeps one History row per step TRL logs: the wall-clock since training
    began (``seconds``) and the logged values under our names (``columns``: TRL's name -> ours).
    With a ``desc``, our progress bar over ``total`` steps shows too."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.bar = progress(total=total, desc=desc, unit="step", disable=desc is None)
            self.start, self.rows = time.perf_counter(), []

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs and "train_runtime" not in logs:
                row = {ours: float(logs[k]) for k, ours in columns.items() if k in logs}
                self.rows.append({"seconds": time.perf_counter() - self.start, **row})
                self.bar.update(1)

        def on_train_end(self, args, state, control, **kwargs):
            self.bar.close()

    return StepClock()
