"""Models that ship in data/models: copied into the cache instead of trained (prepare-models)."""

import json

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
