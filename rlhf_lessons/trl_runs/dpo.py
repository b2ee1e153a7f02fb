"""DPO, IPO, the hinge loss and SimPO through TRL, side by side with
:func:`rlhf_lessons.alignment.dpo.train_dpo` (lessons 06-07 and ``benchmarks/dpo_step.py``)::

    run = train_with_trl("dpo", add_lora(model, seed=0), tokenizer, pairs, DPOConfig.dpo(...))

TRL 1.x trains DPO, IPO and the hinge loss with ``trl.DPOTrainer`` and SimPO with
``trl.experimental.cpo.CPOTrainer`` (``loss_type="simpo"``, ``cpo_alpha=0``: CPO's extra NLL
term off). :func:`run` gives TRL the settings of a :class:`~rlhf_lessons.alignment.dpo.DPOConfig`
so that, step for step, TRL sees what our trainer sees:

- the same texts: prompts rendered with the chat template by our
  :func:`~rlhf_lessons.alignment.dpo_data.pair_texts` and handed to TRL as plain strings, EOS
  appended to each response (TRL's tokens are compared with ours in the tests);
- the same minibatches: the pairs in :func:`~rlhf_lessons.alignment.dpo.pair_order`'s order,
  read sequentially (TRL's default sampler would reshuffle them with its own seed);
- the same optimiser: AdamW with no weight decay is Adam; a constant learning rate after
  ``warmup_steps`` (TRL's default decays it linearly to 0; ours does not), gradients clipped at
  ``max_grad_norm``; fp32 on the CPU, dropout off, no gradient checkpointing;
- the same reference: with a LoRA policy, the base model with the adapter disabled, its
  log-probs computed once before training (``precompute_ref_log_probs=True``);
- the same global batch under ``torchrun``: each process takes ``batch_size / W`` rows.

Start both runs from the same weights (e.g. :func:`~rlhf_lessons.alignment.lora.add_lora` with
the same seed on freshly loaded models) and their loss curves agree to float rounding.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict

import torch

from rlhf_lessons.alignment.dpo import DPOConfig, pair_order, pair_texts
from rlhf_lessons.course.device import torch_threads
from rlhf_lessons.training import History
from rlhf_lessons.trl_runs import TRLRun, in_order, quiet_bars, step_clock

_TRL_LOSS = {"dpo": "sigmoid", "ipo": "ipo", "hinge": "hinge"}


def trl_dataset(tokenizer, pairs: Sequence[Mapping], config: DPOConfig):
    """``pairs`` as the ``datasets.Dataset`` TRL reads: standard-format strings (prompt already
    rendered with the chat template, as :func:`~rlhf_lessons.alignment.dpo.pair_texts` gives our
    trainer), rows in the order our trainer visits them (all epochs, one after another; with
    ``config.max_steps``, only the pairs of those steps, so TRL's reference pass covers no more)."""
    from datasets import Dataset

    prompts, chosen, rejected = pair_texts(tokenizer, pairs)
    order = torch.cat(pair_order(len(prompts), config)).tolist()
    if config.max_steps is not None:
        order = order[: config.max_steps * config.batch_size]
    return Dataset.from_dict({"prompt": [prompts[i] for i in order],
                              "chosen": [chosen[i] for i in order],
                              "rejected": [rejected[i] for i in order]})  # fmt: skip


def trl_config(
    config: DPOConfig, n_pairs: int, max_length: int, output_dir: str, show_progress: bool = False
):
    """The ``trl.DPOConfig`` (DPO, IPO, hinge) or ``CPOConfig`` (SimPO) matching ``config``.

    The dataset already holds every epoch (:func:`trl_dataset`), so TRL runs one epoch over it;
    ``max_steps`` caps it like ours. ``max_length`` should be the longest prompt + response
    (:func:`_longest`), so that TRL cuts no pair.
    """
    from trl import DPOConfig as TRLDPOConfig
    from trl.experimental.cpo import CPOConfig

    from rlhf_lessons.distributed import launched_processes

    steps = -(-n_pairs // config.batch_size) * config.epochs
    if config.max_steps is not None:
        steps = min(steps, config.max_steps)
    # under torchrun each of W processes reads every W-th batch of the ordered dataset, so
    # batches of batch_size / W rows make each step one of our minibatches
    world = launched_processes()
    if config.batch_size % world:
        raise ValueError(f"batch_size {config.batch_size} does not split over {world} processes:"
                         f" make it a multiple of {world}")  # fmt: skip
    common = dict(
        output_dir=output_dir, per_device_train_batch_size=config.batch_size // world,
        gradient_accumulation_steps=1, num_train_epochs=1, max_steps=steps,
        learning_rate=config.lr, lr_scheduler_type="constant_with_warmup",
        warmup_steps=config.warmup_steps, weight_decay=0.0, max_grad_norm=config.max_grad_norm,
        beta=config.beta, max_length=max_length, disable_dropout=True, seed=config.seed,
        use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False, report_to="none",
        save_strategy="no", logging_steps=1, disable_tqdm=not show_progress,
        dataloader_num_workers=0, remove_unused_columns=False,
    )  # fmt: skip
    if config.loss == "simpo":
        return CPOConfig(**common, loss_type="simpo", cpo_alpha=0.0, simpo_gamma=config.gamma,
                         label_smoothing=config.label_smoothing)  # fmt: skip
    return TRLDPOConfig(**common, loss_type=[_TRL_LOSS[config.loss]],
                        label_smoothing=config.label_smoothing,
                        precompute_ref_log_probs=True)  # fmt: skip


def _longest(tokenizer, pairs, config: DPOConfig) -> int:
    """The longest prompt + response (EOS included) in tokens, after checking that neither
    trainer would truncate: ours cuts prompt and response separately, TRL cuts their sum."""
    prompts, chosen, rejected = pair_texts(tokenizer, pairs)

    def n_tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    p_len = [n_tokens(p) for p in prompts]
    r_len = [max(n_tokens(c), n_tokens(r)) + 1 for c, r in zip(chosen, rejected, strict=True)]
    for name, lengths, limit in (("prompt", p_len, config.max_prompt_length),
                                 ("completion", r_len, config.max_completion_length)):  # fmt: skip
        if limit is not None and max(lengths) > limit:
            raise ValueError(
                f"pairs[{lengths.index(max(lengths))}] has a {name} of {max(lengths)} tokens but "
                f"config.max_{name}_length is {limit}: the two trainers truncate differently, so "
                "compare them on pairs that neither cuts (raise the limit or drop long pairs)"
            )
    return max(p + r for p, r in zip(p_len, r_len, strict=True))


def _on_shared_disk(dataset, stack: contextlib.ExitStack):
    """``dataset`` saved in one folder that every process reads (under torchrun). TRL's
    DPOTrainer writes the reference log-probs next to the dataset's files on the main process
    and reads them back on every process, so they must share that folder; removed on exit."""
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list
    from datasets import Dataset

    state = PartialState()
    folder = [tempfile.mkdtemp(prefix="rlhf-lessons-trl-") if state.is_main_process else None]
    broadcast_object_list(folder, from_process=0)
    if state.is_main_process:
        dataset.save_to_disk(f"{folder[0]}/data")
        stack.callback(shutil.rmtree, folder[0], ignore_errors=True)
    stack.callback(state.wait_for_everyone)  # runs first: nobody reads a removed folder
    state.wait_for_everyone()
    return Dataset.load_from_disk(f"{folder[0]}/data")


#: TRL's logged names -> the names of our trainer's History columns
COLUMNS = {"loss": "loss", "rewards/chosen": "rewards_chosen", "rewards/rejected":
           "rewards_rejected", "rewards/margins": "margin", "rewards/accuracies": "accuracy",
           "logps/chosen": "logps_chosen", "logps/rejected": "logps_rejected",
           "grad_norm": "grad_norm", "learning_rate": "lr", "epoch": "epoch"}  # fmt: skip


def run(
    algo: str,
    policy,
    tokenizer,
    pairs: Sequence[Mapping],
    config: DPOConfig | None = None,
    *,
    reward_fn=None,
    show_progress: bool = False,
) -> TRLRun:
    """Train ``policy`` (changed in place; a peft LoRA model or a plain causal LM) on ``pairs``
    with TRL's ``DPOTrainer`` (``algo`` "dpo", "ipo", "hinge") or ``CPOTrainer`` ("simpo"), at
    the settings of ``config`` (default ``DPOConfig(loss=algo)``; see the module docstring and
    :func:`trl_config`). Called as ``train_with_trl(algo, ...)``
    (:func:`rlhf_lessons.trl_runs.train_with_trl`).

    A plain (non-peft) policy is its own reference in TRL only through a second copy; pass a
    LoRA model, whose reference is the base with the adapter disabled, as in our trainer.

    Returns a :class:`~rlhf_lessons.trl_runs.TRLRun` whose ``history`` has TRL's per-step
    ``loss``, ``rewards_chosen``, ``rewards_rejected``, ``margin``, ``accuracy``, ... (our
    trainer's column names) and ``seconds`` (wall-clock since training began).
    """
    from transformers import PrinterCallback
    from trl import DPOTrainer
    from trl.experimental.cpo import CPOTrainer

    cfg = config or DPOConfig(loss=algo)
    if cfg.loss != algo:
        raise ValueError(f"algo is {algo!r} but config.loss is {cfg.loss!r}: they must agree")
    if reward_fn is not None:
        raise ValueError("the DPO family learns from pairs: reward_fn must be None")
    max_length = _longest(tokenizer, pairs, cfg)
    dataset = trl_dataset(tokenizer, pairs, cfg)
    trainer_cls = in_order(CPOTrainer if cfg.loss == "simpo" else DPOTrainer)
    clock = step_clock(COLUMNS)  # TRL's own bar shows with show_progress
    with tempfile.TemporaryDirectory() as out, torch_threads(cfg.threads), \
            warnings.catch_warnings(), contextlib.ExitStack() as stack:  # fmt: skip
        # transformers 5 deprecations inside TRL / peft, and CPOTrainer's "experimental" notice
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        args = trl_config(cfg, len(pairs), max_length, out, show_progress)
        if args.world_size > 1:
            dataset = _on_shared_disk(dataset, stack)
        # TRL's datasets.map calls and its reference pass show bars too
        with quiet_bars(not show_progress):
            trainer = trainer_cls(model=policy, args=args, train_dataset=dataset,
                                  processing_class=tokenizer, callbacks=[clock])  # fmt: skip
            trainer.remove_callback(PrinterCallback)  # no dict printed per step
            start = time.perf_counter()
            trainer.train()
        seconds = time.perf_counter() - start
    history = History(algo, asdict(cfg), info={"trainer": trainer_cls.__name__})
    for row in clock.rows:
        history.log(**row)
    return TRLRun(algo, trainer_cls.__name__, trainer.accelerator.unwrap_model(trainer.model),
                  history, seconds, list(trainer.state.log_history))  # fmt: skip
