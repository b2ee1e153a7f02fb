"""Command line: ``python -m rlhf_lessons`` (or ``rlhf-lessons``).

python -m rlhf_lessons cartpole --algo ppo --seed 0          # train, print, save a plot
python -m rlhf_lessons cartpole --algo reinforce --seeds 0 1 2
python -m rlhf_lessons lessons [--only 01 02] [--workers 2]   # what `make lessons` runs
python -m rlhf_lessons prepare-models                         # convert/cache the models once
python -m rlhf_lessons report [--check]                       # README numbers from build/results
python -m rlhf_lessons docs [--out build/docs]                # the API reference (pdoc)
python -m rlhf_lessons colab [--check] [--badge NOTEBOOK]     # the notebooks' setup cell, badges
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _cartpole(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from rlhf_lessons.course.plotting import moving_average, plot_seeds, save_figure
    from rlhf_lessons.rl.cartpole import SOLVED_RETURN, first_solved
    from rlhf_lessons.rl.ppo import PPOConfig
    from rlhf_lessons.rl.reinforce import ReinforceConfig
    from rlhf_lessons.rl.runs import run_seeds

    seeds = args.seeds if args.seeds else [args.seed]
    if args.algo == "reinforce":
        cfg = ReinforceConfig(**({"episodes": args.episodes} if args.episodes else {}))
        eval_every = 5  # updates of 4 episodes
    else:
        cfg = PPOConfig(**({"total_timesteps": args.timesteps} if args.timesteps else {}))
        eval_every = 8  # iterations of 256 steps
    # all seeds train together, as one batched computation
    runs = run_seeds(args.algo, seeds, cfg, eval_every=eval_every, use_cache=not args.no_cache)

    fig, ax = plt.subplots(figsize=(8, 4))
    curves = [
        (r.info["episode_end_steps"], moving_average(r.info["episode_returns"], 100)) for r in runs
    ]
    plot_seeds(ax, curves, args.algo, band="ci" if len(runs) > 1 else "minmax")
    ax.axhline(SOLVED_RETURN, color="gray", ls="--", lw=1, label="solved (475)")
    ax.set(
        xlabel="environment steps",
        ylabel="return (100-episode moving average)",
        title=f"CartPole-v1, {args.algo}, seeds {seeds}",
    )
    ax.legend(loc="lower right")
    out = save_figure(fig, args.out or f"cartpole_{args.algo}.png")

    for r in runs:
        returns = r.info["episode_returns"]
        best = max(moving_average(returns, 100)[99:], default=float("nan"))
        solved = first_solved(r)
        print(
            f"seed {r.config['seed']}: {len(returns)} episodes, {r.env_steps[-1]} steps, "
            f"{r.seconds[-1]:.1f} s (all seeds together), best 100-episode average {best:.1f}, "
            f"first greedy evaluation >= {SOLVED_RETURN:g} at "
            f"{'never' if solved is None else f'{solved[0]} steps'}, "
            f"final greedy {np.mean(r.info['final_return']):.1f}"
        )
    print(f"plot saved to {out}")
    return 0


def _lessons(args: argparse.Namespace) -> int:
    from rlhf_lessons.course.lesson_runner import run_lessons

    if not args.no_prepare:
        # the models first, once: notebooks running side by side would each convert or train them
        _prepare_models(argparse.Namespace(refresh=False, ship=False))
    reports = run_lessons(Path(args.notebooks), Path(args.build), args.only, workers=args.workers)
    return 0 if all(r.checkpoint == "passed" for r in reports) else 1


def _prepare_models(args: argparse.Namespace) -> int:
    from rlhf_lessons.models import minilm_path, ship_model, shipped_models_dir, smollm2_path
    from rlhf_lessons.review_world.tiny_lm import model_folder, sft_model_path

    # each step shows a bar the first time (the GGUF conversion, the review model's training)
    print(f"SmolLM2-135M-Instruct: {smollm2_path(refresh=args.refresh)}", flush=True)
    print(f"all-MiniLM-L6-v2:      {minilm_path()}", flush=True)
    # lessons 05-11's review model: copied from data/models when a copy of this source ships,
    # else trained once (~1.5 min on one core); then loaded from disk
    if (shipped_models_dir() / model_folder().name).is_dir():
        print(f"review SFT model:      {sft_model_path()} (the shipped copy)", flush=True)
    else:  # its source changed since the copy shipped: `prepare-models --ship` updates it
        print(f"review SFT model:      no shipped copy of {model_folder().name}: training")
        print(f"review SFT model:      {sft_model_path()}", flush=True)
    if args.ship:
        print(f"shipped:               {ship_model(sft_model_path(), 'review-gpt-')}")
    return 0


def _docs(args: argparse.Namespace) -> int:
    from rlhf_lessons.course.api_docs import build_api_docs

    problems = build_api_docs(Path(args.out))
    for line in problems:
        print(f"warning: {line}", file=sys.stderr)
    print(f"API reference: {Path(args.out) / 'index.html'} ({len(problems)} warnings)")
    return 1 if problems else 0


def _colab(args: argparse.Namespace) -> int:
    from rlhf_lessons.course import colab

    if args.badge:
        print(colab.colab_badge(args.badge))
        return 0
    changed = colab.sync(check=args.check)
    for path in changed:
        print(f"{'differs' if args.check else 'updated'}: {path}")
    if args.check:
        return 1 if changed else 0
    print(f"setup cell and badges up to date ({len(changed)} files written)")
    return 0


def _report(args: argparse.Namespace) -> int:
    from rlhf_lessons.course import report
    from rlhf_lessons.course.results import repo_root

    root = repo_root()
    if root is None:
        print("run this inside the rlhf-lessons checkout", file=sys.stderr)
        return 2
    if args.check:
        diff = report.check(root)
        print(diff or "README.md agrees with docs/results/")
        return 1 if diff else 0
    for path in report.publish(Path(args.build), root):
        print(f"updated {path}")
    print("README.md rendered from docs/results/")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlhf_lessons",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    cp = sub.add_parser("cartpole", help="train REINFORCE or PPO on CartPole-v1 and save a plot")
    cp.add_argument("--algo", choices=["reinforce", "ppo"], required=True)
    cp.add_argument("--seed", type=int, default=0)
    cp.add_argument("--seeds", type=int, nargs="+", help="several seeds (overrides --seed)")
    cp.add_argument("--episodes", type=int, help="REINFORCE episodes (default 1000)")
    cp.add_argument("--timesteps", type=int, help="PPO environment steps (default 100000)")
    cp.add_argument("--out", help="plot file (default cartpole_<algo>.png)")
    cp.add_argument("--no-cache", action="store_true", help="always train, never reuse a run")
    cp.set_defaults(func=_cartpole)

    ls = sub.add_parser("lessons", help="execute the notebooks into build/ and report checkpoints")
    ls.add_argument("--only", nargs="+", help="lesson number prefixes, e.g. 01 02")
    ls.add_argument("--notebooks", default="notebooks")
    ls.add_argument("--build", default="build")
    ls.add_argument("--workers", type=int, default=1, help="notebooks at a time (make: 2)")
    ls.add_argument("--no-prepare", action="store_true", help="skip preparing the models first")
    ls.set_defaults(func=_lessons)

    pm = sub.add_parser(
        "prepare-models", help="convert SmolLM2 and train the review model once (cached)"
    )
    pm.add_argument("--refresh", action="store_true", help="convert again even if cached")
    pm.add_argument(
        "--ship", action="store_true", help="copy the review model to data/models (maintainers)"
    )
    pm.set_defaults(func=_prepare_models)

    rp = sub.add_parser(
        "report", help="copy a full run's results and figures to docs/ and render the README"
    )
    rp.add_argument("--build", default="build", help="the run's build folder (default build/)")
    rp.add_argument("--check", action="store_true", help="only check README against docs/results")
    rp.set_defaults(func=_report)

    dc = sub.add_parser("docs", help="build the API reference from the docstrings (pdoc)")
    dc.add_argument("--out", default="build/docs", help="output folder (default build/docs)")
    dc.set_defaults(func=_docs)

    cb = sub.add_parser(
        "colab", help="write the setup cell into every notebook and the Colab badges into README"
    )
    cb.add_argument("--check", action="store_true", help="only report what differs")
    cb.add_argument("--badge", metavar="NOTEBOOK", help="print one notebook's Colab badge")
    cb.set_defaults(func=_colab)

    from rlhf_lessons.cli_train import add_train_commands  # train <algo>, eval (issue 18)

    add_train_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
