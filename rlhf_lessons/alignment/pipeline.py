"""Fine-tuning pipelines: SFT, self-rewarding DPO, external-reward DPO and SPIN, in any order.

After lucidrains/self-rewarding-lm-pytorch, whose trainer takes a list of stage configs and
saves a checkpoint after each. The self-rewarding paper's run (Yuan et al. 2024, arXiv
2401.10020) is ``[SFTStage(IFT + EFT), SelfRewardStage, SelfRewardStage]`` (M1, M2, M3); its
README also suggests interleaving, e.g. SFT -> SPIN -> external-reward DPO -> self-reward DPO ->
SPIN -> self-reward DPO. Every stage starts from the model the previous one left:

- :class:`SFTStage`: next-token loss on the completions of ``{"prompt", "completion"}`` records
  (:func:`train_sft`).
- :class:`SelfRewardStage`: optionally writes new prompts from few-shot seed prompts, samples
  N candidates, judges them with the model itself, keeps (best, worst) pairs and runs DPO
  (:mod:`rlhf_lessons.alignment.self_rewarding`).
- :class:`ExternalRewardDPOStage`: the same, but a given reward scores the candidates: a reward
  model, a pairwise ranker turned into scores, or any ``(prompts, completions) -> scores``.
- :class:`SPINStage`: one SPIN iteration (:mod:`rlhf_lessons.alignment.spin`).

Every stage returns the :class:`~rlhf_lessons.training.History` of its training (SFT or DPO)
and metrics about its data (pairs kept, prompts skipped and why, the judge's agreement with a
known reward). Every stage has a ``seed``: stage i is seeded with it (default i), and it
replaces the seeds of the stage's configs, so one number decides a stage's every random draw.
Two stages with the same seed on the same model see the same prompts and candidates (a
self-rewarding round and its external-reward control differ only in the judge).

**The reference of every DPO stage is the model the stage starts from** (M_t), as in both
papers. With full weights, :func:`rlhf_lessons.alignment.dpo.train_dpo` takes the policy before its first
update as the reference. With ``lora=...`` each stage trains a *fresh* adapter on top of the
model so far and merges it afterwards, so "the adapter disabled" is again M_t.

**Checkpoints and resuming.** Stage i writes ``output_dir/<i>-<name>/``: the model (full
weights) or the adapter (LoRA), the tokenizer, ``stage.json`` (the stage's metrics, its
history and the evaluation after it) and ``data.json`` (its pairs and, for the self-rewarding stages, every
candidate and judgement). A folder is written under a temporary name and renamed when complete.
Calling :func:`run_pipeline` again with the same ``output_dir`` skips the finished stages:
it loads their checkpoints (a full-weight run loads the last one; a LoRA run merges each saved
adapter into the starting model in order) and their saved metrics, and continues with the
first unfinished stage.
"""

from __future__ import annotations

import json
import math
import shutil
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from rlhf_lessons.alignment.dpo import DPOConfig, add_lora, train_dpo
from rlhf_lessons.alignment.self_rewarding import (
    PromptWriterConfig,
    SelfRewardConfig,
    build_pairs,
    format_prompts,
    generate_candidates,
    generate_prompts,
    judge_agreement,
    self_reward_round,
)
from rlhf_lessons.alignment.sft import SFTConfig, train_sft
from rlhf_lessons.alignment.spin import SPINConfig, spin_pairs
from rlhf_lessons.course.cache import save_folder_atomically
from rlhf_lessons.course.device import torch_threads
from rlhf_lessons.course.seeding import seed_everything
from rlhf_lessons.run_log import jsonable
from rlhf_lessons.training import History, RewardFn

STAGE_FILE = "stage.json"
DATA_FILE = "data.json"
RUN_FILE = "run.json"


@dataclass
class StageOutput:
    """What a stage returns (see the module docstring): ``history`` is None when there was
    nothing to train on; ``metrics`` go to ``stage.json``, ``data`` to ``data.json``."""

    history: History | None
    metrics: dict
    data: dict = field(default_factory=dict)


def _seeded(config, seed: int | None):
    """``config`` with its ``seed`` replaced by the stage's (when the stage has one)."""
    return config if seed is None else replace(config, seed=seed)


@dataclass
class SFTStage:
    """Supervised fine-tuning on ``{"prompt", "completion"}`` records (e.g. IFT + EFT).
    ``seed``, as in every stage: replaces its configs' seeds (None: keep them)."""

    data: Sequence[Mapping]
    config: SFTConfig = field(default_factory=SFTConfig)
    name: str = "sft"
    seed: int | None = None
    kind: ClassVar[str] = "sft"

    def run(self, model, tokenizer, show_progress: bool) -> StageOutput:
        history = train_sft(model, tokenizer, self.data, _seeded(self.config, self.seed),
                            show_progress=show_progress)  # fmt: skip
        return StageOutput(history, {"examples": history.examples})


def _train_on_pairs(stage, model, tokenizer, pairs: list[dict], show_progress: bool):
    """DPO with the stage's (seeded) ``dpo`` config; None without pairs (the model stays)."""
    if not pairs:
        return None
    dpo = _seeded(stage.dpo, stage.seed)
    return train_dpo(model, tokenizer, pairs, dpo, show_progress=show_progress)


def _round_prompts(stage, model, tokenizer, seed: int) -> tuple[list[str], int, dict]:
    """A round's prompts (see :class:`SelfRewardStage`), how many are new and why the model's
    other attempts were rejected."""
    prompts, new, rejected = list(stage.prompts), [], {}
    if not prompts and not stage.n_new_prompts:
        raise ValueError(f"stage {stage.name!r}: give prompts, or n_new_prompts > 0, or both")
    if stage.n_new_prompts:
        model.eval()
        pool = stage.prompts if stage.few_shot_prompts is None else stage.few_shot_prompts
        with torch_threads(stage.config.threads):
            new, rejected = generate_prompts(model, tokenizer, pool, stage.n_new_prompts,
                                             stage.prompt_writer, seed=seed,
                                             batch_size=stage.config.batch_size)  # fmt: skip
    if not prompts + new:
        raise RuntimeError(
            f"stage {stage.name!r}: the model wrote no usable prompt ({dict(rejected)}); "
            "check prompt_writer, or give seed prompts"
        )
    return prompts + new, len(new), dict(rejected)


@dataclass
class SelfRewardStage:
    """One self-rewarding iteration M_t -> M_{t+1} (:mod:`rlhf_lessons.alignment.self_rewarding`).

    The round's prompts are ``prompts`` (user messages, may be empty) followed by
    ``n_new_prompts`` prompts the model writes itself from few-shot examples drawn from
    ``few_shot_prompts`` (default: ``prompts``) as ``prompt_writer`` says. ``monitor``: a known
    reward used only to *measure* the judge (:func:`rlhf_lessons.alignment.self_rewarding.
    judge_agreement`), never to train."""

    prompts: Sequence[str] = ()
    config: SelfRewardConfig = field(default_factory=SelfRewardConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    n_new_prompts: int = 0
    few_shot_prompts: Sequence[str] | None = None
    prompt_writer: PromptWriterConfig | None = None
    monitor: RewardFn | None = None
    name: str = "self-reward"
    seed: int | None = None
    kind: ClassVar[str] = "self-reward"

    def run(self, model, tokenizer, show_progress: bool) -> StageOutput:
        config = _seeded(self.config, self.seed)
        prompts, n_new, rejected = _round_prompts(self, model, tokenizer, config.seed)
        data = self_reward_round(model, tokenizer, prompts, config, show_progress)
        metrics = {**data.summary(), "new_prompts": n_new, "prompts_rejected": rejected}
        if self.monitor is not None:
            metrics["judge"] = judge_agreement(data, self.monitor)
        lengths = [len(tokenizer(c, add_special_tokens=False)["input_ids"])
                   for cands in data.candidates for c in cands]  # fmt: skip
        metrics["candidate_tokens"] = float(np.mean(lengths))
        history = _train_on_pairs(self, model, tokenizer, data.pairs, show_progress)
        saved = {"prompts": data.prompts, "candidates": data.candidates,
                 "scores": data.judgements.scores, "reasons": data.judgements.reasons,
                 "judge_texts": data.judgements.texts, "pairs": data.pairs,
                 "decisions": [c.reason for c in data.choices]}  # fmt: skip
        return StageOutput(history, metrics, saved)


@dataclass
class ExternalRewardDPOStage:
    """A :class:`SelfRewardStage` whose judge is ``reward_fn(prompts, completions)``
    (``config``'s judge settings are unused): with the same ``seed`` and starting model, only
    the judge differs (the ceiling, when ``reward_fn`` is the true reward)."""

    prompts: Sequence[str]
    reward_fn: RewardFn
    config: SelfRewardConfig = field(default_factory=SelfRewardConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    n_new_prompts: int = 0
    few_shot_prompts: Sequence[str] | None = None
    prompt_writer: PromptWriterConfig | None = None
    name: str = "external-reward-dpo"
    seed: int | None = None
    kind: ClassVar[str] = "external-reward-dpo"

    def run(self, model, tokenizer, show_progress: bool) -> StageOutput:
        config = _seeded(self.config, self.seed)
        prompts, n_new, rejected = _round_prompts(self, model, tokenizer, config.seed)
        model.eval()
        with torch_threads(config.threads):
            candidates = generate_candidates(model, tokenizer, prompts, config)
        n = config.n_candidates
        flat_prompts = [p for p in prompts for _ in range(n)]
        scores = torch.as_tensor(self.reward_fn(flat_prompts, [c for cs in candidates for c in cs]),
                                 dtype=torch.float64).numpy()  # fmt: skip
        if scores.shape != (len(flat_prompts),):
            raise ValueError(
                f"reward_fn must return one score per completion, shape ({len(flat_prompts)},), "
                f"got {scores.shape}"
            )
        scores = scores.reshape(len(prompts), n)
        formatted = format_prompts(tokenizer, prompts, config.chat)
        _, pairs, skipped = build_pairs(prompts, formatted, candidates, scores[:, :, None])
        metrics = {"prompts": len(prompts), "pairs": len(pairs), "new_prompts": n_new,
                   "prompts_rejected": rejected, "skipped_tie": skipped.get("tie", 0),
                   "candidate_reward": float(scores.mean())}  # fmt: skip
        history = _train_on_pairs(self, model, tokenizer, pairs, show_progress)
        saved = {"prompts": prompts, "candidates": candidates, "scores": scores, "pairs": pairs}
        return StageOutput(history, metrics, saved)


@dataclass
class SPINStage:
    """One SPIN iteration (:mod:`rlhf_lessons.alignment.spin`); ``dpo.beta`` is SPIN's lambda."""

    data: Sequence[Mapping]
    config: SPINConfig = field(default_factory=SPINConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    name: str = "spin"
    seed: int | None = None
    kind: ClassVar[str] = "spin"

    def run(self, model, tokenizer, show_progress: bool) -> StageOutput:
        pairs, skipped = spin_pairs(model, tokenizer, self.data, _seeded(self.config, self.seed))
        metrics = {"examples": len(self.data), "pairs": len(pairs),
                   "skipped_same_as_data": skipped.get("same as data", 0),
                   "skipped_empty": skipped.get("empty", 0)}  # fmt: skip
        history = _train_on_pairs(self, model, tokenizer, pairs, show_progress)
        return StageOutput(history, metrics, {"pairs": pairs})


Stage = SFTStage | SelfRewardStage | ExternalRewardDPOStage | SPINStage
STAGES = (SFTStage, SelfRewardStage, ExternalRewardDPOStage, SPINStage)


# --- the run ------------------------------------------------------------------------------------


@dataclass
class StageRecord:
    """A finished stage: where its checkpoint is, its metrics and the evaluation after it;
    ``resumed`` is True when it was loaded from an earlier run instead of trained now."""

    index: int
    name: str
    kind: str
    folder: Path
    metrics: dict
    history: History | None
    evaluation: dict | None
    seconds: float
    resumed: bool = False


def _history_json(h: History | None) -> dict | None:
    if h is None:
        return None
    return jsonable({"algo": h.algo, "config": h.config, "rows": h.rows, "info": h.info})


def _history_from_json(saved: dict | None) -> History | None:
    if saved is None:
        return None
    rows = {k: [math.nan if v is None else v for v in col] for k, col in saved["rows"].items()}
    return History(saved["algo"], saved["config"], rows, info=saved["info"])


@dataclass
class PipelineRun:
    """The final model and one record per stage (``initial_evaluation``: before any stage)."""

    model: nn.Module
    records: list[StageRecord]
    initial_evaluation: dict | None = None

    def evaluations(self) -> list[dict]:
        """``[{"stage": "start", ...}, {"stage": name, ...}, ...]`` (the eval_fn results)."""
        rows = [{"stage": "start", **(self.initial_evaluation or {})}]
        return rows + [{"stage": r.name, **(r.evaluation or {})} for r in self.records]


def stage_folder(output_dir: Path, index: int, stage) -> Path:
    return Path(output_dir) / f"{index:02d}-{stage.name}"


def _check_run_file(output_dir: Path, stages: Sequence, lora: Mapping | None) -> None:
    """A resumed run must be the same run: the finished stages' kinds and names and the LoRA
    setting must match what ``run.json`` recorded."""
    path = output_dir / RUN_FILE
    new = {"stages": [[s.kind, s.name] for s in stages], "lora": dict(lora) if lora else None}
    if path.exists():
        old = json.loads(path.read_text())
        n = min(len(old["stages"]), len(new["stages"]))
        if old["stages"][:n] != new["stages"][:n] or old["lora"] != new["lora"]:
            raise ValueError(
                f"{output_dir} holds a different run ({old}); this one is {new}. Use another "
                "output_dir, or delete the folder to start over"
            )
    output_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(new))


def _load_checkpoint(model, folder: Path, lora: Mapping | None):
    """The model after a finished stage: merge its adapter into ``model`` (LoRA) or load its
    full weights (onto ``model``'s device, fp32)."""
    if lora:
        from peft import PeftModel

        with warnings.catch_warnings():  # peft calls a method transformers 5 deprecates
            warnings.filterwarnings(
                "ignore", message=".*is_gradient_checkpointing", category=FutureWarning
            )
            return PeftModel.from_pretrained(model, str(folder)).merge_and_unload().eval()
    from transformers import AutoModelForCausalLM

    device = next(model.parameters()).device
    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).to(device).eval()


def run_pipeline(model, tokenizer, stages: Sequence[Stage], output_dir: str | Path,
                 lora: Mapping | None = None, eval_fn: Callable[[nn.Module], dict] | None = None,
                 show_progress: bool = True) -> PipelineRun:  # fmt: skip
    """Run ``stages`` (any order, unique names) on ``model`` (M0; a full-weight run trains it
    in place), checkpointing each under ``output_dir`` and loading the ones an earlier call
    finished (see the module docstring). ``lora``: None trains all weights, a dict of
    :func:`rlhf_lessons.alignment.dpo.add_lora` arguments a fresh adapter per stage.
    ``eval_fn``: ``model -> dict`` of JSON-able numbers, run at the start and after every
    stage (saved, so a resumed run does not recompute it)."""
    stages = list(stages)
    for s in stages:
        if not isinstance(s, STAGES):
            raise TypeError(
                f"stages must be {[c.__name__ for c in STAGES]}, got {type(s).__name__}"
            )
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ValueError(f"stage names must be unique (they name the checkpoints), got {names}")
    if lora is not None and not lora:
        raise ValueError("lora={} is ambiguous: pass None (full weights) or e.g. {'r': 8}")
    output_dir = Path(output_dir)
    _check_run_file(output_dir, stages, lora)

    initial_path = output_dir / "initial.json"
    initial = None
    if eval_fn is not None:
        if initial_path.exists():
            initial = json.loads(initial_path.read_text())
        else:
            initial = jsonable(eval_fn(model))
            initial_path.write_text(json.dumps(initial))

    records: list[StageRecord] = []
    for i, stage in enumerate(stages):
        folder = stage_folder(output_dir, i, stage)
        if (folder / STAGE_FILE).exists():  # finished earlier: load, do not train again
            saved = json.loads((folder / STAGE_FILE).read_text())
            model = _load_checkpoint(model, folder, lora)
            records.append(StageRecord(i, stage.name, stage.kind, folder, saved["metrics"],
                                       _history_from_json(saved["history"]), saved["evaluation"],
                                       saved["seconds"], resumed=True))  # fmt: skip
            continue
        for j in range(i, len(stages)):  # a later stage's folder belongs to another history
            shutil.rmtree(stage_folder(output_dir, j, stages[j]), ignore_errors=True)
        start = time.perf_counter()
        seed = i if stage.seed is None else stage.seed
        seed_everything(seed)
        if lora:
            model = add_lora(model, **lora, seed=seed)
        else:
            model.requires_grad_(True)
        output = stage.run(model, tokenizer, show_progress)
        seconds = time.perf_counter() - start
        model.eval()
        evaluation = jsonable(eval_fn(model)) if eval_fn is not None else None
        info = {"index": i, "name": stage.name, "kind": stage.kind, "seconds": seconds,
                "metrics": jsonable(output.metrics), "history": _history_json(output.history),
                "evaluation": evaluation}  # fmt: skip
        # a LoRA stage saves its adapter (before merging it), a full-weight stage the model
        save_folder_atomically(folder, model, tokenizer,
                               {DATA_FILE: json.dumps(jsonable(output.data)),
                                STAGE_FILE: json.dumps(info)})  # fmt: skip
        if lora:
            model = model.merge_and_unload().eval()
        records.append(StageRecord(i, stage.name, stage.kind, folder, info["metrics"],
                                   output.history, evaluation, seconds))  # fmt: skip
    return PipelineRun(model, records, initial)


def load_stage_data(record: StageRecord) -> dict:
    """The ``data.json`` a stage saved (its pairs, and candidates and judgements if any)."""
    return json.loads((record.folder / DATA_FILE).read_text())
