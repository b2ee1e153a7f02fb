"""TRL's RewardTrainer against our pairs-mode trainer: same model, pairs and settings, same loss
curve (lesson 04's parity check, on a tiny BERT)."""

import copy

import pytest
import torch

from rlhf_lessons.rewards.frozen_bottom import FrozenBottom
from rlhf_lessons.rewards.reward_model import (
    HFSequenceScorer,
    RewardModelConfig,
    reward_batches,
    train_reward_model,
)
from rlhf_lessons.trl_runs import TRLRun, train_with_trl

pytestmark = pytest.mark.usefixtures("one_thread")

RECORDS = [
    {"prompt": "Name a fruit.", "ranked_outputs": ["An apple.", "A car.", "Blue."]},
    {"prompt": "Say hi.", "ranked_outputs": ["Hi!", "Go away."]},
    {"prompt": "Two plus two?", "ranked_outputs": ["Four.", "Five.", "Twenty-two.", "Fish."]},
    {"prompt": "A colour?", "ranked_outputs": ["Red.", "Loud."]},
    {"prompt": "An animal?", "ranked_outputs": ["A cat.", "A rock.", "Tuesday."]},
]  # 3 + 1 + 6 + 1 + 3 = 14 pairs


@pytest.fixture(scope="module")
def tiny_classifier():
    """A 2-layer, 32-wide BertForSequenceClassification (one label) with MiniLM's tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from rlhf_lessons.models import minilm_path

    tok = AutoTokenizer.from_pretrained(str(minilm_path()))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, num_labels=1)  # fmt: skip
    return BertForSequenceClassification(config).eval(), tok


@pytest.mark.parametrize("frozen_layers", [0, 1])
def test_reward_trainer_matches_our_pairs_trainer(tiny_classifier, frozen_layers):
    model, tok = tiny_classifier
    ours_model, trl_model = copy.deepcopy(model), copy.deepcopy(model)
    if frozen_layers:  # both look the frozen bottom up (TRL calls the same patched forward)
        bottom = FrozenBottom(model.bert, frozen_layers)
        bottom.attach(ours_model.bert)
        bottom.attach(trl_model.bert)
    cfg = RewardModelConfig(mode="pairs", lr=5e-3, batch_size=4, max_steps=3, dropout=False,
                            seed=1)  # fmt: skip
    ours = train_reward_model(HFSequenceScorer(ours_model, tok), tok, RECORDS, cfg,
                              show_progress=False)  # fmt: skip
    theirs = train_with_trl("reward", HFSequenceScorer(trl_model, tok), tok, RECORDS, cfg)
    assert isinstance(theirs, TRLRun) and theirs.trainer == "RewardTrainer"
    assert len(theirs.history) == len(ours) == 3
    torch.testing.assert_close(torch.tensor(theirs.loss), torch.tensor(ours.loss), atol=1e-5,
                               rtol=0)  # fmt: skip
    torch.testing.assert_close(torch.tensor(theirs.margin), torch.tensor(ours.margin), atol=1e-5,
                               rtol=0)  # fmt: skip
    assert theirs.accuracy == ours.accuracy
    assert ours.loss[-1] < ours.loss[0]  # the runs learn, so the match is not trivial
    for a, b in zip(ours_model.parameters(), trl_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert theirs.history.seconds == sorted(theirs.history.seconds)


def test_reward_backend_refuses_what_it_cannot_match(tiny_classifier):
    model, tok = tiny_classifier
    with pytest.raises(ValueError, match="mode='pairs'"):
        train_with_trl("reward", copy.deepcopy(model), tok, RECORDS, RewardModelConfig())
    with pytest.raises(ValueError, match="full"):  # 14 pairs in batches of 4, two epochs
        train_with_trl("reward", copy.deepcopy(model), tok, RECORDS,
                       RewardModelConfig(mode="pairs", batch_size=4, epochs=2))  # fmt: skip
    with pytest.raises(ValueError, match="reward_fn"):
        train_with_trl("reward", copy.deepcopy(model), tok, RECORDS,
                       RewardModelConfig(mode="pairs"), reward_fn=lambda p, c: None)  # fmt: skip


def test_reward_batches_are_what_the_trainer_visits():
    cfg = RewardModelConfig(mode="pairs", batch_size=4, epochs=2, seed=3)
    batches = reward_batches(RECORDS, cfg)
    assert [len(b) for b in batches] == [4, 4, 4, 2] * 2
    assert reward_batches(RECORDS, cfg) == batches  # seeded
    assert len(reward_batches(RECORDS, RewardModelConfig(mode="pairs", max_steps=5))) == 5
    kwise = reward_batches(RECORDS, RewardModelConfig(mode="kwise", batch_size=2))
    assert [len(b) for b in kwise] == [2, 2, 1]
