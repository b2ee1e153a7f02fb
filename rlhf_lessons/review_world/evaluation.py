"""Judging an aligned policy where the true reward is known: reward against KL.

The DPO paper (Rafailov et al. 2023, arXiv 2305.18290, section 6.1, figure 2 left) compares
alignment methods on IMDb controlled sentiment by two numbers per trained policy pi:

- the **expected true reward** of its completions of held-out prompts (there: a sentiment
  classifier; here: VADER, :mod:`rlhf_lessons.review_world.true_reward`), and
- the **sequence-level KL(pi || pi_ref)** from the SFT model it started from,

and draws each policy as a point in the (KL, reward) plane. A method is better when its points
lie higher at the same KL: more reward for the same departure from the reference. Lessons 05, 06,
07, 10 and 11 all add their methods to the same kind of figure with :func:`plot_reward_vs_kl`.

The KL is estimated from the policy's own samples y ~ pi(. | x):

    KL(pi || pi_ref) = E_x E_{y ~ pi}[ sum_t log pi(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t) ]

The sum over the completion's tokens of the log-ratio is the k1 estimator (unbiased, can be
negative on a single sample); the sum of the per-token k3 = (r - 1) - log r with
r = pi_ref / pi (see :mod:`rlhf_lessons.rl.kl`) is also unbiased for the sequence KL, never
negative and of lower variance. Both use :func:`rlhf_lessons.lm.token_logprobs` at the sampling
temperature for both models, so at a temperature tau != 1 they measure
KL(pi_tau || pi_ref_tau), the two models as they are sampled.

Next to the two coordinates, :func:`evaluate_policy` reports what the plot cannot show: the
completions' length, their diversity (distinct-1/2) and the fraction the review grammar still
accepts. A policy that buys reward with degenerate text ("great great great !") shows up there.

Confidence intervals are 95% t-intervals over the per-prompt means: the samples of one prompt
are not independent of each other, the prompts are.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from rlhf_lessons.alignment.rollouts import logprobs_in_chunks
from rlhf_lessons.course.device import torch_threads
from rlhf_lessons.course.stats import cluster_mean_ci
from rlhf_lessons.lm import generate
from rlhf_lessons.review_world.grammar import is_grammatical
from rlhf_lessons.review_world.true_reward import join_prompt_completion, reward_of
from rlhf_lessons.rl.kl import kl_estimates
from rlhf_lessons.training import RewardFn, eval_mode

KL_LABEL = "KL(pi || pi_ref), nats per sequence"
REWARD_LABEL = "mean true reward (VADER)"


def distinct_n(completion_ids: Sequence[Sequence[int]], n: int) -> float:
    """Distinct-n (Li et al. 2016): distinct n-grams / all n-grams over every completion
    (n-grams do not cross completions). 1.0 means no n-gram repeats; 0 if there are none."""
    grams = [tuple(ids[i : i + n]) for ids in completion_ids for i in range(len(ids) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


@torch.no_grad()
def evaluate_policy(
    policy,
    ref,
    tokenizer,
    prompts: Sequence[str],
    n_samples: int = 4,
    max_new_tokens: int = 24,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 256,
    reward_fn: RewardFn = reward_of,
    fluency_fn: Callable[[str], bool] | None = is_grammatical,
    threads: int | None = None,
) -> dict:
    """Sample ``n_samples`` completions (S) of each of the P formatted ``prompts`` from
    ``policy`` (P * S >= 2 in all) and measure them against ``ref`` (the same model twice: KL =
    0). ``temperature`` is also used for both models' log-probs; ``seed`` lets two policies be
    compared on the same random draws. ``fluency_fn`` (``text -> bool`` on each prompt +
    completion; ``None`` for other worlds, gives NaN) catches reward hacking by broken text.
    ``threads``: torch threads while sampling and scoring (tiny models on a busy 2-core
    machine run several times faster with 1).

    Returns a dict of floats: ``reward`` and ``reward_ci`` (the mean and the half-width of its
    95% CI: the interval is reward +- reward_ci, a t-interval over the per-prompt means,
    :func:`~rlhf_lessons.course.stats.cluster_mean_ci`), ``kl`` / ``kl_ci`` (k1: summed log-ratio),
    ``kl_k3`` / ``kl_k3_ci`` (summed per-token k3), ``mean_length`` (completion tokens, EOS
    included), ``eos_fraction`` (completions that ended by EOS), ``distinct_1`` and
    ``distinct_2`` (over completion tokens, EOS excluded), ``grammatical`` (fraction of
    completions that ended by EOS and pass ``fluency_fn``), ``n_prompts``, ``n_samples``,
    ``temperature``; and ``samples``, one dict per completion with its ``prompt``,
    ``completion``, ``reward``, ``kl`` and ``grammatical`` (1.0 / 0.0).
    """
    prompts = list(prompts)
    if not prompts:
        raise ValueError("prompts is empty: pass at least one prompt")
    if n_samples < 1 or len(prompts) * n_samples < 2:
        raise ValueError(
            f"need n_samples >= 1 and at least 2 samples in all for a confidence interval, got "
            f"{len(prompts)} prompts x n_samples={n_samples}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 (sampling), got {temperature}")
    expanded = [p for p in prompts for _ in range(n_samples)]
    with eval_mode(policy, ref), torch_threads(threads):
        gen = generate(
            policy, tokenizer, expanded, max_new_tokens=max_new_tokens,
            temperature=temperature, batch_size=batch_size, seed=seed,
        )  # fmt: skip
        batch = gen.batch
        logp_pi = logprobs_in_chunks(policy, batch, temperature)
        logp_ref = logp_pi if ref is policy else logprobs_in_chunks(ref, batch, temperature)
    mask = batch.completion_mask.to(logp_pi.dtype)
    log_r = (logp_ref - logp_pi) * mask  # log pi_ref - log pi per completion token
    k1 = -log_r.sum(-1)
    k3 = (kl_estimates(log_r)["k3"] * mask).sum(-1)
    rewards = reward_fn(expanded, gen.completions).double()
    if rewards.shape != (len(expanded),):
        raise ValueError(
            f"reward_fn returned shape {tuple(rewards.shape)}, expected ({len(expanded)},)"
        )
    shape = (len(prompts), n_samples)
    reward, kl, kl3 = (cluster_mean_ci(x.view(shape).cpu().numpy()) for x in (rewards, k1, k3))

    eos = tokenizer.eos_token_id
    ids = [
        row[m.bool()].tolist()
        for row, m in zip(batch.input_ids, batch.completion_mask, strict=True)
    ]
    ended = [bool(r) and r[-1] == eos for r in ids]
    words = [r[:-1] if e else r for r, e in zip(ids, ended, strict=True)]
    fluent = [
        math.nan if fluency_fn is None else float(e and fluency_fn(join_prompt_completion(p, c)))
        for p, c, e in zip(expanded, gen.completions, ended, strict=True)
    ]
    columns = (expanded, gen.completions, rewards.tolist(), k1.tolist(), fluent)
    samples = [
        {"prompt": p, "completion": c, "reward": r, "kl": k, "grammatical": g}
        for p, c, r, k, g in zip(*columns, strict=True)
    ]
    return {
        "reward": reward.mean,
        "reward_ci": reward.half_width,
        "kl": kl.mean,
        "kl_ci": kl.half_width,
        "kl_k3": kl3.mean,
        "kl_k3_ci": kl3.half_width,
        "mean_length": float(np.mean([len(r) for r in ids])),
        "eos_fraction": float(np.mean(ended)),
        "distinct_1": distinct_n(words, 1),
        "distinct_2": distinct_n(words, 2),
        "grammatical": float(np.mean(fluent)),
        "n_prompts": len(prompts),
        "n_samples": n_samples,
        "temperature": temperature,
        "samples": samples,
    }


def over_seeds_point(method: str, kl, reward, label: str | None = None) -> dict:
    """A point for :func:`plot_reward_vs_kl` from two intervals over training seeds
    (:class:`~rlhf_lessons.course.stats.Interval`, e.g. ``mean_ci`` of each seed's KL and
    reward): the means, with the intervals as error bars."""
    means = {"kl": kl.mean, "kl_ci": (kl.low, kl.high),
             "reward": reward.mean, "reward_ci": (reward.low, reward.high)}  # fmt: skip
    return to_point(means, method, label)


def scrambled(completions: Sequence[str], seed: int = 0) -> list[str]:
    """Each completion with its words (and punctuation) in a random other order: planted broken
    text, to check that a fluency check such as :func:`~rlhf_lessons.review_world.grammar.
    is_grammatical` rejects it before trusting it to detect reward hacking. A completion whose
    words allow no other order is returned as it is."""
    rng = random.Random(seed)
    out = []
    for text in completions:
        words = text.split()
        shuffled = words[:]
        for _ in range(20):
            rng.shuffle(shuffled)
            if shuffled != words:
                break
        out.append(" ".join(shuffled))
    return out


def to_point(result: dict, method: str, label: str | None = None) -> dict:
    """A point for :func:`plot_reward_vs_kl` from an :func:`evaluate_policy` result."""
    point = {"method": method, "kl": result["kl"], "kl_ci": result["kl_ci"],
             "reward": result["reward"], "reward_ci": result["reward_ci"]}  # fmt: skip
    if label is not None:
        point["label"] = label
    return point


# One fixed look per method across the course's figures (lower-case names); any other method
# gets the next colour and marker not yet used on the axes.
METHOD_STYLES: dict[str, tuple[str, str]] = {
    "sft": ("black", "o"),
    "best-of-n": ("tab:gray", "P"),
    "ppo": ("tab:blue", "s"),
    "ppo-gt": ("tab:cyan", "s"),
    "dpo": ("tab:red", "^"),
    "ipo": ("tab:orange", "v"),
    "simpo": ("tab:purple", "D"),
    "rloo": ("tab:green", "X"),
    "grpo": ("tab:olive", "*"),
    "preferred-ft": ("tab:brown", "h"),
    "unlikelihood": ("tab:pink", "<"),
    "ppo (beta=0)": ("darkmagenta", "x"),
    "grpo (trl)": ("crimson", "P"),
}
_EXTRA_COLORS = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d"]
_EXTRA_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h"]


def _style(ax: plt.Axes, method: str) -> tuple[str, str, bool]:
    """(colour, marker, first time on these axes) for ``method``; remembered per axes."""
    styles = vars(ax).setdefault("_rlhf_method_styles", {})
    if method in styles:
        return (*styles[method], False)
    fixed = METHOD_STYLES.get(method.lower())
    if fixed is None:
        used = set(styles.values())
        k = sum(1 for m in styles if m.lower() not in METHOD_STYLES)
        fixed = (_EXTRA_COLORS[k % len(_EXTRA_COLORS)], _EXTRA_MARKERS[k % len(_EXTRA_MARKERS)])
        while fixed in used and k < 100:
            k += 1
            fixed = (_EXTRA_COLORS[k % len(_EXTRA_COLORS)], _EXTRA_MARKERS[k % len(_EXTRA_MARKERS)])
    styles[method] = fixed
    return (*fixed, True)


def _errors(point: dict, key: str, i: int) -> tuple[float, float]:
    """(below, above) error-bar lengths of ``point[key]`` from ``point[key + "_ci"]``, a
    half-width or a (low, high) interval."""
    value, ci = float(point[key]), point.get(f"{key}_ci")
    if ci is None:
        return 0.0, 0.0
    if np.ndim(ci) == 0:
        return float(ci), float(ci)
    if len(ci) != 2:
        raise ValueError(f"points[{i}]['{key}_ci'] must be a half-width or a (low, high) pair")
    low, high = (float(c) for c in ci)
    return value - low, high - value


def plot_reward_vs_kl(
    ax: plt.Axes,
    points: Sequence[dict],
    connect: bool = False,
    annotate: bool = True,
    title: str | None = None,
) -> plt.Axes:
    """Draw policies as points in the (KL, true reward) plane of the DPO paper's figure 2.

    Each point is a dict ``{"method", "kl", "kl_ci", "reward", "reward_ci"}`` plus an optional
    ``"label"`` written next to it (a hyper-parameter, a step). ``*_ci`` is a 95% half-width
    or a ``(low, high)`` interval; both become error bars. Every method has one colour and
    marker (:data:`METHOD_STYLES` for the course's methods), kept across calls on the same
    ``ax``, so each lesson can add its methods to an existing figure; ``connect`` joins a
    method's points in order of KL (a frontier). Returns ``ax``.
    """
    points = list(points)
    if not points:
        raise ValueError("points is empty: pass at least one point dict (see to_point)")
    for i, p in enumerate(points):
        missing = [k for k in ("method", "kl", "reward") if k not in p]
        if missing:
            raise ValueError(
                f"points[{i}] lacks {missing}: each point needs method, kl, kl_ci, reward, "
                "reward_ci (build it with review_world.evaluation.to_point)"
            )
    methods = list(dict.fromkeys(str(p["method"]) for p in points))
    for method in methods:
        group = [(i, p) for i, p in enumerate(points) if str(p["method"]) == method]
        if connect:
            group.sort(key=lambda ip: ip[1]["kl"])
        x = np.array([float(p["kl"]) for _, p in group])
        y = np.array([float(p["reward"]) for _, p in group])
        xerr, yerr = (
            np.array([_errors(p, key, i) for i, p in group]).T for key in ("kl", "reward")
        )
        color, marker, first = _style(ax, method)
        ax.errorbar(
            x, y, xerr=xerr, yerr=yerr, color=color, marker=marker, markersize=6, capsize=3,
            linestyle="-" if connect else "none", linewidth=1.2, elinewidth=0.9,
            label=method if first else "_nolegend_",
        )  # fmt: skip
        if annotate:
            for (_, p), xi, yi in zip(group, x, y, strict=True):
                if p.get("label"):
                    ax.annotate(str(p["label"]), (xi, yi), textcoords="offset points",
                                xytext=(5, 4), fontsize=8, color=color)  # fmt: skip
    ax.set_xlabel(KL_LABEL)
    ax.set_ylabel(REWARD_LABEL)
    if title is not None:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(title="method", fontsize=9)
    return ax
