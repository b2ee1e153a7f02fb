"""Run several seeds of a CartPole algorithm, with an on-disk cache of their learning curves.

Lesson 02 compares PPO with lesson 01's REINFORCE runs; the cache lets it reuse them instead
of training them again. A cached run is keyed by the algorithm, its full config, the seed and
a hash of the source files that produced it, so editing the algorithm invalidates the cache
rather than serving stale curves. Only curves and evaluations are cached, not the networks.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from rlhf_lessons.course.cache import cache_dir
from rlhf_lessons.rl import advantages, cartpole, ppo, reinforce
from rlhf_lessons.rl.ppo import PPOConfig, train_ppo
from rlhf_lessons.rl.reinforce import ReinforceConfig, TrainResult, train_reinforce

ALGOS = ("reinforce", "ppo")


@dataclass
class RunCurves:
    """A training run without its network: what plots and checkpoints need."""

    algo: str
    seed: int
    config: dict
    episode_returns: list[float]
    episode_end_steps: list[int]
    episode_end_seconds: list[float]
    evals: list[tuple[int, float, float]]
    final_eval: list[float]

    @classmethod
    def from_result(cls, r: TrainResult) -> RunCurves:
        return cls(**{f.name: getattr(r, f.name) for f in fields(cls)})

    @property
    def final_eval_mean(self) -> float:
        return sum(self.final_eval) / len(self.final_eval)


def _source_hash(algo: str) -> str:
    """Hash of the source files a run of ``algo`` depends on."""
    h = hashlib.sha256()
    # ppo.py imports TrainResult from reinforce.py, so PPO depends on both
    modules = (advantages, cartpole, reinforce) + ((ppo,) if algo == "ppo" else ())
    for mod in modules:
        h.update(Path(mod.__file__).read_bytes())
    return h.hexdigest()[:12]


def _make_config(algo: str, config: ReinforceConfig | PPOConfig | None):
    if algo not in ALGOS:
        raise ValueError(f"algo must be one of {ALGOS}, got {algo!r}")
    expected = ReinforceConfig if algo == "reinforce" else PPOConfig
    if config is None:
        return expected()
    if not isinstance(config, expected):
        raise TypeError(f"algo {algo!r} takes a {expected.__name__}, got {type(config).__name__}")
    return config


def run_seeds(
    algo: str,
    seeds: list[int] | range,
    config: ReinforceConfig | PPOConfig | None = None,
    use_cache: bool = True,
    show_progress: bool = True,
) -> list[RunCurves]:
    """Train ``algo`` ("reinforce" or "ppo") once per seed and return the curves.

    With ``use_cache`` a run whose key (algo, config, seed, source hash) was computed before
    is loaded from :func:`cache_dir` instead of trained again.
    """
    cfg = _make_config(algo, config)
    train = train_reinforce if algo == "reinforce" else train_ppo
    key_base = json.dumps(
        {"algo": algo, "config": asdict(cfg), "src": _source_hash(algo)}, sort_keys=True
    )
    out = []
    for seed in seeds:
        key = hashlib.sha256(f"{key_base}|{seed}".encode()).hexdigest()[:16]
        path = cache_dir() / "runs" / f"{algo}-seed{seed}-{key}.json"
        if use_cache and path.exists():
            out.append(RunCurves(**json.loads(path.read_text())))
            continue
        curves = RunCurves.from_result(train(cfg, seed=seed, show_progress=show_progress))
        if use_cache:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(asdict(curves)))
            tmp.replace(path)  # atomic: a crashed run never leaves half a file
        out.append(curves)
    return out
