import subprocess
import sys

from rlhf_lessons.cli import main


def test_cartpole_cli_trains_and_saves_a_plot(tmp_cache, tmp_path, capsys):
    out = tmp_path / "ppo.png"
    assert (
        main(["cartpole", "--algo", "ppo", "--seed", "1", "--timesteps", "2048", "--out", str(out)])
        == 0
    )
    assert out.stat().st_size > 1000
    text = capsys.readouterr().out
    assert "seed 1:" in text and "greedy eval" in text


def test_module_entry_point_help():
    done = subprocess.run(
        [sys.executable, "-m", "rlhf_lessons", "cartpole", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--algo" in done.stdout


def test_course_commands_parse():
    from rlhf_lessons.cli import build_parser

    args = build_parser().parse_args(["lessons", "--only", "05", "--workers", "2", "--no-prepare"])
    assert args.workers == 2 and args.no_prepare and args.only == ["05"]
    assert build_parser().parse_args(["docs"]).out == "build/docs"
    assert build_parser().parse_args(["colab", "--check"]).check


def test_colab_command_checks_and_prints_a_badge(capsys):
    assert main(["colab", "--check"]) == 0  # every notebook's setup cell is up to date
    assert main(["colab", "--badge", "notebooks/06_dpo.ipynb"]) == 0
    badge = capsys.readouterr().out.strip().splitlines()[-1]
    assert badge.startswith("[![Open In Colab](") and badge.endswith("notebooks/06_dpo.ipynb)")
