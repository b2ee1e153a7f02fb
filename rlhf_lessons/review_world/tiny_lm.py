"""review-gpt: a tiny GPT-style language model trained from scratch on the review corpus.

In the DPO paper's controlled-sentiment experiment (Rafailov et al. 2023, arXiv 2305.18290,
section 6.1) the reference policy is GPT-2 fine-tuned on IMDb reviews: a model that writes
reviews of both polarities and has no preference between them. Ours is the same thing at
laptop scale: a 2-layer, 128-wide ``LlamaForCausalLM`` (about 0.4M parameters) trained for a
minute or two on the sentences of :mod:`rlhf_lessons.review_world.grammar`. It is a plain
transformers model with a ``PreTrainedTokenizerFast``, so :mod:`rlhf_lessons.lm`, peft's LoRA
and the TRL trainers use it unchanged. It plays "the SFT model" (pi_ref) in lessons 05-11.

Training is next-token prediction on whole sentences, ``<bos> sentence <eos>``, with AdamW, a
linear warm-up and a cosine decay. Two details:

- **Length buckets.** Sentences are 4-25 tokens long. A batch of random sentences padded to its
  longest wastes about 40% of the compute on padding; batches are therefore drawn from
  sentences of similar length (shuffled in chunks, sorted within a chunk).
- **Prompts come without** ``<bos>``. :func:`rlhf_lessons.lm.generate`, ``tokenize_pairs`` and
  TRL tokenise prompts with ``add_special_tokens=False``, so at alignment time a prompt's
  first word sits at position 0 with nothing before it, unlike in training. With rotary
  position embeddings (only relative positions matter) this costs almost nothing: the loss of
  the validation tokens after the first two words (what a 2-token prompt leaves to the model)
  is the same to about 0.005 nats with and without ``<bos>`` (``prompted_loss_bos`` and
  ``prompted_loss_no_bos`` in the saved metrics). ``bos_fraction < 1`` would train on both
  forms; it is not needed. Unconditional samples start from the prompt ``"<bos>"``.
- **One thread.** The matrices are small. On a 2-core machine busy with other work, two torch
  threads were about 25x *slower* per step than one (they wait for each other); set
  ``threads=2`` on an idle machine (see :mod:`rlhf_lessons.course.device`).

The grammar's own entropy bounds the loss: at most 1.445 nats per token
(:func:`rlhf_lessons.review_world.grammar.entropy_per_token`); the trained model reaches about 1.51.
About three in four of its samples are sentences the grammar can produce
(:func:`rlhf_lessons.review_world.grammar.is_grammatical`); most of the others read fine but break
the grammar's rule that "but" joins opposite sentiments, a few are broken ("the runs about
two hours").

:func:`load_sft_model` trains once and caches the model and tokenizer under
``cache_dir()/models/review-gpt-<hash>``; the hash covers the config and the source of this
file and of ``review_corpus.py``, so changing either retrains instead of serving a stale model.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from rlhf_lessons.course.cache import cache_dir, save_folder_atomically
from rlhf_lessons.course.device import torch_threads
from rlhf_lessons.course.progress import progress
from rlhf_lessons.course.seeding import seed_everything
from rlhf_lessons.review_world import grammar as review_corpus
from rlhf_lessons.review_world.grammar import BOS, CorpusConfig, build_corpus, build_tokenizer
from rlhf_lessons.training import optimizer_step

METRICS_FILE = "training.json"


@dataclass(frozen=True)
class TinyLMConfig:
    """Architecture, corpus and training settings of review-gpt. All of it is in the cache key."""

    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int = 384
    max_positions: int = 64
    steps: int = 1500
    batch_size: int = 64
    lr: float = 3e-3
    min_lr_ratio: float = 0.05  # cosine decay from lr to lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    bos_fraction: float = 1.0  # training rows that start with <bos> (see the module docstring)
    seed: int = 0
    threads: int = 1  # torch threads while training (see the module docstring)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)

    def __post_init__(self) -> None:
        for name in ("d_model", "n_layers", "n_heads", "d_ff", "steps", "batch_size", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"TinyLMConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"TinyLMConfig.d_model ({self.d_model}) must be divisible by n_heads "
                f"({self.n_heads})"
            )
        if not 0.0 <= self.bos_fraction <= 1.0:
            raise ValueError(
                f"TinyLMConfig.bos_fraction must be in [0, 1], got {self.bos_fraction}"
            )


def make_model(config: TinyLMConfig, tokenizer):
    """A freshly initialised ``LlamaForCausalLM`` of ``config``'s size for ``tokenizer``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(config.seed)
    llama = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.d_model,
        intermediate_size=config.d_ff,
        num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads,
        num_key_value_heads=config.n_heads,
        max_position_embeddings=config.max_positions,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(llama)
    # generate()'s defaults: plain sampling, stop at <eos>, no length surprises
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def _collate(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, ...]:
    """Right-pad token rows: (input_ids, attention_mask, labels), each (B, T); labels are -100
    on padding so the loss ignores it."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        attention[i, : len(r)] = 1
    labels = ids.masked_fill(attention == 0, -100)
    return ids, attention, labels


def _bucketed_batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """One epoch of index batches: shuffle, sort chunks of 32 batches by length, cut, shuffle."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = batch_size * 32
    batches = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start : start + chunk], key=lengths.__getitem__)
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


def _lr_factor(step: int, config: TinyLMConfig) -> float:
    """Linear warm-up to 1, then cosine decay to ``min_lr_ratio`` at the last step."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress_ = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress_)))
    return config.min_lr_ratio + (1.0 - config.min_lr_ratio) * cosine


@torch.no_grad()
def validation_loss(
    model,
    tokenizer,
    sentences,
    with_bos: bool = True,
    skip_words: int = 0,
    batch_size: int = 256,
) -> float:
    """Mean next-token cross-entropy (nats per token) of ``sentences`` under ``model``.

    Each sentence is scored as ``<bos> words <eos>`` (``with_bos``) or ``words <eos>``; every
    token after the first of the row is predicted, ``<eos>`` included (so without ``<bos>`` the
    first word is not scored). ``skip_words`` leaves the first words unscored: with 2, the loss
    is over what a 2-token prompt leaves to the model, comparable with and without ``<bos>``.
    Lower is better; exp(loss) is the per-token perplexity.
    """
    if not sentences:
        raise ValueError("sentences is empty: pass at least one review sentence")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    ids = tokenizer(list(sentences), add_special_tokens=False)["input_ids"]
    prefix = [tokenizer.bos_token_id] if with_bos else []
    unscored = len(prefix) + skip_words  # label positions (of the row) that are not scored
    total, count = 0.0, 0
    for start in range(0, len(ids), batch_size):
        rows = [prefix + r + [tokenizer.eos_token_id] for r in ids[start : start + batch_size]]
        input_ids, attention, labels = (
            t.to(device) for t in _collate(rows, tokenizer.pad_token_id)
        )
        logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1].float()
        labels[:, :unscored] = -100
        target = labels[:, 1:]
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100,
            reduction="sum",
        )  # fmt: skip
        total += nll.item()
        count += int((target != -100).sum())
    model.train(was_training)
    return total / count


def train_tiny_lm(config: TinyLMConfig = TinyLMConfig(), show_progress: bool = True):
    """Train review-gpt from scratch on the review corpus.

    Returns ``(model, tokenizer, metrics)``: the model in eval mode on the CPU, the word-level
    tokenizer, and a dict with ``val_loss`` (with ``<bos>``), ``prompted_loss_bos`` and
    ``prompted_loss_no_bos`` (the tokens after the first 2 words, see
    :func:`validation_loss`), ``train_loss`` (mean of the last 50 steps), ``seconds``, ``steps``, ``tokens`` (real
    tokens seen), ``epochs`` and ``parameters``.
    """
    seed_everything(config.seed)
    rng = random.Random(config.seed)
    corpus = build_corpus(config.corpus)
    tokenizer = build_tokenizer()
    model = make_model(config, tokenizer)
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    train_ids = tokenizer(list(corpus.train), add_special_tokens=False)["input_ids"]
    lengths = [len(r) for r in train_ids]
    if max(lengths) + 2 > config.max_positions:
        raise ValueError(
            f"a training sentence has {max(lengths)} tokens; raise TinyLMConfig.max_positions "
            f"above {max(lengths) + 2}"
        )
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr, betas=(0.9, 0.98),
    )  # fmt: skip
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, config))
    batches: list[list[int]] = []
    tokens, recent = 0, []
    model.train()
    start = time.perf_counter()
    with torch_threads(config.threads):
        bar = progress(
            range(config.steps), desc="training review-gpt", unit="step", disable=not show_progress
        )
        for step in bar:
            if not batches:
                batches = _bucketed_batches(lengths, config.batch_size, rng)
            rows = [
                ([bos] if rng.random() < config.bos_fraction else []) + train_ids[i] + [eos]
                for i in batches.pop()
            ]
            input_ids, attention, labels = _collate(rows, pad)
            loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
            optimizer_step(loss, optimizer, list(model.parameters()), config.grad_clip, schedule)
            tokens += int(attention.sum())
            recent = (recent + [loss.item()])[-50:]
            if step % 50 == 0 or step == config.steps - 1:
                bar.set_postfix(loss=f"{sum(recent) / len(recent):.3f}")
        seconds = time.perf_counter() - start
        model.eval()
        val = validation_loss(model, tokenizer, corpus.val, with_bos=True)
        prompted = {
            f"prompted_loss_{name}": validation_loss(
                model, tokenizer, corpus.val, with_bos=with_bos, skip_words=2
            )
            for name, with_bos in (("bos", True), ("no_bos", False))
        }
    metrics = {
        "val_loss": val,
        **prompted,
        "train_loss": sum(recent) / len(recent),
        "seconds": seconds,
        "steps": config.steps,
        "tokens": tokens,
        "epochs": tokens / sum(n + 1 + config.bos_fraction for n in lengths),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    return model, tokenizer, metrics


def config_hash(config: TinyLMConfig = TinyLMConfig()) -> str:
    """12 hex digits identifying a trained model: the config and the source that trains it."""
    h = hashlib.sha256(json.dumps(asdict(config), sort_keys=True).encode())
    for source in (Path(review_corpus.__file__), Path(__file__)):
        h.update(source.read_bytes())
    return h.hexdigest()[:12]


def model_folder(config: TinyLMConfig = TinyLMConfig()) -> Path:
    """Where :func:`load_sft_model` keeps the trained model: ``cache_dir()/models/review-gpt-<hash>``."""
    return cache_dir() / "models" / f"review-gpt-{config_hash(config)}"


def sft_model_path(
    refresh: bool = False, config: TinyLMConfig = TinyLMConfig(), show_progress: bool = True
) -> Path:
    """The folder of the trained review-gpt (HF model + tokenizer + ``training.json``), training
    it first if it is missing or ``refresh`` is set. A copy trained from this very source ships
    in ``data/models/`` (:func:`rlhf_lessons.models.install_shipped_model`): when its name
    matches, it is copied instead of trained. The folder is written to a temporary name and
    renamed, so an interrupted run never leaves half a model behind."""
    from rlhf_lessons.models import install_shipped_model

    target = model_folder(config)
    if not refresh and install_shipped_model(target.name) is not None:
        return target
    if (target / METRICS_FILE).exists() and not refresh:
        return target
    model, tokenizer, metrics = train_tiny_lm(config, show_progress=show_progress)
    metrics["config"] = asdict(config)
    return save_folder_atomically(
        target, model, tokenizer, {METRICS_FILE: json.dumps(metrics, indent=2)}
    )


def load_sft_model(
    refresh: bool = False,
    config: TinyLMConfig = TinyLMConfig(),
    device=None,
    show_progress: bool = True,
):
    """``(model, tokenizer)`` of the trained review-gpt, the reference policy of lessons 05-11.

    Trains it first (a minute or two on 2 CPU cores) when the cache has no model for this
    config and source, or when ``refresh`` is set. The model is in eval mode on ``device``
    (default :func:`rlhf_lessons.get_device`). The same folder loads with
    ``rlhf_lessons.models.load_causal_lm(sft_model_path())``.
    """
    from rlhf_lessons.models import load_causal_lm

    path = sft_model_path(refresh=refresh, config=config, show_progress=show_progress)
    return load_causal_lm(path, device=device)


def training_metrics(config: TinyLMConfig = TinyLMConfig()) -> dict:
    """The metrics saved when the cached model of ``config`` was trained (see
    :func:`train_tiny_lm`), plus its ``config``. Trains the model first if needed."""
    return json.loads((sft_model_path(config=config) / METRICS_FILE).read_text())


def sample_reviews(
    model, tokenizer, n: int, temperature: float = 1.0, seed: int = 0, max_new_tokens: int = 40
) -> list[str]:
    """``n`` unconditional samples (each generated from the prompt ``"<bos>"``), as text.

    Returns the completions; a sample that hit ``max_new_tokens`` before ``<eos>`` is returned
    as far as it got. Runs on one torch thread (several times faster for this model on a busy
    machine, see the module docstring).
    """
    from rlhf_lessons.lm import generate

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    with torch_threads(1):
        gen = generate(
            model, tokenizer, [BOS] * n, max_new_tokens=max_new_tokens, temperature=temperature,
            batch_size=64, seed=seed,
        )  # fmt: skip
    return gen.completions
