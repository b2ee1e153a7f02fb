"""Reward models (lesson 04): a pretrained encoder plus a scalar head, trained on rankings.

Paper: Ouyang et al. 2022, "Training language models to follow instructions with human
feedback" (InstructGPT), arXiv 2203.02155, section 3.5; the head's initialisation follows
Stiennon et al. 2020 (arXiv 2009.01325). Losses in :mod:`rlhf_lessons.rewards.reward_losses`.

A reward model maps a (prompt, response) pair to one number r(x, y). Three kinds here:

- :class:`RewardModel`: a **cross-encoder** (prompt and response read as one text pair, so
  every layer attends across both), its token states pooled into a linear head; default
  backbone all-MiniLM-L6-v2 (22.7M parameters, offline via :func:`rlhf_lessons.models.
  load_encoder`);
- :class:`CausalLMRewardModel`: the same head on a causal LM's hidden state at the last real
  token (the usual LLM reward model; lesson 05 uses it on the review model);
- :class:`HFSequenceScorer`: a ``...ForSequenceClassification`` model with one label, the model
  TRL's ``RewardTrainer`` trains (:mod:`rlhf_lessons.trl_runs.reward`).

:func:`train_reward_model` trains any of them on ranked records, with AdamW and the same data,
seed and schedule, K-wise (InstructGPT: a batch element is a prompt with all its K responses, K
forward passes for its C(K, 2) pairs) or on shuffled pairs (the Bradley-Terry loss, 2 forward
passes per pair, a prompt's pairs in different batches). :func:`evaluate_reward_model` measures
held-out pairwise accuracy (per category too) and rank correlation.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from itertools import accumulate, combinations
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from rlhf_lessons.course.device import torch_threads
from rlhf_lessons.course.seeding import seed_everything
from rlhf_lessons.course.stats import rank_correlations
from rlhf_lessons.distributed import Parallel
from rlhf_lessons.rewards.preference_data import ranked_to_pairs, validate_ranked
from rlhf_lessons.rewards.reward_losses import bradley_terry_loss, kwise_loss
from rlhf_lessons.training import (
    EvalFn,
    History,
    Stopwatch,
    check_minibatch_config,
    eval_mode,
    linear_decay_schedule,
    optimizer_step,
    trainable_parameters,
)

POOLINGS = ("mean", "cls")
MODES = ("kwise", "pairs")


def _init_head(head: nn.Linear, seed: int | None = None) -> nn.Linear:
    """Stiennon et al. 2020: reward head weights ~ N(0, 1 / (d_model + 1)), bias 0. ``seed``
    draws them from their own generator (None: torch's global one)."""
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=gen))
        head.weight.mul_(1.0 / math.sqrt(head.in_features + 1))
        head.bias.zero_()
    return head


def _check_texts(prompts: Sequence[str], responses: Sequence[str]) -> None:
    if isinstance(prompts, str) or isinstance(responses, str):
        raise ValueError("prompts and responses must be lists of strings, not single strings")
    if len(prompts) != len(responses):
        raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")


def _by_length(prompts, responses, lengths: list[int], size: int, run) -> torch.Tensor:
    """``run(prompts, responses)`` on chunks of at most ``size`` pairs of similar ``lengths``
    (less padding), the (N,) results put back in input order."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    chunks = [order[s : s + size] for s in range(0, len(order), size)]
    outs = [run([prompts[i] for i in c], [responses[i] for i in c]) for c in chunks]
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return torch.cat(outs)[inverse.to(outs[0].device)]


class _Scorer(nn.Module):
    """Shared batching for models with a ``rewards(prompts, responses)`` method."""

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @torch.no_grad()
    def score(
        self, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 32
    ) -> torch.Tensor:
        """Rewards of (prompt, response) pairs, (N,) on the CPU, in eval mode (no dropout),
        in batches of similar length."""
        _check_texts(prompts, responses)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not prompts:
            return torch.zeros(0)
        lengths = [len(p) + len(r) for p, r in zip(prompts, responses, strict=True)]
        with eval_mode(self):
            return _by_length(prompts, responses, lengths, batch_size, self.rewards).float().cpu()


class RewardModel(_Scorer):
    """Pretrained encoder + scalar linear head on the pooled (prompt, response) cross-encoding.

    The pair is tokenised as ``[CLS] prompt [SEP] response [SEP]``; its token states are
    mean-pooled, not [CLS], because that is how sentence-transformers trained MiniLM. Built in
    eval mode (no dropout); :func:`train_reward_model` switches modes itself.

    Args:
        encoder: a name or path for :func:`rlhf_lessons.models.load_encoder` (default
            all-MiniLM-L6-v2), or an already loaded ``(model, tokenizer)`` pair (the model is
            used as it is: pass a fresh copy per reward model).
        pooling: ``"mean"`` (over the attention mask) or ``"cls"`` (the first token's state).
        max_length: token budget of prompt + response; longer pairs are truncated
            (``longest_first``: tokens come off the longer of the two).
        chunk_size: :meth:`rewards` runs at most this many pairs per forward call.
        frozen: a :class:`~rlhf_lessons.rewards.frozen_bottom.FrozenBottom` cut from the same
            encoder: its bottom layers are frozen into this model and looked up, so only the
            top layers (and the head) train. Share one between models to share its memo.
        seed: seeds the head's initialisation (None: torch's global generator).
        device: where to put the model (default :func:`rlhf_lessons.get_device`).
    """

    def __init__(
        self,
        encoder: Any = "minilm",
        pooling: str = "mean",
        max_length: int = 256,
        chunk_size: int = 8,
        frozen=None,
        seed: int | None = None,
        device=None,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if max_length < 8:
            raise ValueError(f"max_length must be >= 8 tokens, got {max_length}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        if isinstance(encoder, tuple):
            model, tokenizer = encoder
        else:
            from rlhf_lessons.models import load_encoder

            model, tokenizer = load_encoder(encoder, device=device)
        if frozen is not None:
            frozen.attach(model)
        self.encoder, self.tokenizer, self.frozen = model, tokenizer, frozen
        self.pooling, self.max_length, self.chunk_size = pooling, max_length, chunk_size
        self.head = _init_head(nn.Linear(model.config.hidden_size, 1), seed)
        self._encoded: dict[tuple[str, str], tuple[list[int], list[int]]] = {}
        self.to(next(model.parameters()).device)
        self.eval()  # like the loaders: training code switches to train mode itself

    def _encode(self, prompt: str, response: str) -> tuple[list[int], list[int]]:
        """Token ids and token types of one text pair, tokenised once and remembered."""
        key = (prompt, response)
        if key not in self._encoded:
            enc = self.tokenizer(prompt, response, truncation="longest_first",
                                 max_length=self.max_length)  # fmt: skip
            self._encoded[key] = (enc["input_ids"], enc["token_type_ids"])
        return self._encoded[key]

    def tokenize(self, prompts: Sequence[str], responses: Sequence[str]) -> dict[str, torch.Tensor]:
        """Text pairs, right-padded to the longest: ``input_ids``, ``attention_mask``,
        ``token_type_ids`` (0 on the prompt, 1 on the response), all (N, T)."""
        _check_texts(prompts, responses)
        rows = [self._encode(p, r) for p, r in zip(prompts, responses, strict=True)]
        ids = [torch.tensor(i) for i, _ in rows]
        pad = self.tokenizer.pad_token_id or 0
        enc = {
            "input_ids": pad_sequence(ids, batch_first=True, padding_value=pad),
            "attention_mask": pad_sequence([torch.ones_like(i) for i in ids], batch_first=True),
            "token_type_ids": pad_sequence([torch.tensor(t) for _, t in rows], batch_first=True),
        }
        return {k: v.to(self.device) for k, v in enc.items()}

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(N, T) token tensors -> (N,) rewards."""
        hidden = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state  # (N, T, H)
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            m = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
        return self.head(pooled).squeeze(-1)

    def rewards(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        """Rewards with gradient, (N,), in input order: in chunks of similar length, each padded
        only to its own longest member (the same rewards as one padded batch, for less compute)."""
        _check_texts(prompts, responses)
        if len(prompts) <= self.chunk_size:
            return self(**self.tokenize(prompts, responses))
        lengths = [len(self._encode(p, r)[0]) for p, r in zip(prompts, responses, strict=True)]
        return _by_length(
            prompts, responses, lengths, self.chunk_size, lambda p, r: self(**self.tokenize(p, r))
        )


class CausalLMRewardModel(_Scorer):
    """A causal LM's hidden state at the last real token of prompt + completion -> linear head.

    Tokenisation follows :func:`rlhf_lessons.lm.tokenize_pairs` (prompt and completion
    tokenised separately and concatenated, EOS appended, right padding); the last real token is
    found from the attention mask, so left-padded batches (e.g. from
    :func:`rlhf_lessons.lm.generate`) work too, with positions from
    :func:`rlhf_lessons.lm.position_ids`.

    Args:
        model: a causal LM (``...ForCausalLM``); its transformer body (``model.base_model``) is
            used, so no vocabulary logits are computed.
        tokenizer: its tokenizer (with a pad or EOS token).
        format_prompts: wrap raw prompts with :func:`rlhf_lessons.lm.format_prompt` (the chat
            template, if the tokenizer has one) in :meth:`rewards`; False if they are formatted.
        max_prompt_length, max_completion_length: token limits, as in ``tokenize_pairs``.
        seed: seeds the head's initialisation (None: torch's global generator).
    """

    def __init__(
        self,
        model,
        tokenizer,
        format_prompts: bool = True,
        max_prompt_length: int | None = 256,
        max_completion_length: int | None = 256,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self.body = getattr(model, "base_model", model)
        self.tokenizer = tokenizer
        self.format_prompts = format_prompts
        self.max_prompt_length = max_prompt_length
        self.max_completion_length = max_completion_length
        self.head = _init_head(nn.Linear(model.config.hidden_size, 1), seed)
        self.to(next(model.parameters()).device)
        self.eval()

    @classmethod
    def from_pretrained(cls, name_or_path="smollm2", device=None, **kwargs) -> CausalLMRewardModel:
        """Load a causal LM with :func:`rlhf_lessons.models.load_causal_lm` and add a head."""
        from rlhf_lessons.models import load_causal_lm

        model, tokenizer = load_causal_lm(name_or_path, device=device)
        return cls(model, tokenizer, **kwargs)

    def forward(self, batch) -> torch.Tensor:
        """A :class:`rlhf_lessons.lm.Batch` (or anything with ``input_ids`` and
        ``attention_mask``, (N, T)) -> (N,) rewards."""
        from rlhf_lessons.lm import position_ids

        mask = batch.attention_mask
        hidden = self.body(
            input_ids=batch.input_ids, attention_mask=mask, position_ids=position_ids(mask)
        ).last_hidden_state  # (N, T, H)
        cols = torch.arange(mask.shape[1], device=mask.device)
        last = (cols * (mask > 0)).argmax(-1)  # index of the last real token of each row
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return self.head(pooled).squeeze(-1)

    def rewards(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        """Rewards with gradient, (N,)."""
        from rlhf_lessons.lm import format_prompt, tokenize_pairs

        _check_texts(prompts, responses)
        if self.format_prompts:
            prompts = [format_prompt(self.tokenizer, p) for p in prompts]
        batch = tokenize_pairs(
            self.tokenizer,
            prompts,
            responses,
            max_prompt_length=self.max_prompt_length,
            max_completion_length=self.max_completion_length,
        )
        return self(batch.to(self.device))


class HFSequenceScorer(_Scorer):
    """A Hugging Face ``...ForSequenceClassification`` model with one label (what TRL's
    ``RewardTrainer`` trains) as a reward model: the text pair ``[CLS] prompt [SEP] response
    [SEP]`` without ``token_type_ids``, as TRL's preference collator feeds it."""

    def __init__(self, model, tokenizer, max_length: int = 256) -> None:
        super().__init__()
        if getattr(model.config, "num_labels", None) != 1:
            raise ValueError(
                f"model has num_labels={getattr(model.config, 'num_labels', None)}; a reward "
                "model outputs one number: load it with num_labels=1"
            )
        self.model, self.tokenizer, self.max_length = model, tokenizer, max_length

    def token_ids(self, prompt: str, response: str) -> list[int]:
        """The ids this scorer reads for one (prompt, response), unpadded."""
        return self.tokenizer(prompt, response, truncation="longest_first",
                              max_length=self.max_length)["input_ids"]  # fmt: skip

    def rewards(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        _check_texts(prompts, responses)
        ids = [torch.tensor(self.token_ids(p, r)) for p, r in zip(prompts, responses, strict=True)]
        pad = self.tokenizer.pad_token_id or 0
        input_ids = pad_sequence(ids, batch_first=True, padding_value=pad).to(self.device)
        mask = pad_sequence([torch.ones_like(i) for i in ids], batch_first=True).to(self.device)
        return self.model(input_ids=input_ids, attention_mask=mask).logits.squeeze(-1)


# --- training -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RewardModelConfig:
    """Settings of :func:`train_reward_model`: AdamW, the learning rate decaying linearly to 0
    over the steps run (the Hugging Face Trainer's default), gradient clipping."""

    mode: str = "kwise"  # "kwise" (a prompt's K responses together) or "pairs" (shuffled pairs)
    lr: float = 1e-4
    epochs: int = 1
    batch_size: int = 2  # prompts per step (kwise) or pairs per step (pairs)
    max_steps: int | None = None
    max_grad_norm: float | None = 1.0
    weight_decay: float = 0.0
    dropout: bool = True  # the encoder's dropout on in training (TRL turns it off by default)
    seed: int = 0  # shuffling, dropout
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"RewardModelConfig.mode must be one of {MODES}, got {self.mode!r}")
        check_minibatch_config(self)


def check_records(records: Sequence[Mapping[str, Any]], name: str = "data") -> list:
    """Ranked records, validated, as a list (a clear error naming the first bad one)."""
    if isinstance(records, Mapping | str) or not len(records):
        raise ValueError(f"{name} must be a non-empty list of ranked records")
    for i, record in enumerate(records):
        validate_ranked(record, where=f"{name}[{i}]")
    return list(records)


def kwise_batches(
    records: Sequence[Mapping[str, Any]], batch_size: int, generator: torch.Generator
) -> list[list[Mapping[str, Any]]]:
    """One epoch of K-wise batches: the ranked records shuffled, ``batch_size`` prompts each."""
    order = torch.randperm(len(records), generator=generator).tolist()
    return [[records[i] for i in order[s : s + batch_size]]
            for s in range(0, len(order), batch_size)]  # fmt: skip


def pair_batches(
    records: Sequence[Mapping[str, Any]], batch_size: int, generator: torch.Generator
) -> list[list[dict[str, Any]]]:
    """One epoch of pairwise batches: every ranking expanded into its C(K, 2) pairs, all pairs
    shuffled together as independent examples, ``batch_size`` pairs each."""
    return kwise_batches([p for r in records for p in ranked_to_pairs(r)], batch_size, generator)


def kwise_step_loss(model, batch: Sequence[Mapping[str, Any]]):
    """Loss of one K-wise batch: one forward pass per response (sum_b K_b in all), the rewards
    padded into (B, K_max) with a mask, then :func:`~rlhf_lessons.rewards.reward_losses.kwise_loss`.
    Returns ``(loss, metrics, forward_passes)``."""
    ks = [len(r["ranked_outputs"]) for r in batch]
    prompts = [r["prompt"] for r in batch for _ in r["ranked_outputs"]]
    responses = [text for r in batch for text in r["ranked_outputs"]]
    flat = model.rewards(prompts, responses)  # (sum K,), each response scored once
    rewards = pad_sequence(flat.split(ks), batch_first=True)  # (B, K_max), best first
    mask = pad_sequence([torch.ones(k, dtype=torch.bool) for k in ks], batch_first=True)
    loss, metrics = kwise_loss(rewards, mask.to(rewards.device))
    return loss, metrics, len(responses)


def pairs_step_loss(model, batch: Sequence[Mapping[str, Any]]):
    """Loss of one batch of pairs: 2 forward passes per pair (chosen and rejected), then
    :func:`~rlhf_lessons.rewards.reward_losses.bradley_terry_loss`. Returns
    ``(loss, metrics, forward_passes)``."""
    prompts = [p["prompt"] for p in batch]
    texts = [p["chosen"] for p in batch] + [p["rejected"] for p in batch]
    r = model.rewards(prompts + prompts, texts)
    r_chosen, r_rejected = r.chunk(2)
    loss, metrics = bradley_terry_loss(r_chosen, r_rejected)
    return loss, metrics, len(texts)


#: mode -> (one epoch of batches, the loss of one batch)
BATCHING = {"kwise": (kwise_batches, kwise_step_loss), "pairs": (pair_batches, pairs_step_loss)}


def reward_batches(records, config: RewardModelConfig) -> list[list[Mapping[str, Any]]]:
    """Every batch :func:`train_reward_model` visits, in order: ``config.epochs`` epochs of
    ``config.mode``'s batches, shuffled with ``config.seed``, cut at ``config.max_steps``.
    (TRL's run uses the same list, so both see the same batches.)"""
    make_batches, _ = BATCHING[config.mode]
    gen = torch.Generator().manual_seed(config.seed)
    batches = [
        b for _ in range(config.epochs) for b in make_batches(records, config.batch_size, gen)
    ]
    return batches[: config.max_steps]


class _HandAveraged:
    """``par`` for ``optimizer_step``, its backward followed by the average of the gradients
    across processes, by hand (:meth:`~rlhf_lessons.distributed.Parallel.average_gradients`):
    ``model.rewards`` may run the forward several times per step, which DDP's wrapper does not
    allow."""

    def __init__(self, par: Parallel, params) -> None:
        self.par, self.params, self.clip_grad_norm_ = par, params, par.clip_grad_norm_

    def backward(self, loss: torch.Tensor) -> None:
        self.par.backward(loss)
        self.par.average_gradients(self.params)


def train_reward_model(
    model,
    tokenizer,
    data: Sequence[Mapping[str, Any]],
    config: RewardModelConfig | None = None,
    *,
    eval_fn: EvalFn | None = None,
    eval_every: int = 0,
    show_progress: bool = True,
    parallel: Parallel | None = None,
) -> History:
    """Train ``model`` (in place) on ranked records ``{"prompt", "ranked_outputs": [best, ...,
    worst], ...}``, K-wise or on shuffled pairs (``config.mode``).

    ``model`` is anything with ``rewards(prompts, responses) -> (N,)`` with gradient (a
    :class:`RewardModel`, :class:`CausalLMRewardModel` or :class:`HFSequenceScorer`); it
    tokenises its inputs itself, with ``tokenizer`` (None: the model's own).

    Returns a :class:`~rlhf_lessons.training.History`: per step ``loss``, ``accuracy`` and
    ``margin`` of the batch (:mod:`~rlhf_lessons.rewards.reward_losses`), ``sequences`` (forward
    passes) and ``seconds``; ``info``: ``forward_passes``, ``pairs_seen`` (comparisons trained
    on), ``cpu_seconds``, ``train_seconds``. The model is left in eval mode.

    Data-parallel under ``torchrun`` / ``accelerate launch`` (or given ``parallel``): each
    process scores its share of a batch's rows; gradients are averaged by hand.
    """
    cfg = config or RewardModelConfig()
    records = check_records(data)
    if tokenizer is not None and getattr(model, "tokenizer", tokenizer) is not tokenizer:
        raise ValueError("tokenizer is not the model's own: the model tokenises its inputs itself")
    par = parallel if parallel is not None else Parallel.for_trainer()
    if par.device is not None:
        model.to(par.device)
    params = trainable_parameters(model, "model")
    _, step_loss = BATCHING[cfg.mode]
    history = History("reward_model", asdict(cfg), info={"forward_passes": 0, "pairs_seen": 0})
    with torch_threads(cfg.threads):
        seed_everything(cfg.seed)  # dropout
        batches = reward_batches(records, cfg)
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                      fused=params[0].device.type in ("cpu", "cuda"))  # fmt: skip
        schedule = linear_decay_schedule(optimizer, len(batches))
        clip = math.inf if cfg.max_grad_norm is None else cfg.max_grad_norm  # inf: no clipping
        averaged = _HandAveraged(par, params)
        watch, cpu_start = Stopwatch(), time.process_time()
        desc, total = f"reward model ({cfg.mode})", len(batches)
        for batch in history.loop(
            batches, total, model, eval_fn, eval_every, desc=desc, show_progress=show_progress
        ):
            model.train(cfg.dropout)  # between steps, evaluation runs in eval mode (no dropout)
            with watch:
                shard = par.shard(torch.arange(len(batch)))  # this process's rows (all in one)
                loss, metrics, passes = step_loss(model, [batch[i] for i in shard.index])
                # scaled and averaged by hand: the gradient of the whole batch's mean
                optimizer_step(loss * shard.scale, optimizer, params, clip, schedule, averaged)
                pairs = metrics["pairs"] * (shard.rows > 0)  # the whole batch's numbers:
                n = par.sum({"pairs": pairs, "passes": passes * (shard.rows > 0)})
                metrics = {**par.mean({"loss": metrics["loss"]}, shard.rows),
                           **par.mean({k: metrics[k] for k in ("accuracy", "margin")}, pairs)}  # fmt: skip
            model.eval()
            history.info["forward_passes"] += int(n["passes"])
            history.info["pairs_seen"] += int(n["pairs"])
            history.info["cpu_seconds"] = time.process_time() - cpu_start
            history.log(seconds=watch.seconds, **metrics, sequences=int(n["passes"]))
        history.info["train_seconds"] = watch.seconds
    return history


# --- evaluation ---------------------------------------------------------------------------------


@dataclass
class RewardEval:
    """Held-out quality of a reward model on ranked records."""

    accuracy: float  # pairwise, over all C(K, 2) pairs of all prompts
    per_category: dict[str, float]
    pairs_per_category: dict[str, int]
    kendall_tau: float  # mean over prompts of Kendall's tau (scores vs true ranks)
    spearman: float  # mean over prompts of Spearman's rho
    n_pairs: int
    n_prompts: int
    scores: list[list[float]]  # per record, in its ranked order (best first)
    correct: np.ndarray  # (n_pairs,) bool: each pair right, in ranked_to_pairs order

    def summary(self) -> dict[str, float]:
        return {"accuracy": self.accuracy, **{f"acc/{c}": a for c, a in self.per_category.items()},
                "kendall_tau": self.kendall_tau, "spearman": self.spearman}  # fmt: skip


def evaluate_reward_model(
    model, records: Sequence[Mapping[str, Any]], batch_size: int = 32
) -> RewardEval:
    """Score every response of every record with ``model.score`` and compare with the human
    rankings. A pair is right when the better response scores strictly higher; records without
    a ``"category"`` count as ``"all"``; a K = 2 prompt's rank correlations are +-1."""
    records = check_records(records, "records")
    prompts = [r["prompt"] for r in records for _ in r["ranked_outputs"]]
    responses = [o for r in records for o in r["ranked_outputs"]]
    flat = model.score(prompts, responses, batch_size=batch_size).tolist()
    ks = [len(r["ranked_outputs"]) for r in records]
    scores = [flat[end - k : end] for end, k in zip(accumulate(ks), ks, strict=True)]
    right, count, correct = defaultdict(int), defaultdict(int), []
    for r, s in zip(records, scores, strict=True):
        cat = r.get("category", "all")
        for i, j in combinations(range(len(s)), 2):
            correct.append(s[i] > s[j])
            right[cat] += s[i] > s[j]
            count[cat] += 1
    taus, rhos = zip(*(rank_correlations(s) for s in scores), strict=True)
    return RewardEval(
        accuracy=float(np.mean(correct)),
        per_category={c: right[c] / count[c] for c in sorted(count)},
        pairs_per_category={c: count[c] for c in sorted(count)},
        kendall_tau=float(np.mean(taus)),
        spearman=float(np.mean(rhos)),
        n_pairs=len(correct),
        n_prompts=len(records),
        scores=scores,
        correct=np.array(correct, dtype=bool),
    )
