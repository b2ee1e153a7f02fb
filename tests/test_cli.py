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
