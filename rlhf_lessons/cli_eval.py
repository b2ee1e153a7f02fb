"""``rlhf-lessons eval``: held-out preference accuracy of a trained policy or reward model.

- A **policy** (a DPO-family run, or any causal LM with its reference) is scored by its
  implicit reward ``beta (log pi(y|x) - log pi_ref(y|x))`` (SimPO: the average log-prob, no
  reference): a pair is ranked right when its chosen response gets the higher reward, a tie
  counts 1/2 (:func:`rlhf_lessons.alignment.dpo.implicit_reward_accuracy`). The untrained
  policy *is* its reference, so every pair ties and it scores exactly 0.5.
- A **reward model** (a folder of ``train reward``, or a ``...ForSequenceClassification``) is
  scored by :func:`rlhf_lessons.rewards.reward_model.evaluate_reward_model`: pairwise accuracy
  over every pair of every ranking, per category, and rank correlations.

The 95% interval is Wilson's, over pairs taken as independent (pairs of one prompt are not
quite: read it as a lower bound on the uncertainty).
"""

from __future__ import annotations

from dataclasses import replace

from rlhf_lessons import data_io
from rlhf_lessons.cli_run import (
    CLIError,
    RewardArgs,
    config_from_info,
    load_policy,
    preference_data,
    untrained_reward_model,
)
from rlhf_lessons.cli_train import RunArgs
from rlhf_lessons.run_log import read_run_info


def _interval(accuracy: float, n: int) -> dict:
    from rlhf_lessons.course.stats import proportion_ci

    ci = proportion_ci(accuracy * n, n)
    return {"low": ci.low, "high": ci.high}


def _print(what: str, result: dict) -> None:
    ci = result["interval"]
    print(f"{what}: accuracy {result['accuracy']:.3f} (95% interval {ci['low']:.3f}-"
          f"{ci['high']:.3f}) on {result['n_pairs']} held-out pairs")  # fmt: skip
    if "baseline" in result:
        b = result["baseline"]
        print(f"untrained: accuracy {b['accuracy']:.3f} ({b['why']})")


def evaluate_policy_pairs(args, records, device) -> dict:
    """Implicit-reward accuracy of a policy on held-out pairs (see the module's doc)."""
    from rlhf_lessons.alignment.dpo import DPOConfig, implicit_reward_accuracy, is_peft_model

    info = read_run_info(args.model)
    run = config_from_info(RunArgs, info, "run")
    policy, tokenizer = load_policy(args.model, device, merge=False)
    config = replace(config_from_info(DPOConfig, info, beta=args.beta), threads=args.threads)
    pairs = preference_data(records, tokenizer, run)
    if not info:  # not a run of ours: no token limits (the course's default cuts at 32)
        config = replace(config, max_prompt_length=None, max_completion_length=None)
    reference, why = None, "SimPO's reward needs no reference"
    if config.needs_reference:
        if is_peft_model(policy):
            reference, why = policy, "the base model (adapter disabled)"
        else:
            name = args.ref_model or info.get("model")
            if not name:
                raise CLIError(
                    f"{args.model} is a full model without run.json: name its reference (the "
                    "model it was trained from) with --ref-model"
                )
            reference, _ = load_policy(name, device)
            why = f"the reference {name}"
    result = implicit_reward_accuracy(policy, tokenizer, pairs, reference, config=config)
    result.update(interval=_interval(result["accuracy"], result["n_pairs"]), reference=why,
                  loss=config.loss, beta=config.beta)  # fmt: skip
    if args.baseline or not config.needs_reference:
        result["baseline"] = _policy_baseline(policy, tokenizer, pairs, config, reference, info,
                                              device)  # fmt: skip
    _print(f"{args.model} ({config.loss}, implicit reward)", result)
    return result


def _policy_baseline(policy, tokenizer, pairs, config, reference, info, device) -> dict:
    """The untrained policy's accuracy: 0.5 by construction with a reference (every pair ties);
    SimPO's reference-free reward of the starting model is measured."""
    from rlhf_lessons.alignment.dpo import adapter_disabled, implicit_reward_accuracy, is_peft_model

    if config.needs_reference:
        return {"accuracy": 0.5, "why": "the untrained policy is its reference: every pair ties"}
    if is_peft_model(policy):
        with adapter_disabled(policy):
            base = implicit_reward_accuracy(policy, tokenizer, pairs, None, config=config)
    else:
        name = info.get("model")
        if not name:
            return {"accuracy": float("nan"), "why": "unknown starting model (no run.json)"}
        start, _ = load_policy(name, device)
        base = implicit_reward_accuracy(start, tokenizer, pairs, None, config=config)
    return {"accuracy": base["accuracy"], "why": "the starting model's average log-probs"}


def evaluate_reward_folder(args, records, device) -> dict:
    """Pairwise accuracy of a saved reward model on held-out rankings or pairs."""
    from rlhf_lessons.rewards.reward_io import load_reward_model
    from rlhf_lessons.rewards.reward_model import evaluate_reward_model

    model = load_reward_model(args.model, device)
    ranked = data_io.ranked_records(records)
    ev = evaluate_reward_model(model, ranked)
    result = {"accuracy": ev.accuracy, "per_category": ev.per_category, "n_pairs": ev.n_pairs,
              "kendall_tau": ev.kendall_tau, "interval": _interval(ev.accuracy, ev.n_pairs)}  # fmt: skip
    if args.baseline:
        result["baseline"] = _reward_baseline(args.model, ranked, device)
    _print(f"{args.model} (reward model)", result)
    if len(ev.per_category) > 1:
        print("per category: " + ", ".join(f"{c} {a:.3f}" for c, a in ev.per_category.items()))
    return result


def _reward_baseline(folder, ranked, device) -> dict:
    """The reward model as it was before training: the run's backbone with the head its seed
    drew (rebuilt exactly as ``train reward`` built it)."""
    from rlhf_lessons.rewards.reward_model import evaluate_reward_model

    info = read_run_info(folder)
    if not info:
        return {"accuracy": float("nan"), "why": "unknown starting model (no run.json)"}
    model = untrained_reward_model(info["model"], config_from_info(RewardArgs, info), device)
    ev = evaluate_reward_model(model, ranked)
    return {"accuracy": ev.accuracy, "why": "the same backbone with its initial random head"}
