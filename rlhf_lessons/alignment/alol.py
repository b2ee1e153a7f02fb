"""Offline RL for language models with A-LoL: sampling and the trainer (lesson 11).

Paper: Baheti et al. 2024, "Leftover Lunch: Advantage-based Offline Reinforcement Learning for
Language Models", ICLR 2024, arXiv 2305.14718; code abaheti95/LoL-RL. Three modules:

- :mod:`rlhf_lessons.alignment.alol_data`: the offline dataset (rewarded responses), the
  reference's value V_ref(x) and the advantages A = R - V_ref(x), with pi_ref's log-probs of
  every response computed once (:func:`~rlhf_lessons.alignment.alol_data.prepare_offline_data`);
- :mod:`rlhf_lessons.alignment.alol_losses`: the eight objectives, each a weighted NLL;
- this module: which responses a step trains on (**sampling**) and the training loop.

**Sampling** (:func:`sampling_weights`, :class:`BatchSampler`) is the second half of every
method, and it multiplies with the first: a response drawn with probability proportional to
q_i and weighted by w_i in the loss contributes q_i * w_i to the expected gradient.

- ``uniform``: shuffled passes over the whole dataset;
- ``advantage``: with probability proportional to A+ = max(A, 0) (responses with A <= 0 are
  never drawn);
- ``reward``: proportional to the reward R in [0, 1];
- ``good_priority`` (the repository's rule): ``advantage`` for the advantage methods, ``reward``
  for ``wbc``, ``r_gold`` and ``r_lol``; ``auto`` is ``good_priority``, except for ``nll``
  (which clones the data as they are: ``uniform``).

So A-LoL with ``good_priority`` weights each response by A+ twice, once in the draw and once in
the loss (an effective A+^2), and weighted BC by R twice. As in the repository, a run that
samples by advantage takes ``steps * positive fraction`` steps (it sees only the positive part
of the data); ``scale_steps=False`` turns that off.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from rlhf_lessons.alignment.alol_data import OfflineRLData
from rlhf_lessons.alignment.alol_losses import (
    ADVANTAGE_METHODS,
    DEFAULT_CLIP_EPS,
    DEFAULT_KL_BETA,
    DEFAULT_MIN_PROB,
    METHODS,
    REWARD_METHODS,
    alol_objective,
    check_clip_eps,
)
from rlhf_lessons.course.device import torch_threads
from rlhf_lessons.course.seeding import seed_everything
from rlhf_lessons.lm import token_logprobs
from rlhf_lessons.training import (
    EvalFn,
    History,
    Stopwatch,
    optimizer_step,
    trainable_parameters,
    warmup_schedule,
)

SAMPLINGS = ("auto", "good_priority", "uniform", "advantage", "reward")


# --- Sampling ----------------------------------------------------------------------------------


def resolve_sampling(method: str, sampling: str) -> str:
    """``auto`` and ``good_priority`` as the repository reads them: ``uniform``, ``advantage``
    or ``reward`` (see the module docstring)."""
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    if sampling == "auto":
        sampling = "uniform" if method == "nll" else "good_priority"
    if sampling == "good_priority":
        if method in ADVANTAGE_METHODS:
            return "advantage"
        if method in REWARD_METHODS:
            return "reward"
        raise ValueError(f"method {method!r} has no priority sampling: use sampling='uniform'")
    return sampling


def sampling_weights(sampling: str, data: OfflineRLData) -> torch.Tensor | None:
    """Per-response sampling weights for a resolved ``sampling`` (:func:`resolve_sampling`):
    None for ``uniform`` (shuffled passes), A+ for ``advantage``, R for ``reward``."""
    if sampling == "uniform":
        return None
    if sampling == "advantage":
        if data.advantages is None:
            raise ValueError("sampling by advantage needs advantages: prepare_offline_data with "
                             "a value (fit_reference_value)")  # fmt: skip
        weights = data.advantages.clamp(min=0.0)
    elif sampling == "reward":
        weights = data.rewards.clone()
    else:
        raise ValueError(f"sampling must be 'uniform', 'advantage' or 'reward', got {sampling!r}")
    if not weights.sum() > 0:
        raise ValueError(f"every {sampling} sampling weight is 0: no response to train on")
    return weights


class BatchSampler:
    """Index batches: uniform (shuffled passes over the data) without ``weights``; otherwise
    drawn with replacement with probability ``weights / weights.sum()`` (the repository's
    ``numba_choice``)."""

    def __init__(self, n: int, batch_size: int, weights: torch.Tensor | None = None,
                 seed: int = 0):  # fmt: skip
        if weights is not None and (weights.shape != (n,) or (weights < 0).any()):
            raise ValueError(f"weights must be ({n},) and >= 0")
        self.n, self.batch_size, self.weights = n, batch_size, weights
        self.generator = torch.Generator().manual_seed(seed)
        self._queue = torch.empty(0, dtype=torch.long)

    def __iter__(self) -> BatchSampler:
        return self

    def __next__(self) -> torch.Tensor:
        if self.weights is not None:
            return torch.multinomial(self.weights, self.batch_size, replacement=True,
                                     generator=self.generator)  # fmt: skip
        while len(self._queue) < self.batch_size:
            self._queue = torch.cat([self._queue, torch.randperm(self.n, generator=self.generator)])
        idx, self._queue = self._queue[: self.batch_size], self._queue[self.batch_size :]
        return idx


# --- The trainer -------------------------------------------------------------------------------


@dataclass
class ALoLConfig:
    """Settings of :func:`train_alol` (the repository's HH defaults in brackets)."""

    method: str = "a_lol"  # one of alol_losses.METHODS
    sampling: str = "auto"  # see SAMPLINGS and the module docstring
    max_steps: int = 100  # optimizer steps, before the positive-fraction scaling [9000]
    scale_steps: bool = True  # sampling by advantage: max_steps * positive fraction
    batch_size: int = 32  # responses per step [4 x 4 accumulation]
    lr: float = 1e-3  # Adam, constant after warm-up; a 0.5M-parameter model [2e-4, LoRA]
    warmup_steps: int = 0  # [300]
    max_grad_norm: float = 1.0  # [0.3]
    clip_eps: float | None = DEFAULT_CLIP_EPS  # importance-weight clip [ppo_clip 0.9]
    beta: float = DEFAULT_KL_BETA  # a_lol_kl's coefficient only [kl_beta 0]
    min_prob: float = DEFAULT_MIN_PROB  # r_gold's lower bound on token probabilities [0.1]
    threads: int | None = 1  # torch threads while training (None: leave as is)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"ALoLConfig.method must be one of {METHODS}, got {self.method!r}")
        if self.method == "nll" and self.sampling not in ("auto", "uniform"):
            raise ValueError("ALoLConfig: nll clones the data as they are; use sampling='uniform'")
        self.sampling = resolve_sampling(self.method, self.sampling)
        for name in ("max_steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"ALoLConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0 or self.max_grad_norm <= 0 or self.warmup_steps < 0:
            raise ValueError("ALoLConfig needs lr > 0, max_grad_norm > 0 and warmup_steps >= 0")
        check_clip_eps(self.clip_eps)

    def total_steps(self, positive_fraction: float = 1.0) -> int:
        """Steps to run: ``max_steps``, times the positive fraction when sampling by advantage
        with ``scale_steps`` (the repository; at least 1)."""
        if self.scale_steps and self.sampling == "advantage":
            return max(1, int(self.max_steps * positive_fraction))
        return self.max_steps


def train_alol(
    policy,
    tokenizer,
    data: OfflineRLData,
    config: ALoLConfig | None = None,
    *,
    eval_fn: EvalFn | None = None,
    eval_every: int = 0,
    show_progress: bool = True,
) -> History:
    """Fine-tune ``policy`` (a causal LM, changed in place; typically ``copy.deepcopy(sft)``)
    on the offline ``data`` (:func:`~rlhf_lessons.alignment.alol_data.prepare_offline_data`,
    already tokenised with ``tokenizer``) with one of the eight objectives.

    Returns a :class:`~rlhf_lessons.training.History`, one row per step: the objective's
    metrics, the batch's mean unit reward and advantage (``batch_reward``, ``batch_advantage``:
    A, not A+), ``grad_norm``, ``seconds``; ``info``: ``examples`` (responses in the data),
    ``positive_fraction``, ``sampling``.
    """
    cfg = config or ALoLConfig()
    params = trainable_parameters(policy)
    if cfg.method in ADVANTAGE_METHODS and data.advantages is None:
        raise ValueError(f"{cfg.method} needs advantages: prepare_offline_data(..., value=...)")
    positive = math.nan if data.advantages is None else data.positive_fraction
    total = cfg.total_steps(1.0 if math.isnan(positive) else positive)
    history = History(cfg.method, asdict(cfg), info={
        "examples": len(data), "positive_fraction": positive, "sampling": cfg.sampling})  # fmt: skip
    advantages = torch.full((len(data),), math.nan) if data.advantages is None else data.advantages
    with torch_threads(cfg.threads):
        seed_everything(cfg.seed)
        sampler = BatchSampler(len(data), cfg.batch_size, sampling_weights(cfg.sampling, data),
                               cfg.seed)  # fmt: skip
        policy.eval()  # dropout off: the log-probs must be the model's, not a noisy version
        optimizer = torch.optim.Adam(params, lr=cfg.lr)
        schedule = warmup_schedule(optimizer, cfg.warmup_steps)
        device, watch = next(policy.parameters()).device, Stopwatch()
        for idx in history.loop(sampler, total, policy, eval_fn, eval_every, desc=cfg.method,
                                show_progress=show_progress, show=("loss", "nll")):  # fmt: skip
            with watch:
                mb = data.batch.rows(idx).trimmed().to(device)
                ref_logp = data.ref_logp[idx, : mb.input_ids.shape[1]].to(device)
                adv = None if data.advantages is None else advantages[idx].to(device)
                loss, m = alol_objective(cfg.method, token_logprobs(policy, mb),
                                         mb.completion_mask, ref_logp, data.rewards[idx].to(device),
                                         adv, cfg.clip_eps, cfg.beta, cfg.min_prob)  # fmt: skip
                norm = optimizer_step(loss, optimizer, params, cfg.max_grad_norm, schedule)
            history.log(seconds=watch.seconds, **m, batch_reward=data.rewards[idx].mean(),
                        batch_advantage=advantages[idx].mean(), grad_norm=norm)  # fmt: skip
    return history
