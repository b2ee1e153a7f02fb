"""Data-parallel training on accelerate: the few calls a training loop needs (issue 18).

**Data parallelism.** W processes (one per GPU; or CPU processes) each hold a copy of the
model. Every process walks the *same* sequence of global minibatches (same seed), takes its
own share of each minibatch's rows, and computes the gradient of its share; before the
optimizer step the gradients are averaged across processes (PyTorch's
``DistributedDataParallel``, set up by ``accelerate.Accelerator.prepare``), so every copy takes
the same step and the copies stay equal. One step with W processes is one step on the whole
minibatch, provided each process weighs its loss right. DDP *averages* the W gradients, so with
n_r of the B rows on process r, a local mean loss is scaled by ``W n_r / B``:

    (1/W) sum_r (W n_r / B) grad mean_{i in r} l_i  =  (1/B) sum_i grad l_i

the gradient of the global mean (``Shard.scale``; a loss averaged over tokens uses
:meth:`Parallel.scale` with token counts instead of rows).

A trainer's loop becomes data-parallel with these calls, and stays exactly what it was in one
process (no accelerate object is created there unless asked for, so the course's lessons run
the same operations as before):

    par = Parallel.create()                        # reads torchrun's / accelerate's environment
    model, optimizer = par.prepare(model, optimizer)
    for idx in minibatches:                        # the same global order in every process
        shard = par.shard(idx)                     # this process's rows of the minibatch
        loss, metrics = loss_fn(rows[shard.index]) # the mean over those rows
        optimizer.zero_grad()
        par.backward(loss * shard.scale)           # DDP's average is then the global mean
        norm = par.clip_grad_norm_(model.parameters(), max_norm)
        optimizer.step()
        metrics = par.mean(metrics, shard.rows)    # the whole minibatch's metrics, everywhere

Frozen work that every process would repeat (DPO's reference log-probs, an evaluation) is
split with :meth:`Parallel.shard_range` and put back together with :meth:`Parallel.gather_rows`.
:meth:`Parallel.save_pretrained` gathers the full weights (also under FSDP / ZeRO-3) and writes
them from the main process. Launch with ``torchrun --nproc_per_node N`` (CPU or GPU, gloo or
NCCL) or ``accelerate launch --config_file configs/accelerate/<file>.yaml`` (GPUs). The demos at
the end (``torchrun --nproc_per_node 2 -m rlhf_lessons.distributed``), a DPO-style loop and the
course's SFT, DPO and reward-model trainers, are what the tests compare with one-process runs.

Pitfalls this module avoids: a learning-rate scheduler passed to ``accelerator.prepare`` steps
W times per optimizer step (``split_batches=False``), so schedulers are left unprepared; a
process with no rows would skip its backward pass and hang the others, so it gets a row with
weight 0 instead; under FSDP the optimizer must be built from the model's parameters and
prepared together with it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


def launched_processes() -> int:
    """How many processes the launcher started (``WORLD_SIZE``; 1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def default_mixed_precision() -> str:
    """``"bf16"`` on a CUDA GPU that supports it (half the activation memory, no loss
    scaling needed), else ``"no"`` (fp32: on CPUs bf16 autocast is usually slower)."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


@dataclass
class Shard:
    """This process's share of a global minibatch of ``total`` rows.

    ``index``: the rows to compute (global positions); ``rows``: how many of them count (0 for
    a process that got none and computes one row with weight 0, to keep in step);
    ``scale``: multiply a loss averaged over ``index`` by it before the backward pass."""

    index: torch.Tensor
    rows: int
    total: int
    scale: float


class Parallel:
    """One process's view of a data-parallel run (or a plain run: ``accelerator=None``).

    Build it with :meth:`create`. Every method is a no-op (or the plain PyTorch call) in a
    plain run, so a trainer written with it runs unchanged in one process.
    """

    def __init__(self, accelerator=None) -> None:
        self.accelerator = accelerator

    @classmethod
    def create(
        cls, mixed_precision: str | None = None, cpu: bool = False, force: bool = False
    ) -> Parallel:
        """A :class:`Parallel` for this process.

        An ``accelerate.Accelerator`` is made when the run was launched with several
        processes (``torchrun``, ``accelerate launch``), on a CUDA GPU (device placement and
        bf16), when a precision is asked for, or with ``force``; otherwise the plain run.

        Args:
            mixed_precision: ``"no"``, ``"bf16"`` or ``"fp16"``; None: the launcher's setting
                (``ACCELERATE_MIXED_PRECISION``), else :func:`default_mixed_precision`.
            cpu: run on the CPU even if a GPU is there.
            force: use accelerate even in a plain one-process CPU run.
        """
        if mixed_precision not in (None, "no", "bf16", "fp16"):
            raise ValueError(
                f"mixed_precision must be 'no', 'bf16' or 'fp16', got {mixed_precision!r}"
            )
        gpu = torch.cuda.is_available() and not cpu
        if not (force or gpu or launched_processes() > 1 or mixed_precision not in (None, "no")):
            return cls(None)
        from accelerate import Accelerator

        if mixed_precision is None and "ACCELERATE_MIXED_PRECISION" not in os.environ:
            mixed_precision = default_mixed_precision() if gpu else "no"
        return cls(Accelerator(mixed_precision=mixed_precision, cpu=cpu))

    @classmethod
    def for_trainer(cls) -> Parallel:
        """What a trainer uses when it is not given a :class:`Parallel`: data-parallel when
        the launcher started several processes, else the plain run (a one-process run is left
        exactly as it was, also on a GPU: the model stays where the caller put it)."""
        return cls.create() if launched_processes() > 1 else cls(None)

    # --- who and where -------------------------------------------------------------------

    @property
    def num_processes(self) -> int:
        return 1 if self.accelerator is None else self.accelerator.num_processes

    @property
    def process_index(self) -> int:
        return 0 if self.accelerator is None else self.accelerator.process_index

    @property
    def is_main_process(self) -> bool:
        """The process that writes files, prints and shows progress bars."""
        return self.accelerator is None or self.accelerator.is_main_process

    @property
    def device(self) -> torch.device | None:
        """Where this process computes (None in a plain run: wherever the model is)."""
        return None if self.accelerator is None else self.accelerator.device

    @property
    def mixed_precision(self) -> str:
        return "no" if self.accelerator is None else self.accelerator.mixed_precision

    def wait(self) -> None:
        """Block until every process gets here."""
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()

    # --- the model -----------------------------------------------------------------------

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None):
        """``(model, optimizer)`` ready to train here: on this process's device, wrapped for
        gradient averaging (DDP / FSDP / DeepSpeed, as launched) and mixed precision. Build
        learning-rate schedulers on the optimizer *before* this call and do not prepare them
        (accelerate would step them once per process)."""
        if self.accelerator is None:
            return model, optimizer
        if optimizer is None:
            return self.accelerator.prepare(model), None
        return self.accelerator.prepare(model, optimizer)

    def unwrap(self, model: nn.Module) -> nn.Module:
        """The model without its DDP / FSDP / compile wrappers (for saving, generating, or
        calling its own methods such as peft's ``disable_adapter``)."""
        return model if self.accelerator is None else self.accelerator.unwrap_model(model)

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``, through accelerate when there is one (loss scaling for fp16,
        DeepSpeed's engine)."""
        if self.accelerator is None:
            loss.backward()
        else:
            self.accelerator.backward(loss)

    def clip_grad_norm_(self, parameters: Iterable[nn.Parameter], max_norm: float) -> float:
        """Clip the (averaged) gradients to ``max_norm``; returns their norm before clipping.
        Under FSDP the norm is computed over every shard."""
        if self.accelerator is None:
            return float(nn.utils.clip_grad_norm_(list(parameters), max_norm))
        return float(self.accelerator.clip_grad_norm_(list(parameters), max_norm))

    def average_gradients(self, parameters: Iterable[nn.Parameter]) -> None:
        """Average the gradients across processes by hand: what DDP's backward hooks do, for a
        model whose loss needs several forward passes per step (DDP's wrapper allows one), such
        as a reward model scoring a batch in chunks. One all-reduce of all gradients at once.
        A no-op in one process."""
        if self.accelerator is None or self.num_processes == 1:
            return
        grads = [p.grad for p in parameters if p.grad is not None]
        if grads:
            flat = self.accelerator.reduce(torch.cat([g.reshape(-1) for g in grads]), "mean")
            for g, avg in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
                g.copy_(avg.view_as(g))

    # --- the data ------------------------------------------------------------------------

    def scale(self, local: float, total: float) -> float:
        """``W * local / total``: the factor for a loss averaged over this process's ``local``
        items (rows, tokens) so that DDP's average of the gradients is the gradient of the
        mean over all ``total`` items. 1 in a plain run."""
        if total <= 0:
            raise ValueError(f"total must be > 0, got {total}")
        return self.num_processes * local / total

    def _bounds(self, n: int) -> list[int]:
        """Start of each process's contiguous slice of n items (sizes differ by at most 1)."""
        w = self.num_processes
        return [r * (n // w) + min(r, n % w) for r in range(w + 1)]

    def shard_range(self, n: int) -> range:
        """This process's contiguous slice of ``range(n)`` (for work split across processes)."""
        b = self._bounds(n)
        return range(b[self.process_index], b[self.process_index + 1])

    def shard(self, index: torch.Tensor) -> Shard:
        """This process's rows of a global minibatch ``index`` (a 1-D tensor of row numbers):
        a contiguous slice, so W processes split B rows into sizes that differ by at most 1.
        A process left without rows (B < W) computes the first row with weight 0."""
        total = len(index)
        if total == 0:
            raise ValueError("the minibatch is empty")
        if self.accelerator is None:
            return Shard(index, total, total, 1.0)
        rows = self.shard_range(total)
        local = index[rows.start : rows.stop]
        if len(local) == 0:
            return Shard(index[:1], 0, total, 0.0)
        return Shard(local, len(local), total, self.scale(len(local), total))

    def mean(self, metrics: Mapping[str, float], weight: float) -> dict[str, float]:
        """Weighted mean of each process's numeric ``metrics`` (weight: rows or tokens
        behind them), the same on every process; the whole minibatch's values. Non-numeric
        entries are kept as they are. Every process must call it with the same keys."""
        if self.accelerator is None:
            return dict(metrics)
        keys = sorted(k for k, v in metrics.items() if isinstance(v, int | float))
        total, *sums = self._all_sum([float(weight)] + [float(weight) * metrics[k] for k in keys])
        means = {k: s / total if total > 0 else math.nan for k, s in zip(keys, sums, strict=True)}
        return {**metrics, **means}

    def sum(self, values: Mapping[str, float]) -> dict[str, float]:
        """Each of ``values`` summed over the processes (e.g. counts), the same everywhere."""
        if self.accelerator is None:
            return dict(values)
        keys = sorted(values)
        return dict(zip(keys, self._all_sum([values[k] for k in keys]), strict=True))

    def _all_sum(self, values: list[float]) -> list[float]:
        local = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        return self.accelerator.reduce(local, "sum").tolist()

    def gather_rows(self, local: torch.Tensor, n: int) -> torch.Tensor:
        """Put back together rows computed by every process on its :meth:`shard_range` of
        ``n``: ``(len(shard_range(n)), ...)`` here -> ``(n, ...)`` everywhere, in order."""
        if self.accelerator is None:
            return local
        bounds = self._bounds(n)
        sizes = [bounds[r + 1] - bounds[r] for r in range(self.num_processes)]
        if len(local) != sizes[self.process_index]:
            raise ValueError(
                f"process {self.process_index} holds {len(local)} rows but its shard_range({n}) "
                f"has {sizes[self.process_index]}"
            )
        width = max(sizes)  # all_gather needs equal shapes: pad, gather, cut the padding off
        padded = torch.zeros((width, *local.shape[1:]), dtype=local.dtype, device=self.device)
        padded[: len(local)] = local.to(self.device)
        gathered = self.accelerator.gather(padded).view(self.num_processes, width,
                                                        *local.shape[1:])  # fmt: skip
        return torch.cat([gathered[r, : sizes[r]] for r in range(self.num_processes)]).to(
            local.device
        )

    # --- saving --------------------------------------------------------------------------

    def save_pretrained(self, model: nn.Module, folder: str | Path) -> Path:
        """Write a Hugging Face model (or peft adapter) to ``folder`` from the main process, with
        the full weights gathered from every process first (FSDP and ZeRO-3 shard them). Every
        process must call it."""
        folder = Path(folder)
        if self.accelerator is None:
            model.save_pretrained(folder)
        else:
            self.wait()
            state = self.accelerator.get_state_dict(model)
            self.unwrap(model).save_pretrained(
                folder, is_main_process=self.is_main_process, save_function=self.accelerator.save,
                state_dict=state,
            )  # fmt: skip
        self.wait()
        return folder


# --- A DPO-style loop, data-parallel: the demo and the test's subject ------------------------


def tiny_causal_lm(vocab: int = 32, seed: int = 0):
    """A tiny random Llama (about 20k parameters), the same in every process."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=64, pad_token_id=0, eos_token_id=1,
                         bos_token_id=None)  # fmt: skip
    return LlamaForCausalLM(config).eval()


def toy_pairs(n: int, vocab: int = 32, seed: int = 0):
    """``n`` random preference pairs as one right-padded :class:`rlhf_lessons.lm.Batch` of 2n
    rows (chosen rows, then rejected), prompts of 3-6 tokens, responses of 2-5."""
    from rlhf_lessons.lm import Batch

    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        prompt = torch.randint(2, vocab, (int(torch.randint(3, 7, (1,), generator=g)),),
                               generator=g)  # fmt: skip
        for _ in range(2):
            length = int(torch.randint(2, 6, (1,), generator=g))
            rows.append((prompt.tolist(), torch.randint(2, vocab, (length,), generator=g).tolist()))
    return Batch.from_rows(rows[0::2] + rows[1::2], pad=0)  # chosen rows first, then rejected


def demo_dpo_loop(
    par: Parallel, pairs: int = 24, batch_size: int = 8, steps: int = 6, beta: float = 0.5,
    lr: float = 1e-2, seed: int = 0, save_to: str | None = None,
) -> list[dict]:  # fmt: skip
    """DPO on random pairs with a tiny model, data-parallel through ``par``; one dict of the
    whole minibatch's metrics per step (the same on every process). ``save_to``: write the
    trained model there (:meth:`Parallel.save_pretrained`)."""
    import torch.nn.functional as F

    from rlhf_lessons.lm import sequence_logprobs, token_logprobs

    model, batch = tiny_causal_lm(seed=seed), toy_pairs(pairs, seed=seed)
    # The reference once, each process on its slice of the 2n rows, then gathered.
    rows = par.shard_range(len(batch))
    with torch.no_grad():
        local = batch.rows(slice(rows.start, rows.stop)).trimmed()
        ref = sequence_logprobs(token_logprobs(model, local), local.completion_mask)
    ref = par.gather_rows(ref, len(batch))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model, optimizer = par.prepare(model, optimizer)
    order = torch.randperm(pairs, generator=torch.Generator().manual_seed(seed))
    log = []
    for step in range(steps):
        idx = order.roll(-step * batch_size)[:batch_size]  # the same global minibatch everywhere
        shard = par.shard(idx)
        mb = batch.rows(torch.cat([shard.index, shard.index + pairs])).trimmed()
        device = par.device or next(model.parameters()).device
        seq = sequence_logprobs(token_logprobs(model, mb.to(device)), mb.completion_mask.to(device))
        k = len(shard.index)
        h = (seq[:k] - ref[shard.index].to(device)) - (
            seq[k:] - ref[shard.index + pairs].to(device)
        )
        loss = -F.logsigmoid(beta * h).mean()
        optimizer.zero_grad()
        par.backward(loss * shard.scale)
        norm = par.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        metrics = {"loss": loss.item(), "accuracy": (h > 0).float().mean().item()}
        log.append({**par.mean(metrics, shard.rows), "grad_norm": norm, "step": step + 1})
    if save_to:
        par.save_pretrained(model, save_to)
    return log


def toy_sft_records(n: int, seed: int = 0) -> list[dict]:
    """``n`` prompt/completion records of random review-world words, of varied lengths (so the
    processes' shares hold different numbers of completion tokens)."""
    import random

    from rlhf_lessons.review_world.grammar import SPECIAL_TOKENS, vocabulary

    words = [w for w in vocabulary() if w not in SPECIAL_TOKENS]
    rng = random.Random(seed)
    return [{"prompt": " ".join(rng.choices(words, k=rng.randint(1, 5))),
             "completion": " ".join(rng.choices(words, k=rng.randint(1, 7)))}
            for _ in range(n)]  # fmt: skip


def _tiny_review_lm(seed: int):
    """A tiny review-world model trained from scratch (the same in every process) and its
    tokenizer."""
    from rlhf_lessons.review_world.grammar import build_tokenizer
    from rlhf_lessons.review_world.tiny_lm import TinyLMConfig, make_model

    tokenizer = build_tokenizer()
    config = TinyLMConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32, seed=seed)
    return make_model(config, tokenizer), tokenizer


def _curve(history, *columns: str) -> list[dict]:
    """One dict of ``columns`` (and ``step``, from 1) per step of a trainer's History."""
    return [
        {**{c: history.rows[c][i] for c in columns}, "step": i + 1} for i in range(len(history))
    ]


def demo_sft_run(
    par: Parallel, records: int = 24, batch_size: int = 8, steps: int = 6, lr: float = 1e-2,
    seed: int = 0,
) -> list[dict]:  # fmt: skip
    """:func:`~rlhf_lessons.alignment.sft.train_sft` itself, data-parallel through ``par``, on
    a tiny review-world model trained from scratch: one dict (``loss``, ``step``) per step."""
    from rlhf_lessons.alignment.sft import SFTConfig, train_sft

    model, tokenizer = _tiny_review_lm(seed)
    config = SFTConfig(lr=lr, epochs=4, batch_size=batch_size, max_steps=steps, warmup_steps=0,
                       chat=False, threads=None, seed=seed)  # fmt: skip
    history = train_sft(model, tokenizer, toy_sft_records(records, seed), config,
                        show_progress=False, parallel=par)  # fmt: skip
    return _curve(history, "loss")


def demo_dpo_run(
    par: Parallel, pairs: int = 24, batch_size: int = 8, steps: int = 6, lr: float = 1e-2,
    seed: int = 0,
) -> list[dict]:  # fmt: skip
    """:func:`~rlhf_lessons.alignment.dpo.train_dpo` itself, data-parallel through ``par``, on
    a tiny review-world model and random pairs: one dict (loss, accuracy, grad_norm) per step."""
    from rlhf_lessons.alignment.dpo import DPOConfig, train_dpo

    model, tokenizer = _tiny_review_lm(seed)
    records = toy_sft_records(2 * pairs, seed)
    data = [{"prompt": a["prompt"], "chosen": a["completion"], "rejected": b["completion"]}
            for a, b in zip(records[::2], records[1::2], strict=True)]  # fmt: skip
    config = DPOConfig(lr=lr, beta=0.5, epochs=4, batch_size=batch_size, max_steps=steps,
                       max_prompt_length=None, max_completion_length=None, threads=None,
                       seed=seed)  # fmt: skip
    history = train_dpo(model, tokenizer, data, config, show_progress=False, parallel=par)
    return _curve(history, "loss", "accuracy", "grad_norm")


def demo_reward_run(
    par: Parallel, records: int = 24, batch_size: int = 8, steps: int = 6, lr: float = 1e-2,
    seed: int = 0, mode: str = "kwise",
) -> list[dict]:  # fmt: skip
    """:func:`~rlhf_lessons.rewards.reward_model.train_reward_model` itself, data-parallel
    through ``par``: a last-token reward head on a tiny review-world model, on rankings of 3
    random completions (``mode`` "kwise" or "pairs"); one dict (loss, accuracy, margin) per
    step. Dropout off, so one process and several draw nothing at random."""
    from rlhf_lessons.rewards.reward_model import (
        CausalLMRewardModel,
        RewardModelConfig,
        train_reward_model,
    )

    lm, tokenizer = _tiny_review_lm(seed)
    model = CausalLMRewardModel(lm, tokenizer, format_prompts=False, max_prompt_length=None,
                                max_completion_length=None, seed=seed)  # fmt: skip
    texts = toy_sft_records(3 * records, seed)
    data = [{"prompt": texts[i]["prompt"], "ranked_outputs": [t["completion"] for t in
             texts[i : i + 3]]} for i in range(0, 3 * records, 3)]  # fmt: skip
    config = RewardModelConfig(mode=mode, lr=lr, epochs=4, batch_size=batch_size,
                               max_steps=steps, dropout=False, seed=seed)  # fmt: skip
    history = train_reward_model(model, None, data, config, show_progress=False, parallel=par)
    return _curve(history, "loss", "accuracy", "margin")


DEMOS = {"dpo": demo_dpo_loop, "sft": demo_sft_run, "dpo_trainer": demo_dpo_run,
         "reward_trainer": demo_reward_run}  # fmt: skip


if __name__ == "__main__":
    # torchrun --nproc_per_node 2 -m rlhf_lessons.distributed [out.json ['[{...kwargs}, ...]']]
    import json
    import sys

    torch.set_num_threads(1)
    parallel = Parallel.create(cpu=True)
    runs = json.loads(sys.argv[2]) if len(sys.argv) > 2 else [{}]
    # each run: the demo's keyword arguments, and "demo": "dpo" (default) or "sft"
    curves = [DEMOS[kw.pop("demo", "dpo")](parallel, **kw) for kw in (dict(r) for r in runs)]
    if parallel.is_main_process:
        engine = "none" if parallel.accelerator is None else \
            parallel.accelerator.distributed_type.value  # fmt: skip
        text = json.dumps({"processes": parallel.num_processes, "engine": engine, "curves": curves})
        Path(sys.argv[1]).write_text(text) if len(sys.argv) > 1 else print(text)
    if parallel.accelerator is not None and torch.distributed.is_initialized():
        # every rank leaves together and tears gloo down before exit: a process group left to
        # the interpreter's shutdown can abort ("terminate called without an active exception")
        parallel.accelerator.wait_for_everyone()
        torch.distributed.destroy_process_group()
