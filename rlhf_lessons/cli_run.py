"""What ``rlhf-lessons train`` and ``eval`` do once the flags are parsed (:mod:`rlhf_lessons.
cli_train`): load the model and the data, call the course's trainer, write the results.

One function per step, so that each is testable and a reader can follow a run:
:func:`load_policy` (a name or folder; a LoRA adapter of an earlier run is merged in),
:func:`convert` (the file -> what the trainer takes), :func:`check_lengths` (token limits),
:func:`train_run` (the trainer, checkpoints, metrics, the final save) and :func:`evaluate_run`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlhf_lessons import data_io
from rlhf_lessons.cli_train import ALGOS, CLIError, RunArgs
from rlhf_lessons.course.device import get_device, torch_threads
from rlhf_lessons.run_log import RunLog, StepCallback, read_run_info
from rlhf_lessons.training import total_steps

SHIPPED = {"smollm2", "smollm2-135m-instruct", "minilm", "all-minilm-l6-v2"}

#: Learning rates when --lr is not given: (LoRA, every weight), Adam, for ~100M-1B models.
DEFAULT_LR = {"sft": (2e-4, 2e-5), "dpo": (5e-5, 1e-6), "rl": (2e-5, 1e-6), "ppo": (2e-5, 1e-6)}


def default_lr(kind: str, lora: bool) -> float:
    return DEFAULT_LR[kind][0 if lora else 1]


@dataclass
class RewardArgs:
    """Settings of a reward model run (:func:`rlhf_lessons.rewards.reward_model.
    train_reward_model`'s arguments, under the course's names)."""

    mode: str = "pairs"  # "pairs": Bradley-Terry on every pair; "kwise": a ranking in one loss
    epochs: int = 1  # passes over the data
    lr: float = 1e-4  # AdamW's learning rate, decaying linearly to 0
    batch_size: int = 8  # pairs (pairs mode) or prompts (kwise) per step
    max_steps: int | None = None  # stop after this many steps
    pooling: str = "mean"  # encoder backbones: "mean" of the token states or "cls"
    max_length: int = 256  # encoder backbones: tokens of prompt + response
    weight_decay: float = 0.0  # AdamW's decoupled weight decay
    max_grad_norm: float = 1.0  # gradients are clipped to this global norm
    dropout: bool = True  # the backbone's dropout on while training
    threads: int | None = None  # torch threads while training (None: leave as they are)
    seed: int = 0  # seeds the head, the shuffling and dropout


# --- Models ----------------------------------------------------------------------------------


def _missing_model(name: str, err: Exception) -> CLIError:
    return CLIError(
        f"model {name!r} could not be loaded ({type(err).__name__}: {str(err).splitlines()[0][:120]}"
        "); pass a local folder with config.json, a hub name when online, or a shipped model: "
        "smollm2 (policies), minilm (reward models)"
    )


def _check_name(name: str) -> None:
    """A shipped name, a model or adapter folder, or a possible hub name ("gpt2",
    "org/name"); a path that holds no model fails here, before anything is loaded."""
    path = Path(name).expanduser()
    if name.lower() in SHIPPED or any((path / f).is_file() for f in ("config.json",
                                                                     "adapter_config.json")):  # fmt: skip
        return
    looks_like_path = name.startswith((".", "/", "~")) or name.count("/") > 1
    if path.exists() or looks_like_path or not name.strip():
        raise _missing_model(name, FileNotFoundError(f"no config.json in {name}"))


def load_policy(name: str, device, merge: bool = True):
    """``(model, tokenizer)`` of a causal LM: a shipped name, a hub name or a folder. A folder
    holding a LoRA adapter of an earlier run is loaded on its base model and, with ``merge``,
    merged into it (the starting point of a new run); without, it stays a peft model."""
    from rlhf_lessons.models import load_causal_lm

    _check_name(name)
    path = Path(name).expanduser()
    try:
        if (path / "adapter_config.json").is_file():
            from peft import PeftModel

            base = read_run_info(path).get("model") or json.loads(
                (path / "adapter_config.json").read_text())["base_model_name_or_path"]  # fmt: skip
            model, tokenizer = load_causal_lm(base, device=device)
            with warnings.catch_warnings():  # peft calls a method transformers 5 deprecates
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing")
                model = PeftModel.from_pretrained(model, str(path))
            if merge:  # the adapter becomes part of the weights, which all train again
                model = model.merge_and_unload().requires_grad_(True)
        else:
            model, tokenizer = load_causal_lm(name, device=device)
    except OSError as err:
        raise _missing_model(name, err) from None
    return model, tokenizer


def lora_settings(run: RunArgs, model) -> dict | None:
    """The LoRA adapter to add (None: every weight trains)."""
    if run.lora_r <= 0:
        return None
    targets = [t.strip() for t in run.lora_target_modules.split(",") if t.strip()]
    if not targets:
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as M

        targets = M.get(model.config.model_type)
        if not targets:
            raise CLIError(f"no default LoRA layers for a {model.config.model_type!r} model: name "
                           "them with --lora-target-modules q_proj,v_proj")  # fmt: skip
    return {"r": run.lora_r, "alpha": run.lora_alpha or 2 * run.lora_r,
            "target_modules": list(targets)}  # fmt: skip


class AdapterOffReference(nn.Module):
    """The reference of a LoRA policy for the RL trainers: the same peft model run with its
    adapter disabled (the frozen base weights), never a second copy. It holds no parameters of
    its own (so the trainers' "shares weights with the policy" checks pass) except an empty
    one that tells them its device."""

    def __init__(self, policy) -> None:
        super().__init__()
        self.__dict__["policy"] = policy  # not a submodule: its weights are not ours
        device = next(policy.parameters()).device
        self.anchor = nn.Parameter(torch.zeros(0, device=device), requires_grad=False)
        self.config = policy.config

    @torch.no_grad()
    def forward(self, *args, **kwargs):
        with self.policy.disable_adapter():
            return self.policy(*args, **kwargs)


# --- Data ------------------------------------------------------------------------------------


def _chat(tokenizer, run: RunArgs) -> bool:
    return run.chat and bool(getattr(tokenizer, "chat_template", None))


def _format(tokenizer, prompt, chat: bool) -> str:
    from rlhf_lessons.lm import format_prompt

    return format_prompt(tokenizer, prompt) if chat or not isinstance(prompt, str) else prompt


def chat_pairs(pairs, tokenizer, run: RunArgs) -> list[dict]:
    """Preference pairs as the DPO trainer takes them: plain-text prompts become a user turn
    of the model's chat template when ``run.chat`` (conversational pairs always do)."""
    from rlhf_lessons.rewards.preference_data import to_conversational

    if not _chat(tokenizer, run):
        return list(pairs)
    return [p if data_io.is_conversational(p) else to_conversational(p) for p in pairs]


def preference_data(records, tokenizer, run: RunArgs) -> list[dict]:
    """Records -> pairs for the DPO family (:func:`chat_pairs` of their preference pairs)."""
    return chat_pairs(data_io.preference_pairs(records, run.ranked_pairs), tokenizer, run)


def _prompt_text(prompt) -> str:
    """The text of a prompt for a reward model: the last user turn of a conversation."""
    if isinstance(prompt, str):
        return prompt
    return next(m["content"] for m in reversed(prompt) if m["role"] == "user")


def check_lengths(kind: str, config, tokenizer, model, items, run: RunArgs):
    """Token limits from the data when not given (within the model's context), the report of
    what they cut, and a refusal when they cut more than ``run.max_truncated_share``."""
    if kind == "dpo":
        from rlhf_lessons.alignment.dpo import pair_texts

        p, c, r = pair_texts(tokenizer, items)
        prompts_, completions = p + p, c + r
    else:
        prompts_ = [_format(tokenizer, x["prompt"], config.chat) for x in items]
        completions = [x["completion"] for x in items]
    limit = getattr(model.config, "max_position_embeddings", None)
    first = data_io.length_report(tokenizer, prompts_, completions, config.max_prompt_length,
                                  config.max_completion_length, config.add_eos)  # fmt: skip
    auto_p, auto_c = data_io.fit_lengths(first, limit)
    lengths = {"max_prompt_length": config.max_prompt_length or auto_p,
               "max_completion_length": config.max_completion_length or auto_c}  # fmt: skip
    config = replace(config, **lengths)
    report = data_io.length_report(tokenizer, prompts_, completions, **lengths,
                                   add_eos=config.add_eos)  # fmt: skip
    if report.share_cut > run.max_truncated_share:
        raise CLIError(
            f"the token limits would cut {report.cut} of {report.records} rows "
            f"({report.share_cut:.0%}: {report}); raise --max-prompt-length / "
            f"--max-completion-length, or accept it with --max-truncated-share "
            f"{math.ceil(report.share_cut * 100) / 100:.2f}"
        )
    print(f"token lengths: {report}")
    return config, str(report)


# --- Evaluation during training --------------------------------------------------------------


def dpo_eval_fn(policy, tokenizer, pairs, config, ref_model=None):
    """Held-out implicit-reward accuracy; the reference's log-probs are taken now, before
    training (the policy as it is, or ``ref_model``), once."""
    from rlhf_lessons.alignment.dpo import (
        implicit_reward_accuracy,
        precompute_reference_logps,
        tokenize_preferences,
    )

    reference = None
    if config.needs_reference:
        batch = tokenize_preferences(tokenizer, pairs, config.max_prompt_length,
                                     config.max_completion_length)  # fmt: skip
        reference = precompute_reference_logps(ref_model or policy, batch, threads=config.threads)
    return lambda p: implicit_reward_accuracy(p, tokenizer, pairs, reference, config=config)


@torch.no_grad()
def sft_eval_fn(tokenizer, records, config):
    """Held-out mean negative log-likelihood of the completions' tokens (nats per token)."""
    from rlhf_lessons import lm

    prompts_ = [_format(tokenizer, r["prompt"], config.chat) for r in records]
    batch = lm.tokenize_pairs(tokenizer, prompts_, [r["completion"] for r in records],
                              config.max_prompt_length, config.max_completion_length,
                              config.add_eos)  # fmt: skip

    @torch.no_grad()
    def evaluate(policy) -> dict:
        device, total, count = next(policy.parameters()).device, 0.0, 0.0
        for i in range(0, len(batch), 8):
            rows = batch.rows(slice(i, i + 8)).trimmed().to(device)
            mask = rows.completion_mask.float()
            total -= (lm.token_logprobs(policy, rows) * mask).sum().item()
            count += mask.sum().item()
        return {"nll": total / count}

    return evaluate


def rl_eval_fn(tokenizer, prompts_, ref, reward_fn, config):
    """Mean reward and KL to the reference of one sample per held-out prompt; from the second
    evaluation on, also the change of the reward since the first, with its 95% interval
    (``reward_change``, ``_low``, ``_high``: the t-interval of the per-prompt differences).
    Every evaluation samples the same prompts with the same seed, so two evaluations differ by
    the policy only (``--eval-every`` > 0 gives the first one before training)."""
    from rlhf_lessons.alignment.rollouts import collect_rollout
    from rlhf_lessons.course.stats import diff_ci

    first: list[list[float]] = []

    def evaluate(policy) -> dict:
        ro = collect_rollout(policy, ref, tokenizer, prompts_, reward_fn, config.max_new_tokens,
                             config.temperature, seed=config.seed)  # fmt: skip
        kl = ((ro.logp - ro.ref_logp) * ro.mask).sum(-1)
        rewards = ro.raw_scores.tolist()
        row = {"reward": ro.raw_scores.mean().item(), "kl": kl.mean().item(),
               "length": ro.lengths().float().mean().item()}  # fmt: skip
        if not first:  # the baseline of every later evaluation
            first.append(rewards)
        elif len(rewards) >= 2:
            change = diff_ci(rewards, first[0], paired=True)
            row.update(reward_change=change.mean, reward_change_low=change.low,
                       reward_change_high=change.high)  # fmt: skip
        return row

    return evaluate


# --- Training --------------------------------------------------------------------------------


def convert(kind: str, records, run: RunArgs) -> list:
    """Records -> what the trainer takes, before any model is loaded (so bad data fails fast):
    SFT records, preference pairs, prompts or rankings (:mod:`rlhf_lessons.data_io`)."""
    if kind == "dpo":
        return data_io.preference_pairs(records, run.ranked_pairs)
    if kind == "sft":
        return data_io.sft_records(records)
    return data_io.ranked_records(records) if kind == "reward" else data_io.prompts(records)


# The kinds of training whose trainer splits each minibatch across the launched processes
# (rlhf_lessons.distributed): under torchrun / accelerate launch they run data-parallel.
DATA_PARALLEL = {"sft", "dpo", "reward"}
# The algorithms --engine trl runs with TRL's own trainer (rlhf_lessons.trl_runs).
TRL_ENGINE = ("dpo", "ipo", "hinge", "simpo", "grpo", "rloo")


def train_run(algo: str, config, run: RunArgs) -> RunLog:
    """Train ``algo`` as the command line asked; returns the run's :class:`RunLog`."""
    from rlhf_lessons.distributed import launched_processes

    kind = ALGOS[algo][0]
    if not run.data:
        raise CLIError(f"--data is required: the training data (rlhf-lessons train {algo} --help)")
    if launched_processes() > 1 and kind not in DATA_PARALLEL:
        raise CLIError(
            f"train {algo} runs in one process for now (its trainer does not split batches "
            "across processes yet); start it without torchrun / accelerate launch (data-"
            f"parallel: {', '.join(sorted(DATA_PARALLEL))})"
        )
    if run.engine not in ("ours", "trl"):
        raise CLIError(f"--engine must be 'ours' or 'trl', got {run.engine!r}")
    if run.engine == "trl" and (algo not in TRL_ENGINE or run.ref_model):
        raise CLIError("--engine trl runs dpo, ipo, hinge, simpo, grpo and rloo with the model "
                       "before training as the reference: drop --ref-model, or use --engine ours")  # fmt: skip
    items = convert(kind, data_io.read_records(run.data, run.split, run.limit), run)
    evals = None
    if run.eval_data:
        evals = convert(kind, data_io.read_records(run.eval_data, run.split, run.eval_limit), run)
    if kind in ("rl", "ppo"):
        _check_reward_model(algo, run)
    _check_name(run.model or ("minilm" if kind == "reward" else "smollm2"))
    device = get_device(None if run.device == "auto" else run.device)
    log = RunLog(run.output_dir or f"runs/{algo}", algo)
    if kind == "reward":
        return train_reward(config, run, log, items, evals, device)
    model, tokenizer = load_policy(run.model or "smollm2", device)
    lora = lora_settings(run, model)
    if lora:
        from rlhf_lessons.alignment.dpo import add_lora

        model = add_lora(model, lora["r"], lora["alpha"], lora["target_modules"], seed=config.seed)
    info = {"model": run.model or "smollm2", "lora": lora, "processes": launched_processes()}
    with torch_threads(config.threads):
        setup = {"sft": _sft, "dpo": _dpo, "rl": _rl, "ppo": _rl}[kind]
        trainer, model, items, config, eval_fn, extra = setup(
            config, run, model, tokenizer, items, evals, info
        )
        info["items"] = len(items)
        if kind in ("rl", "ppo"):
            total = config.iterations
        else:
            total = total_steps(len(items), config.batch_size, config.epochs, config.max_steps)
        callback = StepCallback(log, tokenizer, total, run.save_every, run.eval_every, eval_fn)
        log.start(config, run, {**info, "engine": run.engine})
        if run.engine == "trl":  # TRL's trainer on the same data and config; evaluated at the end
            history, model = _with_trl(kind, config, model, tokenizer, items, extra)
        else:
            history = trainer(model, tokenizer, items, config, eval_fn=callback if callback.every
                              else None, eval_every=callback.every, show_progress=True, **extra)  # fmt: skip
        if eval_fn is not None and (run.engine == "trl" or not callback.every):
            history.evaluate(eval_fn, getattr(model, "lm", model))
    log.save_model(model, tokenizer, final=True)
    log.finish(history)
    return log


def _with_trl(kind: str, config, model, tokenizer, items, extra):
    """``--engine trl``: TRL's DPOTrainer / CPOTrainer (SimPO) / GRPOTrainer / RLOOTrainer at
    the settings of our config (:mod:`rlhf_lessons.trl_runs`); its history in our columns."""
    from rlhf_lessons.trl_runs import train_with_trl

    algo = config.loss if kind == "dpo" else config.method
    try:
        done = train_with_trl(algo, model, tokenizer, items, config,
                              reward_fn=extra.get("reward_fn"), show_progress=True)  # fmt: skip
    except ValueError as err:  # TRL's limits (e.g. truncation it does differently), named
        raise CLIError(f"--engine trl: {err}") from None
    return done.history, done.policy


def _check_reward_model(algo: str, run: RunArgs) -> None:
    from rlhf_lessons.rewards.reward_io import (
        RewardModelLoadError,
        is_reward_model_folder,
        load_reward_model,
    )

    if not run.reward_model:
        raise CLIError(f"train {algo} needs --reward-model: a folder saved by `rlhf-lessons "
                       "train reward` (or a ...ForSequenceClassification model)")  # fmt: skip
    if not is_reward_model_folder(run.reward_model):
        try:
            load_reward_model(run.reward_model, "cpu")  # raises, saying what would load
        except RewardModelLoadError as err:
            raise CLIError(f"--reward-model: {err}") from None


def _sft(config, run, model, tokenizer, items, evals, info):
    from rlhf_lessons.alignment.sft import train_sft

    chat = _chat(tokenizer, run) and config.chat
    if not isinstance(items[0]["prompt"], str):  # conversations: rendered here, once
        items, evals = ([{**r, "prompt": _format(tokenizer, r["prompt"], True)} for r in rs]
                        if rs else rs for rs in (items, evals))  # fmt: skip
        chat = False
    config = replace(config, chat=chat)
    config, info["lengths"] = check_lengths("sft", config, tokenizer, model, items, run)
    eval_fn = sft_eval_fn(tokenizer, evals, config) if evals else None
    return train_sft, model, items, config, eval_fn, {}


def _dpo(config, run, model, tokenizer, items, evals, info):
    from rlhf_lessons.alignment.dpo import train_dpo

    pairs = chat_pairs(items, tokenizer, run)
    config, info["lengths"] = check_lengths("dpo", config, tokenizer, model, pairs, run)
    extra = {}
    if run.ref_model:
        extra["ref_model"], _ = load_policy(run.ref_model, next(model.parameters()).device)
    eval_fn = None
    if evals:
        eval_pairs = chat_pairs(evals, tokenizer, run)
        eval_fn = dpo_eval_fn(model, tokenizer, eval_pairs, config, extra.get("ref_model"))
    return train_dpo, model, pairs, config, eval_fn, extra


def _rl(config, run, model, tokenizer, items, evals, info):
    """RLOO / GRPO / PPO: formatted prompts, the reward model as reward function, and the
    reference (the LoRA policy with its adapter off, or a frozen copy)."""
    from rlhf_lessons.alignment.lm_ppo import LMPPOConfig, PolicyWithValueHead, train_lm_ppo
    from rlhf_lessons.alignment.rloo_grpo import train_group_pg
    from rlhf_lessons.rewards.reward_io import load_reward_model, reward_function

    scorer = load_reward_model(run.reward_model, next(model.parameters()).device)
    chat = _chat(tokenizer, run)
    prompts = [_format(tokenizer, p, chat) for p in items]
    heldout = [_format(tokenizer, p, chat) for p in evals or []]
    text = dict(zip(prompts + heldout, [_prompt_text(p) for p in items + (evals or [])],
                    strict=True))  # fmt: skip
    reward_fn = reward_function(scorer, text)
    ref = AdapterOffReference(model) if info["lora"] else copy.deepcopy(model).eval()
    eval_fn = rl_eval_fn(tokenizer, heldout, ref, reward_fn, config) if evals else None
    trainer = train_group_pg
    if isinstance(config, LMPPOConfig):
        model, trainer = PolicyWithValueHead(model), train_lm_ppo
    return trainer, model, prompts, config, eval_fn, {"ref": ref, "reward_fn": reward_fn}


def train_reward(config: RewardArgs, run: RunArgs, log: RunLog, items, evals, device):
    """A reward model (:func:`untrained_reward_model`, default MiniLM) trained on ranked or
    paired records; saved with :func:`rlhf_lessons.rewards.reward_io.save_reward_model`."""
    from rlhf_lessons.distributed import launched_processes
    from rlhf_lessons.rewards.reward_io import save_reward_model
    from rlhf_lessons.rewards.reward_model import (
        RewardModelConfig,
        evaluate_reward_model,
        train_reward_model,
    )

    name = run.model or "minilm"
    try:
        model = untrained_reward_model(name, config, device)
    except OSError as err:
        raise _missing_model(name, err) from None
    body = "encoder" if hasattr(model, "encoder") else "body"  # the backbone LoRA adapts
    lora = lora_settings(run, getattr(model, body))
    if lora:
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(r=lora["r"], lora_alpha=lora["alpha"],
                         target_modules=lora["target_modules"], lora_dropout=0.0)  # fmt: skip
        setattr(model, body, get_peft_model(getattr(model, body), cfg))
    log.start(config, run, {"model": name, "lora": lora, "items": len(items),
                            "processes": launched_processes()})  # fmt: skip
    settings = RewardModelConfig(
        **{f.name: getattr(config, f.name) for f in dataclasses.fields(RewardModelConfig)}
    )
    history = train_reward_model(model, None, items, settings, show_progress=True)
    if evals:
        result = evaluate_reward_model(model, evals)
        history.evaluations.append({"step": history.steps, **result.summary()})
    if log.main:  # under torchrun every process holds the same weights: one writes them
        save_reward_model(model, log.folder)
    log.finish(history)
    return log


def untrained_reward_model(name: str, config: RewardArgs, device):
    """The reward model a ``train reward`` run starts from: a causal LM's last-token head or an
    encoder's pooled one, the head drawn from ``config.seed`` (``eval --baseline`` rebuilds it)."""
    from rlhf_lessons.course.seeding import seed_everything
    from rlhf_lessons.rewards.reward_model import CausalLMRewardModel, RewardModel

    seed_everything(config.seed)
    if _is_causal(name):
        return CausalLMRewardModel.from_pretrained(name, device=device)
    return RewardModel(name, pooling=config.pooling, max_length=config.max_length, device=device)


def _is_causal(name: str) -> bool:
    """Whether a model name or folder is a causal LM (its config names a ...ForCausalLM)."""
    if name.lower().startswith("smollm2"):
        return True
    try:
        from transformers import AutoConfig

        from rlhf_lessons.models import resolve

        config = AutoConfig.from_pretrained(resolve(name))
    except OSError:
        return False
    return any(a.endswith("ForCausalLM") for a in (config.architectures or []))


# --- The eval command ------------------------------------------------------------------------


def evaluate_run(args) -> dict:
    """``rlhf-lessons eval``: held-out preference accuracy of a policy's implicit reward, or of
    a reward model; printed, and written to ``--output`` as JSON."""
    from rlhf_lessons.cli_eval import evaluate_policy_pairs, evaluate_reward_folder
    from rlhf_lessons.rewards.reward_io import is_reward_model_folder

    records = data_io.read_records(args.data, args.split, args.limit)
    device = get_device(None if args.device == "auto" else args.device)
    with torch_threads(args.threads):
        if is_reward_model_folder(args.model):
            result = evaluate_reward_folder(args, records, device)
        else:
            result = evaluate_policy_pairs(args, records, device)
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=1))
    return result


def config_from_info(cls, info: dict, section: str = "config", **overrides: Any):
    """A config dataclass from a run's stored settings ``info[section]`` (unknown keys ignored;
    ``overrides`` that are not None win)."""
    names = {f.name for f in dataclasses.fields(cls)}
    stored = {k: v for k, v in (info.get(section) or {}).items() if k in names}
    return cls(**{**stored, **{k: v for k, v in overrides.items() if v is not None}})
