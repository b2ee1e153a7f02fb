"""How lessons 06-07 chose their review-world learning rates: on the validation prefixes only.

The lessons report on ``test_prompts()`` and must not be tuned on them, so the setting they
choose, the Adam learning rate of DPO (lesson 06, and DPO in lesson 07) and of SimPO (lesson
07), was chosen here on ``validation_prompts()`` (disjoint from the test prefixes and from every
training prefix), on seeds 0 and 1, by one rule: a method's points (the SFT model, and DPO at
beta 0.1, 0.5 and 2.0, or SimPO evaluated every 10 steps) make its reward-vs-KL frontier
(``rlhf_lessons.review_world.frontier``); the frontier is scored by its mean reward over KL 0-5
nats; the learning rate with the higher mean score over seeds wins. The other settings are not
chosen: one epoch over the pairs of 500 prefixes, the losses' usual beta and gamma, and PPO-GT
at two KL strengths whose checkpoints together are its frontier (lesson 06).

Run from the repository root (about 10 minutes of one core)::

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
from rlhf_lessons.review_world.evaluation import evaluate_policy
from rlhf_lessons.review_world.frontier import frontier, frontier_at
from rlhf_lessons.review_world.preferences import sample_ranked_completions
from rlhf_lessons.review_world.splits import train_prompts, validation_prompts
from rlhf_lessons.review_world.tiny_lm import load_sft_model
from rlhf_lessons.rewards.preference_data import ranked_to_pairs

SEEDS = (0, 1)
N_PAIR_PROMPTS = 500  # as lessons 06-07
LRS = (5e-4, 1e-3)
DPO_BETAS = (0.1, 0.5, 2.0)
KL_RANGE = 5.0  # nats: the frontier's score is its mean reward over KL [0, KL_RANGE]


def score(points: list[tuple[float, float]]) -> float:
    """Mean frontier reward over KL [0, KL_RANGE]; beyond its last point a frontier keeps its
    last reward (that policy is still there to be picked when more KL is allowed)."""
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

    scores = {(method, lr): [] for method in ("DPO", "SimPO") for lr in LRS}
    for seed in SEEDS:
        start = (0.0, evaluate(sft, seed)["reward"])
        ranked = sample_ranked_completions(sft, tok, train_prompts(N_PAIR_PROMPTS, seed), k=4,
                                           max_new_tokens=16, seed=seed)  # fmt: skip
        pairs = [p for r in ranked for p in ranked_to_pairs(r)]
        ref = precompute_reference_logps(sft, tokenize_preferences(tok, pairs, 32, 32))
        for lr in LRS:
            pts = [start]
            for beta in DPO_BETAS:
                policy = copy.deepcopy(sft)
                train_dpo(policy, tok, pairs, DPOConfig.dpo(beta=beta, lr=lr, seed=seed),
                          ref_logps=ref, show_progress=False)  # fmt: skip
                e = evaluate(policy, seed)
                pts.append((e["kl"], e["reward"]))
            scores["DPO", lr].append(score(pts))
            policy = copy.deepcopy(sft)
            h = train_dpo(policy, tok, pairs, DPOConfig.simpo(lr=lr, seed=seed),
                          eval_fn=lambda m, s=seed: evaluate(m, s), eval_every=10,
                          show_progress=False)  # fmt: skip
            path = [start] + [(e["kl"], e["reward"]) for e in h.evaluations]
            scores["SimPO", lr].append(score(path))
            for method, p in (("DPO", pts), ("SimPO", path)):
                print(f"seed {seed} {method} lr {lr:g}: (KL, reward) {np.round(p, 3).tolist()} -> "
                      f"{scores[method, lr][-1]:.3f}", flush=True)  # fmt: skip
    print(f"\nscore: mean frontier reward over KL [0, {KL_RANGE:g}] on the validation prefixes, "
          f"mean over seeds {list(SEEDS)}")  # fmt: skip
    for method in ("DPO", "SimPO"):
        for lr in LRS:
            print(f"  {method} lr {lr:g}: {np.mean(scores[method, lr]):.3f}")
        best = max(LRS, key=lambda lr: np.mean(scores[method, lr]))
        print(f"  chosen {method} lr: {best:g}")


if __name__ == "__main__":
    main()
