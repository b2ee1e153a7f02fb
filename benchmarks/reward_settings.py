"""Choose the settings of lessons 04 and 08 on validation data (never on what they report on).

Lesson 04 (reward models, ``--lesson 04``): the course's training prompts are split with
``rlhf_lessons.course.data.validation_split`` (every 5th prompt of each category held back); the
MiniLM reward model (top ``6 - frozen`` layers and the head trained, the bottom frozen and
looked up, see ``rlhf_lessons.rewards.frozen_bottom``) is trained on the rest, K-wise and on
shuffled pairs, for every candidate setting and seed, and scored on the validation prompts.
The held-out split (what the lesson reports on) is not read.

Lesson 08 (PairRanker, ``--lesson 08``): rankers are trained on review-world samples of
training prompts (``train_prompts(n, seed)``, ranked by the true reward) and scored on N = 4
samples of each of the 64 *validation* prompts (``validation_prompts()``): pairwise accuracy
with both orders, and the best-of-4 gain over a random pick. The test prompts are not read,
and the seeds used to choose (5000 and up) are not the lesson's (0-2, or RLHF_LESSONS_SEEDS).
Each setting changes one thing from llm-blender's ranker as built: where the new prefix tokens'
embeddings start (the vocabulary's mean, which transformers' ``resize_token_embeddings`` gives
all four, or distinct words: ``build_pair_ranker(prefix_init=...)``), the head's learning rate
with a warm-up, llm-blender's own training settings, the number of epochs.

Each line printed is one run: setting, seed, validation accuracy, training CPU seconds; a summary
per setting gives the mean and 95% interval over seeds. Run from the repository root::

    .venv/bin/python benchmarks/reward_settings.py --lesson 04 --seeds 0 1 2 3
    .venv/bin/python benchmarks/reward_settings.py --lesson 08 --seeds 5000 5001 5002

It takes several minutes of one core per setting; the grids are the ones explored for the
lessons' defaults.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from rlhf_lessons.course.stats import mean_ci

LESSON04 = [  # (frozen layers, mode, lr, batch size)
    (5, "kwise", 3e-4, 2), (5, "kwise", 1e-3, 2), (5, "kwise", 3e-3, 2), (5, "kwise", 3e-3, 8),
    (5, "pairs", 3e-4, 8), (5, "pairs", 1e-3, 8), (5, "pairs", 3e-3, 8), (5, "pairs", 3e-3, 27),
]  # fmt: skip
# Lesson 08: one change at a time from llm-blender's ranker as it builds it (the prefix tokens start
# at the vocabulary's mean embedding), every layer trained, 96 training prompts:
# (name, prefix_init, PairRankerConfig fields, frozen bottom layers or None)
LESSON08 = [
    ("mean start (as built), lr 1e-4, 3 epochs", "mean", dict(lr=1e-4, epochs=3), None),
    ("word start, lr 1e-4, 3 epochs", "words", dict(lr=1e-4, epochs=3), None),
    ("mean start, head lr 1e-3, warm-up 7 steps", "mean",
     dict(lr=1e-4, epochs=3, head_lr=1e-3, warmup_steps=7), None),
    ("mean start, llm-blender's lr 1e-5, 5 epochs, no clipping", "mean",
     dict(lr=1e-5, epochs=5, max_grad_norm=None), None),
    ("word start, lr 1e-4, 1 epoch", "words", dict(lr=1e-4, epochs=1), None),
    ("word start, lr 2e-4, 1 epoch", "words", dict(lr=2e-4, epochs=1), None),
    ("mean start, frozen bottom 5, lr 1e-3, 2 epochs", "mean", dict(lr=1e-3, epochs=2), 5),
]  # fmt: skip
LESSON08_PROMPTS = 96


def lesson04(seeds: list[int]) -> dict:
    from rlhf_lessons.course.data import load_preferences, validation_split
    from rlhf_lessons.models import load_encoder
    from rlhf_lessons.rewards.frozen_bottom import FrozenBottom
    from rlhf_lessons.rewards.reward_model import (
        RewardModel,
        RewardModelConfig,
        evaluate_reward_model,
        train_reward_model,
    )

    fit, validation = validation_split(load_preferences("train"))
    encoder, tokenizer = load_encoder("minilm")
    bottoms: dict[int, FrozenBottom] = {}
    out: dict = {}
    for frozen, mode, lr, batch in LESSON04:
        bottom = bottoms.setdefault(frozen, FrozenBottom(encoder, frozen))
        for seed in seeds:
            model = RewardModel((copy.deepcopy(encoder), tokenizer), frozen=bottom, chunk_size=4,
                                seed=seed)  # fmt: skip
            config = RewardModelConfig(mode=mode, lr=lr, batch_size=batch, seed=seed)
            history = train_reward_model(model, tokenizer, fit, config, show_progress=False)
            acc = evaluate_reward_model(model, validation).accuracy
            key = f"frozen {frozen}, {mode}, lr {lr:g}, batch {batch}"
            out.setdefault(key, []).append(acc)
            print(f"{key}, seed {seed}: validation accuracy {acc:.3f}, "
                  f"training {history.cpu_seconds:.1f} CPU s", flush=True)  # fmt: skip
    return out


def lesson08(seeds: list[int]) -> dict:
    from rlhf_lessons.course.cache import cache_dir
    from rlhf_lessons.review_world.preferences import sample_ranked_completions
    from rlhf_lessons.review_world.splits import train_prompts, validation_prompts
    from rlhf_lessons.review_world.tiny_lm import load_sft_model
    from rlhf_lessons.rewards.frozen_bottom import FrozenBottom
    from rlhf_lessons.rewards.pairrm import (
        PairRankerConfig,
        build_pair_ranker,
        load_blender,
        save_pair_ranker,
        train_pair_ranker,
    )
    from rlhf_lessons.rewards.pairrm_eval import (
        compare_all,
        full_matrix_picks,
        pair_eval,
        sample_candidates,
    )

    sft, tok = load_sft_model()
    cands = sample_candidates(sft, tok, validation_prompts(), n=4, seed=12345)
    reference = build_pair_ranker("minilm", source_maxlength=32, candidate_maxlength=32, seed=0)
    folder = cache_dir() / "models" / "reward-settings"
    out: dict = {}
    for seed in seeds:
        data = sample_ranked_completions(sft, tok, train_prompts(LESSON08_PROMPTS, seed), k=4,
                                         max_new_tokens=16, seed=seed)  # fmt: skip
        for key, prefix_init, fields, frozen in LESSON08:
            bottom = None if frozen is None else FrozenBottom(reference.ranker.pretrained_model,
                                                              frozen)  # fmt: skip
            bundle = build_pair_ranker("minilm", source_maxlength=32, candidate_maxlength=32,
                                       seed=seed, frozen=bottom, prefix_init=prefix_init)  # fmt: skip
            config = PairRankerConfig(batch_size=4, by_length=True, seed=seed, **fields)
            history = train_pair_ranker(bundle.ranker, bundle.tokenizer, data, config,
                                        show_progress=False)  # fmt: skip
            save_pair_ranker(bundle, folder)
            cmp = compare_all(load_blender(folder, frozen=bottom), cands.prompts, cands.texts)
            acc = pair_eval(cmp, cands.rewards.tolist()).accuracy
            gain = (cands.picked(full_matrix_picks(cmp)) - cands.random_pick).mean().item()
            out.setdefault(key, []).append(acc)
            print(f"{key}, seed {seed}: validation accuracy {acc:.3f}, best-of-4 gain "
                  f"{gain:+.3f}, training {history.cpu_seconds:.1f} CPU s", flush=True)  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lesson", choices=["04", "08"], required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.process_time()
    table = (lesson04 if args.lesson == "04" else lesson08)(args.seeds)
    print(f"\nsummary (validation accuracy, mean and 95% interval over seeds {args.seeds}):")
    for key, values in table.items():
        print(f"  {key}: {mean_ci(values) if len(values) > 1 else f'{values[0]:.3f}'}")
    print(f"{time.process_time() - start:.0f} CPU s in all")


if __name__ == "__main__":
    main()
