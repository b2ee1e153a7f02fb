"""PairRanker / PairRM (lesson 08): a ranker that compares two responses at once.

Paper: Jiang, Ren & Lin 2023, "LLM-Blender: Ensembling Large Language Models with Pairwise
Ranking and Generative Fusion", arXiv 2306.02561 (ACL 2023), section 3. Code: llm-blender 0.0.2
(github.com/yuchenlin/LLM-Blender), ``llm_blender/pair_ranker/ranker.py``
(``CrossCompareReranker``) and ``llm_blender/blender/blender.py`` (``Blender``). The hub model
``llm-blender/PairRM`` is this architecture on deberta-v3-large, trained on human preferences.

A reward model (lesson 04) scores each response alone, r(x, y). A **PairRanker** reads the
prompt and *two* candidates in one sequence,

    [CLS] <|source|> x [SEP] [CLS] <|candidate1|> y_i [SEP] [CLS] <|candidate2|> y_j [SEP]

so every layer can attend from one candidate to the other. The encoder's final states at the
three prefix tokens, h_x, h_i and h_j, go through one shared head,
``Dropout -> Linear(2H, H) -> Tanh -> Dropout -> Linear(H, T)``, applied to [h_x; h_i] and to
[h_x; h_j]: two pair-specific scores s_i and s_j (T = number of quality "tasks"; 1 here). The
comparison logit is mean_t(s_i - s_j); > 0 means "y_i is better".

Training uses llm-blender's default loss, written out in :func:`pairrm_loss`. Ranking N
candidates (the full N x N matrix of ordered comparisons, or a bubble-sort pass) and the held-out
measurements are in :mod:`rlhf_lessons.rewards.pairrm_eval`.

Here the ranker is built on all-MiniLM-L6-v2 (22.7M parameters) through llm-blender's own
builders, trained with llm-blender's own forward and loss in a short loop of ours
(:func:`train_pair_ranker`), saved as a folder that ``Blender().loadranker(folder)`` loads.
One change to llm-blender's start: the four new prefix tokens start from distinct words, not
all from the vocabulary's mean, where the loss can sit at ln 2 (:func:`init_prefix_embeddings`).
:mod:`rlhf_lessons.rewards.blender_compat` makes llm-blender 0.0.2 run with transformers 5.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rlhf_lessons.course.device import torch_threads
from rlhf_lessons.course.seeding import seed_everything
from rlhf_lessons.rewards import reward_model
from rlhf_lessons.rewards.blender_compat import (
    import_llm_blender,
    relocate_checkpoint,
    write_ranker_checkpoint,
)
from rlhf_lessons.training import (
    EvalFn,
    History,
    Stopwatch,
    check_minibatch_config,
    optimizer_step,
    trainable_parameters,
)

# llm-blender's training forward samples min(num_pos, num_neg) of a prompt's C(K, 2) pairs; we set
# both this high so that it takes all of them (C(10, 2) = 45: rankings of up to 10 responses).
ALL_PAIRS = 45


# --- the loss and the aggregation, as pure functions ------------------------------------------


def _check_scores(name: str, x: torch.Tensor) -> None:
    bad = ~torch.isfinite(x.detach())
    if bad.any():
        raise ValueError(
            f"{name} has {int(bad.sum())} non-finite value(s) (first at "
            f"{bad.nonzero()[0].tolist()})"
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
        left_scores, right_scores: (P,) or (P, T) scores s_i and s_j of each pair's left and
            right candidate (one forward pass), with gradient.
        left_quality, right_quality: the same shape, their qualities Q_i and Q_j per task
            (a metric, a reward, or a rank turned into "higher is better").

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
    (B, N, N) or (N, N) logits -> (B, N) or (N,) float32 scores, higher = better.
    """
    m = torch.as_tensor(cmp, dtype=torch.float32)
    if m.dim() not in (2, 3) or m.shape[-1] != m.shape[-2]:
        raise ValueError(f"cmp must be (N, N) or (B, N, N), got {tuple(m.shape)}")
    _check_scores("cmp", m)
    m = m * (1 - torch.eye(m.shape[-1]))  # the diagonal (a candidate against itself) is unused
    return (m - m.transpose(-1, -2)).mean(-1)


# --- building the ranker with llm-blender's builders ---------------------------------------------

#: Words whose embeddings start the new prefix tokens (``prefix_init="words"``): distinct, and
#: the two candidate slots different from each other.
PREFIX_WORDS = {"<|source|>": "source", "<|candidate1|>": "first", "<|candidate2|>": "second",
                "<|candidate|>": "candidate"}  # fmt: skip


def init_prefix_embeddings(
    encoder: nn.Module, tokenizer, words: Mapping[str, str] = PREFIX_WORDS
) -> dict[str, str]:
    """Start each new prefix token's embedding at the embedding of an existing word.

    ``resize_token_embeddings`` (transformers >= 4.46, ``mean_resizing=True``) starts every new
    row at the *mean* of the vocabulary's embeddings, plus noise of 1e-9 times their covariance:
    the four prefix tokens get the same vector, about a tenth of a real token's norm, and the
    head's two inputs h_i and h_j differ mostly by position. Starting them from distinct words
    (the mean of a word's word pieces) gives each slot its own vector, as a pretrained token has.
    Returns {token: word} as applied.
    """
    emb = encoder.get_input_embeddings().weight
    with torch.no_grad():
        for token, word in words.items():
            token_id = tokenizer.convert_tokens_to_ids(token)
            pieces = tokenizer(word, add_special_tokens=False)["input_ids"]
            if token_id is None or token_id == tokenizer.unk_token_id or not pieces:
                raise ValueError(
                    f"cannot start {token!r} from {word!r}: the token is not in the tokenizer or "
                    "the word has no word pieces (build the collator first, which adds the tokens)"
                )
            emb[token_id] = emb[pieces].mean(0)
    return dict(words)


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
    seed: int = 0,
    frozen=None,
    prefix_init: str = "words",
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
            and 412).
        seed: seeds the head's initialisation (and the new tokens' embeddings, unless
            ``frozen`` replaces them).
        frozen: a :class:`~rlhf_lessons.rewards.frozen_bottom.FrozenBottom` cut from another
            ranker's encoder (``bundle.ranker.pretrained_model``): its embeddings and bottom
            layers are frozen into this ranker and looked up, so only the top layers and the
            head train.
        prefix_init: ``"words"`` (:func:`init_prefix_embeddings`) or ``"mean"`` (what
            ``resize_token_embeddings`` gives, as in llm-blender).
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
        loss_type="instructgpt", inference_mode="full", drop_out=0.05, fp16=False,
    )  # fmt: skip
    tokenizer = build_tokenizer(path)
    collator = build_collator("pairranker", tokenizer, source_maxlength, candidate_maxlength)
    seed_everything(seed)
    ranker = build_ranker("pairranker", "bert", path, None, config, tokenizer)
    if prefix_init == "words":
        init_prefix_embeddings(ranker.pretrained_model, tokenizer)
    elif prefix_init != "mean":
        raise ValueError(f"prefix_init must be 'words' or 'mean', got {prefix_init!r}")
    if frozen is not None:
        frozen.attach(ranker.pretrained_model)
    return PairRankerBundle(ranker.eval(), tokenizer, collator, config)


def save_pair_ranker(bundle: PairRankerBundle, folder: str | os.PathLike) -> Path:
    """Save the ranker as a checkpoint folder for ``Blender().loadranker(folder)``."""
    return write_ranker_checkpoint(bundle.ranker, bundle.config, folder)


def _empty_blender(device: str):
    """``Blender()`` without a ranker yet (its "no ranker/fuser loaded" warnings silenced)."""
    llm_blender = import_llm_blender()
    logging.disable(logging.WARNING)
    try:
        return llm_blender.Blender(llm_blender.BlenderConfig(device=device, use_tqdm=False))
    finally:
        logging.disable(logging.NOTSET)


def load_blender(folder: str | os.PathLike, device: str = "cpu", backbone="minilm", frozen=None):
    """``Blender()`` with the checkpoint in ``folder`` loaded (``loadranker``), after pointing
    the checkpoint at this machine's ``backbone`` folder. Progress bars off. With ``frozen``
    (the FrozenBottom the ranker was trained with), the loaded encoder looks its bottom up."""
    from rlhf_lessons.models import resolve

    relocate_checkpoint(folder, resolve(backbone))
    blender = _empty_blender(device)
    blender.loadranker(str(folder), device=device)
    if frozen is not None:
        frozen.attach(blender.ranker.pretrained_model)
    return blender


def as_blender(bundle: PairRankerBundle, device: str = "cpu"):
    """A ``Blender`` around an in-memory ranker: what ``loadranker`` sets up (``ranker``,
    ``ranker_config``, ``ranker_tokenizer``, ``ranker_collator``), without the save and reload
    (:func:`save_pair_ranker` + :func:`load_blender` give the same ranker from a folder)."""
    blender = _empty_blender(device)
    blender.ranker_config = bundle.config
    blender.ranker_config.device = device
    blender.ranker = bundle.ranker.to(device).eval()
    blender.ranker_tokenizer, blender.ranker_collator = bundle.tokenizer, bundle.collator
    return blender


# --- training ------------------------------------------------------------------------------------


def check_records(records: Sequence[Mapping[str, Any]], name: str = "data") -> list:
    """Ranked records, validated, with at most :data:`ALL_PAIRS` pairs each."""
    records = reward_model.check_records(records, name)
    for i, record in enumerate(records):
        k = len(record["ranked_outputs"])
        if math.comb(k, 2) > ALL_PAIRS:
            raise ValueError(
                f"{name}[{i}] ranks {k} responses; llm-blender's sampler is set to take at most "
                f"{ALL_PAIRS} pairs per prompt (K <= 10): split the ranking"
            )
    return records


def ranker_dataset(records: Sequence[Mapping[str, Any]]):
    """Ranked records as llm-blender's ``RankerDataset``: source = prompt, candidates = the
    responses in rank order, and one quality task with scores K-1, ..., 1, 0 (higher = better;
    only their order matters to the loss)."""
    import_llm_blender()
    from llm_blender.blender.blender_utils import RankerDataset

    records = check_records(records, "records")
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
    every pair's sequence is then prompt + 2 x that length, so grouping by length saves padding.
    Only the batch order is random then.
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


def warmup_decay_schedule(optimizer, warmup_steps: int, total_steps: int):
    """Linear warm-up over ``warmup_steps``, then linear decay to 0 at ``total_steps`` (Hugging
    Face's ``linear`` schedule, which llm-blender's Trainer uses); each group's own lr scales."""
    if total_steps < 1 or warmup_steps < 0:
        raise ValueError(f"need total_steps >= 1 and warmup_steps >= 0, got {total_steps}, "
                         f"{warmup_steps}")  # fmt: skip

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@contextmanager
def count_sequences(ranker: nn.Module):
    """Count the sequences the ranker's encoder reads (one per ordered pair compared): a forward
    hook on ``ranker.pretrained_model``. Yields a dict whose ``"sequences"`` grows."""
    counter = {"sequences": 0}

    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        counter["sequences"] += int(ids.shape[0])

    handle = ranker.pretrained_model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield counter
    finally:
        handle.remove()


@dataclass(frozen=True)
class PairRankerConfig:
    """Settings of :func:`train_pair_ranker`: AdamW, the learning rate decaying linearly to 0
    over the steps run, gradient clipping, the encoder's dropout on (as in lesson 04)."""

    lr: float = 1e-4
    epochs: int = 1
    batch_size: int = 4  # prompts per step (each brings all its C(K, 2) pairs)
    max_steps: int | None = None
    max_grad_norm: float | None = 1.0
    weight_decay: float = 0.0
    warmup_steps: int = 0  # linear warm-up before the linear decay
    head_lr: float | None = None  # the head's learning rate (None: lr)
    by_length: bool = False  # batch prompts of similar length together (less padding)
    seed: int = 0  # batch order, dropout, llm-blender's left/right shuffling
    threads: int | None = None

    def __post_init__(self) -> None:
        check_minibatch_config(self)
        if self.warmup_steps < 0 or (self.head_lr is not None and not self.head_lr > 0):
            raise ValueError("PairRankerConfig needs warmup_steps >= 0 and head_lr > 0 (or None)")


def train_pair_ranker(
    ranker,
    tokenizer,
    data: Sequence[Mapping[str, Any]],
    config: PairRankerConfig | None = None,
    *,
    eval_fn: EvalFn | None = None,
    eval_every: int = 0,
    show_progress: bool = True,
) -> History:
    """Fine-tune a PairRanker (``bundle.ranker``, in place) on ranked records with llm-blender's
    loss; ``tokenizer`` is its tokenizer (``bundle.tokenizer``, with the prefix tokens).

    Each step collates ``batch_size`` prompts with the same K through llm-blender's collator and
    calls the ranker in train mode. Its forward (``CrossCompareReranker.forward``) takes all
    C(K, 2) pairs of each prompt (``sub_sampling_mode="all_pair"``), puts each pair's two
    responses left/right in a random order (so neither slot is always the better one), encodes
    one sequence per pair and returns the mean of :func:`pairrm_loss` over the batch's pairs
    (so a K = 4 prompt weighs 6 times a K = 2 one, unlike lesson 04's K-wise loss).

    Returns a :class:`~rlhf_lessons.training.History`: per step ``loss``, ``pairs`` and
    ``seconds``; ``info``: ``pairs_seen``, ``sequences`` (encoded), ``cpu_seconds`` and
    ``train_seconds``. The ranker is left in eval mode.

    Every batch is tokenised once, before the first step (the collator draws no random
    numbers, so the training is the same as tokenising at each step).
    """
    from llm_blender.pair_ranker.model_util import build_collator

    cfg = config or PairRankerConfig()
    records = check_records(data)
    dataset = ranker_dataset(records)
    collator = build_collator("pairranker", tokenizer, ranker.args.source_maxlength,
                              ranker.args.candidate_maxlength)  # fmt: skip
    history = History("pair_ranker", asdict(cfg), info={"pairs_seen": 0})
    gen = random.Random(cfg.seed)
    epoch = lambda: same_k_batches(records, cfg.batch_size, gen, cfg.by_length)  # noqa: E731
    order = [b for _ in range(cfg.epochs) for b in epoch()][: cfg.max_steps]
    batches = [collator([dataset[i] for i in idx]) for idx in order]  # tokenised once
    with torch_threads(cfg.threads), count_sequences(ranker) as counter:
        seed_everything(cfg.seed)  # drives llm-blender's left/right shuffling and the dropout
        params = trainable_parameters(ranker, "ranker")
        head = {id(p) for p in ranker.head_layer.parameters()}
        groups = [
            {"params": [p for p in params if id(p) not in head]},
            {"params": [p for p in params if id(p) in head], "lr": cfg.head_lr or cfg.lr},
        ]
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr,
                                      weight_decay=cfg.weight_decay,
                                      fused=params[0].device.type in ("cpu", "cuda"))  # fmt: skip
        schedule = warmup_decay_schedule(optimizer, cfg.warmup_steps, len(batches))
        clip = math.inf if cfg.max_grad_norm is None else cfg.max_grad_norm  # inf: no clipping
        watch, cpu_start = Stopwatch(), time.process_time()
        desc, total = "PairRanker", len(batches)
        for batch in history.loop(
            batches, total, ranker, eval_fn, eval_every, desc=desc, show_progress=show_progress
        ):
            ranker.train()  # between steps, evaluation runs in eval mode (no dropout)
            with watch:
                out = ranker(**batch)  # all pairs, left/right shuffled, encoded, loss
                optimizer_step(out["loss"], optimizer, params, clip, schedule)
            ranker.eval()
            pairs = int(out["logits"].shape[0])
            history.info["pairs_seen"] += pairs
            history.info["cpu_seconds"] = time.process_time() - cpu_start
            history.log(seconds=watch.seconds, loss=out["loss"].item(), pairs=pairs)
        history.info["sequences"] = counter["sequences"]
        history.info["train_seconds"] = watch.seconds
    return history
