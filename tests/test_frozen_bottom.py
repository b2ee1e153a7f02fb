"""FrozenBottom: the memoised frozen layers give the encoder's own outputs, only the top trains."""

import copy

import pytest
import torch

from rlhf_lessons.rewards.frozen_bottom import FrozenBottom

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny():
    """A 3-layer, 32-wide BERT with MiniLM's tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from rlhf_lessons.models import minilm_path

    tok = AutoTokenizer.from_pretrained(str(minilm_path()))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=3,
                        num_attention_heads=2, intermediate_size=64)  # fmt: skip
    return BertModel(config).eval(), tok


PROMPTS = ["name a fruit", "say hi to the nice people here", "two plus two"]
RESPONSES = ["an apple", "hi", "four, or in words, two plus two is four"]


def _batch(tok):
    return tok(PROMPTS, RESPONSES, padding=True, return_tensors="pt")


@pytest.mark.parametrize("layers", [0, 1, 2])
def test_attached_encoder_gives_the_encoders_own_outputs(tiny, layers):
    model, tok = tiny
    enc = _batch(tok)
    with torch.no_grad():
        expected = model(**enc)
    bottom = FrozenBottom(model, layers)
    attached = bottom.attach(copy.deepcopy(model))
    with torch.no_grad():
        got = attached(**enc)
    real = enc["attention_mask"].bool()
    torch.testing.assert_close(got.last_hidden_state[real], expected.last_hidden_state[real],
                               atol=1e-5, rtol=1e-5)  # fmt: skip
    torch.testing.assert_close(got.pooler_output, expected.pooler_output, atol=1e-5, rtol=1e-5)
    assert got.hidden_states[-1] is got.last_hidden_state
    assert bottom.computed == len(PROMPTS) and bottom.looked_up == 0
    with torch.no_grad():
        attached(**enc)
    assert bottom.computed == len(PROMPTS) and bottom.looked_up == len(PROMPTS)


def test_a_rows_states_do_not_depend_on_its_batch(tiny):
    model, tok = tiny
    bottom = FrozenBottom(model, 2)
    enc = _batch(tok)
    together = bottom.hidden(**enc)
    fresh = FrozenBottom(model, 2)
    alone = fresh.hidden(**tok(PROMPTS[:1], RESPONSES[:1], return_tensors="pt"))
    n = int(enc["attention_mask"][0].sum())
    assert torch.equal(together[0, :n], alone[0])  # bitwise: rows are computed one at a time
    assert (together[1:, :][enc["attention_mask"][1:] == 0] == 0).all()  # padding stays zero


def test_only_the_top_trains_and_the_weights_are_the_references(tiny):
    model, tok = tiny
    bottom = FrozenBottom(model, 2)
    other = copy.deepcopy(model)
    with torch.no_grad():  # a model whose bottom differs: attach gives it the reference's
        for p in other.parameters():
            p.add_(0.1)
    keys = set(other.state_dict())
    bottom.attach(other).train()
    assert set(other.state_dict()) == keys  # same parameters, same checkpoint keys
    torch.testing.assert_close(other.encoder.layer[1].output.dense.weight,
                               model.encoder.layer[1].output.dense.weight)  # fmt: skip
    trainable = {n for n, p in other.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("encoder.layer.2.", "pooler.")) for n in trainable)
    out = other(**_batch(tok)).last_hidden_state.sum()
    out.backward()
    assert other.encoder.layer[2].output.dense.weight.grad is not None
    assert other.encoder.layer[0].output.dense.weight.grad is None
    FrozenBottom.detach(other)
    assert "forward" not in other.__dict__  # the class's own forward again


def test_bad_use_is_explained(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="at least one must"):
        FrozenBottom(model, 3)
    bottom = FrozenBottom(model, 1)
    enc = _batch(tok)
    left = enc["attention_mask"].flip(-1)
    with pytest.raises(ValueError, match="right-padded"):
        bottom.hidden(enc["input_ids"], left)
    from transformers import BertConfig, BertModel

    wider = BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=3,
                                 num_attention_heads=2, intermediate_size=64))  # fmt: skip
    with pytest.raises(ValueError, match="same encoder"):
        bottom.attach(wider)
    with pytest.raises(TypeError, match="BERT-style"):
        FrozenBottom(torch.nn.Linear(2, 2), 0)
