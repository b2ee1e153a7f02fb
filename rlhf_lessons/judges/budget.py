"""Choosing lesson 09's fine-tuning budget on validation pairs (never on the held-out ones).

``python -m rlhf_lessons.judges.budget`` fine-tunes the judge of lesson 09 with several budgets
(training rankings per category, epochs, LoRA targets) on the *fit* part of the training
rankings (:func:`rlhf_lessons.course.data.validation_split`) and prints, per budget, the
agreement and position pull on the *validation* rankings (best against worst, both orders,
seeds pooled, 95% bootstrap intervals) with the training steps it took. The lesson uses the
smallest budget whose validation agreement is as good as the largest budget's within the
intervals; the held-out rankings the lesson reports on play no part.
"""

from __future__ import annotations

import argparse
import re
import time

import pandas as pd
import torch

from rlhf_lessons.course.data import load_preferences, validation_split
from rlhf_lessons.judges.checks import bootstrap
from rlhf_lessons.judges.frozen_bottom import CachedJudge, LayerCache
from rlhf_lessons.judges.judge_bias import best_worst_pairs, judge_both_orders, select_records
from rlhf_lessons.judges.llm_judge import PAIRWISE_INSTRUCTIONS_FIRST, PairwiseConfig
from rlhf_lessons.judges.tuning import (
    ALL_LINEAR,
    JudgeTuneConfig,
    add_judge_adapter,
    train_judge,
    verdict_data,
)
from rlhf_lessons.models import load_causal_lm

SYSTEM = "You are a careful, impartial judge of answers."  # lesson 09's
PROMPT = PairwiseConfig(PAIRWISE_INSTRUCTIONS_FIRST)  # lesson 09's
NO_KV = tuple(m for m in ALL_LINEAR if m not in ("k_proj", "v_proj"))
BUDGETS = {  # name: (training rankings per category, epochs, LoRA targets)
    "32/cat, 16 epochs": (32, 16, ALL_LINEAR),
    "16/cat, 16 epochs": (16, 16, ALL_LINEAR),
    "16/cat, 16 epochs, no k/v": (16, 16, NO_KV),
    "8/cat, 16 epochs": (8, 16, ALL_LINEAR),
    "8/cat, 32 epochs": (8, 32, ALL_LINEAR),
}

# The lesson's choice was made from these, with the reply instruction after the answers
# (PAIRWISE_TEMPLATE) and the loss over the whole vocabulary; the lesson now uses PROMPT and
# the loss over the verdict options (JudgeTuneConfig.options), which this script also uses.
TRIED = ("8/cat, 16 epochs", "16/cat, 16 epochs")


def main(argv=None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--budgets", nargs="+", default=list(TRIED), choices=list(BUDGETS))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    fit, validation = validation_split(load_preferences("train"))
    model, tok = load_causal_lm()
    model.requires_grad_(False)
    cache = LayerCache(model, tok, top_layers=1, show_progress=False)
    judge = CachedJudge(model, tok, cache, system=SYSTEM, show_progress=False)
    val_pairs = best_worst_pairs(validation)
    zero = judge_both_orders(judge, val_pairs, PROMPT)
    rows, policy = [], model
    rows.append({"budget": "zero-shot", "steps": 0,
                 "agreement": bootstrap("agreement", zero),
                 "position pull": bootstrap("position pull", zero)})  # fmt: skip
    for name in args.budgets:
        per_category, epochs, targets = BUDGETS[name]
        data = verdict_data(judge, best_worst_pairs(select_records(fit, per_category)), PROMPT)
        runs, steps, start = [], 0, time.process_time()
        for seed in args.seeds:
            cfg = JudgeTuneConfig(top_layers=1, epochs=epochs, target_modules=targets, seed=seed)
            policy = add_judge_adapter(policy, cfg, name=re.sub(r"\W+", "_", f"{name} seed{seed}"))
            h = train_judge(policy, tok, data, cfg, cache=cache, show_progress=False)
            steps = len(h.loss)
            judge.model = policy
            runs.append(judge_both_orders(judge, val_pairs, PROMPT))
        seconds = round(time.process_time() - start, 1)
        stats = {m: bootstrap(m, runs) for m in ("agreement", "position pull", "|position pull|")}
        rows.append({"budget": name, "steps": steps, "cpu seconds": seconds} | stats)
        print(pd.DataFrame(rows[-1:]).to_string(), flush=True)
    table = pd.DataFrame(rows).set_index("budget")
    print(f"validation: {len(val_pairs)} pairs, both orders; seeds {args.seeds}")
    print(table.to_string())
    return table


if __name__ == "__main__":
    main()
