"""Data parallelism through accelerate: the helpers in one process, and a DPO-style loop in
two processes (torchrun, gloo on 127.0.0.1) against the same loop in one."""

import copy
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rlhf_lessons
from rlhf_lessons.distributed import (
    Parallel,
    default_mixed_precision,
    demo_dpo_loop,
    launched_processes,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def fresh_accelerate():
    """accelerate keeps one global state per process: start clean and leave it clean, so a
    later test (a TRL trainer) can build its own Accelerator."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


class _Processes:
    """Stands in for an Accelerator: only who and how many (for the arithmetic of shards)."""

    def __init__(self, index: int, count: int) -> None:
        self.process_index, self.num_processes = index, count


def test_a_plain_run_has_no_accelerator_and_changes_nothing():
    assert launched_processes() == 1
    par = Parallel.create(cpu=True)
    assert par.accelerator is None and par.num_processes == 1 and par.is_main_process
    idx = torch.tensor([5, 2, 7])
    shard = par.shard(idx)
    assert shard.index is idx and shard.scale == 1.0 and shard.rows == 3
    assert par.mean({"loss": 0.3, "note": "x"}, 3) == {"loss": 0.3, "note": "x"}
    x = torch.arange(4.0)
    assert par.gather_rows(x, 4) is x and par.shard_range(4) == range(4)
    model = torch.nn.Linear(2, 1)
    assert par.prepare(model) == (model, None) and par.unwrap(model) is model


@pytest.mark.parametrize("total", [1, 2, 7, 8])
def test_shards_cover_the_minibatch_and_scale_to_its_mean(total):
    """W processes split B rows into contiguous slices (sizes differ by at most 1), and the
    scales make DDP's average of the local mean gradients the gradient of the global mean:
    (1/W) sum_r scale_r * mean_r(g) = mean(g), checked here on numbers g."""
    w, idx = 3, torch.arange(100, 100 + total)
    g = torch.randn(total, dtype=torch.float64)
    shards = [Parallel(_Processes(r, w)).shard(idx) for r in range(w)]
    counted = torch.cat([s.index for s in shards if s.rows])
    assert counted.tolist() == idx.tolist()
    assert max(s.rows for s in shards) - min(s.rows for s in shards) <= 1
    ddp = sum(s.scale * g[s.index - 100].mean() for s in shards) / w
    assert ddp.item() == pytest.approx(g.mean().item(), abs=1e-12)
    empty = [s for s in shards if s.rows == 0]
    assert all(s.scale == 0.0 and len(s.index) == 1 for s in empty)  # computes, weighs nothing


def test_default_precision_is_bf16_only_on_a_gpu_that_has_it(monkeypatch):
    assert default_mixed_precision() == ("bf16" if torch.cuda.is_available()
                                         and torch.cuda.is_bf16_supported() else "no")  # fmt: skip
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert default_mixed_precision() == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert default_mixed_precision() == "no"
    with pytest.raises(ValueError, match="mixed_precision must be"):
        Parallel.create(mixed_precision="fp8")


def test_accelerate_in_one_process_matches_the_plain_run(fresh_accelerate):
    """Through accelerate (device placement, its backward and clipping) the loop computes the
    same numbers as the plain run."""
    plain = demo_dpo_loop(Parallel(), steps=3)
    par = Parallel.create(cpu=True, force=True)
    assert par.accelerator is not None and par.device.type == "cpu"
    through = demo_dpo_loop(par, steps=3)
    for a, b in zip(plain, through, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)


def test_bf16_autocast_on_cpu(fresh_accelerate):
    """The mixed-precision path runs on a CPU: the prepared model computes in bf16 (its
    outputs, cast back to fp32 by accelerate, hold bf16 values only), the master weights stay
    fp32, and the loop still learns (its loss falls)."""
    par = Parallel.create(mixed_precision="bf16", cpu=True)
    assert par.mixed_precision == "bf16"
    torch.manual_seed(0)
    plain, x = torch.nn.Linear(64, 8), torch.randn(16, 64)
    fp32 = plain(x)
    model, _ = par.prepare(copy.deepcopy(plain))
    out = model(x)
    assert torch.equal(out, out.to(torch.bfloat16).float())  # bf16 values
    assert not torch.equal(fp32, fp32.to(torch.bfloat16).float())  # which fp32 ones are not
    torch.testing.assert_close(out, fp32, atol=0.05, rtol=0.02)
    log = demo_dpo_loop(par, steps=6)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in log)
    assert log[-1]["loss"] < log[0]["loss"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_bf16_loop_tracks_the_cpu_run(fresh_accelerate):
    cpu = demo_dpo_loop(Parallel(), steps=4)
    par = Parallel.create()
    assert par.device.type == "cuda" and par.mixed_precision == default_mixed_precision()
    gpu = demo_dpo_loop(par, steps=4)
    for a, b in zip(cpu, gpu, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=5e-2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def _torchrun(out: Path, runs: list[dict], env: dict | None = None) -> dict:
    """The demo loop in 2 CPU processes (gloo on 127.0.0.1); its JSON output."""
    root = str(Path(rlhf_lessons.__file__).resolve().parents[1])
    env = {**os.environ, **(env or {}),
           "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes",
           "1", "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m",
           "rlhf_lessons.distributed", str(out), json.dumps(runs)]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def _same_run(kwargs: dict, curve: list[dict], one_folder: Path | None = None) -> None:
    """The 2-process curve equals the plain 1-process run's (loss, accuracy, gradient norm)."""
    one_kwargs = {**kwargs, "save_to": str(one_folder)} if one_folder else kwargs
    one = demo_dpo_loop(Parallel(), **one_kwargs)
    assert len(one) == len(curve) == kwargs.get("steps", 6)
    for a, b in zip(one, curve, strict=True):
        for key in ("loss", "accuracy", "grad_norm"):
            assert a[key] == pytest.approx(b[key], abs=1e-5), (kwargs, a, b)


def _same_weights(one: Path, two: Path) -> None:
    w1, w2 = _weights(one), _weights(two)
    assert w1.keys() == w2.keys()
    # Adam moves every weight by about lr (1e-2) whatever its gradient's size, so a weight
    # whose gradient is float noise differs by more than the losses do: 1% of a step here.
    for name in w1:
        torch.testing.assert_close(w1[name], w2[name], atol=1e-4, rtol=0)


@pytest.mark.slow
def test_two_processes_equal_one_at_the_same_global_batch(tmp_path):
    """torchrun starts 2 CPU processes; each takes its part of every global minibatch (DDP).
    Loss curve, gradient norm and final weights equal the 1-process run's: with an even split
    (8 = 4 + 4), an uneven one (7 = 4 + 3) and a minibatch of 1 row, where one process
    computes a row with weight 0."""
    runs = [{"batch_size": 8, "save_to": str(tmp_path / "two")}, {"pairs": 13, "batch_size": 7,
            "steps": 4}, {"batch_size": 1, "steps": 3}]  # fmt: skip
    two = _torchrun(tmp_path / "curves.json", runs)
    assert two["processes"] == 2 and two["engine"] == "MULTI_CPU"
    for i, (kwargs, curve) in enumerate(zip(runs, two["curves"], strict=True)):
        _same_run(kwargs, curve, tmp_path / "one" if i == 0 else None)
    _same_weights(tmp_path / "one", tmp_path / "two")


ACCELERATE_CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs" / "accelerate")
                            .glob("*.yaml"))  # fmt: skip


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=lambda p: p.stem)
def test_accelerate_configs_are_valid_launch_configs(path):
    """Each shipped file is what `accelerate launch --config_file` accepts, for the engine it
    names, in bf16 (the launcher's own validation, on a CPU machine). accelerate runs FSDP
    and DeepSpeed on GPUs only (with cpu=True it falls back to DDP), so on this machine the
    engines themselves are not run; the DDP path is, above."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args = launch_command_parser().parse_args(["--config_file", str(path), "-m",
                                               "rlhf_lessons.distributed"])  # fmt: skip
    args, _, _ = _validate_launch_command(args)
    engine = {"ddp_multi_gpu": "multi_gpu", "fsdp2": "use_fsdp", "deepspeed_zero3": "use_deepspeed"}
    assert getattr(args, engine[path.stem]) and args.mixed_precision == "bf16"
    assert args.num_processes >= 2
    if path.stem == "fsdp2":
        assert str(args.fsdp_version) == "2" and args.fsdp_state_dict_type == "FULL_STATE_DICT"


@pytest.mark.slow
@pytest.mark.parametrize("demo, size, extra", [
    ("sft", "records", ({}, {})), ("dpo_trainer", "pairs", ({}, {})),
    ("reward_trainer", "records", ({"mode": "kwise"}, {"mode": "pairs"})),
], ids=["sft", "dpo", "reward"])  # fmt: skip
def test_the_course_trainers_in_two_processes_equal_one(tmp_path, demo, size, extra):
    """train_sft, train_dpo and train_reward_model themselves under torchrun: 2 processes
    split every minibatch's rows (even: 8 = 4 + 4, uneven: 5 = 3 + 2; SFT's loss is a mean
    over tokens, which the two shares hold in different numbers; the reward model, K-wise then
    on pairs, has its gradients averaged by hand, not by DDP) and follow the 1-process run step
    by step: the loss, and the accuracy, gradient norm or margin where the trainer logs them."""
    from rlhf_lessons.distributed import DEMOS

    runs = [{"demo": demo, "batch_size": 8, **extra[0]}, {"demo": demo, size: 13, "batch_size": 5,
            "steps": 4, **extra[1]}]  # fmt: skip
    two = _torchrun(tmp_path / "curves.json", runs)
    assert two["processes"] == 2 and two["engine"] == "MULTI_CPU"
    for kwargs, curve in zip(runs, two["curves"], strict=True):
        one = DEMOS[demo](Parallel(), **{k: v for k, v in kwargs.items() if k != "demo"})
        assert len(one) == len(curve) == kwargs.get("steps", 6)
        if kwargs.get("mode") != "pairs":  # shuffled pairs: batch losses are not comparable
            assert one[-1]["loss"] < one[0]["loss"]  # it trains
        for a, b in zip(one, curve, strict=True):
            # at step 1 pi = pi_ref: every DPO margin is 0 up to float noise (rows padded to
            # other widths in the two runs), so "margin > 0" is a coin flip there; from step 2
            # on the margins are far from 0 and the accuracy must agree too
            keys = [k for k in a if k != "step" and not (k == "accuracy" and a["step"] == 1)]
            for key in keys:
                assert a[key] == pytest.approx(b[key], abs=1e-5), (kwargs, key, a, b)


def test_sft_shares_weigh_tokens_not_rows():
    """The weights the SFT trainer gives two processes' losses make the token mean of the whole
    minibatch: shares of 3 and 9 tokens -> scales 2 * 3/12 and 2 * 9/12."""
    par = Parallel()
    par.accelerator = type("Two", (), {"num_processes": 2})()  # scale() only reads the count
    mean_a, mean_b = 2.0, 4.0  # token means of the two shares
    total = (par.scale(3, 12) * mean_a + par.scale(9, 12) * mean_b) / 2  # DDP averages
    assert total == pytest.approx((3 * mean_a + 9 * mean_b) / 12)
