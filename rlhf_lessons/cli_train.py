"""``rlhf-lessons train <algo>`` and ``rlhf-lessons eval``: the course's trainers on your model
and your data, from the command line (issue 18).

    rlhf-lessons train dpo --data data/preferences/train.jsonl --lora-r 8 --output-dir runs/dpo
    rlhf-lessons eval --model runs/dpo --data data/preferences/heldout.jsonl
    rlhf-lessons train reward --data data/preferences/train.jsonl --output-dir runs/rm
    rlhf-lessons train grpo --data data/preferences/train.jsonl --reward-model runs/rm --lora-r 8

Every flag of ``train <algo>`` is generated from a dataclass (``transformers.HfArgumentParser``):
the algorithm's config (:class:`~rlhf_lessons.alignment.dpo.DPOConfig`, ...; each field's
comment is its help) and :class:`RunArgs` (model, data, output, LoRA). ``--config file.yaml``
sets any of them (flags on the command line win). The flags are built only when a ``train``
command is parsed, so the other commands start without importing torch.

A run writes to ``--output-dir``: the final model (or LoRA adapter) with its tokenizer,
``checkpoint-<step>/`` folders (``--save-every``), ``metrics.csv`` (one row per step),
``evaluations.csv`` (``--eval-data``, ``--eval-every``), TensorBoard events under
``tensorboard/`` when the ``tensorboard`` package is installed, and ``run.json`` (the
settings, which ``eval`` reads back). The training itself is :mod:`rlhf_lessons.cli_run`.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import inspect
import os
import re
import sys
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

#: algo -> (kind, config module, config class, fixed config values, one-line help)
ALGOS: dict[str, tuple[str, str, str, dict, str]] = {
    "sft": ("sft", "alignment.sft", "SFTConfig", {}, "supervised fine-tuning on completions"),
    "dpo": ("dpo", "alignment.dpo", "DPOConfig", {"loss": "dpo"},
            "DPO on preference pairs (--loss ipo|hinge, --label-smoothing for cDPO)"),
    "ipo": ("dpo", "alignment.dpo", "DPOConfig", {"loss": "ipo"}, "IPO on preference pairs"),
    "hinge": ("dpo", "alignment.dpo", "DPOConfig", {"loss": "hinge"},
              "the SLiC hinge loss on preference pairs"),
    "cdpo": ("dpo", "alignment.dpo", "DPOConfig", {"loss": "dpo", "label_smoothing": 0.1},
             "conservative DPO: labels flipped with probability --label-smoothing"),
    "simpo": ("dpo", "alignment.dpo", "DPOConfig", {"loss": "simpo"},
              "SimPO: reference-free, length-normalised"),
    "grpo": ("rl", "alignment.rloo_grpo", "GroupPGConfig", {"method": "grpo", "beta": 0.04},
             "GRPO with a reward model"),
    "rloo": ("rl", "alignment.rloo_grpo", "GroupPGConfig", {"method": "rloo", "beta": 0.05},
             "RLOO with a reward model"),
    "ppo": ("ppo", "alignment.lm_ppo", "LMPPOConfig", {}, "PPO with a value head and a reward model"),
    "reward": ("reward", "cli_run", "RewardArgs", {}, "a reward model on preference data"),
}  # fmt: skip

#: Defaults for real models (LoRA on a ~100M-1B model), replacing the review world's. ``lr``
#: None is resolved by :func:`rlhf_lessons.cli_run.default_lr` (LoRA or full fine-tuning).
REAL_MODEL_DEFAULTS: dict[str, dict] = {
    "sft": dict(lr=None, batch_size=8, warmup_steps=0, threads=None),
    "dpo": dict(lr=None, batch_size=8, max_prompt_length=None, max_completion_length=None,
                threads=None),
    "rl": dict(lr=None, iterations=50, prompts_per_iteration=4, k=4, max_new_tokens=64,
               threads=None),
    "ppo": dict(lr=None, iterations=50, batch_size=16, minibatch_size=4, max_new_tokens=64,
                threads=None),
    "reward": {},
}  # fmt: skip
FIXED_HIDDEN = {"method"}  # set by the algorithm's name, not a flag


@dataclass
class RunArgs:
    """What a run trains on and where it writes (the flags every ``train`` command shares)."""

    data: str = ""  # training data: .jsonl/.json/.parquet/.csv, a saved datasets folder or hub name
    model: str = ""  # hub name or local folder; default: the shipped smollm2 (minilm for reward)
    output_dir: str = ""  # where the model, checkpoints and metrics go; default: runs/<algo>
    split: str = "train"  # the split of a saved DatasetDict or hub dataset
    limit: int | None = None  # train on the first N records only
    eval_data: str = ""  # held-out data, evaluated every --eval-every steps and at the end
    eval_limit: int | None = None  # evaluate on the first N held-out records only
    eval_every: int = 0  # steps between evaluations (0: at the end only)
    save_every: int = 0  # steps between checkpoints (0: the final model only)
    lora_r: int = 0  # LoRA rank (0: fine-tune every weight)
    lora_alpha: int | None = None  # LoRA scale alpha (default: 2 * rank)
    lora_target_modules: str = ""  # comma-separated layer names (default: peft's for the model)
    chat: bool = True  # wrap plain-text prompts in the model's chat template (if it has one)
    ranked_pairs: str = "all"  # rankings -> "all" C(K, 2) pairs or "best_vs_worst"
    ref_model: str = ""  # DPO family: a separate reference (default: the model before training)
    reward_model: str = ""  # grpo, rloo, ppo: a saved reward model folder (required)
    max_truncated_share: float = 0.1  # refuse when token limits would cut more of the data
    device: str = "auto"  # cpu, cuda, cuda:N or auto
    engine: str = "ours"  # ours (the course's trainer) or trl (TRL's trainer, same data and config)
    config: str = ""  # a YAML file of flag values (the command line wins)


#: The RunArgs fields each kind of algorithm uses (the others are not flags for it).
RUN_FIELDS = {
    "sft": {"chat", "ranked_pairs"},
    "dpo": {"chat", "ranked_pairs", "ref_model", "engine"},
    "rl": {"chat", "reward_model", "engine"},
    "ppo": {"chat", "reward_model"},
    "reward": {"ranked_pairs"},
}
COMMON_FIELDS = {f.name for f in dataclasses.fields(RunArgs)} - set().union(*RUN_FIELDS.values())


class CLIError(Exception):
    """Bad input on the command line: printed as one line naming the fix."""


# --- Flags from dataclasses ------------------------------------------------------------------


def field_comments(cls) -> dict[str, str]:
    """``name: type = default  # comment`` -> {name: comment} (a config's comments are its
    documentation; they become the flags' help)."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    found = re.findall(r"^\s+(\w+):[^#\n]*#\s*(.+)$", source, flags=re.MULTILINE)
    return {name: text.strip() for name, text in found}


def _none_or(parse):
    """A flag type that also accepts ``none`` / ``null`` (an Optional field)."""

    def convert(text: str):
        return None if text.strip().lower() in ("none", "null") else parse(text)

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def _read_yaml(path: str) -> dict:
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            values = yaml.safe_load(f) or {}
    except OSError as err:
        raise CLIError(f"--config {path}: cannot read it ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise CLIError(f"--config {path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise CLIError(f"--config {path}: expected 'flag: value' lines, got a {type(values)}")
    return {str(k).replace("-", "_"): v for k, v in values.items()}


def _prescan_config(args: list[str]) -> str:
    for i, a in enumerate(args):
        if a == "--config" and i + 1 < len(args):
            return args[i + 1]
        if a.startswith("--config="):
            return a.split("=", 1)[1]
    return ""


class FlagsParser(argparse.ArgumentParser):
    """An argparse parser whose flags come from dataclasses, added the first time it parses or
    shows its help; errors are one line naming the fix."""

    def __init__(self, *args, algo: str = "", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.algo = algo
        self._ready = False

    def error(self, message: str):  # argparse's usage + error, as one line
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def _populate(self, args: list[str] | None) -> None:
        if self._ready or not self.algo:
            return
        from transformers import HfArgumentParser

        from rlhf_lessons.cli_run import DEFAULT_LR

        kind = ALGOS[self.algo][0]
        config_cls = config_class(self.algo)
        seen: set[str] = set()
        for cls, title, allowed in (
            (config_cls, f"training ({config_cls.__name__})", None),
            (RunArgs, "run", COMMON_FIELDS | RUN_FIELDS[kind]),
        ):
            group, comments = self.add_argument_group(title), field_comments(cls)
            hints = __import__("typing").get_type_hints(cls)
            for f in dataclasses.fields(cls):
                if f.name in seen or f.name in FIXED_HIDDEN or (allowed and f.name not in allowed):
                    continue
                seen.add(f.name)
                f = copy.copy(f)
                f.type = hints[f.name]
                f.metadata = MappingProxyType({"help": comments.get(f.name, "")})
                HfArgumentParser._parse_dataclass_field(group, f)
        self.set_defaults(**REAL_MODEL_DEFAULTS[kind], **ALGOS[self.algo][3])
        path = _prescan_config(list(args or []))
        if path:
            try:
                values = _read_yaml(path)
            except CLIError as err:
                self.error(str(err))
            unknown = sorted(set(values) - seen - {"config"})
            if unknown:
                self.error(
                    f"--config {path}: unknown key(s) {unknown} for train {self.algo}; the keys "
                    f"are its flags' names (rlhf-lessons train {self.algo} --help)"
                )
            self.set_defaults(**values)
        for action in self._actions:
            if action.dest not in seen:
                continue
            if action.type not in (None, str) and action.nargs is None:  # Optional: "--flag none"
                action.type = _none_or(action.type)
            # usage shows the first spelling: --max-steps rather than --max_steps
            action.option_strings.sort(key=lambda o: "_" in o)
            if isinstance(action, argparse._StoreFalseAction):  # the --no-<flag> of a switch
                action.help = f"turn --{action.dest.replace('_', '-')} off"
            elif action.dest == "lr" and action.default is None:
                lora, full = DEFAULT_LR[kind]
                action.help = f"{action.help} (default: {lora:g} with LoRA, {full:g} without)"
            elif "default" not in action.help:
                shown = action.default if action.default not in (None, "") else "none"
                action.help = f"{action.help} (default: {shown})".lstrip()
        self._ready = True

    def parse_known_args(self, args=None, namespace=None):
        self._populate(args)
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._populate(None)
        return super().format_help()


def config_class(algo: str) -> type:
    """The config dataclass of ``algo`` (imported here: torch and transformers come with it)."""
    import importlib

    _, module, name, _, _ = ALGOS[algo]
    return getattr(importlib.import_module(f"rlhf_lessons.{module}"), name)


def build_dataclasses(algo: str, ns: argparse.Namespace) -> tuple[Any, RunArgs]:
    """The config and the :class:`RunArgs` of a parsed ``train <algo>`` command line."""
    config_cls, values = config_class(algo), vars(ns)

    def given(cls) -> dict:
        return {f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values}

    kwargs, run = given(config_cls), RunArgs(**given(RunArgs))
    fixed = {k: v for k, v in ALGOS[algo][3].items() if k in FIXED_HIDDEN}
    if kwargs.get("lr", 0) is None:
        from rlhf_lessons.cli_run import default_lr

        kwargs["lr"] = default_lr(ALGOS[algo][0], run.lora_r > 0)
    try:
        return config_cls(**{**kwargs, **fixed}), run
    except (TypeError, ValueError) as err:
        raise CLIError(str(err)) from None


# --- The commands ----------------------------------------------------------------------------


def _train(args: argparse.Namespace) -> int:
    from rlhf_lessons.cli_run import train_run

    config, run = build_dataclasses(args.algo, args)
    train_run(args.algo, config, run)
    return 0


def _eval(args: argparse.Namespace) -> int:
    from rlhf_lessons.cli_run import evaluate_run

    evaluate_run(args)
    return 0


def add_train_commands(subparsers) -> None:
    """Add ``train`` (one sub-command per algorithm) and ``eval`` to the CLI's sub-commands."""
    train = subparsers.add_parser(
        "train", help="train a model on your data: sft, dpo, ipo, hinge, cdpo, simpo, grpo, "
        "rloo, ppo, reward", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    train.error = FlagsParser.error.__get__(train)
    algos = train.add_subparsers(dest="algo", metavar="ALGO", required=True,
                                 parser_class=FlagsParser)  # fmt: skip
    for algo, (_, _, _, _, text) in ALGOS.items():
        p = algos.add_parser(algo, help=text, description=f"train {algo}: {text}", algo=algo)
        p.set_defaults(func=_guarded(_train))

    ev = subparsers.add_parser(
        "eval", help="held-out preference accuracy of a trained policy or reward model",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )  # fmt: skip
    ev.error = FlagsParser.error.__get__(ev)
    ev.add_argument("--model", required=True, help="a train output folder, a model folder or "
                    "hub name (a policy or a reward model)")  # fmt: skip
    ev.add_argument("--data", required=True, help="held-out preference data (any train format)")
    ev.add_argument("--split", default="train", help="split of a saved DatasetDict")
    ev.add_argument("--limit", type=int, default=None, help="the first N records only")
    ev.add_argument("--ref-model", default="", help="the reference of a fully fine-tuned policy "
                    "(default: the model it was trained from, from run.json)")  # fmt: skip
    ev.add_argument("--beta", type=float, default=None, help="implicit-reward scale (default: "
                    "the run's)")  # fmt: skip
    ev.add_argument("--baseline", action="store_true", help="also score the untrained model")
    ev.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    ev.add_argument("--device", default="auto", help="cpu, cuda or auto")
    ev.add_argument("--output", default="", help="also write the results to this JSON file")
    ev.set_defaults(func=_guarded(_eval))


def _guarded(command):
    """Known bad input -> one line on stderr and exit code 2 (``RLHF_LESSONS_DEBUG=1``: the
    traceback)."""

    def run(args: argparse.Namespace) -> int:
        from rlhf_lessons.rewards.preference_data import PreferenceDataError

        try:
            return command(args)
        except (CLIError, PreferenceDataError, FileNotFoundError, OSError, ValueError) as err:
            if os.environ.get("RLHF_LESSONS_DEBUG"):
                raise
            print(f"rlhf-lessons: error: {err}", file=sys.stderr)
            return 2

    return run
