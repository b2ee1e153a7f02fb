"""Reward models (lesson 04): a pretrained encoder plus a scalar head, trained on rankings.

Paper: Ouyang et al. 2022, "Training language models to follow instructions with human
feedback" (InstructGPT), arXiv 2203.02155, section 3.5; the head's initialisation follows
Stiennon et al. 2020 (arXiv 2009.01325). Losses in :mod:`rlhf_lessons.rewards.reward_losses`.

A reward model maps a (prompt, response) pair to one number r(x, y). Two architectures:

- :class:`RewardModel`: a **cross-encoder**. The prompt and the response are tokenised together
  as a BERT text pair (``[CLS] prompt [SEP] response [SEP]``), so every layer attends across
  both; the token states are **mean-pooled** and a linear head gives the reward. Default
  backbone all-MiniLM-L6-v2 (22.7M parameters, offline via :func:`rlhf_lessons.models.
  load_encoder`). Mean pooling, not [CLS], because that is how this checkpoint was trained
  (sentence-transformers pools the mean of the token states; its [CLS] state was never trained
  to summarise anything); ``pooling="cls"`` is available.
- :class:`CausalLMRewardModel`: the same head on a causal LM's hidden state at the last real
  token of prompt + completion (the usual LLM reward model, e.g. TRL's
  ``AutoModelForSequenceClassification`` on a Llama), tokenised with the conventions of
  :mod:`rlhf_lessons.lm`. Later lessons use it on SmolLM2.

:func:`train_reward_model` fine-tunes either one (every parameter) on ranked records in one of
two ways, with AdamW and the same data, seed and schedule:

- ``mode="kwise"`` (InstructGPT): a batch element is a prompt with all its K responses: K
  forward passes, and :func:`~rlhf_lessons.rewards.reward_losses.kwise_loss` over its C(K, 2) pairs;
- ``mode="pairs"``: every ranking is expanded into its C(K, 2) pairs, which are shuffled as
  independent examples and trained with the Bradley-Terry loss: 2 forward passes per pair, and
  a prompt's pairs land in different batches.

:func:`evaluate_reward_model` measures held-out pairwise accuracy (per category too) and rank
correlation; :func:`train_with_trl` trains TRL's ``RewardTrainer`` on the same pairs for
comparison.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from rlhf_lessons.course.device import torch_threads
from rlhf_lessons.course.progress import progress
from rlhf_lessons.course.seeding import seed_everything
from rlhf_lessons.rewards.preference_data import ranked_to_pairs, validate_ranked
from rlhf_lessons.rewards.reward_losses import bradley_terry_loss, kwise_loss

POOLINGS = ("mean", "cls")
MODES = ("kwise", "pairs")


def _init_head(head: nn.Linear) -> nn.Linear:
    """Stiennon et al. 2020: reward head weights ~ N(0, 1 / (d_model + 1)), bias 0."""
    nn.init.normal_(head.weight, std=1.0 / math.sqrt(head.in_features + 1))
    nn.init.zeros_(head.bias)
    return head


def _check_texts(prompts: Sequence[str], responses: Sequence[str]) -> None:
    if isinstance(prompts, str) or isinstance(responses, str):
        raise ValueError("prompts and responses must be lists of strings, not single strings")
    if len(prompts) != len(responses):
        raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")


class _Scorer(nn.Module):
    """Shared batching for models with a ``rewards(prompts, responses)`` method."""

    def rewards(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def score(
        self, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 32
    ) -> torch.Tensor:
        """Rewards of (prompt, response) pairs, (N,) on the CPU, in eval mode (no dropout).

        Texts are batched by length (less padding), and the results put back in input order.
        """
        _check_texts(prompts, responses)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not prompts:
            return torch.zeros(0)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]) + len(responses[i]))
        out = torch.empty(len(prompts))
        was_training = self.training
        self.eval()
        try:
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                r = self.rewards([prompts[i] for i in idx], [responses[i] for i in idx])
                out[idx] = r.float().cpu()
        finally:
            self.train(was_training)
        return out


class RewardModel(_Scorer):
    """Pretrained encoder + scalar linear head on the pooled (prompt, response) cross-encoding.

    Built in eval mode (no dropout); :func:`train_reward_model` switches modes itself.

    Args:
        encoder: a name or path for :func:`rlhf_lessons.models.load_encoder` (default
            all-MiniLM-L6-v2), or an already loaded ``(model, tokenizer)`` pair.
        pooling: ``"mean"`` (mean of the token states over the attention mask; the default, as
            the checkpoint was trained) or ``"cls"`` (the first token's state).
        max_length: token budget of prompt + response; longer pairs are truncated
            (``longest_first``: tokens come off the longer of the two).
        chunk_size: :meth:`rewards` runs at most this many pairs per forward call, grouped by
            length (less padding).
        device: where to put the model (default :func:`rlhf_lessons.get_device`).
    """

    def __init__(
        self,
        encoder: Any = "minilm",
        pooling: str = "mean",
        max_length: int = 256,
        chunk_size: int = 8,
        device=None,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if max_length < 8:
            raise ValueError(f"max_length must be >= 8 tokens, got {max_length}")
        if isinstance(encoder, tuple):
            model, tokenizer = encoder
        else:
            from rlhf_lessons.models import load_encoder

            model, tokenizer = load_encoder(encoder, device=device)
        self.encoder = model
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.max_length = max_length
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.chunk_size = chunk_size
        self.head = _init_head(nn.Linear(model.config.hidden_size, 1))
        self.to(next(model.parameters()).device)
        self.eval()  # like the loaders: training code switches to train mode itself

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def tokenize(self, prompts: Sequence[str], responses: Sequence[str]) -> dict[str, torch.Tensor]:
        """Tokenise as text pairs, padded to the longest: ``input_ids``, ``attention_mask``,
        ``token_type_ids`` (0 on the prompt, 1 on the response), all (N, T)."""
        _check_texts(prompts, responses)
        enc = self.tokenizer(
            list(prompts),
            list(responses),
            padding=True,
            truncation="longest_first",
            max_length=self.max_length,
            return_tensors="pt",
        )
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
        """Rewards with gradient, (N,), in input order.

        The pairs are sorted by length and run in chunks of at most ``chunk_size``, each padded
        only to its own longest member: the same rewards as one padded batch (padding is
        masked out), for ~30% less compute on this data.
        """
        _check_texts(prompts, responses)
        n = len(prompts)
        if n <= self.chunk_size:
            return self(**self.tokenize(prompts, responses))
        order = sorted(range(n), key=lambda i: len(prompts[i]) + len(responses[i]))
        chunks = [order[s : s + self.chunk_size] for s in range(0, n, self.chunk_size)]
        outs = [self(**self.tokenize([prompts[i] for i in c], [responses[i] for i in c]))
                for c in chunks]  # fmt: skip
        flat = torch.cat(outs)
        inverse = torch.empty(n, dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(n)
        return flat[inverse.to(flat.device)]


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
    """

    def __init__(
        self,
        model,
        tokenizer,
        format_prompts: bool = True,
        max_prompt_length: int | None = 256,
        max_completion_length: int | None = 256,
    ) -> None:
        super().__init__()
        self.body = getattr(model, "base_model", model)
        self.tokenizer = tokenizer
        self.format_prompts = format_prompts
        self.max_prompt_length = max_prompt_length
        self.max_completion_length = max_completion_length
        self.head = _init_head(nn.Linear(model.config.hidden_size, 1))
        self.to(next(model.parameters()).device)
        self.eval()

    @classmethod
    def from_pretrained(cls, name_or_path="smollm2", device=None, **kwargs) -> CausalLMRewardModel:
        """Load a causal LM with :func:`rlhf_lessons.models.load_causal_lm` and add a head."""
        from rlhf_lessons.models import load_causal_lm

        model, tokenizer = load_causal_lm(name_or_path, device=device)
        return cls(model, tokenizer, **kwargs)

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

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
    """``score()`` for a Hugging Face ``...ForSequenceClassification`` model with one label
    (e.g. one trained by TRL's ``RewardTrainer``), on the same text-pair encoding as
    :class:`RewardModel`. ``token_type_ids`` are not passed (they default to 0), because
    TRL's preference collator does not pass them in training either."""

    def __init__(self, model, tokenizer, max_length: int = 256) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length

    def rewards(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        _check_texts(prompts, responses)
        enc = self.tokenizer(
            list(prompts), list(responses), padding=True, truncation="longest_first",
            max_length=self.max_length, return_tensors="pt",
        )  # fmt: skip
        device = next(self.model.parameters()).device
        out = self.model(
            input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device)
        )
        return out.logits.squeeze(-1)


# --- training -----------------------------------------------------------------------------------


@dataclass
class RewardTrainHistory:
    """What :func:`train_reward_model` did. Lists have one entry per optimiser step."""

    mode: str
    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)  # pairwise accuracy on the batch
    seconds: list[float] = field(default_factory=list)  # wall-clock since the start
    cpu_seconds: float = 0.0  # CPU time of this process over training (steadier than wall-clock
    # on a shared machine; with one torch thread it is the compute actually spent)
    epochs: int = 0
    forward_passes: int = 0  # (prompt, response) sequences run through the model
    pairs_seen: int = 0  # comparisons trained on (counted once per epoch)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return len(self.loss)

    @property
    def train_seconds(self) -> float:
        return self.seconds[-1] if self.seconds else 0.0


def _check_records(records: Sequence[Mapping[str, Any]], name: str) -> None:
    if isinstance(records, Mapping) or not len(records):
        raise ValueError(f"{name} must be a non-empty list of ranked records")
    for i, record in enumerate(records):
        validate_ranked(record, where=f"{name}[{i}]")


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
    pairs = [p for r in records for p in ranked_to_pairs(r)]
    order = torch.randperm(len(pairs), generator=generator).tolist()
    return [[pairs[i] for i in order[s : s + batch_size]]
            for s in range(0, len(order), batch_size)]  # fmt: skip


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


def train_reward_model(
    train_records: Sequence[Mapping[str, Any]],
    mode: str = "kwise",
    epochs: int = 1,
    lr: float = 1e-4,
    batch_size: int = 8,
    seed: int = 0,
    model: nn.Module | None = None,
    encoder: Any = "minilm",
    pooling: str = "mean",
    max_length: int = 256,
    weight_decay: float = 0.0,
    max_grad_norm: float | None = 1.0,
    dropout: bool = True,
    max_steps: int | None = None,
    threads: int | None = None,
    show_progress: bool = True,
) -> tuple[nn.Module, RewardTrainHistory]:
    """Fine-tune a reward model (every parameter) on ranked records.

    Args:
        train_records: ranked records ``{"prompt", "ranked_outputs": [best, ..., worst], ...}``.
        mode: ``"kwise"`` (``batch_size`` prompts per step, all of a prompt's responses in one
            batch element, K-wise loss) or ``"pairs"`` (``batch_size`` pairs per step, drawn
            from all C(K, 2) pairs of all prompts, shuffled; Bradley-Terry loss).
        epochs: passes over the data.
        lr: AdamW's peak learning rate; it decays linearly to 0 over training (the Hugging Face
            Trainer's default schedule, so runs compare with :func:`train_with_trl`).
        batch_size: prompts (kwise) or pairs (pairs) per optimiser step.
        seed: seeds the head's initialisation, the shuffling and dropout.
        model: a model with a ``rewards(prompts, responses)`` method (default: a new
            :class:`RewardModel` from ``encoder``, ``pooling`` and ``max_length``).
        weight_decay, max_grad_norm: AdamW's decoupled weight decay; gradient-norm clipping
            (None: off). Defaults as in the Hugging Face Trainer.
        dropout: keep the encoder's dropout on in training (TRL's ``RewardTrainer`` turns it
            off by default).
        max_steps: stop after this many steps (the schedule still spans the full ``epochs``).
        threads: run with ``torch.set_num_threads(threads)`` (None: leave torch's setting).
        show_progress: a progress bar (also see ``RLHF_LESSONS_PROGRESS``).

    Returns:
        ``(model, history)``; the model is left in eval mode.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    _check_records(train_records, "train_records")
    seed_everything(seed)
    ctx = torch_threads(threads) if threads is not None else nullcontext()
    with ctx:
        if model is None:
            model = RewardModel(encoder, pooling=pooling, max_length=max_length)
        gen = torch.Generator().manual_seed(seed)
        make_batches, step_loss = {
            "kwise": (kwise_batches, kwise_step_loss),
            "pairs": (pair_batches, pairs_step_loss),
        }[mode]
        steps_per_epoch = len(make_batches(train_records, batch_size, torch.Generator()))
        total = steps_per_epoch * epochs
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1.0 - s / total))
        history = RewardTrainHistory(
            mode=mode,
            config=dict(mode=mode, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                        weight_decay=weight_decay, max_grad_norm=max_grad_norm,
                        dropout=dropout, max_steps=max_steps),
        )  # fmt: skip
        n_steps = total if max_steps is None else min(total, max_steps)
        bar = progress(total=n_steps, desc=f"reward model ({mode})", unit="step",
                       disable=not show_progress)  # fmt: skip
        model.train(dropout)
        start, cpu_start = time.perf_counter(), time.process_time()
        for epoch in range(epochs):
            if history.steps >= n_steps:
                break
            history.epochs = epoch + 1
            for batch in make_batches(train_records, batch_size, gen):
                if history.steps >= n_steps:
                    break
                loss, metrics, passes = step_loss(model, batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if max_grad_norm is not None:
                    nn.utils.clip_grad_norm_(params, max_grad_norm)
                opt.step()
                sched.step()
                history.loss.append(metrics["loss"])
                history.accuracy.append(metrics["accuracy"])
                history.seconds.append(time.perf_counter() - start)
                history.forward_passes += passes
                history.pairs_seen += int(metrics["pairs"])
                bar.update(1)
                bar.set_postfix(loss=f"{metrics['loss']:.3f}")
        history.cpu_seconds = time.process_time() - cpu_start
        bar.close()
    model.eval()
    return model, history


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

    def summary(self) -> dict[str, float]:
        return {"accuracy": self.accuracy, **{f"acc/{c}": a for c, a in self.per_category.items()},
                "kendall_tau": self.kendall_tau, "spearman": self.spearman}  # fmt: skip


def _rank_correlations(scores: Sequence[float]) -> tuple[float, float]:
    """Kendall's tau and Spearman's rho between scores and the true order (best first).

    A prompt whose scores are all equal carries no ranking: both are 0 (scipy gives NaN)."""
    from scipy.stats import kendalltau, spearmanr

    truth = -np.arange(len(scores))  # higher = better, like the scores
    s = np.asarray(scores, dtype=float)
    if np.all(s == s[0]):
        return 0.0, 0.0
    return float(kendalltau(s, truth).statistic), float(spearmanr(s, truth).statistic)


def evaluate_reward_model(
    model, records: Sequence[Mapping[str, Any]], batch_size: int = 32
) -> RewardEval:
    """Score every response of every record and compare with the human rankings.

    Args:
        model: anything with ``score(prompts, responses, batch_size) -> (N,)`` (a
            :class:`RewardModel`, :class:`CausalLMRewardModel` or :class:`HFSequenceScorer`).
        records: ranked records (with a ``"category"`` key for the per-category numbers;
            records without one count as ``"all"``).

    Returns:
        A :class:`RewardEval`: pairwise accuracy (a pair is right when the better response
        scores strictly higher), accuracy per category, mean Kendall tau / Spearman rho per
        prompt (K = 2 prompts give +-1), the counts and the scores.
    """
    _check_records(records, "records")
    prompts = [r["prompt"] for r in records for _ in r["ranked_outputs"]]
    responses = [o for r in records for o in r["ranked_outputs"]]
    flat = model.score(prompts, responses, batch_size=batch_size).tolist()
    right: dict[str, int] = defaultdict(int)
    count: dict[str, int] = defaultdict(int)
    scores, taus, rhos = [], [], []
    pos = 0
    for r in records:
        k = len(r["ranked_outputs"])
        s = flat[pos : pos + k]
        pos += k
        scores.append(s)
        cat = r.get("category", "all")
        for i, j in combinations(range(k), 2):
            right[cat] += s[i] > s[j]
            count[cat] += 1
        tau, rho = _rank_correlations(s)
        taus.append(tau)
        rhos.append(rho)
    n_pairs = sum(count.values())
    return RewardEval(
        accuracy=sum(right.values()) / n_pairs,
        per_category={c: right[c] / count[c] for c in sorted(count)},
        pairs_per_category={c: count[c] for c in sorted(count)},
        kendall_tau=float(np.mean(taus)),
        spearman=float(np.mean(rhos)),
        n_pairs=n_pairs,
        n_prompts=len(records),
        scores=scores,
    )


# --- TRL ----------------------------------------------------------------------------------------


@dataclass
class TRLRun:
    """A TRL ``RewardTrainer`` run: held-out results scored by us, and its cost."""

    evaluation: RewardEval
    train_seconds: float  # wall-clock of trainer.train()
    cpu_seconds: float  # CPU time of this process during trainer.train()
    loss: list[float]  # training loss per logged step (every step)
    steps: int
    scorer: HFSequenceScorer  # the trained model + tokenizer, with score()

    @property
    def accuracy(self) -> float:
        return self.evaluation.accuracy


def trl_pairs_dataset(records: Sequence[Mapping[str, Any]], tokenizer, max_length: int = 256):
    """All C(K, 2) pairs of the records, pre-tokenised for TRL's ``RewardTrainer``:
    ``chosen_ids`` / ``rejected_ids`` = the same ``[CLS] prompt [SEP] response [SEP]`` text-pair
    ids as :class:`RewardModel` uses. (Pre-tokenising also sidesteps TRL's add-EOS step, which
    fails on BERT tokenizers: they have no EOS token.)"""
    from datasets import Dataset

    pairs = [p for r in records for p in ranked_to_pairs(r)]

    def ids(prompt, response):
        return tokenizer(prompt, response, truncation="longest_first",
                         max_length=max_length)["input_ids"]  # fmt: skip

    return Dataset.from_dict(
        {
            "chosen_ids": [ids(p["prompt"], p["chosen"]) for p in pairs],
            "rejected_ids": [ids(p["prompt"], p["rejected"]) for p in pairs],
        }
    )


def _ProgressBar(show: bool):
    """A transformers TrainerCallback driving an :func:`rlhf_lessons.course.progress.progress` bar."""
    from transformers import TrainerCallback

    class ProgressBar(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.bar = progress(total=state.max_steps, desc="TRL RewardTrainer", unit="step",
                                disable=not show)  # fmt: skip

        def on_step_end(self, args, state, control, **kwargs):
            self.bar.update(1)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.bar.set_postfix(loss=f"{float(logs['loss']):.3f}")

        def on_train_end(self, args, state, control, **kwargs):
            self.bar.close()

    return ProgressBar()


def train_with_trl(
    train_records: Sequence[Mapping[str, Any]],
    heldout_records: Sequence[Mapping[str, Any]],
    epochs: int = 1,
    lr: float = 1e-4,
    batch_size: int = 8,
    seed: int = 0,
    max_length: int = 256,
    encoder: str | os.PathLike = "minilm",
    threads: int | None = None,
    show_progress: bool = True,
    **config_overrides: Any,
) -> TRLRun:
    """Train TRL's ``RewardTrainer`` on the pairs of ``train_records``; evaluate on held-out.

    The model is ``AutoModelForSequenceClassification.from_pretrained(<MiniLM>, num_labels=1)``:
    BERT's [CLS] -> pooler (dense + tanh) -> linear head. CPU settings from the stack notes:
    ``use_cpu=True``, ``bf16=False``, ``report_to="none"``; activation checkpointing off (TRL
    turns it on by default; it only saves memory, at ~30% more compute); no checkpoints saved.
    ``config_overrides`` go to ``RewardConfig``.

    Returns:
        A :class:`TRLRun` with our :func:`evaluate_reward_model` of the trained model on
        ``heldout_records`` and the wall-clock seconds of ``trainer.train()``.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from transformers.utils.notebook import NotebookProgressCallback
    from trl import RewardConfig, RewardTrainer

    from rlhf_lessons.models import resolve

    _check_records(train_records, "train_records")
    _check_records(heldout_records, "heldout_records")
    path = resolve(encoder)
    out_dir = tempfile.mkdtemp(prefix="rlhf-lessons-trl-")
    ctx = torch_threads(threads) if threads is not None else nullcontext()
    try:
        with ctx:
            seed_everything(seed)
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
            settings = dict(
                output_dir=out_dir, num_train_epochs=epochs, learning_rate=lr,
                per_device_train_batch_size=batch_size, seed=seed, data_seed=seed,
                use_cpu=True, bf16=False, report_to="none", activation_checkpointing=False,
                save_strategy="no", logging_steps=1, max_length=max_length,
                disable_tqdm=True,
                dataloader_num_workers=0,
            )  # fmt: skip
            settings.update(config_overrides)
            trainer = RewardTrainer(
                model=model,
                args=RewardConfig(**settings),
                train_dataset=trl_pairs_dataset(train_records, tokenizer, max_length),
                processing_class=tokenizer,
            )
            # TRL logs every step here (for the loss curve); its printer/progress callbacks
            # would print each log line, so they are replaced by our progress bar.
            for callback in (PrinterCallback, ProgressCallback, NotebookProgressCallback):
                trainer.remove_callback(callback)
            trainer.add_callback(_ProgressBar(show_progress))
            start, cpu_start = time.perf_counter(), time.process_time()
            result = trainer.train()
            seconds = time.perf_counter() - start
            cpu_seconds = time.process_time() - cpu_start
            model = trainer.model.eval()
            scorer = HFSequenceScorer(model, tokenizer, max_length)
            evaluation = evaluate_reward_model(scorer, heldout_records)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    loss = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    return TRLRun(
        evaluation=evaluation,
        train_seconds=seconds,
        cpu_seconds=cpu_seconds,
        loss=loss,
        steps=int(result.global_step),
        scorer=scorer,
    )
