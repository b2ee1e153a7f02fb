"""Fine-tuning pipelines (lesson 10): SFT, stages in any order, a checkpoint per stage, and a
resumed run that skips the finished stages, with full weights and with LoRA."""

import copy
import json

import pytest
import torch
from toy_sft import DATA

from rlhf_lessons.alignment import pipeline as pl
from rlhf_lessons.alignment import self_rewarding as sr
from rlhf_lessons.alignment.dpo import DPOConfig
from rlhf_lessons.alignment.spin import SPINConfig
from rlhf_lessons.lm import token_logprobs, tokenize_pairs

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["the movie was ", "the plot is ", "the film ", "a movie "]
SAMPLE = sr.SelfRewardConfig(n_candidates=3, max_new_tokens=5, batch_size=16)
DPO = DPOConfig(lr=5e-3, batch_size=2, epochs=2)
LORA = {"r": 4, "alpha": 8}


def length_reward(prompts, completions):  # an "external reward": longer is better
    return torch.tensor([float(len(c.split())) for c in completions])


def stages():
    return [
        pl.SFTStage(DATA, pl.SFTConfig(lr=1e-2, epochs=2, batch_size=2)),
        pl.SPINStage(DATA, SPINConfig(max_new_tokens=5), DPO),
        pl.ExternalRewardDPOStage(PROMPTS, length_reward, SAMPLE, DPO),
    ]


def _logits(model, tok):
    batch = tokenize_pairs(tok, [r["prompt"] for r in DATA], [r["completion"] for r in DATA])
    with torch.no_grad():
        return token_logprobs(model, batch)


def test_train_sft_learns_the_completions(tiny_lm):
    model, tok = tiny_lm
    model = copy.deepcopy(model)
    history = pl.train_sft(model, tok, DATA, pl.SFTConfig(lr=1e-2, epochs=20, batch_size=4),
                           show_progress=False)  # fmt: skip
    assert history.steps == 20 and history.examples == 4
    assert history.loss[-1] < 0.5 * history.loss[0]
    with pytest.raises(ValueError, match=r"data\[0\]"):
        pl.train_sft(model, tok, [{"prompt": "x"}])


def test_run_saves_a_checkpoint_per_stage_and_resumes(tiny_lm, tmp_path):
    model, tok = tiny_lm
    calls = []

    def eval_fn(m):
        calls.append(1)
        return {"logp": _logits(m, tok).sum().item()}

    run = pl.run_pipeline(copy.deepcopy(model), tok, stages(), tmp_path, eval_fn=eval_fn,
                          show_progress=False)  # fmt: skip
    assert [r.kind for r in run.records] == ["sft", "spin", "external-reward-dpo"]
    assert [r.folder.name for r in run.records] == ["00-sft", "01-spin", "02-external-reward-dpo"]
    assert not any(r.resumed for r in run.records) and len(calls) == 4
    for r in run.records:
        saved = json.loads((r.folder / pl.STAGE_FILE).read_text())
        assert saved["kind"] == r.kind and saved["evaluation"] == r.evaluation
        assert (r.folder / "model.safetensors").exists()
    assert run.records[1].history.reference == "policy before training"
    assert run.records[0].history.algo == "sft" and run.records[1].history.algo == "dpo"
    assert pl.load_stage_data(run.records[1])["pairs"]
    final = _logits(run.model, tok)

    # the same run again: every stage is loaded, nothing trains or evaluates again
    again = pl.run_pipeline(copy.deepcopy(model), tok, stages(), tmp_path, eval_fn=eval_fn,
                            show_progress=False)  # fmt: skip
    assert all(r.resumed for r in again.records) and len(calls) == 4
    assert [r.metrics for r in again.records] == [r.metrics for r in run.records]
    assert [r.history.loss for r in again.records] == [r.history.loss for r in run.records]
    assert again.records[1].history.reference == "policy before training"
    assert again.evaluations() == run.evaluations()
    torch.testing.assert_close(_logits(again.model, tok), final)


def test_resume_runs_only_the_unfinished_stages(tiny_lm, tmp_path):
    model, tok = tiny_lm
    first = pl.run_pipeline(copy.deepcopy(model), tok, stages()[:2], tmp_path, show_progress=False)
    run = pl.run_pipeline(copy.deepcopy(model), tok, stages(), tmp_path, show_progress=False)
    assert [r.resumed for r in run.records] == [True, True, False]
    torch.testing.assert_close(_logits(first.model, tok), _logits(
        pl._load_checkpoint(copy.deepcopy(model), run.records[1].folder, None), tok))  # fmt: skip


def test_a_different_run_in_the_same_folder_is_refused(tiny_lm, tmp_path):
    model, tok = tiny_lm
    pl.run_pipeline(copy.deepcopy(model), tok, stages()[:1], tmp_path, show_progress=False)
    swapped = [pl.SPINStage(DATA, SPINConfig(max_new_tokens=5), DPO)]
    with pytest.raises(ValueError, match="different run"):
        pl.run_pipeline(copy.deepcopy(model), tok, swapped, tmp_path, show_progress=False)
    with pytest.raises(ValueError, match="different run"):
        pl.run_pipeline(copy.deepcopy(model), tok, stages()[:1], tmp_path, lora=LORA)


def test_bad_stage_lists_are_refused(tiny_lm, tmp_path):
    model, tok = tiny_lm
    with pytest.raises(ValueError, match="unique"):
        pl.run_pipeline(model, tok, [stages()[0], stages()[0]], tmp_path)
    with pytest.raises(TypeError, match="SFTStage"):
        pl.run_pipeline(model, tok, [{"kind": "sft"}], tmp_path)
    with pytest.raises(ValueError, match="lora"):
        pl.run_pipeline(model, tok, stages(), tmp_path, lora={})


def test_lora_run_saves_adapters_and_resumes_by_merging_them(tiny_lm, tmp_path):
    model, tok = tiny_lm
    base = copy.deepcopy(model)
    run = pl.run_pipeline(copy.deepcopy(model), tok, stages(), tmp_path, lora=LORA,
                          show_progress=False)  # fmt: skip
    for r in run.records:
        assert (r.folder / "adapter_config.json").exists()
        assert not (r.folder / "model.safetensors").exists()
    # each DPO stage's reference is the model so far: its fresh adapter switched off
    assert run.records[1].history.reference == "policy with its adapter disabled"
    # only adapters trained: the merged model differs from the start, the input base does not
    assert not torch.allclose(_logits(run.model, tok), _logits(base, tok))
    again = pl.run_pipeline(copy.deepcopy(model), tok, stages(), tmp_path, lora=LORA,
                            show_progress=False)  # fmt: skip
    assert all(r.resumed for r in again.records)
    torch.testing.assert_close(_logits(again.model, tok), _logits(run.model, tok),
                               atol=1e-5, rtol=1e-5)  # fmt: skip


def test_self_reward_stage_writes_prompts_judges_and_trains(tiny_lm, tmp_path, monkeypatch):
    model, tok = tiny_lm

    def reply(self, prompts, temperature=None, top_p=1.0, seed=0):  # a judge that likes length
        return [f"Score: {min(5, len(p.split()) % 6)}" for p in prompts]

    monkeypatch.setattr(sr.Judge, "reply", reply)
    writer = sr.PromptWriterConfig(n_shots=2, chat=False, max_new_tokens=4)
    stage = pl.SelfRewardStage(PROMPTS[:2], SAMPLE, DPO, n_new_prompts=2,
                               few_shot_prompts=PROMPTS, prompt_writer=writer,
                               monitor=length_reward)  # fmt: skip
    run = pl.run_pipeline(copy.deepcopy(model), tok, [stage], tmp_path, show_progress=False)
    m = run.records[0].metrics
    assert m["prompts"] == 2 + m["new_prompts"]
    assert m["pairs"] + m["skipped_tie"] + m["skipped_fewer_than_2_scored"] == m["prompts"]
    assert m["judge_parse_rate"] == 1.0 and "pair_accuracy" in m["judge"]
    data = pl.load_stage_data(run.records[0])
    assert data["prompts"][:2] == PROMPTS[:2] and len(data["scores"][0][0]) == 3
    history = run.records[0].history
    assert (history.steps if history else 0) == (2 * ((m["pairs"] + 1) // 2) if m["pairs"] else 0)
    with pytest.raises(ValueError, match="n_new_prompts"):
        pl.SelfRewardStage().run(model, tok, False)


def test_the_stage_seed_decides_prompts_and_candidates(tiny_lm, tmp_path, monkeypatch):
    """A self-rewarding round and an external-reward round with the same seed, from the same
    model, see the same prompts and the same candidates: only the judge differs."""
    model, tok = tiny_lm
    monkeypatch.setattr(
        sr.Judge, "reply", lambda self, prompts, *a, **k: ["Score: 3"] * len(prompts)
    )
    writer = sr.PromptWriterConfig(n_shots=2, chat=False, max_new_tokens=4)
    common = {"n_new_prompts": 3, "few_shot_prompts": PROMPTS, "prompt_writer": writer}
    runs = []
    for i, stage in enumerate([
        pl.SelfRewardStage(PROMPTS[:1], SAMPLE, DPO, seed=11, **common),
        pl.ExternalRewardDPOStage(PROMPTS[:1], length_reward, SAMPLE, DPO, seed=11, **common),
        pl.ExternalRewardDPOStage(PROMPTS[:1], length_reward, SAMPLE, DPO, seed=12, **common),
    ]):  # fmt: skip
        run = pl.run_pipeline(copy.deepcopy(model), tok, [stage], tmp_path / str(i),
                              show_progress=False)  # fmt: skip
        runs.append(pl.load_stage_data(run.records[0]))
    assert runs[0]["prompts"] == runs[1]["prompts"]
    assert runs[0]["candidates"] == runs[1]["candidates"]
    assert runs[2]["candidates"] != runs[1]["candidates"]
