"""The trainer contract: one shape for every trainer of the course.

Every trainer reads the same way, whatever it trains::

    history = train_<algo>(policy, tokenizer, data, config, *, eval_fn=None, eval_every=0,
                           show_progress=True) -> History

- ``policy`` is changed in place (a causal LM, a LoRA model, a reward model, ...); trainers
  that build their own network (CartPole) take ``policy=None`` and return it as
  ``history.policy``.
- ``data`` is what the algorithm learns from: prompts (RL), preference pairs (DPO family),
  ranked records (reward models), SFT records, an offline dataset.
- ``config`` is a dataclass whose fields use the course's names (:data:`NAMES`): the same name
  for the same thing in every lesson, and ``seed`` and ``threads`` in every config.
- ``eval_fn(policy) -> dict`` runs before training (with ``eval_every``), every ``eval_every``
  steps and after the last one; its results land in ``history.evaluations`` with the step.
- The return value is a :class:`History`: one row per optimizer step (or per rollout
  iteration, for on-policy RL), ``seconds`` the training wall-clock *excluding evaluation*.

The scaffolding every trainer needs is here, once (checks, schedules, minibatch plans, the
optimizer step, :class:`Stopwatch`, :meth:`History.loop`); threads are set with
:func:`rlhf_lessons.course.device.torch_threads` and the config's ``threads``.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from rlhf_lessons.course.progress import progress
from rlhf_lessons.distributed import Parallel

#: One name for one thing, across every config of the course (a glossary, checked by a test).
NAMES = {
    "lr": "the optimizer's learning rate",
    "epochs": "passes over the data (or, in on-policy RL, over each rollout batch)",
    "batch_size": "examples per optimizer step (pairs, records) or completions per rollout",
    "minibatch_size": "examples per optimizer step when one batch is split into several",
    "iterations": "rollout + update rounds of an on-policy RL trainer",
    "max_steps": "stop after this many optimizer steps (None: run every epoch)",
    "warmup_steps": "linear learning-rate warm-up, in optimizer steps",
    "max_grad_norm": "gradients are clipped to this global norm",
    "gamma": "discount factor",
    "gae_lambda": "GAE's lambda",
    "clip_eps": "PPO-style ratio clip: [1 - clip_eps, 1 + clip_eps]",
    "beta": "KL (or implicit-reward) coefficient",
    "temperature": "sampling temperature, used for every log-prob of the samples too",
    "max_new_tokens": "completion budget when sampling",
    "seed": "seeds every random choice of the run",
    "threads": "torch threads while training (None: leave as they are)",
}

EvalFn = Callable[[nn.Module], dict]
#: ``reward_fn(prompts, completions) -> (B,)`` scores: a reward model, a judge or the true reward.
RewardFn = Callable[[Sequence[str], Sequence[str]], torch.Tensor]


def trainable_parameters(model: nn.Module, name: str = "policy") -> list[nn.Parameter]:
    """The parameters of ``model`` that will be trained; a clear error when there are none."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(
            f"{name} has no parameter with requires_grad=True (copied from a frozen model, or a "
            f"LoRA model whose adapter is frozen?): call {name}.requires_grad_(True), or add a "
            "trainable adapter, before training"
        )
    return params


def check_frozen_reference(policy: nn.Module, ref: nn.Module) -> None:
    """The reference model must not move while the policy trains: no trainable parameter of
    ``policy`` may be one of ``ref``'s (the same model twice, or an adapter injected into the
    reference itself). Frozen weights both share (a LoRA policy's base) are fine."""
    ref_params = {id(q) for q in ref.parameters()}
    if any(p.requires_grad and id(p) in ref_params for p in policy.parameters()):
        raise ValueError(
            "the policy and ref share weights that would be trained, so the reference would move "
            "with the policy: pass a copy as the policy (copy.deepcopy(ref))"
        )


@contextlib.contextmanager
def eval_mode(*models: nn.Module) -> Iterator[None]:
    """Run the block with ``models`` in eval mode (no dropout), then give each its mode back."""
    modes = [(m, m.training) for m in models]
    for m, _ in modes:
        m.eval()
    try:
        yield
    finally:
        for m, was_training in modes:
            m.train(was_training)


def warmup_schedule(
    optimizer: torch.optim.Optimizer, warmup_steps: int = 0
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_steps`` optimizer steps, then the constant learning rate
    (``lr * min(1, (step + 1) / warmup_steps)``; ``0`` means no warm-up)."""
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    warm = max(warmup_steps, 1)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warm))


def linear_decay_schedule(
    optimizer: torch.optim.Optimizer, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """The learning rate falls linearly from ``lr`` to 0 over ``total_steps`` steps
    (Hugging Face's ``linear`` schedule without warm-up)."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1.0 - s / total_steps))


def total_steps(examples: int, batch_size: int, epochs: int, max_steps: int | None = None) -> int:
    """Optimizer steps of ``epochs`` passes over ``examples`` in minibatches of ``batch_size``
    (the last one of a pass may be smaller), at most ``max_steps`` (None: no cap)."""
    total = math.ceil(examples / batch_size) * epochs
    return min(total, max_steps or total)


def minibatch_order(
    lengths: torch.Tensor,
    batch_size: int,
    epochs: int,
    group_by_length: bool,
    generator: torch.Generator,
) -> list[torch.Tensor]:
    """Each epoch's minibatches of row indices: a fresh shuffle cut into ``batch_size`` pieces,
    or, with ``group_by_length``, Hugging Face's ``group_by_length``: each shuffled window of 50
    minibatches is sorted by length before it is cut, and the minibatches are shuffled again
    (every row once per epoch, as before; rows of similar length train together, so a padded
    minibatch wastes less compute). ``lengths`` (N,): only its size counts without grouping."""
    order = []
    for _ in range(epochs):
        perm = torch.randperm(len(lengths), generator=generator)
        if not group_by_length:
            order += list(perm.split(batch_size))
            continue
        window = 50 * batch_size
        groups = [w[lengths[w].argsort(descending=True, stable=True)] for w in perm.split(window)]
        batches = [b for w in groups for b in w.split(batch_size)]
        order += [batches[i] for i in torch.randperm(len(batches), generator=generator)]
    return order


def check_minibatch_config(config: Any) -> None:
    """The checks every minibatch trainer's config shares (call it from ``__post_init__``); the
    error names the config class and the field."""
    name = type(config).__name__
    if not config.lr > 0:
        raise ValueError(f"{name}.lr must be > 0, got {config.lr}")
    for key in ("epochs", "batch_size"):
        if getattr(config, key) < 1:
            raise ValueError(f"{name}.{key} must be >= 1, got {getattr(config, key)}")
    if config.max_steps is not None and config.max_steps < 1:
        raise ValueError(f"{name}.max_steps must be >= 1 or None, got {config.max_steps}")


def minibatch_plan(
    lengths: torch.Tensor, config: Any, group_by_length: bool = False
) -> tuple[list[torch.Tensor], int]:
    """A minibatch trainer's plan from its config's ``batch_size``, ``epochs``, ``max_steps`` and
    ``seed``: every epoch's minibatches (:func:`minibatch_order`, on a generator seeded with
    ``seed``) and the number of steps to take (:func:`total_steps` over ``len(lengths)`` rows)."""
    generator = torch.Generator().manual_seed(config.seed)
    order = minibatch_order(lengths, config.batch_size, config.epochs, group_by_length, generator)
    return order, total_steps(len(lengths), config.batch_size, config.epochs, config.max_steps)


def optimizer_step(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    params: Sequence[nn.Parameter],
    max_grad_norm: float,
    schedule: torch.optim.lr_scheduler.LRScheduler | None = None,
    parallel: Parallel | None = None,
) -> float:
    """One step on ``loss``: zero the gradients, back-propagate (through ``parallel``, a
    :class:`~rlhf_lessons.distributed.Parallel`, when given), clip them to the global norm
    ``max_grad_norm``, step the optimizer, then its ``schedule``. Returns the gradient norm
    before clipping."""
    optimizer.zero_grad()
    parallel = parallel or Parallel()  # the plain run: loss.backward(), torch's clip_grad_norm_
    parallel.backward(loss)
    norm = parallel.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    if schedule is not None:
        schedule.step()
    return norm


class Stopwatch:
    """Training time that leaves evaluation out: ``with watch: <one training step>``;
    ``watch.seconds`` is the sum of the timed blocks so far."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._t0: float | None = None

    def __enter__(self) -> Stopwatch:
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds += time.perf_counter() - self._t0
        self._t0 = None


def mean(values: Iterable[float]) -> float:
    """The mean of a non-empty list of numbers (for averaging a step's minibatch metrics)."""
    values = list(values)
    return sum(values) / len(values) if values else math.nan


@dataclass
class History:
    """What every trainer returns: one row per step, evaluations, and the run's facts.

    - ``rows``: one list per metric, one entry per optimizer step (or rollout iteration); every
      list has the same length. Read a column as an attribute: ``history.loss``.
    - ``seconds`` (a column too): training wall-clock since the start, evaluation excluded.
    - ``evaluations``: ``{"step": s, **eval_fn(policy)}``, ``s`` the rows logged before it ran
      (0: before training).
    - ``info``: facts about the run that are not per step (where the reference came from, the
      number of pairs, the last batch's samples, ...); also readable as attributes.
    - ``policy``: the trained model, for trainers that build their own (CartPole).
    """

    algo: str
    config: dict
    rows: dict[str, list] = field(default_factory=dict)
    evaluations: list[dict] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    policy: Any = None

    def log(self, seconds: float | None = None, **metrics: Any) -> None:
        """Append one row: ``seconds`` (the training clock) and any metrics. A metric first seen
        now is back-filled with NaN, one missing now gets NaN: the columns stay aligned."""
        if seconds is not None:
            metrics = {"seconds": seconds, **metrics}
        n = self.steps
        for key, value in metrics.items():
            column = self.rows.setdefault(key, [math.nan] * n)
            column.append(float(value) if isinstance(value, torch.Tensor) else value)
        for column in self.rows.values():
            if len(column) == n:
                column.append(math.nan)

    def loop(
        self,
        steps: Iterable,
        total: int,
        policy: nn.Module,
        eval_fn: EvalFn | None = None,
        eval_every: int = 0,
        *,
        desc: str,
        show_progress: bool = True,
        show: Sequence[str] = ("loss",),
    ) -> Iterator:
        """The bookkeeping around a trainer's loop, written once: yields the first ``total``
        items of ``steps`` (minibatches, ...); the loop's body trains on each one and logs
        its row with :meth:`log`. Around the body: ``eval_fn`` before training (with
        ``eval_every``), every ``eval_every`` steps and after the last one; a progress bar
        (``desc``) showing the last row's ``show`` metrics."""
        if eval_every:
            self.evaluate(eval_fn, policy)
        bar = progress(total=total, desc=desc, disable=not show_progress)
        try:
            for item in itertools.islice(steps, total):
                yield item
                bar.update(1)
                bar.set_postfix({k: f"{self.rows[k][-1]:.3f}" for k in show if k in self.rows})
                if self.due(eval_every, total):
                    self.evaluate(eval_fn, policy)
        finally:
            bar.close()
        self.evaluate(eval_fn, policy)

    def evaluate(self, eval_fn: EvalFn | None, policy: nn.Module) -> None:
        """Run ``eval_fn(policy)`` (if given) and record it at the current step. The policy is
        put back in eval mode afterwards (the course's trainers train with dropout off)."""
        if eval_fn is None:
            return
        self.evaluations.append({"step": self.steps, **eval_fn(policy)})
        policy.eval()

    @property
    def steps(self) -> int:
        """Rows logged so far."""
        return max((len(c) for c in self.rows.values()), default=0)

    def __len__(self) -> int:
        return self.steps

    def __getattr__(self, name: str) -> Any:
        # only called when normal lookup fails: columns and info read as attributes
        if name.startswith("__"):
            raise AttributeError(name)
        rows, info = self.__dict__.get("rows", {}), self.__dict__.get("info", {})
        if name in rows:
            return rows[name]
        if name in info:
            return info[name]
        raise AttributeError(
            f"History of {self.__dict__.get('algo')!r} has no column or info {name!r}; columns: "
            f"{sorted(rows)}, info: {sorted(info)}"
        )

    def to_frame(self):
        """The rows as a pandas DataFrame, one row per step (index ``step``, from 1)."""
        import pandas as pd

        frame = pd.DataFrame(self.rows)
        frame.index = pd.RangeIndex(1, len(frame) + 1, name="step")
        return frame

    def evaluations_frame(self):
        """The evaluations as a pandas DataFrame indexed by step."""
        import pandas as pd

        if not self.evaluations:
            return pd.DataFrame()
        return pd.DataFrame(self.evaluations).set_index("step")

    def due(self, every: int, total: int) -> bool:
        """Whether an evaluation is due after the step just logged: every ``every`` steps, but
        not after the last (the trainer evaluates once more at the end anyway)."""
        return bool(every) and self.steps % every == 0 and self.steps != total
