"""RLOO and GRPO through TRL's ``RLOOTrainer`` / ``GRPOTrainer``, at the settings of a
:class:`~rlhf_lessons.alignment.rloo_grpo.GroupPGConfig` (lesson 05, ``benchmarks/grpo_step.py``).

Our iteration (``batch_size = prompts_per_iteration * k`` completions, then ``epochs`` x
``minibatches`` Adam steps) is TRL's generation batch: ``per_device_train_batch_size =
batch_size / minibatches``, ``steps_per_generation = minibatches``, ``num_iterations = epochs``,
``max_steps = iterations * minibatches * epochs``. The learning rate is constant (TRL's default
decays it linearly to 0), there is no weight decay (AdamW is then Adam), dropout is off, fp32 on
the CPU. The EOS penalty becomes a second TRL reward function. GRPO's loss and KL follow the
config (``loss_type``, ``kl_ratio_correction`` -> ``use_bias_correction_kl``), so the paper's
loss runs on both sides unless a variant is asked for.

TRL builds its reference model itself by loading ``policy.config._name_or_path`` again: the
policy must be (a copy of) a model loaded from a folder, such as
``copy.deepcopy(load_sft_model()[0])``, and that folder is the reference.
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import replace

from rlhf_lessons.alignment.rloo_grpo import METHODS, GroupPGConfig
from rlhf_lessons.course.device import torch_threads
from rlhf_lessons.training import History, RewardFn
from rlhf_lessons.trl_runs import TRLRun

#: TRL's log key -> our History column (one row per optimizer step)
COLUMNS = {
    "reward": "score",  # what TRL optimised: reward_fn plus the EOS penalty
    "rewards/true_reward/mean": "raw_score",  # reward_fn alone
    "kl": "kl_per_token",  # TRL's mean per-token KL (k1 for RLOO, k3 for GRPO) at sampling
    "completions/mean_length": "length",
    "loss": "loss",
    "grad_norm": "grad_norm",
}


def trl_config(config: GroupPGConfig, output_dir: str, show_progress: bool = False):
    """The ``trl.RLOOConfig`` / ``trl.GRPOConfig`` that matches ``config`` (module docstring)."""
    from trl import GRPOConfig, RLOOConfig

    common = dict(
        output_dir=output_dir, per_device_train_batch_size=config.batch_size // config.minibatches,
        steps_per_generation=config.minibatches, gradient_accumulation_steps=1,
        num_iterations=config.epochs,
        max_steps=config.iterations * config.minibatches * config.epochs,
        num_generations=config.k, max_completion_length=config.max_new_tokens,
        temperature=config.temperature, top_k=0, top_p=1.0,
        learning_rate=config.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        adam_epsilon=config.adam_eps, max_grad_norm=config.max_grad_norm,
        beta=config.beta, epsilon=config.clip_eps, epsilon_high=config.clip_eps_high,
        disable_dropout=True, seed=config.seed, use_cpu=True, bf16=False, fp16=False,
        report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=not show_progress,
        dataloader_num_workers=0,
    )  # fmt: skip
    if config.method == "rloo":
        return RLOOConfig(**common, normalize_advantages=config.normalize_advantages)
    return GRPOConfig(
        **common, loss_type=config.loss_type, scale_rewards=config.scale_rewards,
        use_bias_correction_kl=config.kl_ratio_correction,
    )  # fmt: skip


def trl_reward_functions(reward_fn: RewardFn, eos_token_id: int, missing_eos_penalty: float | None):
    """``reward_fn`` as TRL reward functions: ``true_reward`` and, with a penalty, a second one
    ``missing_eos_penalty`` (-penalty for a completion without EOS). TRL sums them and logs
    each one's mean, so the true reward stays visible next to what was optimised."""

    def true_reward(prompts, completions, **kwargs):
        return [float(x) for x in reward_fn(list(prompts), list(completions))]

    def missing_eos_penalty_fn(prompts, completions, completion_ids, **kwargs):
        # TRL cuts each completion after its first EOS and keeps that EOS
        return [0.0 if ids and ids[-1] == eos_token_id else -float(missing_eos_penalty)
                for ids in completion_ids]  # fmt: skip

    missing_eos_penalty_fn.__name__ = "missing_eos_penalty"
    return [true_reward, missing_eos_penalty_fn] if missing_eos_penalty else [true_reward]


def run(
    algo: str,
    policy,
    tokenizer,
    data: Sequence[str],
    config: GroupPGConfig | None = None,
    *,
    reward_fn: RewardFn | None = None,
    show_progress: bool = False,
) -> TRLRun:
    """Train ``policy`` (changed in place) on the prompts ``data`` with ``trl.RLOOTrainer``
    (``algo="rloo"``) or ``trl.GRPOTrainer`` (``"grpo"``) at the settings of ``config``
    (default: ``GroupPGConfig.rloo()`` / ``.grpo()``; its ``method`` is set to ``algo``).

    Returns a :class:`~rlhf_lessons.trl_runs.TRLRun` whose history has one row per optimizer
    step with the columns of :data:`COLUMNS` and ``seconds`` (TRL's cumulative ``step_time``:
    sampling, scoring and the update).
    """
    from datasets import Dataset
    from transformers import PrinterCallback
    from transformers.utils import logging as hf_logging
    from trl import GRPOTrainer, RLOOTrainer

    if algo not in METHODS:
        raise ValueError(f"algo must be one of {METHODS}, got {algo!r}")
    if reward_fn is None:
        raise ValueError(f"{algo} needs reward_fn=(prompts, completions) -> scores")
    cfg = replace(config or getattr(GroupPGConfig, algo)(), method=algo)
    source = getattr(policy.config, "_name_or_path", "")
    if cfg.beta > 0 and not (source and os.path.isdir(source)):
        raise ValueError(
            f"TRL loads its reference model from policy.config._name_or_path ({source!r}), which "
            "is not a folder: pass a copy of a model loaded from disk (e.g. load_sft_model()), "
            "or save the reference with save_pretrained and load the policy from there"
        )
    if len(set(data)) < cfg.prompts_per_iteration:
        raise ValueError(
            f"data has fewer than prompts_per_iteration = {cfg.prompts_per_iteration} distinct "
            "prompts"
        )
    if tokenizer.eos_token_id is None or tokenizer.pad_token_id is None:
        raise ValueError("TRL's trainers need a tokenizer with an EOS and a pad token")
    dataset = Dataset.from_dict({"prompt": list(data)})
    rewards = trl_reward_functions(reward_fn, tokenizer.eos_token_id, cfg.missing_eos_penalty)
    trainer_cls = RLOOTrainer if algo == "rloo" else GRPOTrainer
    bars = hf_logging.is_progress_bar_enabled()
    with (
        tempfile.TemporaryDirectory() as out,
        torch_threads(cfg.threads),
        warnings.catch_warnings(),
    ):
        # transformers 5 renames gradient_checkpointing; TRL still uses the old names
        warnings.simplefilter("ignore", FutureWarning)
        if not show_progress:  # no "Loading weights" bar when TRL loads its reference model
            hf_logging.disable_progress_bar()
        try:
            trainer = trainer_cls(
                model=policy, reward_funcs=rewards, args=trl_config(cfg, out, show_progress),
                train_dataset=dataset, processing_class=tokenizer,
            )  # fmt: skip
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        trainer.remove_callback(PrinterCallback)  # no dict printed per step
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    model = trainer.accelerator.unwrap_model(trainer.model)
    model.__dict__.pop("forward", None)  # undo TRL's add_fused_lm_head: the plain forward again
    history = History(algo, {**vars(cfg), "trainer": trainer_cls.__name__})
    clock = 0.0
    for row in (h for h in trainer.state.log_history if "reward" in h):
        clock += float(row.get("step_time", 0.0))
        history.log(seconds=clock, **{ours: float(row[theirs]) for theirs, ours in COLUMNS.items()
                                      if theirs in row})  # fmt: skip
    return TRLRun(algo, trainer_cls.__name__, model, history, seconds,
                  list(trainer.state.log_history))  # fmt: skip
