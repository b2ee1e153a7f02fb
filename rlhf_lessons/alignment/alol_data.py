"""Offline RL data for A-LoL (lesson 11): the rewarded responses, the reference's value, the
advantages.

Paper: Baheti et al. 2024, "Leftover Lunch: Advantage-based Offline Reinforcement Learning for
Language Models", ICLR 2024, arXiv 2305.14718; code abaheti95/LoL-RL. The trainer is in
:mod:`rlhf_lessons.alignment.alol`, the objectives in :mod:`rlhf_lessons.alignment.alol_losses`;
this module prepares what they read:

1. **An offline dataset** (:func:`build_offline_dataset`): responses written once, by someone
   else, each with a scalar reward. Here: k completions of each review prefix, most sampled from
   the SFT model (reviews of both polarities) and a fraction from a *noisy* source (the same
   model at a high temperature: garbled text), all scored by the true reward (VADER).
2. **The reference's value** (:func:`fit_reference_value`): pi_ref samples completions of
   validation prompts, the reward scores them, and a small head on the frozen pi_ref's hidden
   states of the prompt learns V_ref(x) = E_{y ~ pi_ref}[R(x, y)] by mean squared error
   (:class:`PromptValueHead`, the repository's ``ValueHeadAttention``: a learned query attends
   over the prompt's states; a sigmoid keeps V in [0, 1]).
3. **Advantages** (:func:`prepare_offline_data`): A = R(x, y) - V_ref(x) for every training
   response: does this response beat what the reference would write for this prompt? The
   positive part is the "leftover lunch": A-LoL trains on it alone.

**Rewards are rescaled to [0, 1].** A-LoL's code expects a reward in [0, 1] (a sigmoid of a
reward model's score in the HH experiment) and its value head ends in a sigmoid. VADER's score
is in [-1, 1]; the data use (R + 1) / 2 (:data:`REWARD_RANGE`). Evaluation still reports VADER.

**Two differences from the repository**, both made for a small flat dataset: the HH script's
methods read only the *preferred* response of each HH pair (its ``all_priority`` reads both),
while here every response of the dataset is a training example (the data are not pairs, except
for the DPO baseline); and the value head's best epoch is chosen on held-out validation samples
rather than on the training MSE.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rlhf_lessons.alignment.rollouts import RewardFn, score_completions
from rlhf_lessons.course.seeding import seed_everything
from rlhf_lessons.lm import Batch, generate, token_logprobs_and_states, tokenize_pairs
from rlhf_lessons.review_world.true_reward import reward_of
from rlhf_lessons.training import eval_mode

REWARD_RANGE = (-1.0, 1.0)  # the true reward's (VADER's), rescaled to [0, 1] everywhere here
MAX_PROMPT_LENGTH = MAX_COMPLETION_LENGTH = 32  # tokens, when the data are tokenised

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
    """k responses to each prompt, scored by ``reward_fn``: each one, independently with
    probability ``noisy_fraction``, from the noisy writer (``model`` at ``noisy_temperature``),
    otherwise from ``model`` at temperature 1. Deterministic in ``seed``."""
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


def unit_rewards(rewards: torch.Tensor, reward_range: tuple[float, float] = REWARD_RANGE):
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
    """V(x) in [0, 1] from the frozen pi_ref's last hidden states of the prompt (see the module
    docstring). forward(states (B, T, H), mask (B, T), 1 on the prompt's states) -> (B,)."""

    def __init__(self, hidden_size: int, heads: int = 4):
        super().__init__()
        if hidden_size % heads:
            raise ValueError(f"hidden_size {hidden_size} must be divisible by heads {heads}")
        self.query = nn.Parameter(torch.randn(hidden_size) / math.sqrt(hidden_size))
        self.attention = nn.MultiheadAttention(hidden_size, heads, batch_first=True)
        self.out = nn.Linear(hidden_size, 1)

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
        return torch.sigmoid(self.out(pooled[:, 0]).squeeze(-1))


@torch.no_grad()
def reference_pass(ref, batch: Batch, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """pi_ref's per-token log-probs (B, T) and last hidden states (B, T, H) of ``batch``, in
    chunks (one forward pass each: :func:`rlhf_lessons.lm.token_logprobs_and_states`)."""
    device = next(ref.parameters()).device
    logps, states = [], []
    with eval_mode(ref):
        for i in range(0, len(batch), chunk):
            lp, st, _ = token_logprobs_and_states(ref, batch.rows(slice(i, i + chunk)).to(device))
            logps.append(lp.cpu())
            states.append(st.float().cpu())
    return torch.cat(logps), torch.cat(states)


@dataclass
class ValueFit:
    """What :func:`fit_value_head` / :func:`fit_reference_value` return."""

    head: PromptValueHead
    best_epoch: int
    train_mse: list[float]  # per epoch
    heldout_mse: list[float]  # per epoch, on the held-out validation samples
    constant_mse: float  # held-out MSE of predicting the training mean for every prompt
    constant: float  # the training samples' mean target (the constant predictor)


def fit_value_head(
    states: torch.Tensor,
    mask: torch.Tensor,
    targets: torch.Tensor,
    epochs: int = 20,
    lr: float = 1e-3,
    batch_size: int = 64,
    heads: int = 4,
    seed: int = 0,
    groups: Sequence[int] | None = None,
) -> ValueFit:
    """Fit a :class:`PromptValueHead` to ``targets`` (N,) from ``states`` (N, T, H) and
    ``mask`` (N, T) by MSE with AdamW (the repository: AdamW, MSE, the best epoch kept).

    A fifth of the prompts (whole ``groups``, so that samples of one prompt never sit on both
    sides) are held out; the epoch with the lowest held-out MSE is kept."""
    n = len(targets)
    if states.shape[0] != n or mask.shape[0] != n:
        raise ValueError(f"states {tuple(states.shape)}, mask {tuple(mask.shape)} and targets "
                         f"({n},) must have the same number of rows")  # fmt: skip
    groups = list(range(n)) if groups is None else list(groups)
    seed_everything(seed)
    ids = sorted(set(groups))
    random.Random(seed).shuffle(ids)
    held = set(ids[: max(1, int(len(ids) * 0.2))])
    test = torch.tensor([g in held for g in groups])
    if test.all():
        raise ValueError("too few prompts to hold some out: pass more validation prompts")
    tr, te = (~test).nonzero().squeeze(-1), test.nonzero().squeeze(-1)
    targets = targets.float()
    head = PromptValueHead(states.shape[-1], heads)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    best, best_epoch, train_mse, heldout_mse = None, 0, [], []

    @torch.no_grad()
    def mse(index: torch.Tensor) -> float:
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
    constant = targets[tr].mean()
    constant_mse = ((targets[te] - constant) ** 2).mean().item()
    return ValueFit(head, best_epoch, train_mse, heldout_mse, constant_mse, constant.item())


def _reference_samples(ref, tokenizer, prompts, n_samples, max_new_tokens, reward_fn, seed):
    """``n_samples`` completions of each prompt from ``ref``: their unit rewards (P * S,),
    ``ref``'s hidden states (P * S, T, H) and the prompt-state mask (P * S, T)."""
    expanded = [p for p in prompts for _ in range(n_samples)]
    gen = generate(ref, tokenizer, expanded, max_new_tokens=max_new_tokens, batch_size=256,
                   seed=seed)  # fmt: skip
    rewards = unit_rewards(score_completions(reward_fn, expanded, gen.completions))
    batch = tokenize_pairs(tokenizer, expanded, gen.completions, MAX_PROMPT_LENGTH,
                           MAX_COMPLETION_LENGTH)  # fmt: skip
    _, states = reference_pass(ref, batch)
    return rewards, states, prompt_state_mask(batch)


def fit_reference_value(
    ref,
    tokenizer,
    prompts: Sequence[str],
    n_samples: int = 2,
    max_new_tokens: int = 16,
    reward_fn: RewardFn = reward_of,
    seed: int = 0,
    **fit_kwargs,
) -> ValueFit:
    """V_ref(x) (the module docstring's step 2) from ``n_samples`` completions of each prompt;
    ``fit_kwargs`` go to :func:`fit_value_head`."""
    rewards, states, mask = _reference_samples(ref, tokenizer, list(prompts), n_samples,
                                               max_new_tokens, reward_fn, seed)  # fmt: skip
    groups = [i // n_samples for i in range(len(rewards))]
    return fit_value_head(states, mask, rewards, seed=seed, groups=groups, **fit_kwargs)


@torch.no_grad()
def value_error_gain(
    value: ValueFit,
    ref,
    tokenizer,
    prompts: Sequence[str],
    n_samples: int = 4,
    max_new_tokens: int = 16,
    reward_fn: RewardFn = reward_of,
    seed: int = 0,
) -> torch.Tensor:
    """How much better the value head predicts ``ref``'s reward than a constant, on fresh
    samples of other prompts (e.g. the test split): (P, S) of (R - c)^2 - (R - V(x))^2, with c
    the constant the fit compares with (``value.constant``). Positive: the head is better."""
    prompts = list(prompts)
    rewards, states, mask = _reference_samples(ref, tokenizer, prompts, n_samples,
                                               max_new_tokens, reward_fn, seed)  # fmt: skip
    v = value.head(states, mask)
    gain = (rewards - value.constant) ** 2 - (rewards - v) ** 2
    return gain.view(len(prompts), n_samples)


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
) -> OfflineRLData:
    """Tokenise the dataset and run pi_ref over it once: its log-probs of every response (for
    the importance weights) and its prompt states, from which ``value`` gives V_ref(x) and the
    advantages A = R - V_ref(x)."""
    batch = tokenize_pairs(tokenizer, dataset.prompts, dataset.completions, MAX_PROMPT_LENGTH,
                           MAX_COMPLETION_LENGTH)  # fmt: skip
    ref_logp, states = reference_pass(ref, batch)
    rewards = unit_rewards(dataset.rewards)
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
