"""Direct preference optimisation: DPO, IPO, the hinge loss and SimPO trained on preference
pairs (lessons 06-07).

Paper: Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model is Secretly a
Reward Model", arXiv 2305.18290; IPO, the hinge loss and SimPO are cited where they are defined
(:mod:`rlhf_lessons.alignment.dpo_losses`, :mod:`rlhf_lessons.alignment.simpo`).

RLHF with PPO (lesson 05) learns a reward model r from preferences, then maximises
``E[r(x, y)] - beta KL(pi || pi_ref)`` by sampling. That objective's optimum is
``pi*(y|x) = pi_ref(y|x) exp(r(x, y) / beta) / Z(x)``, so ``r = beta log pi*/pi_ref + beta log
Z(x)``: a policy *defines* a reward, its **implicit reward** ``beta log pi(y|x) / pi_ref(y|x)``.
Put that into the reward model's Bradley-Terry loss and Z(x) cancels within a pair:

    L_DPO = -log sigma(beta h),   h = [log pi(y_w|x) - log pi_ref(y_w|x)] - [log pi(y_l|x) - log pi_ref(y_l|x)]

It is supervised learning on a fixed set of pairs: no sampling, no reward model, no critic. At
the start pi = pi_ref, so h = 0 and the loss is log 2 whatever the data.

The package's pieces, in the order :func:`train_dpo` uses them:

- :mod:`~rlhf_lessons.alignment.dpo_data`: records to tokens, and log pi_ref of every response,
  computed once before the first step (the reference is a constant);
- :mod:`~rlhf_lessons.alignment.lora`: a LoRA policy's reference is its own base model;
- :func:`rlhf_lessons.lm.completion_logprobs`: the policy's log-probs of the responses, with the
  output layer run at the response tokens only;
- :mod:`~rlhf_lessons.alignment.dpo_losses` and :mod:`~rlhf_lessons.alignment.simpo`: the loss.

**What it does to log-probabilities.** The loss only sees the *difference* h; in the review world
DPO raises it mostly by pushing log pi(y_l) down while log pi(y_w) falls too, so the mass that
leaves both goes to responses that are in no pair ("likelihood displacement", lesson 06
measures it). ``history.logps_chosen`` and ``logps_rejected`` follow it during training.

**Defaults** (:class:`DPOConfig`, :meth:`DPOConfig.ipo`, :meth:`DPOConfig.simpo`) are for the
course's tiny review model (:mod:`rlhf_lessons.review_world.tiny_lm`) on pairs it sampled
itself, the DPO paper's IMDb setup in miniature.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from rlhf_lessons.alignment.dpo_data import (  # noqa: F401 - re-exported: lessons import them here
    ReferenceLogps,
    pair_texts,
    precompute_reference_logps,
    tokenize_preferences,
)
from rlhf_lessons.alignment.dpo_losses import dpo_loss
from rlhf_lessons.alignment.lora import (  # noqa: F401 - re-exported
    adapter_disabled,
    add_lora,
    check_adapters_only,
    is_peft_model,
)
from rlhf_lessons.alignment.simpo import simpo_loss
from rlhf_lessons.course.device import torch_threads
from rlhf_lessons.course.seeding import seed_everything
from rlhf_lessons.distributed import Parallel
from rlhf_lessons.lm import Batch, completion_logprobs, sequence_logprobs
from rlhf_lessons.training import (
    EvalFn,
    History,
    Stopwatch,
    check_minibatch_config,
    optimizer_step,
    trainable_parameters,
    warmup_schedule,
)

LOSSES = ("dpo", "ipo", "hinge", "simpo")
DEFAULT_BETA = {"dpo": 0.1, "ipo": 0.1, "hinge": 0.1, "simpo": 2.0}
_LOSS_TYPE = {"dpo": "sigmoid", "ipo": "ipo", "hinge": "hinge"}  # dpo_losses.dpo_loss names


@dataclass
class DPOConfig:
    """Settings of :func:`train_dpo` (TRL 1.x's ``DPOConfig`` defaults in brackets).
    ``beta=None`` takes the loss's usual value (:data:`DEFAULT_BETA`)."""

    loss: str = "dpo"  # "dpo", "ipo", "hinge" or "simpo" [loss_type "sigmoid"]
    beta: float | None = None  # DPO 0.1 (paper, TRL); IPO's tau; SimPO 2.0 (SimPO's code)
    gamma: float = 0.5  # SimPO's target margin, in reward units [CPOConfig.simpo_gamma 0.5]
    label_smoothing: float = 0.0  # cDPO / SimPO only: probability a label is flipped [0.0]
    ipo_average: bool = True  # IPO on token-averaged log-probs, as TRL (False: summed)
    lr: float = 5e-4  # Adam (the paper: RMSprop 1e-6); a 0.5M-parameter model [1e-6]
    epochs: int = 1  # passes over the pairs [num_train_epochs 3]
    max_steps: int | None = None  # stop after this many steps (None: run all epochs) [-1]
    batch_size: int = 64  # pairs per step (the paper's 64) [per_device_train_batch_size 8]
    warmup_steps: int = 0  # linear warm-up of the learning rate (the paper: 150)
    max_grad_norm: float = 1.0  # [1.0]
    max_prompt_length: int | None = 32  # tokens; longer prompts lose their start [512]
    max_completion_length: int | None = 32  # tokens, EOS included; longer ones lose the end
    add_eos: bool = True  # append EOS to each completion, so the model learns to stop
    ref_chunk_size: int | None = None  # rows per reference pass (None: rows_per_pass)
    threads: int | None = 1  # torch threads while training (None: leave as is)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"DPOConfig.loss must be one of {LOSSES}, got {self.loss!r}")
        if self.beta is None:
            self.beta = DEFAULT_BETA[self.loss]
        if not (isinstance(self.beta, int | float) and math.isfinite(self.beta) and self.beta > 0):
            raise ValueError(f"DPOConfig.beta must be a number > 0, got {self.beta!r}")
        if not math.isfinite(self.gamma) or self.gamma < 0:
            raise ValueError(f"DPOConfig.gamma must be >= 0 (a target margin), got {self.gamma}")
        if not 0.0 <= self.label_smoothing <= 0.5:
            raise ValueError(
                f"DPOConfig.label_smoothing must be in [0, 0.5], got {self.label_smoothing}"
            )
        if self.label_smoothing and self.loss not in ("dpo", "simpo"):
            raise ValueError(
                f"DPOConfig.label_smoothing applies to loss 'dpo' (cDPO) and 'simpo' only, got "
                f"loss={self.loss!r}"
            )
        check_minibatch_config(self)
        if self.ref_chunk_size is not None and self.ref_chunk_size < 1:
            raise ValueError(
                f"DPOConfig.ref_chunk_size must be >= 1 or None, got {self.ref_chunk_size}"
            )
        if self.warmup_steps < 0 or self.max_grad_norm <= 0:
            raise ValueError("DPOConfig needs warmup_steps >= 0 and max_grad_norm > 0")

    @property
    def average_logps(self) -> bool:
        """Whether the loss uses per-token *average* log-probs (SimPO; IPO as TRL) instead of
        sums (DPO, hinge)."""
        return self.loss == "simpo" or (self.loss == "ipo" and self.ipo_average)

    @property
    def needs_reference(self) -> bool:
        """Every loss but SimPO compares the policy with pi_ref."""
        return self.loss != "simpo"

    @classmethod
    def dpo(cls, **overrides) -> DPOConfig:
        """DPO on the tiny review model (beta 0.1, the paper's)."""
        return replace(cls(loss="dpo"), **overrides)

    @classmethod
    def ipo(cls, **overrides) -> DPOConfig:
        """IPO on the tiny review model, on token-averaged log-ratios (TRL's convention).

        Averaged, h is a per-token log-ratio, so IPO's target 1 / (2 beta) is per token too:
        beta 0.1 asks every token of y_w to gain 5 nats on y_l relative to pi_ref. On sums
        (``ipo_average=False``) the same beta asks for 5 nats over the whole response."""
        return replace(cls(loss="ipo"), **overrides)

    @classmethod
    def simpo(cls, **overrides) -> DPOConfig:
        """SimPO on the tiny review model: beta 2.0 and gamma 0.5, the SimPO code's defaults
        (not TRL's ``CPOConfig``'s, see :mod:`rlhf_lessons.alignment.simpo`)."""
        return replace(cls(loss="simpo"), **overrides)


# --- The pieces of a step ----------------------------------------------------------------------


def pair_order(n: int, config: DPOConfig) -> list[torch.Tensor]:
    """The order in which :func:`train_dpo` visits ``n`` pairs: one random permutation per
    epoch from a generator seeded with ``config.seed``. Consecutive ``config.batch_size``
    slices of each are the minibatches (:mod:`rlhf_lessons.trl_runs.dpo` feeds TRL the same
    order, so both trainers see the same minibatches)."""
    generator = torch.Generator().manual_seed(config.seed)
    return [torch.randperm(n, generator=generator) for _ in range(config.epochs)]


def minibatches(n: int, config: DPOConfig) -> list[tuple[float, torch.Tensor]]:
    """``(epoch, pair indices)`` of every step: :func:`pair_order` cut into ``batch_size``
    slices, at most ``max_steps`` of them; ``epoch`` counts the passes done after the step."""
    per_epoch = math.ceil(n / config.batch_size)
    steps = [(e + (j + 1) / per_epoch, idx) for e, order in enumerate(pair_order(n, config))
             for j, idx in enumerate(order.split(config.batch_size))]  # fmt: skip
    return steps[: config.max_steps]


def pair_loss(cfg: DPOConfig, chosen, rejected, ref_chosen=None, ref_rejected=None):
    """The configured loss on (B,) sequence log-probs: ``(loss, metrics)``."""
    if cfg.loss == "simpo":
        return simpo_loss(chosen, rejected, beta=cfg.beta, gamma=cfg.gamma,
                          label_smoothing=cfg.label_smoothing)  # fmt: skip
    return dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=cfg.beta,
                    loss_type=_LOSS_TYPE[cfg.loss], label_smoothing=cfg.label_smoothing)  # fmt: skip


def reference_logps(
    policy, batch: Batch, cfg: DPOConfig, ref_model=None, ref_logps=None
) -> tuple[ReferenceLogps | None, str]:
    """log pi_ref of every row of ``batch``, and where it came from: ``ref_logps`` or
    ``ref_model`` if given; else, for a peft policy, the policy with its adapter disabled;
    else the policy itself before its first update (DPO starts from pi = pi_ref). None for
    SimPO, which has no reference."""
    if not cfg.needs_reference:
        return None, "none (reference-free)"
    if ref_logps is not None:
        if ref_model is not None:
            raise ValueError("give ref_model or ref_logps, not both")
        ref_logps.check_rows(len(batch), "ref_logps")
        return replace(ref_logps, seconds=0.0), "ref_logps (precomputed)"
    if ref_model is not None:
        return precompute_reference_logps(ref_model, batch, cfg.ref_chunk_size), "ref_model"
    if is_peft_model(policy):
        ref = precompute_reference_logps(policy, batch, cfg.ref_chunk_size, disable_adapter=True)
        return ref, "policy with its adapter disabled"
    return precompute_reference_logps(policy, batch, cfg.ref_chunk_size), "policy before training"


def _check_policy(policy, ref_model) -> list[nn.Parameter]:
    """The policy's trainable parameters, after the checks that catch a wrong reference."""
    if ref_model is not None and ref_model is policy:
        raise ValueError(
            "ref_model is the policy itself: leave ref_model=None to use the policy's state "
            "before training (or its base model, for a LoRA policy) as the reference"
        )
    if is_peft_model(policy):
        check_adapters_only(policy)
    return trainable_parameters(policy)


# --- Training ----------------------------------------------------------------------------------


def train_dpo(
    policy,
    tokenizer,
    pairs: Sequence[Mapping],
    config: DPOConfig | None = None,
    *,
    ref_model=None,
    ref_logps: ReferenceLogps | None = None,
    eval_fn: EvalFn | None = None,
    eval_every: int = 0,
    show_progress: bool = True,
    parallel: Parallel | None = None,
) -> History:
    """Fine-tune ``policy`` (a causal LM or a peft LoRA model, changed in place) on preference
    pairs ``[{"prompt", "chosen", "rejected"}, ...]`` with DPO, IPO, the hinge loss or SimPO.

    1. Check and tokenise the pairs; compute log pi_ref of every response once
       (:func:`reference_logps`; none for SimPO). Runs on the same pairs (a sweep over beta)
       can share one ``ref_logps`` (:func:`precompute_reference_logps`).
    2. ``epochs`` passes over the shuffled pairs in minibatches of ``batch_size``: one forward
       pass over both responses of each pair, the loss, an Adam step with clipped gradients.

    Data-parallel under ``torchrun`` or ``accelerate launch`` (or with ``parallel``): each
    process takes its share of every minibatch's pairs, weighted so that a step equals the
    one-process step (:mod:`rlhf_lessons.distributed`).

    Returns a :class:`~rlhf_lessons.training.History`, one row per step: the loss's metrics
    (``loss``, ``rewards_chosen``, ``rewards_rejected``, ``margin``, ``accuracy``,
    ``logps_chosen``, ``logps_rejected``), ``grad_norm``, ``lr``, ``epoch`` and ``seconds``;
    ``info``: ``reference`` (where pi_ref came from), ``n_pairs`` and ``ref_seconds``.
    """
    cfg = config or DPOConfig()
    params = _check_policy(policy, ref_model)
    par = parallel if parallel is not None else Parallel.for_trainer()
    history = History(cfg.loss, asdict(cfg))
    with torch_threads(cfg.threads):
        seed_everything(cfg.seed)
        batch = tokenize_preferences(tokenizer, pairs, cfg.max_prompt_length,
                                     cfg.max_completion_length, cfg.add_eos)  # fmt: skip
        n = len(batch) // 2  # rows :n are the chosen responses, rows n: the rejected ones
        ref, source = reference_logps(policy, batch, cfg, ref_model, ref_logps)
        history.info.update(reference=source, n_pairs=n, ref_seconds=ref.seconds if ref else 0.0)
        ref_seq = ref.select(cfg.average_logps) if ref else None

        policy.eval()  # dropout off: the log-probs must be the model's, not a noisy version
        optimizer = torch.optim.Adam(params, lr=cfg.lr)
        schedule = warmup_schedule(optimizer, cfg.warmup_steps)  # built before prepare (see par)
        model, optimizer = par.prepare(policy, optimizer)  # (policy, optimizer) in one process
        params = trainable_parameters(model)  # FSDP: its own tensors
        device = par.device or next(policy.parameters()).device
        steps, watch = minibatches(n, cfg), Stopwatch()
        for epoch, idx in history.loop(steps, len(steps), policy, eval_fn, eval_every,
                                       desc=cfg.loss.upper(), show_progress=show_progress,
                                       show=("loss", "accuracy")):  # fmt: skip
            with watch:
                shard = par.shard(idx)  # this process's pairs (all of them in one process)
                idx = shard.index
                rows = batch.rows(torch.cat([idx, idx + n])).trimmed().to(device)
                logp = completion_logprobs(model, rows, share_prompts=True)  # prompts run once
                seq = sequence_logprobs(logp, rows.completion_mask, cfg.average_logps)  # (2B,)
                chosen, rejected = seq.chunk(2)
                refs = (ref_seq[idx].to(device), ref_seq[idx + n].to(device)) if ref else ()
                loss, metrics = pair_loss(cfg, chosen, rejected, *refs)
                lr = optimizer.param_groups[0]["lr"]
                # DDP's average of the scaled losses is then the minibatch's mean
                norm = optimizer_step(loss * shard.scale, optimizer, params, cfg.max_grad_norm,
                                      schedule, par)  # fmt: skip
                metrics = par.mean(metrics, shard.rows)  # the whole minibatch's, everywhere
            history.log(seconds=watch.seconds, **metrics, grad_norm=norm, lr=lr, epoch=epoch)
    return history


# --- The implicit reward as a classifier -------------------------------------------------------


@torch.no_grad()
def response_logps(
    model, tokenizer, pairs: Sequence[Mapping], config: DPOConfig | None = None,
    disable_adapter: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(N,) ``log pi(y_w | x)`` and (N,) ``log pi(y_l | x)`` of N pairs under ``model``: sums of
    the responses' token log-probs (per-token means when ``config`` averages, as SimPO),
    tokenised with ``config``'s lengths, on its threads (default :class:`DPOConfig`).
    ``disable_adapter``: the peft model's base instead (pi_ref of a LoRA policy)."""
    cfg = config or DPOConfig()
    batch = tokenize_preferences(tokenizer, pairs, cfg.max_prompt_length,
                                 cfg.max_completion_length, cfg.add_eos)  # fmt: skip
    logps = precompute_reference_logps(model, batch, disable_adapter=disable_adapter,
                                       threads=cfg.threads)  # fmt: skip
    return logps.select(cfg.average_logps).chunk(2)


def implicit_rewards(
    policy, tokenizer, pairs: Sequence[Mapping], reference=None, config: DPOConfig | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) implicit rewards of the chosen and of the rejected responses of N pairs:
    ``beta (log pi(y|x) - log pi_ref(y|x))`` (DPO, IPO), or ``beta log pi(y|x)`` with no
    reference (SimPO: per-token means); arguments as :func:`implicit_reward_accuracy`."""
    cfg = config or DPOConfig()
    chosen, rejected = response_logps(policy, tokenizer, pairs, cfg)
    if reference is not None and cfg.needs_reference:
        if isinstance(reference, ReferenceLogps):
            reference.check_rows(2 * len(chosen), "reference")
            ref_chosen, ref_rejected = reference.select(cfg.average_logps).chunk(2)
        else:
            own = reference is policy and is_peft_model(policy)  # a LoRA policy's base
            ref_chosen, ref_rejected = response_logps(reference, tokenizer, pairs, cfg, own)
        chosen, rejected = chosen - ref_chosen, rejected - ref_rejected
    return cfg.beta * chosen, cfg.beta * rejected


def implicit_reward_accuracy(
    policy, tokenizer, pairs: Sequence[Mapping], reference=None, config: DPOConfig | None = None
) -> dict:
    """How often the policy's implicit reward ranks a pair as its label does (held-out pairs).

    A pair is ranked right when its chosen response's reward (:func:`implicit_rewards`) is
    higher. Ties (every pair, when pi = pi_ref) count 1/2, a coin flip, so an untrained policy
    scores 0.5; TRL's logged ``rewards/accuracies`` (and :func:`train_dpo`'s history) count
    ties as wrong.

    ``pairs`` are ``{"prompt", "chosen", "rejected"}`` records, as for :func:`train_dpo`;
    ``reference`` is pi_ref as a model (run once here); the policy itself, when it is a peft
    model (its adapter is disabled for the reference); a :class:`ReferenceLogps` precomputed on
    :func:`tokenize_preferences` of the same pairs with the same lengths; or ``None`` for a
    reference-free reward. ``config`` (default :class:`DPOConfig`) gives the reward's beta,
    sums or per-token means, the lengths and the torch threads (SimPO's has no reference).

    Returns ``accuracy`` (ties 1/2), ``ties`` (fraction of pairs with equal rewards),
    ``margin`` (mean chosen - rejected reward), ``rewards_chosen``, ``rewards_rejected``
    (means), ``n_pairs``, and ``correct``: each pair's 1, 1/2 or 0 (for a paired interval of
    the change between two policies on the same pairs).
    """
    return ranking_accuracy(*implicit_rewards(policy, tokenizer, pairs, reference, config))


def ranking_accuracy(chosen: torch.Tensor, rejected: torch.Tensor) -> dict:
    """:func:`implicit_reward_accuracy`'s dict from (N,) rewards of the chosen and of the
    rejected responses, already computed (e.g. ``beta * (log pi - log pi_ref)`` from the log-probs
    of :func:`response_logps`, so that one forward pass serves both)."""
    if chosen.shape != rejected.shape or chosen.ndim != 1:
        raise ValueError(
            f"chosen and rejected must be (N,) rewards of the same pairs, got shapes "
            f"{tuple(chosen.shape)} and {tuple(rejected.shape)}"
        )
    correct = (chosen > rejected).float() + 0.5 * (chosen == rejected).float()
    return {
        "accuracy": correct.mean().item(),
        "ties": (chosen == rejected).float().mean().item(),
        "margin": (chosen - rejected).mean().item(),
        "rewards_chosen": chosen.mean().item(),
        "rewards_rejected": rejected.mean().item(),
        "n_pairs": len(correct),
        "correct": correct.tolist(),
    }
