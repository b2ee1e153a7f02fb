"""The llm-blender 0.0.2 / transformers 5 shim: patches only when missing, checkpoint folders."""

import json

import pytest
import torch

from rlhf_lessons.rewards import blender_compat as bc

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory):
    """A 2-layer, 32-wide BERT with MiniLM's tokenizer, saved as a folder (offline, ~1M params)."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from rlhf_lessons.models import minilm_path

    folder = tmp_path_factory.mktemp("tiny-bert")
    tok = AutoTokenizer.from_pretrained(str(minilm_path()))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64)  # fmt: skip
    BertModel(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_transformers_cache_patch_only_when_missing(monkeypatch):
    import huggingface_hub
    import transformers.utils.hub as hub

    bc.patch_transformers_cache()
    assert bc.patch_transformers_cache() is False  # present now: nothing to do
    monkeypatch.setattr(hub, "TRANSFORMERS_CACHE", "/somewhere/else")
    assert bc.patch_transformers_cache() is False
    assert hub.TRANSFORMERS_CACHE == "/somewhere/else"  # an existing value is never replaced
    monkeypatch.delattr(hub, "TRANSFORMERS_CACHE")
    assert bc.patch_transformers_cache() is True
    assert hub.TRANSFORMERS_CACHE == huggingface_hub.constants.HF_HUB_CACHE


def test_batch_encode_plus_alias_matches_calling_the_tokenizer(monkeypatch, tiny_backbone):
    from transformers import AutoTokenizer, PreTrainedTokenizerBase

    monkeypatch.delattr(PreTrainedTokenizerBase, "batch_encode_plus", raising=False)
    assert bc.patch_batch_encode_plus() is True
    assert bc.patch_batch_encode_plus() is False  # idempotent
    tok = AutoTokenizer.from_pretrained(str(tiny_backbone))
    texts = ["a short one", "a somewhat longer second text"]
    kw = dict(max_length=12, padding="max_length", truncation=True, return_tensors="pt")
    got, want = tok.batch_encode_plus(texts, **kw), tok(texts, **kw)
    assert torch.equal(got["input_ids"], want["input_ids"])
    assert torch.equal(got["attention_mask"], want["attention_mask"])


def test_import_llm_blender_gives_the_module_and_its_pieces():
    llm_blender = bc.import_llm_blender()
    assert llm_blender is bc.import_llm_blender()
    assert hasattr(llm_blender, "Blender") and hasattr(llm_blender, "RankerConfig")
    from llm_blender.pair_ranker.ranker import CrossCompareReranker  # importable after patching

    assert callable(CrossCompareReranker)


def test_checkpoint_config_nulls_machine_fields_and_checks_required_ones():
    RankerConfig = bc.import_llm_blender().RankerConfig
    cfg = RankerConfig(ranker_type="pairranker", model_type="bert", model_name="/x/minilm",
                       source_maxlength=32, candidate_maxlength=64, load_checkpoint="/old",
                       cache_dir="/cache", device="cuda")  # fmt: skip
    data = bc.checkpoint_config(cfg)
    assert data["load_checkpoint"] is None and data["cache_dir"] is None and data["device"] is None
    assert data["model_name"] == "/x/minilm" and data["source_maxlength"] == 32
    json.dumps(data)  # serialisable
    with pytest.raises(ValueError, match="candidate_maxlength"):
        bc.checkpoint_config(RankerConfig(ranker_type="pairranker", model_type="bert",
                                          model_name="/x", source_maxlength=8))  # fmt: skip
    with pytest.raises(ValueError, match="ranker_type"):
        bc.checkpoint_config(RankerConfig(ranker_type="summareranker"))


def test_checkpoint_round_trip_through_blender_loadranker(tiny_backbone, tmp_path):
    from rlhf_lessons.rewards.pairrm import build_pair_ranker, load_blender, save_pair_ranker

    bundle = build_pair_ranker(tiny_backbone, source_maxlength=16, candidate_maxlength=16, seed=3)
    folder = save_pair_ranker(bundle, tmp_path / "ckpt")
    assert sorted(p.name for p in folder.iterdir()) == [bc.CONFIG_FILE, bc.WEIGHTS_FILE]
    # Another machine: the same backbone at another path. The stored path is rewritten once.
    import shutil

    moved = shutil.copytree(tiny_backbone, tmp_path / "elsewhere")
    assert bc.relocate_checkpoint(folder, moved) is True
    assert bc.relocate_checkpoint(folder, moved) is False
    assert json.loads((folder / bc.CONFIG_FILE).read_text())["model_name"] == str(moved)
    blender = load_blender(folder, backbone=moved)
    x, a, b = ["is the sky blue?"], ["yes, it is blue."], ["no."]
    got = blender.compare(x, a, b, mode="[A,B]", return_logits=True, disable_tqdm=True)
    batch = bundle.collator([{"source": x[0], "candidates": [a[0], b[0]]}])
    with torch.no_grad():
        want = bundle.ranker._forward(
            batch["source_ids"], batch["source_attention_mask"],
            batch["candidate_ids"][:, 0], batch["candidate_attention_mask"][:, 0],
            batch["candidate_ids"][:, 1], batch["candidate_attention_mask"][:, 1],
        )["logits"]  # fmt: skip
    assert abs(float(got[0]) - want.item()) < 1e-5  # the loaded ranker is the saved one


def test_relocate_explains_missing_folders(tiny_backbone, tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        bc.relocate_checkpoint(tmp_path, tiny_backbone)
    (tmp_path / bc.CONFIG_FILE).write_text("{}")
    with pytest.raises(FileNotFoundError, match="backbone"):
        bc.relocate_checkpoint(tmp_path, tmp_path / "no-such-encoder")
