"""Our DPO trainer against TRL's: the same pairs, weights and settings give the same loss curve
(DPO and IPO through trl.DPOTrainer, SimPO through trl.experimental.cpo.CPOTrainer)."""

import copy
import random

import pytest
import torch

from rlhf_lessons.alignment.dpo import DPOConfig, add_lora, pair_order, pair_texts, train_dpo

pytest.importorskip("trl")
pytestmark = pytest.mark.usefixtures("one_thread")

from rlhf_lessons.trl_runs import train_with_trl  # noqa: E402
from rlhf_lessons.trl_runs.dpo import trl_dataset  # noqa: E402


@pytest.fixture(scope="module")
def pairs():
    rng = random.Random(0)
    good, bad = ["great", "good"], ["bad", "awful"]
    subjects = ["the movie", "a film", "the plot", "the acting"]
    # completions start with a space: TRL tokenises prompt + completion as one string
    return [{"prompt": rng.choice(subjects),
             "chosen": f" was {rng.choice(good)} and {rng.choice(good)}",
             "rejected": f" was {rng.choice(bad)}"} for _ in range(24)]  # fmt: skip


@pytest.mark.parametrize("loss", ["dpo", "ipo", "hinge", "simpo"])
def test_trl_loss_curve_matches_ours(tiny_lm, pairs, loss):
    base, tok = tiny_lm
    cfg = getattr(DPOConfig, loss if loss != "hinge" else "dpo")(
        loss=loss, batch_size=4, lr=1e-2, epochs=2, max_prompt_length=None,
        max_completion_length=None,
    )  # fmt: skip
    ours = train_dpo(add_lora(copy.deepcopy(base), r=4, alpha=8, seed=1), tok, pairs, cfg,
                     show_progress=False)  # fmt: skip
    run = train_with_trl(loss, add_lora(copy.deepcopy(base), r=4, alpha=8, seed=1), tok, pairs, cfg)
    assert run.trainer == ("CPOTrainer" if loss == "simpo" else "DPOTrainer")
    assert len(run.loss) == len(ours.loss) == 12  # 24 pairs / 4 per step x 2 epochs
    # the loss moved (a curve that stays at its start would match trivially) ...
    assert abs(ours.loss[-1] - ours.loss[0]) > 0.02 * abs(ours.loss[0])
    # ... and TRL's follows ours step for step, to float32 rounding
    scale = max(1.0, abs(ours.loss[0]))
    assert max(abs(a - b) for a, b in zip(ours.loss, run.loss, strict=True)) < 1e-5 * scale
    if loss != "ipo":  # TRL logs IPO's rewards from summed log-probs; its loss uses the means
        assert max(abs(a - b) for a, b in zip(ours.margin, run.margin, strict=True)) < 1e-4


def test_trl_sees_our_minibatches_in_our_order(tiny_lm, pairs):
    _, tok = tiny_lm
    cfg = DPOConfig.dpo(epochs=2, seed=3)
    ds = trl_dataset(tok, pairs, cfg)
    prompts, chosen, _ = pair_texts(tok, pairs)
    order = torch.cat(pair_order(len(pairs), cfg)).tolist()
    assert len(ds) == 2 * len(pairs)
    assert ds["chosen"] == [chosen[i] for i in order]
    assert ds["prompt"] == [prompts[i] for i in order]
    assert sorted(order[: len(pairs)]) == list(range(len(pairs)))  # each epoch is a permutation


def test_pairs_either_trainer_would_cut_are_refused(tiny_lm, pairs):
    base, tok = tiny_lm
    cfg = DPOConfig.dpo(max_completion_length=3)  # " was great and good" + EOS is 5 tokens
    with pytest.raises(ValueError, match="max_completion_length is 3"):
        train_with_trl("dpo", add_lora(copy.deepcopy(base), seed=0), tok, pairs, cfg)


def test_with_max_steps_trl_gets_only_those_pairs_and_matches_our_first_steps(tiny_lm, pairs):
    base, tok = tiny_lm
    cfg = DPOConfig.dpo(batch_size=4, lr=1e-2, max_steps=2, max_prompt_length=None,
                        max_completion_length=None)  # fmt: skip
    assert len(trl_dataset(tok, pairs, cfg)) == 8  # TRL's reference pass covers 8 pairs, not 24
    ours = train_dpo(add_lora(copy.deepcopy(base), r=4, alpha=8, seed=1), tok, pairs, cfg,
                     show_progress=False)  # fmt: skip
    run = train_with_trl("dpo", add_lora(copy.deepcopy(base), r=4, alpha=8, seed=1), tok, pairs,
                         cfg)  # fmt: skip
    assert run.history.steps == ours.steps == 2
    assert run.loss == pytest.approx(ours.loss, abs=1e-5)
    assert run.history.seconds == sorted(run.history.seconds) and run.seconds > 0
    assert run.history.info["trainer"] == "DPOTrainer"
