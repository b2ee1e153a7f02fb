"""Models that ship in data/models: copied into the cache instead of trained (prepare-models)."""

import json

import pytest

from rlhf_lessons import models


def test_install_copies_the_shipped_folder_once(tmp_cache, tmp_path, monkeypatch):
    shipped = tmp_path / "shipped"
    (shipped / "toy-abc").mkdir(parents=True)
    (shipped / "toy-abc" / "config.json").write_text("{}")
    monkeypatch.setattr(models, "shipped_models_dir", lambda: shipped)
    target = models.install_shipped_model("toy-abc")
    assert target == tmp_cache / "models" / "toy-abc"
    assert (target / "config.json").read_text() == "{}"
    (shipped / "toy-abc" / "config.json").write_text('{"changed": true}')
    assert models.install_shipped_model("toy-abc") == target  # the cache is not overwritten
    assert (target / "config.json").read_text() == "{}"
    assert models.install_shipped_model("toy-other") is None  # nothing ships: train as usual
    assert not (tmp_cache / "models" / "toy-other").exists()


def test_ship_replaces_older_versions(tmp_path, monkeypatch):
    shipped = tmp_path / "shipped"
    (shipped / "toy-old").mkdir(parents=True)
    (shipped / "keep-me").mkdir()
    monkeypatch.setattr(models, "shipped_models_dir", lambda: shipped)
    trained = tmp_path / "cache" / "toy-new"
    trained.mkdir(parents=True)
    (trained / "model.safetensors").write_bytes(b"weights")
    assert models.ship_model(trained, "toy-") == shipped / "toy-new"
    assert sorted(p.name for p in shipped.iterdir()) == ["keep-me", "toy-new"]
    assert (shipped / "toy-new" / "model.safetensors").read_bytes() == b"weights"


def test_the_shipped_review_model_is_one_folder_of_the_default_config():
    from dataclasses import asdict

    from rlhf_lessons.review_world.tiny_lm import METRICS_FILE, TinyLMConfig

    folders = sorted(models.shipped_models_dir().glob("review-gpt-*"))
    assert len(folders) == 1, folders
    meta = json.loads((folders[0] / METRICS_FILE).read_text())
    assert meta["config"] == json.loads(json.dumps(asdict(TinyLMConfig())))
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in folders[0].iterdir()
    }


def test_the_shipped_review_model_was_trained_from_this_source():
    # config_hash covers the config and the training source: a stale copy would make every fresh
    # machine (and CI) train the model again. After changing tiny_lm.py or review_corpus.py, run
    # `python -m rlhf_lessons prepare-models --ship` and commit data/models/.
    from rlhf_lessons.review_world.tiny_lm import model_folder

    shipped = [p.name for p in models.shipped_models_dir().glob("review-gpt-*")]
    assert shipped == [model_folder().name], "run `python -m rlhf_lessons prepare-models --ship`"


def test_sft_model_path_takes_the_shipped_copy(tmp_cache, tmp_path, monkeypatch):
    from rlhf_lessons.review_world import tiny_lm

    shipped = tmp_path / "shipped" / tiny_lm.model_folder().name
    shipped.mkdir(parents=True)
    (shipped / tiny_lm.METRICS_FILE).write_text("{}")
    monkeypatch.setattr(models, "shipped_models_dir", lambda: shipped.parent)
    monkeypatch.setattr(tiny_lm, "train_tiny_lm", lambda *a, **k: pytest.fail("trained"))
    assert tiny_lm.sft_model_path(show_progress=False) == tmp_cache / "models" / shipped.name
    assert (tmp_cache / "models" / shipped.name / tiny_lm.METRICS_FILE).read_text() == "{}"
