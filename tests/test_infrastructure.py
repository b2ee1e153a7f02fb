import os
import random

import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from rlhf_lessons.course import (
    budget,
    device,
    seeding,  # noqa: E402
)
from rlhf_lessons.course.plotting import moving_average, on_grid, plot_seeds, save_figure  # noqa: E402
from rlhf_lessons.course.progress import progress  # noqa: E402


def test_seed_everything_repeats_all_generators():
    def draw():
        return random.random(), np.random.rand(), torch.rand(1).item()

    rng = seeding.seed_everything(7)
    first = draw() + (rng.random(),)
    rng = seeding.seed_everything(7)
    assert draw() + (rng.random(),) == first
    seeding.seed_everything(8)
    assert draw() != first[:3]


@pytest.mark.parametrize("bad", [-1, 2**32, 1.5, "3", True])
def test_seed_everything_rejects_bad_seeds(bad):
    with pytest.raises((TypeError, ValueError), match="seed"):
        seeding.seed_everything(bad)


def test_device_defaults_to_cpu_without_gpu(monkeypatch):
    monkeypatch.delenv("RLHF_LESSONS_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device.get_device() == torch.device("cpu")
    with pytest.raises(RuntimeError, match="no CUDA"):
        device.get_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert device.get_device().type == "cuda"
    monkeypatch.setenv("RLHF_LESSONS_DEVICE", "cpu")
    assert device.get_device() == torch.device("cpu")
    with pytest.raises(ValueError, match="RLHF_LESSONS_DEVICE"):
        device.get_device("tpu")


def test_torch_threads_restores():
    before = torch.get_num_threads()
    with device.torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_fast_mode_switch(monkeypatch):
    monkeypatch.delenv(budget.ENV_VAR, raising=False)
    assert budget.pick(100, 10) == 100
    monkeypatch.setenv(budget.ENV_VAR, "1")
    assert budget.fast_mode() and budget.pick(100, 10) == 10
    monkeypatch.setenv(budget.ENV_VAR, "maybe")
    with pytest.raises(ValueError, match=budget.ENV_VAR):
        budget.fast_mode()


def test_moving_average_and_grid():
    np.testing.assert_allclose(moving_average([1, 2, 3, 4], 2), [1, 1.5, 2.5, 3.5])
    np.testing.assert_allclose(moving_average([5.0], 100), [5.0])
    with pytest.raises(ValueError):
        moving_average([1, 2], 0)
    out = on_grid([1, 3], [10, 30], np.array([0, 1, 2, 3, 4]))
    np.testing.assert_allclose(out, [np.nan, 10, 10, 30, 30])


def test_plot_seeds_and_save(tmp_path):
    fig, ax = plt.subplots()
    mean = plot_seeds(ax, [([0, 1, 2], [0, 1, 2]), ([0, 1, 2], [2, 3, 4])], "x", points=3)
    np.testing.assert_allclose(mean, [1, 2, 3])
    path = save_figure(fig, tmp_path / "sub" / "f.png")
    assert path.stat().st_size > 1000
    with pytest.raises(ValueError, match="empty"):
        plot_seeds(ax, [], "x")
    with pytest.raises(ValueError, match="band"):
        plot_seeds(ax, [([0, 1], [0, 1])], "x", band="sd")
    plt.close(fig)


def test_plot_seeds_ci_band_is_the_t_interval_of_the_mean():
    from scipy.stats import t

    fig, ax = plt.subplots()
    curves = [([0, 1], [0.0, 1.0]), ([0, 1], [2.0, 3.0]), ([0, 1], [4.0, 8.0])]
    mean = plot_seeds(ax, curves, "x", points=2, band="ci")
    np.testing.assert_allclose(mean, [2.0, 4.0])
    band = ax.collections[0].get_paths()[0].vertices[:, 1]
    half0 = t.ppf(0.975, 2) * np.std([0.0, 2.0, 4.0], ddof=1) / np.sqrt(3)  # at x = 0
    half1 = t.ppf(0.975, 2) * np.std([1.0, 3.0, 8.0], ddof=1) / np.sqrt(3)  # at x = 1
    for edge in (2.0 - half0, 2.0 + half0, 4.0 - half1, 4.0 + half1):
        assert np.isclose(band, edge).any(), (edge, band)
    assert np.isclose(band.max(), 4.0 + half1) and np.isclose(band.min(), 4.0 - half1)
    assert "95% interval" in ax.get_lines()[0].get_label()
    plt.close(fig)


def test_progress_can_be_disabled(monkeypatch):
    monkeypatch.setenv("RLHF_LESSONS_PROGRESS", "0")
    assert progress(range(3)).disable
    monkeypatch.setenv("RLHF_LESSONS_PROGRESS", "1")
    assert list(progress(range(3), file=open("/dev/null", "w"))) == [0, 1, 2]


def test_lm_threads_is_one_in_a_parallel_test_worker_and_can_be_overridden(monkeypatch):
    from rlhf_lessons.course.device import lm_threads

    monkeypatch.delenv("RLHF_LESSONS_THREADS", raising=False)
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    assert lm_threads() == 1
    monkeypatch.delenv("PYTEST_XDIST_WORKER")
    assert 1 <= lm_threads(2) <= 2
    monkeypatch.setenv("RLHF_LESSONS_THREADS", "3")
    assert lm_threads() == 3
    monkeypatch.setenv("RLHF_LESSONS_THREADS", "two")
    with pytest.raises(ValueError, match="RLHF_LESSONS_THREADS"):
        lm_threads()


@pytest.mark.skipif(not os.environ.get("PYTEST_XDIST_WORKER"), reason="make test's workers only")
def test_a_parallel_test_worker_gives_its_kernels_and_subprocesses_one_thread():
    """tests/conftest.py: nbval's kernels and the CLI tests' subprocesses inherit the worker's
    environment, so a notebook that sets no threads of its own still runs on one."""
    import subprocess
    import sys

    assert os.environ["OMP_NUM_THREADS"] == "1" and os.environ["MKL_NUM_THREADS"] == "1"
    code = "import torch; print(torch.get_num_threads())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "1"


def test_cache_dir_is_the_checkouts_whoever_imports_it(monkeypatch, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from rlhf_lessons.course import cache

    root = Path(cache.__file__).resolve().parents[2]
    monkeypatch.delenv("RLHF_LESSONS_CACHE", raising=False)
    assert cache.checkout_root() == root
    assert cache.cache_dir() == root / ".cache"
    monkeypatch.setenv("RLHF_LESSONS_CACHE", str(tmp_path))
    assert cache.cache_dir() == tmp_path  # the variable still wins
    # a kernel started by hand in another folder (e.g. Jupyter's notebooks/) finds the same one
    env = {k: v for k, v in __import__("os").environ.items() if k != "RLHF_LESSONS_CACHE"}
    env["PYTHONPATH"] = str(root)
    out = subprocess.run(
        [sys.executable, "-c", "from rlhf_lessons.course.cache import cache_dir; print(cache_dir())"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert out == str(root / ".cache")


def test_cache_dir_of_an_installed_wheel_is_in_home(monkeypatch, tmp_path):
    from rlhf_lessons.course import cache

    monkeypatch.delenv("RLHF_LESSONS_CACHE", raising=False)
    monkeypatch.setattr(cache, "checkout_root", lambda: None)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache.cache_dir() == tmp_path / ".cache" / "rlhf_lessons"


def test_lm_threads_is_one_in_make_lessons_kernels(monkeypatch, tmp_path):
    from rlhf_lessons.course.device import lm_threads
    from rlhf_lessons.course.lesson_runner import kernel_env

    monkeypatch.delenv("RLHF_LESSONS_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    env = kernel_env(2, tmp_path)
    assert env["OMP_NUM_THREADS"] == "1" and env["RLHF_LESSONS_BUILD"] == str(tmp_path.resolve())
    monkeypatch.setenv("RLHF_LESSONS_THREADS", env["RLHF_LESSONS_THREADS"])
    assert lm_threads() == 1
    assert "OMP_NUM_THREADS" not in kernel_env(1, tmp_path)  # one at a time: the defaults
