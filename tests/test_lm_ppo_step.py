"""PPO for LMs as an object (issue 18): ``LMPPO.step`` on completions scored elsewhere, and the
value-head policy saved and loaded."""

import copy

import pytest
import torch

from rlhf_lessons.alignment.lm_ppo import LMPPO, VALUE_HEAD_FILE, LMPPOConfig, PolicyWithValueHead
from rlhf_lessons.lm import sequence_logprobs, token_logprobs, tokenize_pairs

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["the movie was", "the film is", "the plot was", "the acting is"] * 2


def _logp(model, tokenizer, completion):
    batch = tokenize_pairs(tokenizer, PROMPTS, [completion] * len(PROMPTS))
    with torch.no_grad():
        return sequence_logprobs(token_logprobs(model, batch), batch.completion_mask).mean().item()


def test_step_moves_the_policy_toward_what_was_scored_high(tiny_lm):
    """Externally scored samples: "great" scored +1 and "awful" -1 on the same prompts. A few
    steps raise log pi(great) and lower log pi(awful); the ratio starts at exactly 1 (the
    update's first minibatch is on-policy) and the KL to the reference grows from 0."""
    model, tok = tiny_lm
    policy = PolicyWithValueHead(copy.deepcopy(model))
    ppo = LMPPO(policy, tok, LMPPOConfig(batch_size=16, minibatch_size=8, lr=1e-2, beta=0.0),
                ref=model)  # fmt: skip
    before = _logp(policy.lm, tok, "great"), _logp(policy.lm, tok, "awful")
    completions = ["great", "awful"] * len(PROMPTS)
    scores = [1.0, -1.0] * len(PROMPTS)
    first = ppo.step([p for p in PROMPTS for _ in (0, 1)], completions, scores)
    assert first["kl"] == pytest.approx(0.0, abs=1e-6) and first["ended"] == 1.0
    for _ in range(4):
        last = ppo.step([p for p in PROMPTS for _ in (0, 1)], completions, scores)
    after = _logp(policy.lm, tok, "great"), _logp(policy.lm, tok, "awful")
    assert after[0] > before[0] + 0.5 and after[1] < before[1] - 0.5, (before, after)
    assert last["kl"] != 0.0 and set(first) == set(last)


def test_step_checks_its_input(tiny_lm):
    model, tok = tiny_lm
    ppo = LMPPO(PolicyWithValueHead(copy.deepcopy(model)), tok,
                LMPPOConfig(batch_size=8, minibatch_size=8), ref=model)  # fmt: skip
    with pytest.raises(ValueError, match="one of each per sample"):
        ppo.step(PROMPTS, ["good"] * len(PROMPTS), [1.0])
    with pytest.raises(ValueError, match="at least minibatch_size"):
        ppo.step(PROMPTS[:2], ["good", "bad"], [1.0, 0.0])
    with pytest.raises(ValueError, match="share weights"):
        LMPPO(PolicyWithValueHead(model), tok, ref=model)


def test_the_value_head_policy_saves_and_loads(tiny_lm, tmp_path):
    model, tok = tiny_lm
    policy = PolicyWithValueHead(copy.deepcopy(model))
    torch.nn.init.normal_(policy.v_head.weight)  # a head that is not the fresh zero one
    policy.save_pretrained(tmp_path, tok)
    assert (tmp_path / VALUE_HEAD_FILE).is_file() and (tmp_path / "config.json").is_file()
    loaded = PolicyWithValueHead.from_pretrained(tmp_path)
    batch = tokenize_pairs(tok, PROMPTS, ["very good"] * len(PROMPTS))
    with torch.no_grad():
        for a, b in zip(policy(batch), loaded(batch), strict=True):
            torch.testing.assert_close(a, b)
    with pytest.raises(FileNotFoundError, match="PolicyWithValueHead\\(lm\\)"):
        PolicyWithValueHead.from_pretrained(tmp_path / "nothing-here")
