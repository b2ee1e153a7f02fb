"""Several seeds of a CartPole algorithm, trained together, with an on-disk cache of their runs.

Lesson 02 compares PPO with lesson 01's REINFORCE runs; the cache lets it reuse them instead
of training them again. A cached run is keyed by the algorithm, its config, the evaluation
cadence, the seed and a hash of the source files that produced it, so editing the algorithm
invalidates the cache rather than serving stale curves. Only the History is cached (rows,
evaluations, episodes), not the network: a run loaded from the cache has ``policy=None``.

The seeds missing from the cache train as one batched computation
(:mod:`rlhf_lessons.rl.batched`); each seed's run is the same whichever seeds train beside it,
so cached and fresh seeds mix freely.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path

from rlhf_lessons.course.cache import cache_dir, write_atomically
from rlhf_lessons.rl import advantages, batched, cartpole, kl, ppo, reinforce
from rlhf_lessons.rl.ppo import PPOConfig, train_ppo_seeds
from rlhf_lessons.rl.reinforce import ReinforceConfig, train_reinforce_seeds
from rlhf_lessons.training import History

ALGOS = {
    "reinforce": (ReinforceConfig, train_reinforce_seeds, (reinforce,)),
    "ppo": (PPOConfig, train_ppo_seeds, (ppo, kl)),
}


def _source_hash(algo: str) -> str:
    """Hash of the source files a run of ``algo`` depends on."""
    h = hashlib.sha256()
    for mod in (advantages, batched, cartpole, *ALGOS[algo][2]):
        h.update(Path(mod.__file__).read_bytes())
    return h.hexdigest()[:12]


def _make_config(algo: str, config):
    if algo not in ALGOS:
        raise ValueError(f"algo must be one of {sorted(ALGOS)}, got {algo!r}")
    expected = ALGOS[algo][0]
    if config is None:
        return expected()
    if not isinstance(config, expected):
        raise TypeError(f"algo {algo!r} takes a {expected.__name__}, got {type(config).__name__}")
    return config


def run_seeds(
    algo: str,
    seeds: Sequence[int],
    config: ReinforceConfig | PPOConfig | None = None,
    *,
    eval_every: int = 0,
    use_cache: bool = True,
    show_progress: bool = True,
) -> list[History]:
    """Train ``algo`` ("reinforce" or "ppo") on each seed and return one History per seed.

    ``config.seed`` is ignored (the seeds are ``seeds``); ``eval_every`` is the trainer's
    (updates or iterations between greedy evaluations). With ``use_cache`` a run whose key
    was computed before is loaded from :func:`cache_dir` instead of trained again.
    """
    cfg = _make_config(algo, config)
    train = ALGOS[algo][1]
    settings = {k: v for k, v in asdict(cfg).items() if k != "seed"}
    key_base = json.dumps(
        {"algo": algo, "config": settings, "eval_every": eval_every, "src": _source_hash(algo)},
        sort_keys=True,
    )
    paths = {}
    for seed in seeds:
        key = hashlib.sha256(f"{key_base}|{seed}".encode()).hexdigest()[:16]
        paths[seed] = cache_dir() / "runs" / f"{algo}-seed{seed}-{key}.json"
    cached = [seed for seed, path in paths.items() if use_cache and path.exists()]
    runs = {seed: History(**json.loads(paths[seed].read_text())) for seed in cached}
    missing = [s for s in seeds if s not in runs]
    if missing:
        fresh = train(missing, cfg, eval_every=eval_every, show_progress=show_progress)
        for seed, history in zip(missing, fresh, strict=True):
            runs[seed] = history
            if use_cache:
                saved = {f.name: getattr(history, f.name) for f in fields(History)}
                del saved["policy"]  # only the History is cached, not the network
                write_atomically(paths[seed], json.dumps(saved))
    return [runs[s] for s in seeds]
