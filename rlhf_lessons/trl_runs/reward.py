"""TRL's ``RewardTrainer`` on the same model, pairs and settings as our pairs-mode trainer.

Lesson 04 checks :func:`~rlhf_lessons.rewards.reward_model.train_reward_model` (``mode="pairs"``)
against ``trl.RewardTrainer``: both minimise the Bradley-Terry loss -log sigma(r_chosen -
r_rejected) over shuffled pairs. :func:`run` makes TRL see, step for step, what ours sees:

- the same model: a Hugging Face ``...ForSequenceClassification`` with one label (TRL's own
  reward-model class), given as an :class:`~rlhf_lessons.rewards.reward_model.HFSequenceScorer`
  (or as the bare model); start both runs from copies of the same weights;
- the same tokens: each pair pre-tokenised into ``chosen_ids`` / ``rejected_ids`` with the
  scorer's own ``[CLS] prompt [SEP] response [SEP]`` ids (pre-tokenising also sidesteps TRL's
  add-EOS step, which fails on BERT tokenizers: they have no EOS token);
- the same batches: :func:`~rlhf_lessons.rewards.reward_model.reward_batches`' pairs, in order
  (TRL's default sampler would reshuffle them with its own seed);
- the same optimiser: fused AdamW, the learning rate decaying linearly to 0 over the steps run,
  gradients clipped at ``max_grad_norm``, dropout as ``config.dropout``, fp32 on the CPU.

Then the per-step losses agree to float rounding; :class:`~rlhf_lessons.trl_runs.TRLRun`'s
history holds ``loss``, ``accuracy``, ``margin`` and ``seconds``, named as in ours.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from dataclasses import asdict

from rlhf_lessons.course.device import torch_threads
from rlhf_lessons.rewards.reward_model import (
    HFSequenceScorer,
    RewardModelConfig,
    check_records,
    reward_batches,
)
from rlhf_lessons.training import History
from rlhf_lessons.trl_runs import TRLRun, in_order, quiet_bars, step_clock


def trl_pairs_dataset(scorer: HFSequenceScorer, batches):
    """The pairs of ``batches``, in order, as the pre-tokenised ``datasets.Dataset`` TRL reads."""
    from datasets import Dataset

    pairs = [p for batch in batches for p in batch]
    return Dataset.from_dict({
        "chosen_ids": [scorer.token_ids(p["prompt"], p["chosen"]) for p in pairs],
        "rejected_ids": [scorer.token_ids(p["prompt"], p["rejected"]) for p in pairs],
    })  # fmt: skip


#: TRL's logged names -> the names of our trainer's History columns
COLUMNS = {"loss": "loss", "accuracy": "accuracy", "margin": "margin"}


def run(
    algo: str,
    policy,
    tokenizer,
    data,
    config: RewardModelConfig | None = None,
    *,
    reward_fn=None,
    show_progress: bool = False,
) -> TRLRun:
    """Train ``policy`` (in place) on the pairs of the ranked records ``data`` with TRL's
    ``RewardTrainer`` at the settings of ``config`` (``mode="pairs"``; see the module
    docstring). ``reward_fn`` must be None: the reward model is what is trained."""
    from transformers import PrinterCallback, ProgressCallback
    from transformers.utils.notebook import NotebookProgressCallback
    from trl import RewardConfig, RewardTrainer

    if algo != "reward":
        raise ValueError(f"the reward backend runs algo='reward', got {algo!r}")
    if reward_fn is not None:
        raise ValueError("reward_fn must be None: RewardTrainer trains the reward model itself")
    cfg = config or RewardModelConfig(mode="pairs")
    if cfg.mode != "pairs":
        raise ValueError(
            f"TRL's RewardTrainer trains on shuffled pairs: pass a config with mode='pairs', not "
            f"{cfg.mode!r}"
        )
    scorer = policy if isinstance(policy, HFSequenceScorer) else HFSequenceScorer(policy, tokenizer)
    batches = reward_batches(check_records(data), cfg)
    if any(len(b) != cfg.batch_size for b in batches[:-1]):
        raise ValueError(
            "TRL cuts its batches from one list of pairs, so every batch but the last must be "
            f"full ({cfg.batch_size} pairs): use epochs=1, or a batch_size that divides the pairs"
        )
    model = scorer.model
    with (
        tempfile.TemporaryDirectory() as out,
        torch_threads(cfg.threads),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore", FutureWarning)  # transformers 5 deprecations inside TRL
        args = RewardConfig(
            output_dir=out, per_device_train_batch_size=cfg.batch_size, num_train_epochs=1,
            max_steps=len(batches), learning_rate=cfg.lr, lr_scheduler_type="linear",
            warmup_steps=0, weight_decay=cfg.weight_decay,
            max_grad_norm=cfg.max_grad_norm if cfg.max_grad_norm is not None else 0.0,
            disable_dropout=not cfg.dropout, seed=cfg.seed, data_seed=cfg.seed, use_cpu=True,
            bf16=False, fp16=False, gradient_checkpointing=False, report_to="none",
            save_strategy="no", logging_steps=1, disable_tqdm=True, max_length=None,
            dataloader_num_workers=0,
        )  # fmt: skip
        with quiet_bars():  # TRL's dataset.map calls
            trainer = in_order(RewardTrainer)(
                model=model, args=args, train_dataset=trl_pairs_dataset(scorer, batches),
                processing_class=scorer.tokenizer,
            )  # fmt: skip
        for callback in (PrinterCallback, ProgressCallback, NotebookProgressCallback):
            trainer.remove_callback(callback)
        desc = "TRL RewardTrainer" if show_progress else None  # our bar in place of TRL's
        clock = step_clock(COLUMNS, len(batches), desc)
        trainer.add_callback(clock)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    history = History("reward_trl", asdict(cfg), info={"pairs": sum(len(b) for b in batches)})
    for row in clock.rows:
        history.log(**row)
    model.eval()
    return TRLRun(algo, "RewardTrainer", model, history, seconds, list(trainer.state.log_history))
