"""Offline RL for language models with A-LoL: data, the reference's value, the trainer (lesson 11).

Paper: Baheti et al. 2024, "Leftover Lunch: Advantage-based Offline Reinforcement Learning for
Language Models", ICLR 2024, arXiv 2305.14718; code abaheti95/LoL-RL. The objectives are in
:mod:`rlhf_lessons.alignment.alol_losses`; this module is everything around them:

1. **An offline dataset** (:func:`build_offline_dataset`): responses written once, by someone
   else, each with a scalar reward. Here: k completions of each review prefix, most sampled from
   the SFT model (reviews of both polarities) and a fraction from a *noisy* source (the same
   model at a high temperature: garbled text), all scored by the true reward (VADER).
2. **The reference's value** (:func:`fit_reference_value`): pi_ref samples completions of held-out
   (validation) prompts, the reward scores them, and a small head on the frozen pi_ref's hidden
   states of the prompt learns V_ref(x) = E_{y ~ pi_ref}[R(x, y)] by mean squared error
   (:class:`PromptValueHead`, the repository's ``ValueHeadAttention``: a learned query attends
   over the prompt's states; a sigmoid keeps V in [0, 1]).
3. **Advantages** (:func:`prepare_offline_data`): A = R(x, y) - V_ref(x) for every training
   response: does this response beat what the reference would write for this prompt? The
   positive part is the "leftover lunch": A-LoL trains on it alone.
4. **Sampling** (:func:`sampling_weights`, :class:`BatchSampler`): ``good_priority`` draws a
   response with probability proportional to A+ (the advantage methods) or to R (``wbc``,
   ``r_gold``, ``r_lol``); ``uniform`` shuffles the whole dataset (``nll``). As in the
   repository, the advantage methods with ``good_priority`` run ``steps * positive fraction``
   steps (they see only the positive part of the data).
5. **The trainer** (:func:`train_alol`): one readable loop of Adam steps on the chosen objective,
   with pi_ref's log-probs of the data computed once beforehand (pi_ref is frozen).

**Rewards are rescaled to [0, 1].** A-LoL's code expects a reward in [0, 1] (a sigmoid of a
reward model's score in the HH experiment) and its value head ends in a sigmoid. VADER's score
is in [-1, 1]; the trainer uses (R + 1) / 2 (``reward_range``). Evaluation still reports VADER.

**Two differences from the repository**, both made for a small flat dataset: the HH script's
methods read only the *preferred* response of each HH pair (its ``all_priority`` reads both),
while here every response of the dataset is a training example (the data are not pairs, except
for the DPO baseline); and the value head's best epoch is chosen on held-out validation samples
rather than on the training MSE.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from rlhf_lessons.alignment.alol_losses import (
    ADVANTAGE_METHODS,
    DEFAULT_CLIP_EPS,
    DEFAULT_KL_BETA,
    DEFAULT_MIN_PROB,
    METHODS,
    REWARD_METHODS,
    _check_eps,
    alol_objective,
)
from rlhf_lessons.alignment.rollouts import RewardFn, score_completions
from rlhf_lessons.course.device import torch_threads
from rlhf_lessons.course.progress import progress
from rlhf_lessons.course.seeding import seed_everything
from rlhf_lessons.lm import (
    Batch,
    generate,
    token_logprobs,
    token_logprobs_and_states,
    tokenize_pairs,
)
from rlhf_lessons.review_world.true_reward import reward_of

SAMPLINGS = ("auto", "uniform", "good_priority")


# --- 1. The offline dataset ------------------------------------------------------------------


@dataclass
class OfflineDataset:
    """N rewarded responses: ``prompts[i]`` + ``completions[i]`` scored ``rewards[i]`` (the true
    reward, (N,) float), written by ``sources[i]`` ("sft" or "noisy"); ``groups[i]`` numbers
    the prompt (the k responses of one prompt share it)."""

    prompts: list[str]
    completions: list[str]
    rewards: torch.Tensor
    sources: list[str]
    groups: list[int]

    def __post_init__(self) -> None:
        n = len(self.prompts)
        sizes = {"completions": len(self.completions), "rewards": len(self.rewards),
                 "sources": len(self.sources), "groups": len(self.groups)}  # fmt: skip
        bad = {k: v for k, v in sizes.items() if v != n}
        if bad:
            raise ValueError(f"OfflineDataset has {n} prompts but {bad}: one entry per response")
        if n == 0:
            raise ValueError("OfflineDataset is empty")

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, index: Sequence[int]) -> OfflineDataset:
        index = list(index)
        return OfflineDataset([self.prompts[i] for i in index],
                              [self.completions[i] for i in index], self.rewards[index],
                              [self.sources[i] for i in index],
                              [self.groups[i] for i in index])  # fmt: skip


def build_offline_dataset(
    model,
    tokenizer,
    prompts: Sequence[str],
    k: int = 2,
    noisy_fraction: float = 0.25,
    noisy_temperature: float = 2.0,
    max_new_tokens: int = 16,
    seed: int = 0,
    reward_fn: RewardFn = reward_of,
    batch_size: int = 64,
) -> OfflineDataset:
    """k responses to each prompt, of mixed quality, scored by ``reward_fn``.

    Each response is, independently with probability ``noisy_fraction``, sampled from ``model``
    at ``noisy_temperature`` (a noisy writer: garbled text) and otherwise at temperature 1 (the
    SFT model's own reviews, both polarities). Deterministic in ``seed``."""
    if k < 1:
        raise ValueError(f"k (responses per prompt) must be >= 1, got {k}")
    if not 0.0 <= noisy_fraction <= 1.0:
        raise ValueError(f"noisy_fraction must be in [0, 1], got {noisy_fraction}")
    if noisy_temperature <= 0:
        raise ValueError(f"noisy_temperature must be > 0, got {noisy_temperature}")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("prompts is empty: pass at least one prompt")
    rng = random.Random(seed)
    slots = [(g, p) for g, p in enumerate(prompts) for _ in range(k)]
    noisy = [rng.random() < noisy_fraction for _ in slots]
    completions: list[str] = [""] * len(slots)
    for flag, temperature, offset in ((False, 1.0, 0), (True, noisy_temperature, 1)):
        where = [i for i, f in enumerate(noisy) if f == flag]
        if where:
            gen = generate(model, tokenizer, [slots[i][1] for i in where],
                           max_new_tokens=max_new_tokens, temperature=temperature,
                           batch_size=batch_size, seed=seed + offset)  # fmt: skip
            for i, c in zip(where, gen.completions, strict=True):
                completions[i] = c
    texts = [p for _, p in slots]
    rewards = score_completions(reward_fn, texts, completions)
    return OfflineDataset(texts, completions, rewards, ["noisy" if f else "sft" for f in noisy],
                          [g for g, _ in slots])  # fmt: skip


def dpo_pairs(data: OfflineDataset, min_gap: float = 1e-6) -> list[dict]:
    """Preference pairs from the same data for DPO: per prompt, its best response (chosen) and
    its worst (rejected) by reward. Empty responses are left out; prompts whose responses tie
    (within ``min_gap``) or repeat one text cannot be ordered and give no pair."""
    by_group: dict[int, list[int]] = {}
    for i, g in enumerate(data.groups):
        by_group.setdefault(g, []).append(i)
    pairs = []
    for rows in by_group.values():
        rows = [i for i in rows if data.completions[i].strip()]  # a pair needs two texts
        if len(rows) < 2:
            continue
        best = max(rows, key=lambda i: data.rewards[i].item())
        worst = min(rows, key=lambda i: data.rewards[i].item())
        gap = (data.rewards[best] - data.rewards[worst]).item()
        if gap < min_gap or data.completions[best].strip() == data.completions[worst].strip():
            continue
        pairs.append({"prompt": data.prompts[best], "chosen": data.completions[best],
                      "rejected": data.completions[worst]})  # fmt: skip
    return pairs


def unit_rewards(rewards: torch.Tensor, reward_range: tuple[float, float] = (-1.0, 1.0)):
    """Rescale rewards from ``reward_range`` = (low, high) to [0, 1]: (R - low) / (high - low).
    Raises when a reward falls outside the range (a wrong range would give weights < 0)."""
    low, high = reward_range
    if not high > low:
        raise ValueError(f"reward_range must be (low, high) with high > low, got {reward_range}")
    r = torch.as_tensor(rewards, dtype=torch.float32)
    if (r < low - 1e-6).any() or (r > high + 1e-6).any():
        raise ValueError(
            f"rewards lie in [{r.min().item():.3g}, {r.max().item():.3g}], outside reward_range "
            f"{reward_range}: pass the reward's true range"
        )
    return ((r - low) / (high - low)).clamp(0.0, 1.0)


# --- 2. The reference policy's value -----------------------------------------------------------


def prompt_state_mask(batch: Batch) -> torch.Tensor:
    """(B, T) mask of the columns of :func:`rlhf_lessons.lm.token_logprobs_and_states`' states
    that hold the prompt's hidden states. Column t holds the state at position t - 1, so the
    prompt's positions, shifted one column right."""
    prompt = batch.attention_mask * (1 - batch.completion_mask)
    return F.pad(prompt[:, :-1], (1, 0))


class PromptValueHead(nn.Module):
    """V(x) from the frozen pi_ref's last hidden states of the prompt: a learned query attends
    over them (multi-head attention, the repository's ``ValueHeadAttention``), a linear layer
    and a sigmoid give a value in [0, ``max_value``].

    forward(states (B, T, H), mask (B, T)) -> (B,); ``mask`` is 1 on the prompt's states."""

    def __init__(self, hidden_size: int, heads: int = 4, max_value: float = 1.0):
        super().__init__()
        if hidden_size % heads:
            raise ValueError(f"hidden_size {hidden_size} must be divisible by heads {heads}")
        self.query = nn.Parameter(torch.randn(hidden_size) / math.sqrt(hidden_size))
        self.attention = nn.MultiheadAttention(hidden_size, heads, batch_first=True)
        self.out = nn.Linear(hidden_size, 1)
        self.max_value = max_value

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if states.ndim != 3 or mask.shape != states.shape[:2]:
            raise ValueError(
                f"states must be (B, T, H) and mask (B, T), got {tuple(states.shape)} and "
                f"{tuple(mask.shape)}"
            )
        if (mask.sum(-1) == 0).any():
            raise ValueError("a row of mask has no prompt state: every prompt needs a token")
        query = self.query.expand(states.shape[0], 1, -1)
        pooled, _ = self.attention(query, states, states, key_padding_mask=~mask.bool(),
                                   need_weights=False)  # fmt: skip
        return torch.sigmoid(self.out(pooled[:, 0]).squeeze(-1)) * self.max_value


@torch.no_grad()
def reference_pass(ref, batch: Batch, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """pi_ref's per-token log-probs (B, T) and last hidden states (B, T, H) of ``batch``, in
    chunks (one forward pass each: :func:`rlhf_lessons.lm.token_logprobs_and_states`)."""
    was_training = ref.training
    ref.eval()
    device = next(ref.parameters()).device
    logps, states = [], []
    try:
        for i in range(0, len(batch), chunk):
            lp, st, _ = token_logprobs_and_states(ref, batch.rows(slice(i, i + chunk)).to(device))
            logps.append(lp.cpu())
            states.append(st.float().cpu())
    finally:
        ref.train(was_training)
    return torch.cat(logps), torch.cat(states)


@dataclass
class ValueFit:
    """What :func:`fit_value_head` / :func:`fit_reference_value` return."""

    head: PromptValueHead
    best_epoch: int
    train_mse: list[float]  # per epoch
    heldout_mse: list[float]  # per epoch, on the held-out validation samples
    constant_mse: float  # held-out MSE of predicting the training mean for every prompt
    mean_reward: float  # the reference's mean (unit-scaled) reward on the validation samples
    n_samples: int


def fit_value_head(
    states: torch.Tensor,
    mask: torch.Tensor,
    targets: torch.Tensor,
    epochs: int = 20,
    lr: float = 1e-3,
    batch_size: int = 64,
    heldout_fraction: float = 0.2,
    heads: int = 4,
    seed: int = 0,
    groups: Sequence[int] | None = None,
) -> ValueFit:
    """Fit a :class:`PromptValueHead` to ``targets`` (N,) from ``states`` (N, T, H) and
    ``mask`` (N, T) by MSE with AdamW (the repository: AdamW, MSE, the best epoch kept).

    ``heldout_fraction`` of the prompts (whole ``groups``, so that samples of one prompt never
    sit on both sides) are held out; the epoch with the lowest held-out MSE is kept."""
    n = len(targets)
    if states.shape[0] != n or mask.shape[0] != n:
        raise ValueError(f"states {tuple(states.shape)}, mask {tuple(mask.shape)} and targets "
                         f"({n},) must have the same number of rows")  # fmt: skip
    if not 0 < heldout_fraction < 1:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    groups = list(range(n)) if groups is None else list(groups)
    seed_everything(seed)
    ids = sorted(set(groups))
    random.Random(seed).shuffle(ids)
    held = set(ids[: max(1, int(len(ids) * heldout_fraction))])
    test = torch.tensor([g in held for g in groups])
    if test.all():
        raise ValueError("too few prompts to hold some out: pass more validation prompts")
    tr, te = (~test).nonzero().squeeze(-1), test.nonzero().squeeze(-1)
    targets = targets.float()
    head = PromptValueHead(states.shape[-1], heads)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    best, best_epoch, train_mse, heldout_mse = None, 0, [], []

    def mse(index: torch.Tensor) -> float:
        with torch.no_grad():
            return F.mse_loss(head(states[index], mask[index]), targets[index]).item()

    for epoch in range(1, epochs + 1):
        head.train()
        for idx in tr[torch.randperm(len(tr), generator=generator)].split(batch_size):
            loss = F.mse_loss(head(states[idx], mask[idx]), targets[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        head.eval()
        train_mse.append(mse(tr))
        heldout_mse.append(mse(te))
        if best is None or heldout_mse[-1] < min(heldout_mse[:-1], default=math.inf):
            best, best_epoch = copy.deepcopy(head.state_dict()), epoch
    head.load_state_dict(best)
    head.eval().requires_grad_(False)
    constant = ((targets[te] - targets[tr].mean()) ** 2).mean().item()
    return ValueFit(head, best_epoch, train_mse, heldout_mse, constant,
                    targets.mean().item(), n)  # fmt: skip


def fit_reference_value(
    ref,
    tokenizer,
    prompts: Sequence[str],
    n_samples: int = 2,
    max_new_tokens: int = 16,
    reward_fn: RewardFn = reward_of,
    reward_range: tuple[float, float] = (-1.0, 1.0),
    seed: int = 0,
    max_prompt_length: int | None = 32,
    max_completion_length: int | None = 32,
    **fit_kwargs,
) -> ValueFit:
    """V_ref(x): sample ``n_samples`` completions of each (validation) prompt from ``ref``,
    reward them (rescaled to [0, 1]), and fit :func:`fit_value_head` on ``ref``'s prompt
    states. ``fit_kwargs`` go to :func:`fit_value_head`."""
    prompts = list(prompts)
    expanded = [p for p in prompts for _ in range(n_samples)]
    gen = generate(ref, tokenizer, expanded, max_new_tokens=max_new_tokens, batch_size=64,
                   seed=seed)  # fmt: skip
    rewards = unit_rewards(score_completions(reward_fn, expanded, gen.completions), reward_range)
    batch = tokenize_pairs(tokenizer, expanded, gen.completions, max_prompt_length,
                           max_completion_length)  # fmt: skip
    _, states = reference_pass(ref, batch)
    groups = [i // n_samples for i in range(len(expanded))]
    return fit_value_head(states, prompt_state_mask(batch), rewards, seed=seed, groups=groups,
                          **fit_kwargs)  # fmt: skip


# --- 3. The training data: reference log-probs, rewards, advantages ---------------------------


@dataclass
class OfflineRLData:
    """Everything the trainer reads, one row per response of an :class:`OfflineDataset`:
    ``batch`` (N rows, right padded), ``ref_logp`` (N, T) pi_ref's token log-probs,
    ``rewards`` (N,) in [0, 1], ``values`` and ``advantages`` (N,) (None without a value)."""

    dataset: OfflineDataset
    batch: Batch
    ref_logp: torch.Tensor
    rewards: torch.Tensor
    values: torch.Tensor | None = None
    advantages: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.batch)

    @property
    def positive(self) -> torch.Tensor:
        """(N,) bool: the leftover lunch, responses with A > 0."""
        if self.advantages is None:
            raise ValueError("this data has no advantages: prepare it with a value (fit_value)")
        return self.advantages > 0

    @property
    def positive_fraction(self) -> float:
        return self.positive.float().mean().item()


def prepare_offline_data(
    ref,
    tokenizer,
    dataset: OfflineDataset,
    value: ValueFit | PromptValueHead | None = None,
    reward_range: tuple[float, float] = (-1.0, 1.0),
    max_prompt_length: int | None = 32,
    max_completion_length: int | None = 32,
) -> OfflineRLData:
    """Tokenise the dataset and run pi_ref over it once: its log-probs of every response (for
    the importance weights) and its prompt states, from which ``value`` gives V_ref(x) and the
    advantages A = R - V_ref(x)."""
    batch = tokenize_pairs(tokenizer, dataset.prompts, dataset.completions, max_prompt_length,
                           max_completion_length)  # fmt: skip
    ref_logp, states = reference_pass(ref, batch)
    rewards = unit_rewards(dataset.rewards, reward_range)
    values = advantages = None
    if value is not None:
        head = value.head if isinstance(value, ValueFit) else value
        mask = prompt_state_mask(batch)
        with torch.no_grad():
            values = torch.cat([head(states[i : i + 512], mask[i : i + 512])
                                for i in range(0, len(batch), 512)])  # fmt: skip
        advantages = rewards - values
    return OfflineRLData(dataset, batch, ref_logp * batch.completion_mask, rewards, values,
                         advantages)  # fmt: skip


# --- 4. Sampling -----------------------------------------------------------------------------


def sampling_weights(method: str, sampling: str, data: OfflineRLData) -> torch.Tensor | None:
    """Per-response sampling weights, or None for uniform shuffling.

    ``good_priority``: the advantage methods draw in proportion to A+ = max(A, 0) (responses
    with A <= 0 are never drawn); ``wbc``, ``r_gold`` and ``r_lol`` in proportion to the reward
    R in [0, 1]. ``nll`` has no priority (it clones the data as they are)."""
    if sampling == "uniform":
        return None
    if sampling != "good_priority":
        raise ValueError(f"sampling must be 'uniform' or 'good_priority', got {sampling!r}")
    if method in ADVANTAGE_METHODS:
        if data.advantages is None:
            raise ValueError(f"{method} with good_priority needs advantages: prepare_offline_data "
                             "with a value (fit_reference_value)")  # fmt: skip
        weights = data.advantages.clamp(min=0.0)
    elif method in REWARD_METHODS:
        weights = data.rewards.clone()
    else:
        raise ValueError(f"method {method!r} has no priority sampling: use sampling='uniform'")
    if not weights.sum() > 0:
        raise ValueError(f"every {method} sampling weight is 0: no response to train on")
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

    def __next__(self) -> torch.Tensor:
        if self.weights is not None:
            return torch.multinomial(self.weights, self.batch_size, replacement=True,
                                     generator=self.generator)  # fmt: skip
        while len(self._queue) < self.batch_size:
            self._queue = torch.cat([self._queue, torch.randperm(self.n, generator=self.generator)])
        idx, self._queue = self._queue[: self.batch_size], self._queue[self.batch_size :]
        return idx


# --- 5. The trainer ----------------------------------------------------------------------------


@dataclass
class ALoLConfig:
    """Settings of :func:`train_alol` (the repository's HH defaults in brackets)."""

    method: str = "a_lol"  # one of alol_losses.METHODS
    sampling: str = "auto"  # "auto" (nll: uniform, others: good_priority), "uniform", ...
    steps: int = 100  # optimizer steps before the positive-fraction scaling [9000]
    scale_steps: bool = True  # advantage methods + good_priority: steps * positive fraction
    batch_size: int = 32  # responses per step [4 x 4 accumulation]
    lr: float = 1e-3  # Adam, constant after warm-up; a 0.5M-parameter model [2e-4, LoRA]
    warmup_steps: int = 0  # [300]
    max_grad_norm: float = 1.0  # [0.3]
    clip_eps: float | None = DEFAULT_CLIP_EPS  # importance-weight clip [ppo_clip 0.9]
    kl_beta: float = DEFAULT_KL_BETA  # a_lol_kl only [kl_beta 0]
    min_prob: float = DEFAULT_MIN_PROB  # r_gold's lower bound on token probabilities [0.1]
    threads: int | None = 1  # torch threads while training (None: leave as is)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"ALoLConfig.method must be one of {METHODS}, got {self.method!r}")
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"ALoLConfig.sampling must be one of {SAMPLINGS}, got "
                             f"{self.sampling!r}")  # fmt: skip
        if self.sampling == "auto":
            self.sampling = "uniform" if self.method == "nll" else "good_priority"
        if self.method == "nll" and self.sampling != "uniform":
            raise ValueError("ALoLConfig: nll clones the data as they are; use sampling='uniform'")
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"ALoLConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0 or self.max_grad_norm <= 0 or self.warmup_steps < 0:
            raise ValueError("ALoLConfig needs lr > 0, max_grad_norm > 0 and warmup_steps >= 0")
        _check_eps(self.clip_eps)

    def total_steps(self, positive_fraction: float = 1.0) -> int:
        """Steps to run: ``steps``, times the positive fraction for the advantage methods with
        ``good_priority`` and ``scale_steps`` (the repository; at least 1)."""
        if (
            self.scale_steps
            and self.method in ADVANTAGE_METHODS
            and (self.sampling == "good_priority")
        ):
            return max(1, int(self.steps * positive_fraction))
        return self.steps


@dataclass
class ALoLHistory:
    """One entry per optimizer step in each list (the minibatch's means)."""

    config: dict
    n_examples: int = 0
    positive_fraction: float = math.nan  # of the data (NaN without advantages)
    loss: list[float] = field(default_factory=list)
    nll: list[float] = field(default_factory=list)  # mean NLL(y) of the batch, nats
    weight: list[float] = field(default_factory=list)  # mean multiplier of NLL(y)
    weight_min: list[float] = field(default_factory=list)  # smallest importance weight (NaN:
    weight_max: list[float] = field(default_factory=list)  # the objective has none)
    clipfrac: list[float] = field(default_factory=list)  # importance weights the clip changed
    reward: list[float] = field(default_factory=list)  # mean unit reward of the batch's data
    advantage: list[float] = field(default_factory=list)  # mean A of the batch (NaN: none)
    grad_norm: list[float] = field(default_factory=list)  # before clipping
    seconds: list[float] = field(default_factory=list)  # training wall-clock since the start
    evaluations: list[dict] = field(default_factory=list)  # {"step", "examples", **eval_fn()}

    @property
    def steps(self) -> int:
        return len(self.loss)


def train_alol(
    policy,
    data: OfflineRLData,
    config: ALoLConfig | None = None,
    eval_fn: Callable[[nn.Module], dict] | None = None,
    eval_every: int = 0,
    show_progress: bool = True,
) -> ALoLHistory:
    """Fine-tune ``policy`` (a causal LM, changed in place; typically ``copy.deepcopy(sft)``)
    on the offline ``data`` with one of the eight objectives.

    Each step draws ``batch_size`` responses (:class:`BatchSampler` with
    :func:`sampling_weights`), computes the policy's token log-probs of them, the objective
    (:func:`rlhf_lessons.alignment.alol_losses.alol_objective`, with pi_ref's log-probs precomputed in
    ``data``), and takes an Adam step with clipped gradients. ``eval_fn(policy)`` runs every
    ``eval_every`` steps (when > 0) and at the end; its time is not counted (step 0 is the
    starting model: evaluate it once yourself rather than once per run).
    """
    cfg = config or ALoLConfig()
    params = [p for p in policy.parameters() if p.requires_grad]
    if not params:
        raise ValueError(
            "policy has no parameter with requires_grad=True (copied from a frozen model?): "
            "call policy.requires_grad_(True) before training"
        )
    if cfg.method in ADVANTAGE_METHODS and data.advantages is None:
        raise ValueError(f"{cfg.method} needs advantages: prepare_offline_data(..., value=...)")
    history = ALoLHistory(config=asdict(cfg), n_examples=len(data))
    positive = 1.0
    if data.advantages is not None:
        positive = history.positive_fraction = data.positive_fraction
    total = cfg.total_steps(positive)
    threads = torch_threads(cfg.threads) if cfg.threads else contextlib.nullcontext()
    with threads:
        seed_everything(cfg.seed)
        weights = sampling_weights(cfg.method, cfg.sampling, data)
        sampler = BatchSampler(len(data), cfg.batch_size, weights, cfg.seed)
        policy.eval()  # dropout off: the log-probs must be the model's, not a noisy version
        optimizer = torch.optim.Adam(params, lr=cfg.lr)
        warm = max(cfg.warmup_steps, 1)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warm))
        device = next(policy.parameters()).device
        elapsed, step = 0.0, 0

        def evaluate() -> None:
            if eval_fn is not None:
                history.evaluations.append(
                    {"step": step, "examples": step * cfg.batch_size, **eval_fn(policy)}
                )
                policy.eval()

        bar = progress(range(total), desc=cfg.method, disable=not show_progress)
        for _ in bar:
            t0 = time.perf_counter()
            idx = next(sampler)
            mb = data.batch.rows(idx).trimmed().to(device)
            width = mb.input_ids.shape[1]
            logp = token_logprobs(policy, mb)
            adv = None if data.advantages is None else data.advantages[idx].to(device)
            loss, m = alol_objective(
                cfg.method, logp, mb.completion_mask, data.ref_logp[idx, :width].to(device),
                data.rewards[idx].to(device), adv, cfg.clip_eps, cfg.kl_beta, cfg.min_prob,
            )  # fmt: skip
            optimizer.zero_grad()
            loss.backward()
            norm = nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            schedule.step()
            step += 1
            elapsed += time.perf_counter() - t0

            history.loss.append(m["loss"])
            history.nll.append(m["nll"])
            history.weight.append(m["weight"])
            history.weight_min.append(m["weight_min"])
            history.weight_max.append(m["weight_max"])
            history.clipfrac.append(m["clipfrac"])
            history.reward.append(data.rewards[idx].mean().item())
            history.advantage.append(
                math.nan if data.advantages is None else data.advantages[idx].mean().item()
            )
            history.grad_norm.append(float(norm))
            history.seconds.append(elapsed)
            bar.set_postfix(loss=f"{m['loss']:.3f}", nll=f"{m['nll']:.2f}")
            if eval_every and step % eval_every == 0 and step != total:
                evaluate()
        bar.close()
        evaluate()
    return history
