"""How lesson 05's budgets and learning rates were chosen: on the validation prompts only.

Lesson 05 repeats every run on three seeds and must fit about four minutes of one CPU core, so
each run gets the cheapest setting that still learns. This script trains the candidates on the
review world's training prompts and measures them on ``review_world.splits.
validation_prompts()`` (never on the test prompts the lesson reports on): the true reward, the
KL to the SFT model and the share of grammatical samples after the run, and the run's CPU
seconds (training only). The rows marked ``*`` are the lesson's settings.

    .venv/bin/python benchmarks/lesson05_settings.py                 # every candidate, seed 0
    .venv/bin/python benchmarks/lesson05_settings.py --only ppo --seeds 0 1

PPO candidates use the true reward at a fixed beta of 0.1 (the learning speed is the
question; the lesson's PPO runs use the adaptive controller). Timings depend on the machine and
on what else runs on it.
"""

from __future__ import annotations

import argparse
import copy
import time

#: name -> (algorithm, config overrides, the lesson's choice?)
CANDIDATES = {
    "ppo: batch 64, 4 epochs, lr 3e-4, 40 it": ("ppo", dict(iterations=40), False),
    "ppo: batch 64, 2 epochs, lr 3e-4, 40 it": ("ppo", dict(iterations=40, epochs=2), False),
    "ppo: batch 64, 2 epochs, lr 1e-3, 40 it": ("ppo", dict(iterations=40, epochs=2, lr=1e-3),
                                                False),
    "ppo: batch 32, 2 epochs, lr 3e-4, 40 it": ("ppo", dict(iterations=40, epochs=2,
                                                            batch_size=32), True),
    "grpo: 16 prompts, lr 3e-4, 100 it": ("grpo", dict(iterations=100), False),
    "grpo: 16 prompts, lr 1e-3, 30 it": ("grpo", dict(iterations=30, lr=1e-3), True),
    "grpo: 8 prompts, lr 1e-3, 40 it": ("grpo", dict(iterations=40, lr=1e-3,
                                                     prompts_per_iteration=8), False),
    "rloo: 16 prompts, lr 3e-4, 100 it": ("rloo", dict(iterations=100), False),
    "rloo: 16 prompts, lr 1e-3, 30 it": ("rloo", dict(iterations=30, lr=1e-3), True),
    "rloo: 8 prompts, lr 1e-3, 40 it": ("rloo", dict(iterations=40, lr=1e-3,
                                                     prompts_per_iteration=8), False),
}  # fmt: skip


def run(algo: str, overrides: dict, seed: int, sft, tok) -> dict:
    """Train one candidate on seed ``seed``; its validation measures and CPU seconds."""
    from rlhf_lessons.alignment.lm_ppo import LMPPOConfig, PolicyWithValueHead, train_lm_ppo
    from rlhf_lessons.alignment.rloo_grpo import GroupPGConfig, train_group_pg
    from rlhf_lessons.review_world.evaluation import evaluate_policy
    from rlhf_lessons.review_world.splits import train_prompts, validation_prompts
    from rlhf_lessons.review_world.true_reward import reward_of

    prompts = train_prompts(512, seed=seed)
    start = time.process_time()
    if algo == "ppo":
        config = LMPPOConfig(beta=0.1, seed=seed, threads=1, **overrides)
        model = PolicyWithValueHead(copy.deepcopy(sft))
        train_lm_ppo(model, tok, prompts, config, ref=sft, reward_fn=reward_of,
                     show_progress=False)  # fmt: skip
        policy = model.lm
    else:
        config = getattr(GroupPGConfig, algo)(seed=seed, **overrides)
        policy = copy.deepcopy(sft)
        train_group_pg(policy, tok, prompts, config, ref=sft, reward_fn=reward_of,
                       show_progress=False)  # fmt: skip
    seconds = time.process_time() - start
    result = evaluate_policy(policy, sft, tok, validation_prompts(), n_samples=4,
                             max_new_tokens=16, seed=seed)  # fmt: skip
    return {"cpu_s": seconds, **{k: result[k] for k in ("reward", "kl", "grammatical")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--only", choices=["ppo", "grpo", "rloo"], default=None)
    args = parser.parse_args()

    import torch

    from rlhf_lessons.review_world.evaluation import evaluate_policy
    from rlhf_lessons.review_world.splits import validation_prompts
    from rlhf_lessons.review_world.tiny_lm import load_sft_model

    torch.set_num_threads(1)
    sft, tok = load_sft_model(show_progress=False)
    base = evaluate_policy(sft, sft, tok, validation_prompts(), n_samples=4, max_new_tokens=16)
    print(f"SFT model on the validation prompts: true reward {base['reward']:+.3f}, "
          f"grammatical {base['grammatical']:.2f}")  # fmt: skip
    print(f"{'candidate':44s} {'seed':>4} {'CPU s':>6} {'reward':>7} {'KL':>6} {'gramm.':>6}")
    for name, (algo, overrides, chosen) in CANDIDATES.items():
        if args.only and algo != args.only:
            continue
        for seed in args.seeds:
            r = run(algo, overrides, seed, sft, tok)
            mark = "*" if chosen else " "
            print(f"{mark}{name:43s} {seed:4d} {r['cpu_s']:6.1f} {r['reward']:+7.3f} "
                  f"{r['kl']:6.2f} {r['grammatical']:6.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
