import os
import resource
import time
from pathlib import Path

import pytest

# Tests never show progress bars and never touch the learner's cache.
os.environ.setdefault("RLHF_LESSONS_PROGRESS", "0")


def pytest_configure(config):
    """Under pytest-xdist (``make test``: one worker per core) every test process computes on
    one torch thread: two workers of two threads each oversubscribe a 2-core machine, and the
    tests' small models gain nothing from a second thread (it spin-waits instead).

    The same holds for the processes a worker starts: the notebook kernels of nbval and the
    subprocesses of the CLI tests inherit ``OMP_NUM_THREADS=1`` (as ``make lessons`` gives its
    kernels when it runs two at a time). A notebook that does not set its own threads would
    otherwise start torch's default of one thread per core beside the other worker, and its many
    tiny operations then spend most of their CPU time with one thread waiting for the other
    (lesson 01's gradient-variance cell took many times the CPU time it takes on one thread, on
    a busy machine, before lessons 01 and 02 set one thread themselves)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, "1")
    if os.environ.get("RLHF_LESSONS_TIMELINE") and not config.pluginmanager.has_plugin("timeline"):
        config.pluginmanager.register(
            _Timeline(Path(os.environ["RLHF_LESSONS_TIMELINE"])), "timeline"
        )


def _cpu_seconds() -> float:
    """CPU time of this process and of its children that have ended (subprocesses; a notebook's
    kernel is counted when it is shut down, i.e. with the notebook's last cell)."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class _Timeline:
    """``RLHF_LESSONS_TIMELINE=dir`` (e.g. ``RLHF_LESSONS_TIMELINE=$PWD/build/test-timeline bash
    .ci/run``): every process (each xdist worker) appends one line per test item or notebook
    cell to ``dir/<worker>.tsv``: start (epoch seconds), wall and CPU seconds, node id. ``.ci/timeline.py dir`` turns them into the per-worker timeline
    that shows what ran beside what and when each worker finished."""

    def __init__(self, folder: Path):
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        self.path, self.out = folder / f"{worker}.tsv", None  # opened at the first item: the
        # xdist controller, which runs none, writes no file

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item, nextitem):
        start, cpu = time.time(), _cpu_seconds()
        yield
        wall, cpu = time.time() - start, _cpu_seconds() - cpu
        if self.out is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.out = self.path.open("a", buffering=1)
        self.out.write(f"{start:.2f}\t{wall:.2f}\t{cpu:.2f}\t{item.nodeid}\n")


# make test runs every notebook and test file whole on one of two workers (pytest-xdist
# --dist loadfile --no-loadscope-reorder), handing files out in collection order (a worker gets
# its next file when two items of its current one are left). Longest first, so that the end of
# the run is many short files shared by both workers rather than one worker finishing a long
# notebook alone: the notebooks, slowest first (from CI's --durations; lesson 01 near the end
# since its kernel runs on one thread, see pytest_configure), then the slow test files (by their
# CPU time in one process, RLHF_LESSONS_FAST=1), then the rest in their usual order. A CI run's
# timeline (RLHF_LESSONS_TIMELINE, .ci/timeline.py) shows whether both workers still end together.
_SLOWEST_FIRST = [
    "notebooks/08_pairrm.ipynb",
    "notebooks/09_llm_judge.ipynb",
    "notebooks/05_rlhf_ppo.ipynb",
    "notebooks/02_ppo_cartpole.ipynb",
    "notebooks/04_reward_models.ipynb",
    "notebooks/10_self_rewarding_spin.ipynb",
    "notebooks/06_dpo.ipynb",
    "notebooks/07_simpo.ipynb",
    "notebooks/11_offline_rl_alol.ipynb",
    "notebooks/03_kl_divergence.ipynb",
    "notebooks/01_reinforce_cartpole.ipynb",
    "tests/test_cli_train.py",
    "tests/test_batched.py",
    "tests/test_reward_model.py",
    "tests/test_reinforce.py",
    "tests/test_readme_example.py",
    "tests/test_dpo.py",
    "tests/test_naive_ppo.py",
    "tests/test_distributed.py",
    "tests/test_rloo_grpo.py",
    "tests/test_ppo.py",
    "tests/test_lm_ppo.py",
    "tests/test_jupyterlab.py",
    "tests/test_alol.py",
    "tests/test_api_docs.py",
]


def _file_rank(item) -> tuple[int, int]:
    path = item.nodeid.split("::")[0]
    if path in _SLOWEST_FIRST:
        return (0, _SLOWEST_FIRST.index(path))
    return (1 if path.endswith(".ipynb") else 2, 0)  # unlisted notebooks before the tests


def pytest_collection_modifyitems(config, items):
    items.sort(key=_file_rank)  # stable: a file's own tests keep their order


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RLHF_LESSONS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _word_tokenizer(words):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<eos>", "<unk>", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )


@pytest.fixture(scope="session")
def word_tokenizer():
    """``word_tokenizer(words)``: a whitespace word-level tokenizer over <pad> (0), <eos> (1),
    <unk> (2) and ``words``, for tiny offline test models."""
    return _word_tokenizer


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (use with ``pytestmark``): small models gain nothing from
    two, and on a busy 2-core machine a second thread stalls every operation."""
    from rlhf_lessons.course.device import torch_threads

    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def tiny_lm():
    """A tiny random Llama with a word-level tokenizer: offline, ~100k parameters."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    words = "the a movie film was is great good bad awful plot acting and but very not".split()
    tokenizer = _word_tokenizer(words)
    vocab = tokenizer.get_vocab()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
        pad_token_id=0, eos_token_id=1, bos_token_id=None,
    )  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    return model, tokenizer
