"""``rlhf-lessons train <algo>`` and ``eval``: flags from the dataclasses, one-line errors, and
whole runs (a tiny offline model here; the shipped SmolLM2 and MiniLM in the slow test)."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from rlhf_lessons.cli import build_parser, main
from rlhf_lessons.cli_train import ALGOS, build_dataclasses

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = "the a movie film was is great good bad awful plot acting and but very not".split()
PAIRS = [
    {"prompt": "the movie was", "chosen": "great and good", "rejected": "bad and awful"},
    {"prompt": "the film is", "chosen": "very good", "rejected": "very bad"},
    {"prompt": "the plot was", "chosen": "good", "rejected": "awful"},
    {"prompt": "the acting is", "chosen": "great", "rejected": "not good"},
]


def _jsonl(path: Path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


@pytest.fixture(scope="module")
def tiny_folder(tiny_lm, tmp_path_factory):
    """The conftest's tiny Llama and word tokenizer, saved as a local model folder."""
    model, tokenizer = tiny_lm
    folder = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def _run(capsys, *argv) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as stop:
        code = stop.code
    out = capsys.readouterr()
    return code, out.out, out.err


def _one_line_error(capsys, *argv) -> str:
    code, _, err = _run(capsys, *argv)
    assert code == 2, err
    lines = [
        line for line in err.splitlines() if line.strip() and not line.startswith("Loading weights")
    ]  # transformers' own progress bar
    assert len(lines) == 1, err
    return lines[0]


# --- flags -------------------------------------------------------------------------------------


def test_train_help_lists_every_algorithm(capsys):
    code, out, _ = _run(capsys, "train", "--help")
    assert code == 0
    for algo in ALGOS:
        assert algo in out


def test_flags_are_the_config_fields(capsys):
    """Every field of the algorithm's config is a flag (with its source comment as help)."""
    import dataclasses

    from rlhf_lessons.cli_train import config_class

    code, out, _ = _run(capsys, "train", "dpo", "--help")
    assert code == 0
    for f in dataclasses.fields(config_class("dpo")):
        assert f"--{f.name.replace('_', '-')}" in out, f.name
    assert "SimPO's target margin" in out and "--lora-r" in out and "--output-dir" in out


@pytest.mark.parametrize("algo", list(ALGOS))
def test_each_algorithm_builds_its_config(algo):
    args = build_parser().parse_args(["train", algo, "--data", "x.jsonl", "--seed", "3"])
    config, run = build_dataclasses(algo, args)
    assert type(config).__name__ == ALGOS[algo][2] and config.seed == 3 and run.data == "x.jsonl"
    for key, value in ALGOS[algo][3].items():
        assert getattr(config, key) == value


def test_values_none_and_the_lora_learning_rate():
    from rlhf_lessons.cli_run import DEFAULT_LR

    args = build_parser().parse_args(["train", "ipo", "--data", "d", "--beta", "0.3",
                                      "--max-prompt-length", "none", "--lora-r", "8"])  # fmt: skip
    config, run = build_dataclasses("ipo", args)
    assert (config.loss, config.beta, config.max_prompt_length) == ("ipo", 0.3, None)
    assert run.lora_r == 8 and config.lr == DEFAULT_LR["dpo"][0]
    full, _ = build_dataclasses("dpo", build_parser().parse_args(["train", "dpo", "--data", "d"]))
    assert full.lr == DEFAULT_LR["dpo"][1] and full.threads is None


def test_a_yaml_file_sets_flags_and_the_command_line_wins(tmp_path, capsys):
    cfg = tmp_path / "dpo.yaml"
    cfg.write_text("beta: 0.2\nlr: 0.001\nlora-r: 4\ndata: from_yaml.jsonl\n")
    args = build_parser().parse_args(["train", "dpo", "--config", str(cfg), "--lr", "0.002"])
    config, run = build_dataclasses("dpo", args)
    assert (config.beta, config.lr, run.lora_r, run.data) == (0.2, 0.002, 4, "from_yaml.jsonl")
    cfg.write_text("betta: 0.2\n")
    line = _one_line_error(capsys, "train", "dpo", "--config", str(cfg))
    assert "unknown key(s) ['betta']" in line and "--help" in line


def test_an_invalid_value_is_one_line(capsys):
    line = _one_line_error(capsys, "train", "dpo", "--data", "d", "--loss", "kto")
    assert "DPOConfig.loss must be one of" in line


# --- bad input: one line, naming the fix -------------------------------------------------------


def test_unknown_algorithm(capsys):
    line = _one_line_error(capsys, "train", "ddpo", "--data", "x")
    assert "invalid choice: 'ddpo'" in line and "'dpo'" in line


def test_missing_data_and_missing_prompt(tmp_path, capsys):
    assert "--data is required" in _one_line_error(capsys, "train", "sft")
    data = _jsonl(tmp_path / "sft.jsonl", [{"completion": "good"}])
    line = _one_line_error(capsys, "train", "sft", "--data", data)
    assert "no 'prompt'; add the 'prompt'" in line


def test_unsplittable_implicit_prompt(tmp_path, capsys):
    data = _jsonl(tmp_path / "hh.jsonl", [{"chosen": "Yes.", "rejected": "No."}])
    line = _one_line_error(capsys, "train", "dpo", "--data", data)
    assert "share no prefix" in line and "add a 'prompt' field" in line


def test_missing_model(tmp_path, capsys):
    data = _jsonl(tmp_path / "p.jsonl", PAIRS)
    for name in (str(tmp_path / "no-such-model"), "someone/no-such-model-offline", "gpt-offline"):
        line = _one_line_error(capsys, "train", "dpo", "--data", data, "--model", name)
        assert f"model {name!r} could not be loaded" in line and "smollm2" in line


def test_a_reward_model_that_cannot_be_loaded(tmp_path, capsys, tiny_folder):
    data = _jsonl(tmp_path / "p.jsonl", PAIRS)
    line = _one_line_error(capsys, "train", "grpo", "--data", data, "--model", tiny_folder)
    assert "needs --reward-model" in line
    (tmp_path / "empty").mkdir()
    for folder, why in ((tmp_path / "empty", "no config.json"), (tiny_folder, "LlamaForCausalLM")):
        line = _one_line_error(capsys, "train", "grpo", "--data", data, "--model", tiny_folder,
                               "--reward-model", str(folder))  # fmt: skip
        assert why in line and "rlhf-lessons train reward" in line


def test_truncation_is_reported_and_refused_beyond_the_share(tmp_path, capsys, tiny_folder):
    data = _jsonl(tmp_path / "p.jsonl", PAIRS)
    args = ["train", "dpo", "--data", data, "--model", tiny_folder, "--threads", "1",
            "--max-completion-length", "2", "--output-dir", str(tmp_path / "out")]  # fmt: skip
    line = _one_line_error(capsys, *args)
    assert "would cut 5 of 8 rows (62%" in line and "--max-truncated-share 0.63" in line
    code, out, err = _run(capsys, *args, "--max-truncated-share", "0.63", "--max-steps", "1")
    assert code == 0, err
    assert "8 rows, 5 cut" in out and "longest completion 4 tokens (limit 2, 5 cut)" in out


# --- whole runs on a tiny model ----------------------------------------------------------------


def test_dpo_run_writes_checkpoints_metrics_and_evaluates(tmp_path, capsys, tiny_folder):
    data, out = _jsonl(tmp_path / "p.jsonl", PAIRS), tmp_path / "dpo"
    code, printed, err = _run(
        capsys, "train", "dpo", "--data", data, "--model", tiny_folder, "--output-dir", str(out),
        "--batch-size", "2", "--epochs", "3", "--lr", "0.01", "--beta", "0.5", "--threads", "1",
        "--save-every", "2", "--eval-data", data, "--eval-every", "3",
    )  # fmt: skip
    assert code == 0, err
    import pandas as pd

    metrics = pd.read_csv(out / "metrics.csv")
    assert len(metrics) == 6 and {"loss", "accuracy", "seconds", "grad_norm"} <= set(metrics)
    evaluations = pd.read_csv(out / "evaluations.csv")
    assert evaluations["step"].tolist() == [0, 3, 6]  # before, every 3 steps, and at the end
    assert evaluations["accuracy"].iloc[0] == 0.5  # the untrained policy ties every pair
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "done" and info["steps"] == 6 and info["config"]["beta"] == 0.5
    board = "tensorboard/" if _has_tensorboard() else "pip install tensorboard"
    assert board in printed
    code, printed, err = _run(capsys, "eval", "--model", str(out), "--data", data, "--output",
                              str(tmp_path / "eval.json"))  # fmt: skip
    assert code == 0, err
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["accuracy"] == 1.0 and result["reference"] == f"the reference {tiny_folder}"
    assert result["accuracy"] == evaluations["accuracy"].iloc[-1]


def _has_tensorboard() -> bool:
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def test_lora_dpo_saves_an_adapter_and_eval_uses_its_base(tmp_path, capsys, tiny_folder):
    data, out = _jsonl(tmp_path / "p.jsonl", PAIRS), tmp_path / "lora"
    code, _, err = _run(
        capsys, "train", "simpo", "--data", data, "--model", tiny_folder, "--output-dir", str(out),
        "--batch-size", "4", "--max-steps", "4", "--lr", "0.05", "--lora-r", "4", "--threads", "1",
    )  # fmt: skip
    assert code == 0, err
    assert (out / "adapter_config.json").is_file() and not (out / "config.json").exists()
    code, printed, err = _run(capsys, "eval", "--model", str(out), "--data", data)
    assert code == 0, err
    assert "(simpo, implicit reward)" in printed and "untrained: accuracy" in printed


def test_sft_run_on_conversations(tmp_path, capsys, tiny_folder):
    records = [{"messages": [{"role": "user", "content": p["prompt"]},
                             {"role": "assistant", "content": p["chosen"]}]} for p in PAIRS]  # fmt: skip
    data, out = _jsonl(tmp_path / "m.jsonl", records), tmp_path / "sft"
    code, printed, err = _run(
        capsys, "train", "sft", "--data", data, "--model", tiny_folder, "--output-dir", str(out),
        "--batch-size", "2", "--epochs", "2", "--lr", "0.01", "--threads", "1", "--eval-data", data,
    )  # fmt: skip
    assert code == 0, err
    assert "held-out: nll" in printed and len((out / "metrics.csv").read_text().splitlines()) == 5


def test_a_lora_sft_run_is_the_starting_point_of_dpo(tmp_path, capsys, tiny_folder):
    """SFT with LoRA, then DPO from its folder: the adapter is merged into the weights and the
    merged model trains (fully here) with the SFT model as its reference."""
    data = _jsonl(tmp_path / "p.jsonl", PAIRS)
    common = ["--data", data, "--threads", "1", "--max-steps", "1", "--batch-size", "2"]
    code, _, err = _run(capsys, "train", "sft", "--model", tiny_folder, "--lora-r", "4",
                        "--output-dir", str(tmp_path / "sft"), *common)  # fmt: skip
    assert code == 0, err
    code, _, err = _run(capsys, "train", "dpo", "--model", str(tmp_path / "sft"), "--output-dir",
                        str(tmp_path / "dpo"), *common)  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "dpo" / "config.json").is_file()


@pytest.fixture(scope="module")
def tiny_reward_folder(tmp_path_factory):
    """A reward model on a tiny random BERT (MiniLM's tokenizer), saved as `train reward` does."""
    from transformers import BertConfig, BertModel

    from rlhf_lessons.models import load_encoder
    from rlhf_lessons.rewards.reward_io import save_reward_model
    from rlhf_lessons.rewards.reward_model import RewardModel

    _, tokenizer = load_encoder("minilm")
    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16,
                                num_hidden_layers=1, num_attention_heads=2, intermediate_size=32))  # fmt: skip
    folder = tmp_path_factory.mktemp("tiny-rm")
    save_reward_model(RewardModel((bert.eval(), tokenizer), max_length=32), folder)
    return str(folder)


def test_reward_models_save_and_load(tmp_path, tiny_reward_folder):
    from rlhf_lessons.rewards.reward_io import load_reward_model, reward_function, save_reward_model

    model = load_reward_model(tiny_reward_folder, "cpu")
    prompts, answers = ["the movie was", "the film is"], ["great", "very bad"]
    scores = model.score(prompts, answers)
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    save_reward_model(model, tmp_path / "again")
    torch.testing.assert_close(load_reward_model(tmp_path / "again", "cpu").score(prompts, answers),
                               scores)  # fmt: skip
    fn = reward_function(model, {"<chat>the movie was": "the movie was"})
    torch.testing.assert_close(fn(["<chat>the movie was"], ["great"]), scores[:1])


def test_sequence_classifiers_load_as_reward_models(tmp_path, capsys, tiny_reward_folder):
    """A ...ForSequenceClassification folder with one label (what TRL's RewardTrainer saves)
    loads and scores; one with two labels is refused, and `eval` scores either kind."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from rlhf_lessons.rewards.reward_io import RewardModelLoadError, load_reward_model

    tokenizer = AutoTokenizer.from_pretrained(tiny_reward_folder)
    for labels in (1, 2):
        config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1,
                            num_attention_heads=2, intermediate_size=32, num_labels=labels)  # fmt: skip
        BertForSequenceClassification(config).save_pretrained(tmp_path / f"cls{labels}")
        tokenizer.save_pretrained(tmp_path / f"cls{labels}")
    scores = load_reward_model(tmp_path / "cls1", "cpu").score(["the movie was"], ["great"])
    assert scores.shape == (1,)
    with pytest.raises(RewardModelLoadError, match="2 labels; a reward model has one"):
        load_reward_model(tmp_path / "cls2", "cpu")
    # a reward_model.json without a setting that changes the scores is refused, not defaulted
    broken = Path(shutil.copytree(tiny_reward_folder, tmp_path / "broken"))
    spec = json.loads((broken / "reward_model.json").read_text())
    del spec["pooling"]
    (broken / "reward_model.json").write_text(json.dumps(spec))
    with pytest.raises(RewardModelLoadError, match=r"lacks the settings \['pooling'\]"):
        load_reward_model(broken, "cpu")
    data = _jsonl(tmp_path / "p.jsonl", PAIRS)
    for folder in (tmp_path / "cls1", tiny_reward_folder):
        code, printed, err = _run(capsys, "eval", "--model", str(folder), "--data", data)
        assert code == 0, err
        assert "(reward model): accuracy" in printed and "on 4 held-out pairs" in printed


@pytest.mark.parametrize("algo", ["grpo", "rloo", "ppo"])
def test_rl_with_a_saved_reward_model(tmp_path, capsys, tiny_folder, tiny_reward_folder, algo):
    data, out = _jsonl(tmp_path / "p.jsonl", PAIRS), tmp_path / algo
    budget = (["--batch-size", "4", "--minibatch-size", "2"] if algo == "ppo"
              else ["--prompts-per-iteration", "2", "--k", "2"])  # fmt: skip
    code, printed, err = _run(
        capsys, "train", algo, "--data", data, "--model", tiny_folder, "--reward-model",
        tiny_reward_folder, "--output-dir", str(out), "--iterations", "2", "--max-new-tokens",
        "4", "--lora-r", "4", "--threads", "1", "--eval-data", data, "--eval-every", "2", *budget,
    )  # fmt: skip
    assert code == 0, err
    assert "held-out: reward" in printed and (out / "adapter_config.json").is_file()
    assert (out / "value_head.safetensors").is_file() == (algo == "ppo")
    assert len((out / "metrics.csv").read_text().splitlines()) == 3
    import pandas as pd

    # the same prompts, sampled with the same seed at each evaluation: the change since step 0 is
    # the paired per-prompt difference, with its interval
    evals = pd.read_csv(out / "evaluations.csv")
    assert evals["step"].tolist() == [0, 2]
    first, last = evals.iloc[0], evals.iloc[-1]
    assert pd.isna(first[["reward_change", "reward_change_low", "reward_change_high"]]).all()
    assert last["reward_change"] == pytest.approx(last["reward"] - first["reward"], abs=1e-5)
    assert last["reward_change_low"] <= last["reward_change"] <= last["reward_change_high"]


def test_tensorboard_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    import pandas as pd
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from rlhf_lessons.run_log import write_tensorboard

    frame = pd.DataFrame({"loss": [0.7, 0.5]}, index=pd.RangeIndex(1, 3, name="step"))
    assert write_tensorboard(tmp_path, frame, [{"step": 2, "accuracy": 0.75}])
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx([0.7, 0.5])
    assert [(e.step, e.value) for e in events.Scalars("eval/accuracy")] == [(2, 0.75)]


# --- the shipped models (slow) -----------------------------------------------------------------


ROOT = Path(__file__).resolve().parents[1] / "data" / "preferences"
TRAIN, HELDOUT = str(ROOT / "train.jsonl"), str(ROOT / "heldout.jsonl")


@pytest.fixture(scope="module")
def minilm_reward_model(tmp_path_factory):
    """`train reward` on the shipped data with MiniLM, a small budget (10 steps of 8 pairs)."""
    folder = tmp_path_factory.mktemp("rm")
    assert main(["train", "reward", "--data", TRAIN, "--output-dir", str(folder),
                 "--max-steps", "10", "--threads", "1"]) == 0  # fmt: skip
    return folder


@pytest.mark.slow
def test_shipped_minilm_reward_model_beats_its_untrained_self(tmp_path, capsys,
                                                              minilm_reward_model):  # fmt: skip
    out = tmp_path / "rm.json"
    code, printed, err = _run(capsys, "eval", "--model", str(minilm_reward_model), "--data",
                              HELDOUT, "--limit", "16", "--baseline", "--output", str(out))  # fmt: skip
    assert code == 0, err
    result = json.loads(out.read_text())
    assert result["accuracy"] > result["baseline"]["accuracy"], printed


@pytest.mark.slow
def test_shipped_smollm2_lora_dpo_beats_the_untrained_policy(tmp_path, capsys):
    """DPO with LoRA on SmolLM2, 2 steps of 2 best-vs-worst pairs: the held-out implicit-reward
    accuracy rises above the untrained policy's 0.5 (every pair ties there)."""
    dpo, out = tmp_path / "dpo", tmp_path / "dpo.json"
    code, _, err = _run(capsys, "train", "dpo", "--data", TRAIN, "--limit", "4", "--ranked-pairs",
                        "best_vs_worst", "--output-dir", str(dpo), "--lora-r", "8", "--max-steps",
                        "2", "--batch-size", "2", "--threads", "1")  # fmt: skip
    assert code == 0, err
    assert (dpo / "adapter_model.safetensors").is_file()
    code, printed, err = _run(capsys, "eval", "--model", str(dpo), "--data", HELDOUT, "--limit",
                              "8", "--output", str(out), "--threads", "1")  # fmt: skip
    assert code == 0, err
    assert json.loads(out.read_text())["accuracy"] > 0.5, printed


@pytest.mark.slow
def test_shipped_smollm2_grpo_with_the_saved_reward_model(tmp_path, capsys, minilm_reward_model):
    code, printed, err = _run(
        capsys, "train", "grpo", "--data", TRAIN, "--reward-model", str(minilm_reward_model),
        "--lora-r", "8", "--output-dir", str(tmp_path / "grpo"), "--iterations", "1",
        "--prompts-per-iteration", "2", "--k", "2", "--max-new-tokens", "16", "--threads", "1",
    )  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "grpo" / "adapter_model.safetensors").is_file()
    import pandas as pd

    metrics = pd.read_csv(tmp_path / "grpo" / "metrics.csv")
    assert len(metrics) == 1 and metrics["raw_score"].notna().all()


CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs" / "train").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_training_configs_parse(path):
    import yaml

    algo = path.stem.split("_")[0]
    config, run = build_dataclasses(algo, build_parser().parse_args(["train", algo, "--config",
                                                                     str(path)]))  # fmt: skip
    for key, value in yaml.safe_load(path.read_text()).items():
        assert getattr(run if hasattr(run, key) else config, key) == value, key
    assert Path(run.data).is_file() or run.data.startswith("data/")


def test_an_algorithm_without_data_parallel_refuses_several_processes(tmp_path, capsys,
                                                                       monkeypatch):  # fmt: skip
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun --nproc_per_node 2 sets it
    data = _jsonl(tmp_path / "p.jsonl", PAIRS)
    line = _one_line_error(capsys, "train", "grpo", "--data", data)
    assert "runs in one process for now" in line and "data-parallel: dpo, reward, sft" in line


def _torchrun_cli(*flags: str) -> None:
    """`torchrun --nproc_per_node 2 -m rlhf_lessons <flags>` on this checkout, to completion."""
    import os
    import socket
    import subprocess
    import sys

    import rlhf_lessons

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = str(Path(rlhf_lessons.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1",
         "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "rlhf_lessons", *flags],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_sft_under_torchrun_follows_the_one_process_run(tmp_path, capsys, tiny_folder):
    """`torchrun --nproc_per_node 2 -m rlhf_lessons train sft ...`: two processes split every
    minibatch; the loss curve in metrics.csv equals the one-process run's, and only the first
    process writes the run folder."""
    import pandas as pd

    records = [{"prompt": p["prompt"], "completion": p["chosen"]} for p in PAIRS * 3]
    data = _jsonl(tmp_path / "sft.jsonl", records)
    flags = ["train", "sft", "--data", data, "--model", tiny_folder, "--batch-size", "5",
             "--epochs", "2", "--lr", "0.01", "--threads", "1", "--warmup-steps", "0"]  # fmt: skip
    code, _, err = _run(capsys, *flags, "--output-dir", str(tmp_path / "one"))
    assert code == 0, err
    _torchrun_cli(*flags, "--output-dir", str(tmp_path / "two"))
    one = pd.read_csv(tmp_path / "one" / "metrics.csv")["loss"]
    two = pd.read_csv(tmp_path / "two" / "metrics.csv")["loss"]
    assert len(one) == len(two) == 6  # 12 records, minibatches of 5 (5 + 5 + 2), 2 epochs
    assert (one - two).abs().max() < 1e-5
    info = json.loads((tmp_path / "two" / "run.json").read_text())
    assert info["status"] == "done" and info["processes"] == 2


@pytest.mark.slow
def test_trls_dpo_trainer_under_torchrun_follows_our_one_process_run(tmp_path, capsys,
                                                                     tiny_folder):  # fmt: skip
    """`torchrun --nproc_per_node 2 -m rlhf_lessons train dpo --engine trl`: TRL's DPOTrainer
    under the same launcher, each process reading half of every minibatch, follows our
    one-process run step by step."""
    import pandas as pd

    data = _jsonl(tmp_path / "p.jsonl", [{**p, "prompt": p["prompt"] + " "} for p in PAIRS * 2])
    flags = ["train", "dpo", "--data", data, "--model", tiny_folder, "--batch-size", "4",
             "--epochs", "1", "--lr", "0.01", "--beta", "0.5", "--threads", "1"]  # fmt: skip
    code, _, err = _run(capsys, *flags, "--output-dir", str(tmp_path / "ours"))
    assert code == 0, err
    _torchrun_cli(*flags, "--engine", "trl", "--output-dir", str(tmp_path / "trl"))
    ours = pd.read_csv(tmp_path / "ours" / "metrics.csv")["loss"]
    trl = pd.read_csv(tmp_path / "trl" / "metrics.csv")["loss"]
    assert len(ours) == len(trl) >= 2
    assert (ours - trl).abs().max() < 1e-4
    info = json.loads((tmp_path / "trl" / "run.json").read_text())
    assert info["engine"] == "trl" and info["processes"] == 2


def test_engine_trl_runs_trls_dpo_trainer_on_the_same_data_and_config(tmp_path, capsys,
                                                                     tiny_folder):  # fmt: skip
    """`--engine trl`: TRL's DPOTrainer at the same settings, on the same minibatches in the
    same order; its loss curve equals ours (the TRL parity the lesson tests, here end to end)."""
    import pandas as pd

    # TRL tokenises prompt + completion as one text: with this word tokenizer the prompt must
    # end in a space, or its last word and the completion's first would merge
    data = _jsonl(tmp_path / "p.jsonl", [{**p, "prompt": p["prompt"] + " "} for p in PAIRS])
    flags = ["train", "dpo", "--data", data, "--model", tiny_folder, "--batch-size", "2",
             "--epochs", "1", "--lr", "0.01", "--beta", "0.5", "--threads", "1", "--eval-data",
             data]  # fmt: skip
    runs = {}
    for engine in ("ours", "trl"):
        out = tmp_path / engine
        code, printed, err = _run(capsys, *flags, "--engine", engine, "--output-dir", str(out))
        assert code == 0, err
        assert "held-out: accuracy" in printed and (out / "config.json").is_file()
        assert json.loads((out / "run.json").read_text())["engine"] == engine
        runs[engine] = pd.read_csv(out / "metrics.csv")
    assert len(runs["trl"]) == len(runs["ours"]) == 2
    assert (runs["trl"]["loss"] - runs["ours"]["loss"]).abs().max() < 1e-4


def test_engine_trl_grpo_and_its_limits(tmp_path, capsys, tiny_folder, tiny_reward_folder):
    data, out = _jsonl(tmp_path / "p.jsonl", PAIRS), tmp_path / "grpo"
    code, printed, err = _run(
        capsys, "train", "grpo", "--data", data, "--model", tiny_folder, "--reward-model",
        tiny_reward_folder, "--output-dir", str(out), "--iterations", "2", "--max-new-tokens",
        "4", "--threads", "1", "--prompts-per-iteration", "2", "--k", "2", "--engine", "trl",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads((out / "run.json").read_text())["status"] == "done"
    assert len((out / "metrics.csv").read_text().splitlines()) == 3  # header + 2 steps
    line = _one_line_error(capsys, "train", "cdpo", "--data", data, "--engine", "trl")
    assert "--engine trl runs dpo, ipo" in line
    line = _one_line_error(capsys, "train", "dpo", "--data", data, "--engine", "deepspeed")
    assert "--engine must be 'ours' or 'trl'" in line
