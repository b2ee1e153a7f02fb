"""PairRanker / PairRM (lesson 08): a ranker that compares two responses at once.

Paper: Jiang, Ren & Lin 2023, "LLM-Blender: Ensembling Large Language Models with Pairwise
Ranking and Generative Fusion", arXiv 2306.02561 (ACL 2023), section 3. Code: llm-blender 0.0.2
(github.com/yuchenlin/LLM-Blender), ``llm_blender/pair_ranker/ranker.py`` (``CrossCompareReranker``)
and ``llm_blender/blender/blender.py`` (``Blender``). The hub model ``llm-blender/PairRM`` is this
architecture on deberta-v3-large, trained on human preference data.

A reward model (lesson 04) scores each response alone, r(x, y). A **PairRanker** reads the
prompt and *two* candidates in one sequence,

    [CLS] <|source|> x [SEP] [CLS] <|candidate1|> y_i [SEP] [CLS] <|candidate2|> y_j [SEP]

so every layer can attend from one candidate to the other. The encoder's final states at the
three prefix tokens, h_x, h_i and h_j, go through one shared head,
``Dropout -> Linear(2H, H) -> Tanh -> Dropout -> Linear(H, T)``, applied to [h_x; h_i] and to
[h_x; h_j]: two pair-specific scores s_i and s_j (T = number of quality "tasks"; 1 here). The
comparison logit is mean_t(s_i - s_j); > 0 means "y_i is better".

Training (llm-blender's default ``loss_type="instructgpt"``, which :func:`pairrm_loss` writes
out): for a pair with qualities Q_i, Q_j, L = -log sigma(sign(Q_i - Q_j) (s_i - s_j)). Inference
over N candidates either fills the whole N x N matrix of ordered comparisons (``Blender.rank``,
N(N-1) forward passes) or runs one bubble-sort pass with both orders of each neighbour pair
(``Blender.get_best_of_n``, 2(N-1) passes for the top candidate).

Here the ranker is built on all-MiniLM-L6-v2 (22.7M parameters) through llm-blender's own
builders, trained on the course's ranked preferences with llm-blender's own forward and loss in a
short loop of ours, saved as a folder that ``Blender().loadranker(folder)`` loads, and evaluated
through ``Blender``'s public API. :mod:`rlhf_lessons.rewards.blender_compat` makes llm-blender 0.0.2 run
with transformers 5.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rlhf_lessons.course.device import torch_threads
from rlhf_lessons.course.progress import progress
from rlhf_lessons.course.seeding import seed_everything
from rlhf_lessons.rewards.blender_compat import (
    import_llm_blender,
    relocate_checkpoint,
    write_ranker_checkpoint,
)
from rlhf_lessons.rewards.preference_data import ranked_to_pairs, validate_ranked

# llm-blender's training forward samples min(num_pos, num_neg) of a prompt's C(K, 2) pairs; we set
# both this high so that it takes all of them (C(10, 2) = 45: rankings of up to 10 responses).
ALL_PAIRS = 45


# --- the loss and the aggregation, as pure functions ------------------------------------------


def _check_scores(name: str, x: torch.Tensor) -> None:
    bad = ~torch.isfinite(x.detach())
    if bad.any():
        raise ValueError(
            f"{name} has {int(bad.sum())} non-finite value(s) (first at {bad.nonzero()[0].tolist()})"
            "; a ranker's scores and the qualities must be finite: check the model and the labels"
        )


def pairrm_loss(
    left_scores: torch.Tensor,
    right_scores: torch.Tensor,
    left_quality: torch.Tensor,
    right_quality: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PairRanker's training loss (llm-blender's ``loss_type="instructgpt"``, its default).

    For pair p and quality task t, with s = sign(Q_left - Q_right) in {-1, 0, +1}:

        L = -mean_{p, t} log sigma( s[p, t] * (left_scores[p, t] - right_scores[p, t]) )

    So the loss is the Bradley-Terry loss of lesson 04 with the pair-specific scores in place of
    two independent rewards, and with the label deciding which way round the difference is read.
    Only the *sign* of the quality gap is used. A tie (s = 0) contributes log 2 and no gradient,
    exactly as in llm-blender (which keeps ties in the mean); ``metrics["ties"]`` counts them.

    Args:
        left_scores: (P,) or (P, T) scores s_i of the left candidate of each pair, with gradient.
        right_scores: same shape, scores s_j of the right candidate (from the same forward pass).
        left_quality: same shape, the left candidate's quality Q_i per task (a metric, a reward,
            or a rank turned into "higher is better").
        right_quality: same shape, the right candidate's quality Q_j.

    Returns:
        ``(loss, metrics)``: a scalar loss; metrics ``loss``, ``accuracy`` (over non-tied
        entries, the fraction with s * (s_i - s_j) > 0; NaN if all are tied), ``ties`` (number of
        tied entries) and ``pairs`` (P).
    """
    tensors = {"left_scores": left_scores, "right_scores": right_scores,
               "left_quality": left_quality, "right_quality": right_quality}  # fmt: skip
    for name, t in tensors.items():
        if not torch.is_tensor(t):
            raise ValueError(f"{name} must be a tensor, got {type(t).__name__}")
        if t.shape != left_scores.shape:
            raise ValueError(
                f"{name} has shape {tuple(t.shape)} but left_scores has "
                f"{tuple(left_scores.shape)}: all four must be (P,) or (P, T) alike"
            )
        _check_scores(name, t)
    if left_scores.dim() not in (1, 2) or left_scores.shape[0] == 0:
        raise ValueError(
            f"scores must be (P,) or (P, T) with P >= 1 pairs, got {tuple(left_scores.shape)}"
        )
    sign = torch.sign(left_quality - right_quality).to(left_scores.dtype)
    margin = sign * (left_scores - right_scores)
    loss = -F.logsigmoid(margin).mean()
    with torch.no_grad():
        decided = sign != 0
        metrics = {
            "loss": loss.item(),
            "accuracy": (margin[decided] > 0).float().mean().item() if decided.any() else math.nan,
            "ties": float((~decided).sum().item()),
            "pairs": float(left_scores.shape[0]),
        }
    return loss, metrics


def max_logits_scores(cmp: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Scores from a full comparison matrix, llm-blender's "max_logits" rule (``Blender.rank``).

    ``cmp[b, i, j]`` is the ranker's logit that candidate i (on the left) beats candidate j (on
    the right); the diagonal is never computed and ignored. Each candidate's score is

        score[b, i] = (1/N) sum_j (cmp[b, i, j] - cmp[b, j, i])

    which uses both orders of every pair, so a constant preference for the left slot cancels.
    The scores of a prompt sum to 0, and permuting the candidates permutes the scores.

    Args:
        cmp: (B, N, N) or (N, N) logits.

    Returns:
        (B, N) or (N,) float32 scores, higher = better.
    """
    m = torch.as_tensor(cmp, dtype=torch.float32)
    if m.dim() not in (2, 3) or m.shape[-1] != m.shape[-2]:
        raise ValueError(f"cmp must be (N, N) or (B, N, N), got {tuple(m.shape)}")
    _check_scores("cmp", m)
    m = m * (1 - torch.eye(m.shape[-1]))  # the diagonal (a candidate against itself) is unused
    return (m - m.transpose(-1, -2)).mean(-1)


# --- building the ranker with llm-blender's builders ---------------------------------------------


@dataclass
class PairRankerBundle:
    """A PairRanker and what llm-blender builds with it: the ranker (``CrossCompareReranker``),
    its tokenizer (with the four prefix tokens added), its collator and its ``RankerConfig``."""

    ranker: nn.Module
    tokenizer: Any
    collator: Any
    config: Any

    def parameters(self) -> int:
        return sum(p.numel() for p in self.ranker.parameters())


def build_pair_ranker(
    backbone: str | os.PathLike = "minilm",
    source_maxlength: int = 64,
    candidate_maxlength: int = 128,
    drop_out: float = 0.05,
    seed: int = 0,
) -> PairRankerBundle:
    """Build an untrained PairRanker on ``backbone`` with llm-blender's own builders.

    The steps ``Blender.loadranker`` takes, in its order: ``build_tokenizer``, then
    ``build_collator("pairranker", ...)`` (which adds the tokens ``<|source|>``,
    ``<|candidate1|>``, ``<|candidate2|>`` and ``<|candidate|>`` to the tokenizer), then
    ``build_ranker("pairranker", "bert", ...)``, which loads the encoder, resizes its embeddings
    for the new tokens and adds the randomly initialised head (seeded by ``seed``).

    Args:
        backbone: ``"minilm"`` (the course's offline all-MiniLM-L6-v2) or a BERT folder.
        source_maxlength, candidate_maxlength: truncation lengths in tokens (PairRM uses 1224
            and 412; our prompts are under 32 tokens and responses under 100).
        drop_out: the head's dropout (llm-blender's default 0.05).
        seed: seeds the head's initialisation.
    """
    from rlhf_lessons.models import resolve

    import_llm_blender()
    from llm_blender.pair_ranker.config import RankerConfig
    from llm_blender.pair_ranker.model_util import build_collator, build_ranker, build_tokenizer

    path = str(resolve(backbone))
    for name, value in (("source_maxlength", source_maxlength),
                        ("candidate_maxlength", candidate_maxlength)):  # fmt: skip
        if value < 8:
            raise ValueError(f"{name} must be >= 8 tokens, got {value}")
    config = RankerConfig(
        ranker_type="pairranker", model_type="bert", model_name=path,
        source_maxlength=source_maxlength, candidate_maxlength=candidate_maxlength,
        num_pos=ALL_PAIRS, num_neg=ALL_PAIRS, sub_sampling_mode="all_pair",
        loss_type="instructgpt", inference_mode="full", drop_out=drop_out, fp16=False,
    )  # fmt: skip
    tokenizer = build_tokenizer(path)
    collator = build_collator("pairranker", tokenizer, source_maxlength, candidate_maxlength)
    seed_everything(seed)
    ranker = build_ranker("pairranker", "bert", path, None, config, tokenizer)
    return PairRankerBundle(ranker.eval(), tokenizer, collator, config)


def save_pair_ranker(bundle: PairRankerBundle, folder: str | os.PathLike) -> Path:
    """Save the ranker as a checkpoint folder for ``Blender().loadranker(folder)``."""
    return write_ranker_checkpoint(bundle.ranker, bundle.config, folder)


def load_blender(folder: str | os.PathLike, device: str = "cpu", backbone="minilm"):
    """``Blender()`` with the checkpoint in ``folder`` loaded (``loadranker``), after pointing
    the checkpoint at this machine's ``backbone`` folder. Progress bars off."""
    from rlhf_lessons.models import resolve

    llm_blender = import_llm_blender()
    relocate_checkpoint(folder, resolve(backbone))
    blender = llm_blender.Blender(llm_blender.BlenderConfig(device=device, use_tqdm=False))
    blender.loadranker(str(folder), device=device)
    return blender


# --- training data ------------------------------------------------------------------------------


def _check_records(records: Sequence[Mapping[str, Any]], name: str) -> None:
    if not records:
        raise ValueError(f"{name} is empty: there is nothing to train or evaluate on")
    for i, record in enumerate(records):
        validate_ranked(record, where=f"{name}[{i}]")
        k = len(record["ranked_outputs"])
        if math.comb(k, 2) > ALL_PAIRS:
            raise ValueError(
                f"{name}[{i}] ranks {k} responses; llm-blender's sampler is set to take at most "
                f"{ALL_PAIRS} pairs per prompt (K <= 10): split the ranking"
            )


def ranker_dataset(records: Sequence[Mapping[str, Any]]):
    """Ranked records as llm-blender's ``RankerDataset``: source = prompt, candidates = the
    responses in rank order, and one quality task with scores K-1, ..., 1, 0 (higher = better;
    only their order matters to the loss)."""
    import_llm_blender()
    from llm_blender.blender.blender_utils import RankerDataset

    _check_records(records, "records")
    scores = [[[float(len(r["ranked_outputs"]) - 1 - i)] for i in range(len(r["ranked_outputs"]))]
              for r in records]  # fmt: skip
    return RankerDataset([r["prompt"] for r in records],
                         [list(r["ranked_outputs"]) for r in records], scores=scores)  # fmt: skip


def same_k_batches(
    records: Sequence[Mapping[str, Any]],
    batch_size: int,
    gen: random.Random,
    by_length: bool = False,
) -> list[list[int]]:
    """Shuffled batches of record indices, each holding prompts with the same number of responses
    (llm-blender's collator stacks a batch's candidates into one (B, K, L) tensor).

    With ``by_length``, a batch holds prompts whose longest responses are of similar length
    (in characters): the collator pads every candidate of a batch to the batch's longest, and
    every pair's sequence is then prompt + 2 x that length, so grouping by length saves padding
    (about a fifth of the tokens on the course data). Only the batch order is random then.
    """
    by_k: dict[int, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        by_k[len(r["ranked_outputs"])].append(i)
    batches = []
    for k in sorted(by_k):
        idx = by_k[k][:]
        gen.shuffle(idx)
        if by_length:  # stable sort: ties keep the shuffled order
            idx.sort(key=lambda i: max(len(r) for r in records[i]["ranked_outputs"]))
        batches += [idx[s : s + batch_size] for s in range(0, len(idx), batch_size)]
    gen.shuffle(batches)
    return batches


@contextmanager
def count_sequences(ranker: nn.Module):
    """Count the sequences the ranker's encoder reads (one per ordered pair compared): a forward
    hook on ``ranker.pretrained_model``. Yields a dict whose ``"sequences"`` grows."""
    counter = {"sequences": 0, "calls": 0}

    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        counter["sequences"] += int(ids.shape[0])
        counter["calls"] += 1

    handle = ranker.pretrained_model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield counter
    finally:
        handle.remove()


@dataclass
class PairRankerHistory:
    """What :func:`train_pair_ranker` measured."""

    loss: list[float] = field(default_factory=list)  # llm-blender's loss, per step
    seconds: list[float] = field(default_factory=list)  # wall-clock at the end of each step
    pairs_seen: int = 0  # comparisons trained on (each one sequence through the encoder)
    sequences: int = 0  # sequences encoded (= forward passes in the lesson's cost tables)
    train_seconds: float = 0.0
    cpu_seconds: float = 0.0
    config: dict = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return len(self.loss)


def train_pair_ranker(
    bundle: PairRankerBundle,
    records: Sequence[Mapping[str, Any]],
    epochs: int = 1,
    lr: float = 1e-4,
    batch_size: int = 4,
    seed: int = 0,
    weight_decay: float = 0.0,
    max_grad_norm: float | None = 1.0,
    max_steps: int | None = None,
    by_length: bool = False,
    threads: int | None = None,
    show_progress: bool = True,
) -> PairRankerHistory:
    """Fine-tune a PairRanker (every parameter) on ranked records with llm-blender's loss.

    Each step collates ``batch_size`` prompts with the same K through llm-blender's collator and
    calls the ranker in train mode. Its forward (``CrossCompareReranker.forward``) takes all
    C(K, 2) pairs of each prompt (``sub_sampling_mode="all_pair"``), puts each pair's two
    responses left/right in a random order (so neither slot is always the better one), encodes
    one sequence per pair and returns the mean of :func:`pairrm_loss` over the batch's pairs.
    (So a K = 4 prompt weighs 6 times a K = 2 one, unlike lesson 04's K-wise loss, which averages
    per prompt.) AdamW with the learning rate decaying linearly to 0, gradient clipping, and the
    encoder's dropout on, as in lesson 04.

    ``max_steps`` stops early (the schedule still spans the full ``epochs``, as in lesson 04);
    ``by_length`` batches prompts of similar length together (:func:`same_k_batches`), which
    saves padding and so CPU time.

    Returns:
        A :class:`PairRankerHistory`; the ranker is left in eval mode.
    """
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    dataset = ranker_dataset(records)
    ranker, collator = bundle.ranker, bundle.collator
    seed_everything(seed)  # also drives llm-blender's left/right shuffling (torch's generator)
    gen = random.Random(seed)
    steps_per_epoch = len(same_k_batches(records, batch_size, random.Random(0)))
    total = steps_per_epoch * epochs
    n_steps = total if max_steps is None else min(total, max_steps)
    params = [p for p in ranker.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1.0 - s / total))
    history = PairRankerHistory(config=dict(epochs=epochs, lr=lr, batch_size=batch_size,
                                            seed=seed, weight_decay=weight_decay,
                                            max_grad_norm=max_grad_norm, max_steps=max_steps,
                                            by_length=by_length))  # fmt: skip
    ctx = torch_threads(threads) if threads is not None else nullcontext()
    bar = progress(total=n_steps, desc="PairRanker", unit="step", disable=not show_progress)
    start, cpu_start = time.perf_counter(), time.process_time()
    with ctx, count_sequences(ranker) as counter:
        ranker.train()
        for _ in range(epochs):
            for idx in same_k_batches(records, batch_size, gen, by_length):
                if history.steps >= n_steps:
                    break
                batch = collator([dataset[i] for i in idx])
                out = ranker(**batch)  # llm-blender: sample pairs, encode, instructgpt loss
                opt.zero_grad(set_to_none=True)
                out["loss"].backward()
                if max_grad_norm is not None:
                    nn.utils.clip_grad_norm_(params, max_grad_norm)
                opt.step()
                sched.step()
                history.loss.append(out["loss"].item())
                history.seconds.append(time.perf_counter() - start)
                history.pairs_seen += int(out["logits"].shape[0])
                bar.update(1)
                bar.set_postfix(loss=f"{history.loss[-1]:.3f}")
        history.sequences = counter["sequences"]
    bar.close()
    history.train_seconds = time.perf_counter() - start
    history.cpu_seconds = time.process_time() - cpu_start
    ranker.eval()
    return history


# --- evaluation through Blender's API ------------------------------------------------------------


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
    sequences: int  # forward passes spent (2 per pair)

    @property
    def both(self) -> np.ndarray:
        return self.ab - self.ba

    @property
    def n_pairs(self) -> int:
        return len(self.ab)

    @property
    def accuracy(self) -> float:
        """Accuracy of ``[A,B]+[B,A]``: both orders, averaged."""
        return float(np.mean(self.both > 0))

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
        return {c: float(np.mean(self.both[cats == c] > 0)) for c in sorted(set(self.categories))}

    def summary(self) -> dict[str, float]:
        return {"accuracy [A,B]+[B,A]": self.accuracy,
                "accuracy [A,B], better left": self.accuracy_better_left,
                "accuracy [A,B], better right": self.accuracy_better_right,
                "order flips verdict": self.inconsistent, "left-slot bias (logit)": self.left_bias}  # fmt: skip


def heldout_pairs(records: Sequence[Mapping[str, Any]]) -> list[dict]:
    """All C(K, 2) pairs of the records (better response = ``chosen``), in the order of lesson
    04's :func:`~rlhf_lessons.rewards.reward_model.evaluate_reward_model`."""
    _check_records(records, "records")
    return [p for r in records for p in ranked_to_pairs(r)]


def evaluate_pairs(blender, records: Sequence[Mapping[str, Any]], batch_size: int = 16) -> PairEval:
    """Compare every held-out pair in both orders with ``blender.compare(..., mode="[A,B]")``.

    Two explicit ``[A,B]`` calls (better response left, then right) rather than ``mode="[B,A]"``:
    in llm-blender 0.0.2 ``"[B,A]"`` returns the logit that B (then on the left) wins, not that A
    wins as its docstring says, which is easy to misread.
    """
    pairs = heldout_pairs(records)
    prompts = [p["prompt"] for p in pairs]
    chosen = [p["chosen"] for p in pairs]
    rejected = [p["rejected"] for p in pairs]
    kw = dict(batch_size=batch_size, return_logits=True, mode="[A,B]", disable_tqdm=True)
    with count_sequences(blender.ranker) as counter:
        ab = np.asarray(blender.compare(prompts, chosen, rejected, **kw), dtype=float)
        ba = np.asarray(blender.compare(prompts, rejected, chosen, **kw), dtype=float)
    return PairEval(ab, ba, [p.get("category", "all") for p in pairs], counter["sequences"])


def pairwise_accuracy_of_scores(records: Sequence[Mapping[str, Any]], scores) -> np.ndarray:
    """Per-pair correctness (bool array, :func:`heldout_pairs` order) of per-response scores
    (e.g. lesson 04's ``RewardEval.scores``): right when the better response scores higher."""
    out = []
    for record, s in zip(records, scores, strict=True):
        out += [s[i] > s[j] for i, j in combinations(range(len(record["ranked_outputs"])), 2)]
    return np.array(out, dtype=bool)


# --- choosing the best of N: full matrix vs bubble -------------------------------------------


@dataclass
class TopChoice:
    """Which candidate a ranking procedure picks per prompt, and what it cost."""

    picks: np.ndarray  # (P,) index of the chosen candidate
    sequences: int  # forward passes (sequences through the encoder)
    seconds: float


def top_by_full_matrix(blender, prompts: Sequence[str], candidates: Sequence[Sequence[str]],
                       batch_size: int = 8) -> TopChoice:  # fmt: skip
    """``blender.rank(..., return_scores=True)``: all N(N-1) ordered comparisons per prompt,
    scored with :func:`max_logits_scores`; the pick is the highest score."""
    start = time.perf_counter()
    with count_sequences(blender.ranker) as counter:
        scores = blender.rank(list(prompts), [list(c) for c in candidates], return_scores=True,
                              batch_size=batch_size, disable_tqdm=True)  # fmt: skip
    return TopChoice(np.asarray(scores).argmax(-1), counter["sequences"],
                     time.perf_counter() - start)  # fmt: skip


def top_by_bubble(blender, prompts: Sequence[str], candidates: Sequence[Sequence[str]],
                  batch_size: int = 8, seed: int = 0) -> TopChoice:  # fmt: skip
    """``blender.get_best_of_n(..., pairrm_cmp_type="bubble")``: one bubble-sort pass over a
    random order of the candidates, each neighbour pair compared in both orders, so 2(N-1)
    forward passes per prompt. ``seed`` fixes the random order (llm-blender draws it from torch's
    global generator)."""
    torch.manual_seed(seed)
    start = time.perf_counter()
    with count_sequences(blender.ranker) as counter:
        best = blender.get_best_of_n(list(prompts), [list(c) for c in candidates],
                                     pairrm_cmp_type="bubble", batch_size=batch_size)  # fmt: skip
    # get_best_of_n returns the text; equal texts are interchangeable, so take the first index
    picks = np.array([list(c).index(b) for c, b in zip(candidates, best, strict=True)])
    return TopChoice(picks, counter["sequences"], time.perf_counter() - start)


@dataclass
class BestOfN:
    """N sampled completions per prompt, their true rewards and the ranker's picks."""

    prompts: list[str]
    candidates: list[list[str]]
    rewards: torch.Tensor  # (P, N) true reward of every candidate
    full: TopChoice
    bubble: TopChoice

    def picked(self, picks: np.ndarray) -> torch.Tensor:
        return self.rewards[torch.arange(len(picks)), torch.as_tensor(picks)]

    @property
    def random_pick(self) -> torch.Tensor:
        """Expected true reward of a uniformly random pick (exactly the mean over the N)."""
        return self.rewards.mean(-1)

    @property
    def oracle(self) -> torch.Tensor:
        """True reward of the best candidate (picking by the true reward itself)."""
        return self.rewards.max(-1).values

    @property
    def agreement(self) -> float:
        """Fraction of prompts where bubble and full matrix pick the same text."""
        triples = zip(self.candidates, self.full.picks, self.bubble.picks, strict=True)
        return float(np.mean([c[i] == c[j] for c, i, j in triples]))


def best_of_n(
    blender,
    policy,
    tokenizer,
    prompts: Sequence[str],
    n: int = 8,
    max_new_tokens: int = 16,
    seed: int = 0,
    reward_fn=None,
    batch_size: int = 8,
) -> BestOfN:
    """Sample ``n`` completions of each prompt from ``policy``, score them with the true reward
    and let the ranker pick one, by the full matrix and by bubble (same candidates)."""
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
    candidates = [gen.completions[i * n : (i + 1) * n] for i in range(len(prompts))]
    full = top_by_full_matrix(blender, prompts, candidates, batch_size)
    bubble = top_by_bubble(blender, prompts, candidates, batch_size, seed=seed)
    return BestOfN(list(prompts), candidates, rewards.view(len(prompts), n), full, bubble)
