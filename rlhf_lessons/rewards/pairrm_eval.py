"""Measuring a PairRanker (lesson 08) through ``Blender``'s public API.

- :func:`compare_all`: each prompt's N x N matrix of ordered comparisons (the cost of
  ``Blender.rank``), scored by :func:`full_matrix_picks` with llm-blender's "max_logits" rule;
- :func:`pair_eval`: held-out pairwise accuracy and **position bias** read off that matrix (one
  order alone is what a careless benchmark reports; ``[A,B]+[B,A]`` is antisymmetric);
- :func:`top_by_bubble`: ``Blender.get_best_of_n``'s bubble pass, 2(N-1) passes for the top pick;
- :func:`memoised_comparisons`: each ordered comparison encoded once, so after
  :func:`compare_all` the bubble pass costs no forward pass (:func:`count_comparisons` counts);
- :class:`PlantedRanker`: known skill and left-slot bias, to check :func:`pair_eval` first;
- :func:`sample_candidates`: N samples per prompt with their true rewards, for best-of-N.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from itertools import combinations, permutations
from typing import Any

import numpy as np
import torch

from rlhf_lessons.rewards.pairrm import check_records, max_logits_scores

# --- counting and memoising the ranker's comparisons ---------------------------------------------


@contextmanager
def _wrapped_forward(ranker, wrap: Callable) -> Iterator[None]:
    """Replace ``ranker._forward`` (llm-blender's one call that encodes a batch of ordered
    comparisons, used by ``compare``, ``rank`` and the bubble pass) by ``wrap(previous)`` for the
    duration; wrappers nest, and the previous one is put back on exit."""
    own = "_forward" in vars(ranker)
    previous = ranker._forward
    ranker._forward = wrap(previous)
    try:
        yield
    finally:
        if own:
            ranker._forward = previous
        else:
            del ranker._forward


@contextmanager
def count_comparisons(ranker) -> Iterator[dict[str, int]]:
    """Count the ordered comparisons asked of ``ranker`` (rows given to its ``_forward``), whether
    they are then encoded or looked up (:func:`memoised_comparisons`). Yields a dict whose
    ``"sequences"`` grows."""
    counter = {"sequences": 0}

    def wrap(previous):
        def _forward(source_ids, *args, **kwargs):
            counter["sequences"] += int(source_ids.shape[0])
            return previous(source_ids, *args, **kwargs)

        return _forward

    with _wrapped_forward(ranker, wrap):
        yield counter


def _row_key(ids: torch.Tensor, mask: torch.Tensor) -> tuple[int, ...]:
    return tuple(ids[mask.bool()].tolist())  # the tokens without the batch's padding


@contextmanager
def memoised_comparisons(ranker) -> Iterator[dict[str, int]]:
    """While on, each ordered comparison (prompt, left, right: their tokens without padding) is
    encoded once; asked again, its logit is looked up. Evaluation only (calls with quality scores,
    i.e. training with a loss, pass through untouched). The logits are the ranker's own, as
    computed in the batch that first asked for them (a comparison's logit depends on its batch
    only by float rounding). Yields ``{"asked", "encoded"}`` counts of comparisons."""
    memo: dict[tuple, torch.Tensor] = {}
    stats = {"asked": 0, "encoded": 0}

    def wrap(previous):
        def _forward(source_ids, source_mask, ids1, mask1, ids2, mask2, scores1=None,
                     scores2=None):  # fmt: skip
            if scores1 is not None or scores2 is not None:
                return previous(source_ids, source_mask, ids1, mask1, ids2, mask2, scores1, scores2)
            keys = [(_row_key(source_ids[b], source_mask[b]), _row_key(ids1[b], mask1[b]),
                     _row_key(ids2[b], mask2[b])) for b in range(source_ids.shape[0])]  # fmt: skip
            new = [b for b, key in enumerate(keys) if key not in memo]
            if new:
                rows = torch.tensor(new, device=source_ids.device)
                out = previous(source_ids[rows], source_mask[rows], ids1[rows], mask1[rows],
                               ids2[rows], mask2[rows])  # fmt: skip
                for b, logit in zip(new, out["logits"], strict=True):
                    memo.setdefault(keys[b], logit)
            stats["asked"] += len(keys)
            stats["encoded"] += len(new)
            logits = torch.stack([memo[key] for key in keys])
            return {"loss": torch.zeros((), device=logits.device), "logits": logits}

        return _forward

    with _wrapped_forward(ranker, wrap):
        yield stats


@dataclass
class Comparisons:
    """Every ordered comparison of each prompt's candidates."""

    prompts: list[str]
    candidates: list[list[str]]
    logits: list[np.ndarray]  # per prompt (N, N); [i, j]: "i (left) beats j (right)"; diag NaN
    sequences: int  # forward passes spent: sum of N(N-1)


def compare_all(
    blender, prompts: Sequence[str], candidates: Sequence[Sequence[str]], batch_size: int = 16
) -> Comparisons:
    """All N(N-1) ordered comparisons of each prompt's candidates, in one ``blender.compare``
    call with ``mode="[A,B]"`` (the logit that A, on the left, is better). The comparisons go to
    ``compare`` shortest first, so that each batch holds sequences of similar length (a batch is
    padded to its longest); the logits are put back in order."""
    if len(prompts) != len(candidates) or not prompts:
        raise ValueError(f"got {len(prompts)} prompts and {len(candidates)} candidate lists")
    jobs = [(p, i, j) for p, c in enumerate(candidates) for i, j in permutations(range(len(c)), 2)]
    if not jobs:
        raise ValueError("every prompt has fewer than 2 candidates: nothing to compare")
    jobs.sort(
        key=lambda job: (
            len(prompts[job[0]]) + len(candidates[job[0]][job[1]]) + len(candidates[job[0]][job[2]])
        )
    )  # fmt: skip  (stable: ties keep their order)
    ranker = getattr(blender, "ranker", None)  # a PlantedRanker has none: nothing to count
    counting = (
        count_comparisons(ranker) if ranker is not None else nullcontext({"sequences": len(jobs)})
    )
    with counting as seen:
        flat = blender.compare([prompts[p] for p, _, _ in jobs],
                               [candidates[p][i] for p, i, _ in jobs],
                               [candidates[p][j] for p, _, j in jobs], batch_size=batch_size,
                               return_logits=True, mode="[A,B]", disable_tqdm=True)  # fmt: skip
    logits = [np.full((len(c), len(c)), np.nan) for c in candidates]
    for (p, i, j), value in zip(jobs, np.asarray(flat, dtype=float), strict=True):
        logits[p][i, j] = value
    return Comparisons(list(prompts), [list(c) for c in candidates], logits, seen["sequences"])


def full_matrix_picks(comparisons: Comparisons) -> np.ndarray:
    """Each prompt's top candidate by llm-blender's "max_logits" scores of its full matrix
    (what ``Blender.rank`` does): (P,) indices."""
    return np.array([int(max_logits_scores(np.nan_to_num(m)).argmax()) for m in comparisons.logits])


@dataclass
class PairEval:
    """Held-out pairwise quality of a pairwise ranker, and its position bias.

    ``ab[p]`` is the logit with the better response of pair p on the left ("left wins" > 0),
    ``ba[p]`` the logit with it on the right (> 0 means the ranker prefers the worse one, now on
    the left). ``[A,B]+[B,A]`` compares on ab - ba.
    """

    ab: np.ndarray
    ba: np.ndarray
    categories: list[str]

    @property
    def both(self) -> np.ndarray:
        return self.ab - self.ba

    @property
    def n_pairs(self) -> int:
        return len(self.ab)

    @property
    def correct(self) -> np.ndarray:
        """Per pair: ``[A,B]+[B,A]`` orders it right."""
        return self.both > 0

    @property
    def accuracy(self) -> float:
        """Accuracy of ``[A,B]+[B,A]``: both orders, averaged."""
        return float(np.mean(self.correct))

    @property
    def accuracy_better_left(self) -> float:
        """Accuracy of ``[A,B]`` alone when the better response is on the left."""
        return float(np.mean(self.ab > 0))

    @property
    def accuracy_better_right(self) -> float:
        """Accuracy of ``[A,B]`` alone when the better response is on the right."""
        return float(np.mean(self.ba < 0))

    @property
    def accuracy_one_order(self) -> float:
        """Accuracy of ``[A,B]`` alone with the pair shown in a random order (each pair counted
        half in each order: the mean of the two above)."""
        return 0.5 * (self.accuracy_better_left + self.accuracy_better_right)

    @property
    def inconsistent(self) -> float:
        """Fraction of pairs whose verdict flips with the order (both orders say "left wins", or
        both say "right wins")."""
        return float(np.mean(np.sign(self.ab) == np.sign(self.ba)))

    @property
    def left_bias(self) -> float:
        """Mean of (ab + ba) / 2: the logit the left slot gets for being on the left (0 for an
        order-blind ranker)."""
        return float(np.mean((self.ab + self.ba) / 2))

    def per_category(self) -> dict[str, float]:
        cats = np.array(self.categories)
        return {c: float(np.mean(self.correct[cats == c])) for c in sorted(set(self.categories))}

    def summary(self) -> dict[str, float]:
        return {
            "accuracy [A,B]+[B,A]": self.accuracy,
            "accuracy [A,B], better left": self.accuracy_better_left,
            "accuracy [A,B], better right": self.accuracy_better_right,
            "accuracy [A,B], random order": self.accuracy_one_order,
            "order flips verdict": self.inconsistent,
            "left-slot bias (logit)": self.left_bias,
        }


def quality_pairs(qualities: Sequence[Sequence[float]]) -> list[tuple[int, int, int]]:
    """``(prompt, better, worse)`` for every pair of a prompt's candidates whose qualities
    differ (ties carry no preference), in the order i < j per prompt."""
    out = []
    for p, q in enumerate(qualities):
        for i, j in combinations(range(len(q)), 2):
            if q[i] != q[j]:
                out.append((p, i, j) if q[i] > q[j] else (p, j, i))
    return out


def pair_eval(
    comparisons: Comparisons,
    qualities: Sequence[Sequence[float]],
    categories: Sequence[str] | None = None,
) -> PairEval:
    """Held-out accuracy and position bias from the comparison matrices; ``qualities[p][i]``
    is candidate i's true quality (a reward, or -rank), higher = better."""
    if len(qualities) != len(comparisons.logits):
        raise ValueError(f"{len(qualities)} quality lists for {len(comparisons.logits)} prompts")
    pairs = quality_pairs(qualities)
    if not pairs:
        raise ValueError("no pair of candidates differs in quality: nothing to evaluate")
    m = comparisons.logits
    ab = np.array([m[p][b, w] for p, b, w in pairs])
    ba = np.array([m[p][w, b] for p, b, w in pairs])
    cats = [categories[p] if categories is not None else "all" for p, _, _ in pairs]
    return PairEval(ab, ba, cats)


def pairwise_correct(
    scores: Sequence[Sequence[float]], qualities: Sequence[Sequence[float]]
) -> np.ndarray:
    """Per pair (the order of :func:`pair_eval`): a pointwise model's scores order it right."""
    return np.array([scores[p][b] > scores[p][w] for p, b, w in quality_pairs(qualities)])


def evaluate_pairs(blender, records: Sequence[Mapping[str, Any]], batch_size: int = 16) -> PairEval:
    """:func:`pair_eval` on ranked records (quality = -rank): every held-out pair in both
    orders, with its record's ``category``."""
    records = check_records(records, "records")
    cmp = compare_all(blender, [r["prompt"] for r in records],
                      [r["ranked_outputs"] for r in records], batch_size)  # fmt: skip
    quality = [[-float(i) for i in range(len(r["ranked_outputs"]))] for r in records]
    return pair_eval(cmp, quality, [r.get("category", "all") for r in records])


class PlantedRanker:
    """A stand-in for a Blender with known behaviour, to test the instruments: ``compare``
    returns ``skill * (q(A) - q(B)) + left_bias + noise`` for the candidates' qualities ``q``
    (a dict text -> quality), whatever the prompt."""

    def __init__(self, quality: Mapping[str, float], skill: float = 1.0, left_bias: float = 0.0,
                 noise: float = 0.0, seed: int = 0) -> None:  # fmt: skip
        self.quality, self.skill, self.left_bias, self.noise = quality, skill, left_bias, noise
        self.rng = np.random.default_rng(seed)

    def compare(self, inputs, candidates_a, candidates_b, mode="[A,B]", return_logits=True,
                **kwargs):  # fmt: skip
        if mode != "[A,B]" or not return_logits:
            raise ValueError("PlantedRanker answers mode='[A,B]' with return_logits=True only")
        q = self.quality
        gap = np.array([q[a] - q[b] for a, b in zip(candidates_a, candidates_b, strict=True)])
        return self.skill * gap + self.left_bias + self.noise * self.rng.standard_normal(len(gap))


@dataclass
class TopChoice:
    """Which candidate a ranking procedure picks per prompt, and what it cost."""

    picks: np.ndarray  # (P,) index of the chosen candidate
    sequences: int  # ordered comparisons asked for (forward passes, unless memoised)
    seconds: float


def top_by_bubble(blender, prompts: Sequence[str], candidates: Sequence[Sequence[str]],
                  batch_size: int = 8, seed: int = 0) -> TopChoice:  # fmt: skip
    """``blender.get_best_of_n(..., pairrm_cmp_type="bubble")``: one bubble-sort pass over a
    random order of the candidates, each neighbour pair compared in both orders, so 2(N-1)
    forward passes per prompt. ``seed`` fixes the random order (llm-blender draws it from
    torch's global generator). Inside :func:`memoised_comparisons`, after :func:`compare_all` on
    the same candidates, every comparison it asks for is looked up: same picks, no new pass."""
    torch.manual_seed(seed)
    start = time.perf_counter()
    with count_comparisons(blender.ranker) as counter:
        best = blender.get_best_of_n(list(prompts), [list(c) for c in candidates],
                                     pairrm_cmp_type="bubble", batch_size=batch_size)  # fmt: skip
    # get_best_of_n returns the text; equal texts are interchangeable, so take the first index
    picks = np.array([list(c).index(b) for c, b in zip(candidates, best, strict=True)])
    return TopChoice(picks, counter["sequences"], time.perf_counter() - start)


def top_by_full_matrix(blender, prompts: Sequence[str], candidates: Sequence[Sequence[str]],
                       batch_size: int = 8) -> TopChoice:  # fmt: skip
    """``blender.rank(..., return_scores=True)``: all N(N-1) ordered comparisons per prompt,
    scored with :func:`~rlhf_lessons.rewards.pairrm.max_logits_scores`; the pick is the
    highest score. (:func:`compare_all` + :func:`full_matrix_picks` pick the same.)"""
    start = time.perf_counter()
    with count_comparisons(blender.ranker) as counter:
        scores = blender.rank(list(prompts), [list(c) for c in candidates], return_scores=True,
                              batch_size=batch_size, disable_tqdm=True)  # fmt: skip
    return TopChoice(np.asarray(scores).argmax(-1), counter["sequences"],
                     time.perf_counter() - start)  # fmt: skip


@dataclass
class Candidates:
    """N sampled completions per prompt and their true rewards."""

    prompts: list[str]
    texts: list[list[str]]
    rewards: torch.Tensor  # (P, N)

    def picked(self, picks: Sequence[int]) -> torch.Tensor:
        """(P,) true reward of the candidate picked per prompt."""
        return self.rewards[torch.arange(len(picks)), torch.as_tensor(np.asarray(picks))]

    @property
    def random_pick(self) -> torch.Tensor:
        """Expected true reward of a uniformly random pick (exactly the mean over the N)."""
        return self.rewards.mean(-1)

    @property
    def oracle(self) -> torch.Tensor:
        """True reward of the best candidate (picking by the true reward itself)."""
        return self.rewards.max(-1).values


def sample_candidates(
    policy,
    tokenizer,
    prompts: Sequence[str],
    n: int = 4,
    max_new_tokens: int = 16,
    seed: int = 0,
    reward_fn: Callable | None = None,
) -> Candidates:
    """Sample ``n`` completions of each prompt from ``policy`` and score them with the true
    reward (default: the review world's)."""
    from rlhf_lessons.lm import generate
    from rlhf_lessons.review_world.true_reward import reward_of

    if n < 2:
        raise ValueError(f"n must be >= 2 candidates to choose from, got {n}")
    if not prompts:
        raise ValueError("prompts is empty")
    reward_fn = reward_fn or reward_of
    expanded = [p for p in prompts for _ in range(n)]
    gen = generate(policy, tokenizer, expanded, max_new_tokens=max_new_tokens, batch_size=64,
                   seed=seed)  # fmt: skip
    rewards = torch.as_tensor(reward_fn(expanded, gen.completions), dtype=torch.float32)
    texts = [gen.completions[i * n : (i + 1) * n] for i in range(len(prompts))]
    return Candidates(list(prompts), texts, rewards.view(len(prompts), n))
