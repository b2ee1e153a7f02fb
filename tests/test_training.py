"""The trainer contract: History, the scaffolding helpers, one name for one thing."""

import ast
import copy
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from rlhf_lessons.course.device import torch_threads
from rlhf_lessons.training import (
    NAMES,
    History,
    Stopwatch,
    check_frozen_reference,
    eval_mode,
    minibatch_order,
    minibatch_plan,
    optimizer_step,
    total_steps,
    trainable_parameters,
    warmup_schedule,
)


def test_history_rows_stay_aligned_and_read_as_attributes():
    h = History("dpo", {"lr": 1.0})
    h.log(seconds=0.5, loss=1.0)
    h.log(seconds=1.0, loss=0.5, accuracy=0.75)  # a metric first seen at step 2
    h.log(seconds=1.5, accuracy=1.0)  # loss missing at step 3
    assert h.steps == len(h) == 3
    assert h.seconds == [0.5, 1.0, 1.5]
    assert h.loss[:2] == [1.0, 0.5] and math.isnan(h.loss[2])
    assert math.isnan(h.accuracy[0]) and h.accuracy[1:] == [0.75, 1.0]
    frame = h.to_frame()
    assert list(frame.index) == [1, 2, 3] and set(frame.columns) == {"seconds", "loss", "accuracy"}
    h.info["n_pairs"] = 7
    assert h.n_pairs == 7
    with pytest.raises(AttributeError, match="no column or info 'nope'"):
        h.nope  # noqa: B018


def test_history_evaluations_carry_the_step_and_due_skips_the_last():
    model = nn.Linear(2, 2)
    h = History("ppo", {})
    h.evaluate(lambda m: {"reward": 0.1}, model)
    for _ in range(4):
        h.log(seconds=0.0, loss=0.0)
        if h.due(2, total=4):
            h.evaluate(lambda m: {"reward": 0.2}, model)
    h.evaluate(lambda m: {"reward": 0.3}, model)
    assert [e["step"] for e in h.evaluations] == [0, 2, 4]
    h.evaluate(None, model)  # no eval_fn: nothing recorded
    assert len(h.evaluations) == 3
    assert list(h.evaluations_frame().index) == [0, 2, 4]


def test_history_loop_evaluates_before_every_and_after_and_caps_the_steps():
    model, h, seen = nn.Linear(2, 2), History("sft", {}), []
    for item in h.loop(iter(range(10)), 4, model, lambda m: {"step_seen": len(seen)}, 2,
                       desc="test", show_progress=False):  # fmt: skip
        seen.append(item)
        h.log(seconds=0.0, loss=float(item))
    assert seen == [0, 1, 2, 3]  # the first `total` items of an endless source
    assert [e["step"] for e in h.evaluations] == [0, 2, 4]
    quiet = History("sft", {})
    for item in quiet.loop([1, 2], 2, model, lambda m: {}, 0, desc="test", show_progress=False):
        quiet.log(loss=item)
    assert [e["step"] for e in quiet.evaluations] == [2]  # eval_every=0: only after the last


def test_minibatch_plan_is_order_and_steps_from_the_config():
    class Config:
        batch_size, epochs, max_steps, seed = 4, 3, 5, 7

    lengths = torch.arange(10)
    order, total = minibatch_plan(lengths, Config, group_by_length=True)
    same = minibatch_order(lengths, 4, 3, True, torch.Generator().manual_seed(7))
    assert total == 5 and len(order) == 9
    assert all(torch.equal(a, b) for a, b in zip(order, same, strict=True))


def test_total_steps_and_optimizer_step():
    assert total_steps(10, 4, 3) == 9 and total_steps(10, 4, 3, max_steps=5) == 5
    model = nn.Linear(2, 1)
    before = model.weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule = warmup_schedule(opt, 2)
    loss = 100 * model(torch.ones(1, 2)).sum()
    norm = optimizer_step(loss, opt, list(model.parameters()), 1.0, schedule)
    assert norm == pytest.approx(100 * math.sqrt(3))  # d/dw, d/db of 100 (w1 + w2 + b)
    step = before - model.weight.detach()
    assert step.norm() < 0.1 * 1.0 * 0.5 + 1e-6  # clipped to norm 1, lr halved by warm-up
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)  # the schedule stepped


def test_trainable_parameters_names_the_fix():
    model = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(
        ValueError, match=r"policy has no parameter with requires_grad=True.*requires_grad_\(True\)"
    ):
        trainable_parameters(model)
    assert len(trainable_parameters(nn.Linear(2, 2))) == 2


def test_warmup_schedule_is_linear_then_constant():
    opt = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=1.0)
    sched = warmup_schedule(opt, 4)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    opt2 = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=1.0)
    warmup_schedule(opt2, 0)
    assert opt2.param_groups[0]["lr"] == 1.0


def test_stopwatch_counts_only_the_timed_blocks():
    w = Stopwatch()
    assert w.seconds == 0.0
    with w:
        sum(range(1000))
    first = w.seconds
    assert first > 0
    with w:
        pass
    assert w.seconds >= first


def test_torch_threads_none_leaves_the_setting():
    before = torch.get_num_threads()
    with torch_threads(None):
        assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="None"):
        with torch_threads(0):
            pass


PACKAGE = Path(__file__).resolve().parents[1] / "rlhf_lessons"
SYNONYMS = {"ppo_epochs", "update_epochs", "n_epochs", "num_epochs", "lam", "clip_coef",
            "cliprange", "init_kl_coef", "kl_coef", "learning_rate", "prompt_pool",
            "prompts_pool", "max_new", "max_length_new"}  # fmt: skip


def _dataclass_fields() -> dict[str, set[str]]:
    """Every ``@dataclass`` class named ``*Config`` in the package -> its field names (read
    from the source, so no heavy import is needed)."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.name.endswith("Config"):
                fields = {s.target.id for s in node.body
                          if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)}  # fmt: skip
                out[f"{path.relative_to(PACKAGE)}:{node.name}"] = fields
    return out


def _trainer_configs() -> set[str]:
    """The config classes that a ``train_*`` function of the package takes."""
    names = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("train_"):
                for arg in node.args.args + node.args.kwonlyargs:
                    if arg.arg == "config" and arg.annotation is not None:
                        names |= {n.id for n in ast.walk(arg.annotation) if isinstance(n, ast.Name)}
    return names - {"None"}


def test_configs_use_the_course_names():
    """No config field is a synonym of a glossary name (one name for one thing), and every
    trainer's config has ``seed`` and ``threads``."""
    configs = _dataclass_fields()
    assert len(configs) >= 5, configs
    bad = {name: fields & SYNONYMS for name, fields in configs.items() if fields & SYNONYMS}
    assert not bad, f"use the glossary's names (rlhf_lessons.training.NAMES): {bad}"
    trainer = _trainer_configs()
    assert "DPOConfig" in trainer and "LMPPOConfig" in trainer
    missing = {name: {"seed", "threads"} - fields for name, fields in configs.items()
               if name.split(":")[1] in trainer and not {"seed", "threads"} <= fields}  # fmt: skip
    assert not missing, f"trainer configs need seed and threads: {missing}"
    assert set(NAMES) >= {"lr", "epochs", "seed", "threads"}


def _minibatch_configs():
    from rlhf_lessons.alignment.dpo import DPOConfig
    from rlhf_lessons.alignment.sft import SFTConfig
    from rlhf_lessons.judges.tuning import JudgeTuneConfig
    from rlhf_lessons.rewards.pairrm import PairRankerConfig
    from rlhf_lessons.rewards.reward_model import RewardModelConfig

    return [DPOConfig, SFTConfig, JudgeTuneConfig, PairRankerConfig, RewardModelConfig]


@pytest.mark.parametrize("config", _minibatch_configs(), ids=lambda c: c.__name__)
@pytest.mark.parametrize(
    "field, bad", [("lr", 0.0), ("epochs", 0), ("batch_size", 0), ("max_steps", 0)]
)
def test_minibatch_configs_name_the_bad_field(config, field, bad):
    config()  # the defaults are valid
    with pytest.raises(ValueError, match=rf"{config.__name__}\.{field} must be >= 1|"
                       rf"{config.__name__}\.{field} must be > 0"):  # fmt: skip
        config(**{field: bad})


def test_eval_mode_gives_each_model_its_mode_back_even_on_error():
    a, b = nn.Sequential(nn.Dropout(0.5)), nn.Sequential(nn.Dropout(0.5)).eval()
    with eval_mode(a, b):
        assert not a.training and not a[0].training and not b.training
    assert a.training and a[0].training and not b.training
    with pytest.raises(RuntimeError, match="boom"), eval_mode(a):
        raise RuntimeError("boom")
    assert a.training


def test_check_frozen_reference_refuses_only_weights_that_would_train():
    ref = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 1))
    with pytest.raises(ValueError, match="share weights that would be trained"):
        check_frozen_reference(ref, ref)  # the same model twice
    check_frozen_reference(copy.deepcopy(ref), ref)  # a copy: nothing shared
    # a policy on the reference's frozen base with a trainable head of its own (as a LoRA policy
    # around a frozen base): nothing the optimizer moves belongs to the reference
    base = copy.deepcopy(ref[0]).requires_grad_(False)
    check_frozen_reference(torch.nn.Sequential(base, torch.nn.Linear(3, 1)), base)
    # an adapter injected into the reference itself would move it: refused
    shared = torch.nn.Sequential(base, torch.nn.Linear(3, 1))
    with pytest.raises(ValueError, match="copy.deepcopy"):
        check_frozen_reference(shared, shared)
