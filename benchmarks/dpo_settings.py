"""How lessons 06-07 chose their review-world settings: on the validation prefixes only.

The lessons report on ``test_prompts()`` and must not be tuned on them, so the few settings they
fix (DPO's and SimPO's learning rate, PPO-GT's KL coefficient) were chosen here, on
``validation_prompts()`` (disjoint from the test prefixes and from every training prefix), on
seeds 0 and 1, by the rule printed next to each choice:

- **DPO learning rate** (the trainer's ``lr``, also SimPO's): each candidate trains DPO at beta
  0.1, 0.5 and 2.0; its frontier (``rlhf_lessons.review_world.frontier``) is scored by its mean
  reward over KL 0-5 nats, and the higher mean over seeds wins.
- **PPO-GT's KL coefficient** (``LMPPOConfig.beta``, lesson 05's PPO on the true reward): each
  candidate trains once per seed, evaluated every 10 iterations; its checkpoints' frontier is
  scored the same way.

Run from the repository root (about 15 minutes of one core)::

    .venv/bin/python benchmarks/dpo_settings.py
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import torch

from rlhf_lessons.alignment.dpo import (
    DPOConfig,
    precompute_reference_logps,
    tokenize_preferences,
    train_dpo,
)
from rlhf_lessons.alignment.lm_ppo import LMPPOConfig, PolicyWithValueHead, train_lm_ppo
from rlhf_lessons.review_world.evaluation import evaluate_policy
from rlhf_lessons.review_world.frontier import frontier, frontier_at
from rlhf_lessons.review_world.preferences import sample_ranked_completions
from rlhf_lessons.review_world.splits import train_prompts, validation_prompts
from rlhf_lessons.review_world.tiny_lm import load_sft_model
from rlhf_lessons.review_world.true_reward import reward_of
from rlhf_lessons.rewards.preference_data import ranked_to_pairs

SEEDS = (0, 1)
N_PAIR_PROMPTS = 500  # as lessons 06-07
DPO_LRS = (5e-4, 1e-3)
DPO_BETAS = (0.1, 0.5, 2.0)
PPO_BETAS = (0.05, 0.2)
PPO_ITERATIONS = 40
KL_RANGE = 5.0  # nats: the frontier's score is its mean reward over KL [0, KL_RANGE]


def score(points: list[tuple[float, float]]) -> float:
    """Mean frontier reward over KL [0, KL_RANGE] (flat beyond the last point: a frontier that
    stops early gets no credit for KL it never reached)."""
    front = frontier(points)
    grid = np.linspace(0.0, KL_RANGE, 51)
    return float(frontier_at(front, np.minimum(grid, front[-1, 0])).mean())


def main() -> None:
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    sft, tok = load_sft_model()
    sft.eval()
    prompts = validation_prompts()

    def evaluate(model, seed: int) -> dict:
        r = evaluate_policy(model, sft, tok, prompts, n_samples=4, max_new_tokens=16, seed=seed)
        return {"kl": r["kl"], "reward": r["reward"]}

    dpo_scores = {lr: [] for lr in DPO_LRS}
    ppo_scores = {beta: [] for beta in PPO_BETAS}
    for seed in SEEDS:
        start = (0.0, evaluate(sft, seed)["reward"])
        ranked = sample_ranked_completions(sft, tok, train_prompts(N_PAIR_PROMPTS, seed), k=4,
                                           max_new_tokens=16, seed=seed)  # fmt: skip
        pairs = [p for r in ranked for p in ranked_to_pairs(r)]
        ref = precompute_reference_logps(sft, tokenize_preferences(tok, pairs, 32, 32))
        for lr in DPO_LRS:
            pts = [start]
            for beta in DPO_BETAS:
                policy = copy.deepcopy(sft)
                train_dpo(policy, tok, pairs, DPOConfig.dpo(beta=beta, lr=lr, seed=seed),
                          ref_logps=ref, show_progress=False)  # fmt: skip
                e = evaluate(policy, seed)
                pts.append((e["kl"], e["reward"]))
            dpo_scores[lr].append(score(pts))
            print(f"seed {seed} DPO lr {lr:g}: points {np.round(pts, 3).tolist()} -> "
                  f"{dpo_scores[lr][-1]:.3f}", flush=True)  # fmt: skip
        for beta in PPO_BETAS:
            ppo = PolicyWithValueHead(copy.deepcopy(sft))
            h = train_lm_ppo(ppo, tok, train_prompts(512, seed),
                             LMPPOConfig(iterations=PPO_ITERATIONS, beta=beta, seed=seed, threads=1),
                             ref=sft, reward_fn=reward_of, eval_every=10, show_progress=False,
                             eval_fn=lambda m, s=seed: evaluate(m, s),
                             )  # fmt: skip
            pts = [start] + [(e["kl"], e["reward"]) for e in h.evaluations[1:]]
            ppo_scores[beta].append(score(pts))
            print(f"seed {seed} PPO-GT beta {beta:g}: points {np.round(pts, 3).tolist()} -> "
                  f"{ppo_scores[beta][-1]:.3f}", flush=True)  # fmt: skip
    print(f"\nscore: mean frontier reward over KL [0, {KL_RANGE:g}] on the validation prefixes, "
          f"mean over seeds {list(SEEDS)}")  # fmt: skip
    for name, scores in (("DPO lr", dpo_scores), ("PPO-GT beta", ppo_scores)):
        for key, values in scores.items():
            print(f"  {name} {key:g}: {np.mean(values):.3f}")
        best = max(scores, key=lambda k: np.mean(scores[k]))
        print(f"  chosen {name}: {best:g}")


if __name__ == "__main__":
    main()
