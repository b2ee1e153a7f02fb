"""How lesson 05's budgets and learning rates were chosen: on the validation prompts only.

Lesson 05 repeats every run on three seeds (five for its beta = 0 comparison) and must fit about
four minutes of one CPU core, so each run gets the cheapest setting that still learns. This
script trains the candidates on the review world's training prompts and measures them on
``review_world.splits.validation_prompts()`` (never on the test prompts the lesson reports on):
the true reward, the KL to the SFT model and the share of grammatical samples after the run, and
the run's CPU seconds (training only). The rows marked ``*`` are the lesson's settings. RLOO and GRPO were
chosen at 30 iterations; the lesson now runs them for 20 (the budget CI always ran them at) to pay
for the five seeds of its beta = 0 comparison.

    .venv/bin/python benchmarks/lesson05_settings.py                 # every candidate, seed 0
    .venv/bin/python benchmarks/lesson05_settings.py --only ppo --seeds 0 1
    .venv/bin/python benchmarks/lesson05_settings.py --hacking --seeds 5000 5001 5002 5003 5004 5005

``--hacking`` chooses how long lesson 05's beta = 0 comparison runs. Without the penalty the
policy drifts from the SFT model at its own pace: on some seeds the text breaks within 40
iterations, on others it has barely started, and a comparison stopped before every run has
drifted measures when the drift started, not whether it happens. The rule, fixed before
looking: the shortest length (a multiple of 10 iterations, at least the lesson's 40) at which,
on EVERY one of the seeds (bases >= 5000, never the lesson's reported seeds), the beta = 0 run's
KL is above the penalised PPO run's and its share of grammatical samples is at least 0.2 below
it (twice the lesson's bar of 0.1), both runs on the same learned reward and measured at the
same iteration on the validation prompts.

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
    "grpo: 16 prompts, lr 1e-3, 30 it": ("grpo", dict(iterations=30, lr=1e-3), False),
    "grpo: 16 prompts, lr 1e-3, 20 it": ("grpo", dict(iterations=20, lr=1e-3), True),
    "grpo: 8 prompts, lr 1e-3, 40 it": ("grpo", dict(iterations=40, lr=1e-3,
                                                     prompts_per_iteration=8), False),
    "rloo: 16 prompts, lr 3e-4, 100 it": ("rloo", dict(iterations=100), False),
    "rloo: 16 prompts, lr 1e-3, 30 it": ("rloo", dict(iterations=30, lr=1e-3), False),
    "rloo: 16 prompts, lr 1e-3, 20 it": ("rloo", dict(iterations=20, lr=1e-3), True),
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


def hacking(seeds: list[int], sft, tok, longest: int = 100, every: int = 10) -> None:
    """PPO and PPO with beta = 0 on each seed's learned reward, measured every ``every``
    iterations on the validation prompts; prints the per-seed table and the chosen length."""
    from rlhf_lessons.alignment.lm_ppo import LMPPOConfig, PolicyWithValueHead, train_lm_ppo
    from rlhf_lessons.review_world.evaluation import evaluate_policy
    from rlhf_lessons.review_world.preferences import train_review_reward_model
    from rlhf_lessons.review_world.splits import train_prompts, validation_prompts

    valid = validation_prompts()
    gaps = {}  # (seed, iteration) -> (KL gap, grammatical gap), beta = 0 against PPO
    for seed in seeds:
        rm = train_review_reward_model(sft, tok, train_prompts(1000, seed=10**10 + seed), valid,
                                       epochs=2, lr=3e-4, seed=seed, show_progress=False)  # fmt: skip
        measured = {}
        for name, changes in (("ppo", {}), ("beta=0", dict(beta=0.0, adaptive_kl=False))):
            config = LMPPOConfig(**{**PPO_SETTINGS, "iterations": longest, **changes}, seed=seed)
            model = PolicyWithValueHead(copy.deepcopy(sft))
            snapshots = []  # copies only: evaluating inside the run would reseed its sampling
            train_lm_ppo(model, tok, train_prompts(512, seed=seed), config, ref=sft,
                         reward_fn=rm.reward_fn, show_progress=False, eval_every=every,
                         eval_fn=lambda lm, kept=snapshots: kept.append(copy.deepcopy(lm)) or {})  # fmt: skip
            for i, lm in enumerate(snapshots[1:], start=1):
                e = evaluate_policy(lm, sft, tok, valid, n_samples=4, max_new_tokens=16, seed=seed)
                measured[name, i * every] = (e["kl"], e["grammatical"])
        for it in range(every, longest + 1, every):
            (kl_p, gr_p), (kl_0, gr_0) = measured["ppo", it], measured["beta=0", it]
            gaps[seed, it] = (kl_0 - kl_p, gr_p - gr_0)
            print(f"seed {seed:5d} it {it:3d}: PPO KL {kl_p:6.2f} gramm. {gr_p:.2f} | beta=0 KL "
                  f"{kl_0:6.2f} gramm. {gr_0:.2f}", flush=True)  # fmt: skip
    ok = [it for it in range(40, longest + 1, every)
          if all(gaps[s, it][0] > 0 and gaps[s, it][1] >= 0.2 for s in seeds)]  # fmt: skip
    print(f"every seed's beta = 0 run has drifted from {min(ok) if ok else 'none'} iterations")


#: lesson 05's PPO settings (its ``ppo_config``)
PPO_SETTINGS = dict(batch_size=32, minibatch_size=16, epochs=2, lr=3e-4, adaptive_kl=True,
                    beta=0.2, kl_target=3.0, kl_horizon=320, threads=1)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--only", choices=["ppo", "grpo", "rloo"], default=None)
    parser.add_argument("--hacking", action="store_true", help="choose the beta = 0 run's length")
    args = parser.parse_args()

    import torch

    from rlhf_lessons.review_world.evaluation import evaluate_policy
    from rlhf_lessons.review_world.splits import validation_prompts
    from rlhf_lessons.review_world.tiny_lm import load_sft_model

    torch.set_num_threads(1)
    sft, tok = load_sft_model(show_progress=False)
    if args.hacking:
        hacking(args.seeds, sft, tok)
        return
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
