"""Preference data labelled by a known reward, and the normalised learned reward (lesson 05)."""

import pytest
import torch

from rlhf_lessons.review_world.preferences import NormalizedReward, sample_ranked_completions
from rlhf_lessons.rewards.preference_data import ranked_to_pairs, validate_ranked
from rlhf_lessons.rewards.reward_model import CausalLMRewardModel


def test_ranked_completions_are_ordered_by_the_reward_and_valid(tiny_lm):
    model, tok = tiny_lm
    records = sample_ranked_completions(
        model, tok, ["the movie was", "a film"] * 10, k=4, max_new_tokens=8, seed=0,
        reward_fn=lambda p, c: torch.tensor([len(x) + 0.001 * i for i, x in enumerate(c)]),
    )  # fmt: skip
    assert records
    for r in records:
        validate_ranked(r)
        assert r["rewards"] == sorted(r["rewards"], reverse=True)
        assert len(set(r["rewards"])) == len(r["rewards"])
        assert all(p["chosen"] != p["rejected"] for p in ranked_to_pairs(r))


def test_ties_cannot_be_ordered_and_are_dropped(tiny_lm):
    model, tok = tiny_lm
    records = sample_ranked_completions(
        model, tok, ["the movie was"] * 6, k=3, max_new_tokens=6, seed=0,
        reward_fn=lambda p, c: torch.zeros(len(c)),
    )  # fmt: skip
    assert records == []  # every group ties
    with pytest.raises(ValueError, match="k must be"):
        sample_ranked_completions(model, tok, ["a"], k=1)


def test_normalized_reward_has_mean_zero_and_unit_std_on_its_samples(tiny_lm):
    model, tok = tiny_lm
    rm = CausalLMRewardModel(model, tok, format_prompts=False)
    prompts = ["the movie was", "a film", "the plot is", "the acting"] * 4
    completions = ["great", "bad and awful", "very good", "not good but great"] * 4
    completions = [c + " ." * (i % 3) for i, c in enumerate(completions)]
    fn = NormalizedReward.fit(rm, prompts, completions)
    z = fn(prompts, completions)
    assert z.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert z.std().item() == pytest.approx(1.0, abs=1e-5)
    raw = rm.score(prompts, completions)
    torch.testing.assert_close(z, (raw - fn.mean) / fn.std)


def test_standardized_reward_puts_any_reward_on_the_scale_of_reference_samples():
    from rlhf_lessons.review_world.preferences import StandardizedReward

    def length(prompts, completions):
        return torch.tensor([float(len(c)) for c in completions])

    prompts, completions = ["a"] * 4, ["x", "xx", "xxx", "xxxxxx"]
    fn = StandardizedReward.fit(length, prompts, completions)
    z = fn(prompts, completions)
    assert z.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert z.std().item() == pytest.approx(1.0, abs=1e-6)
    assert fn(["a"], ["xxxx"]).item() == pytest.approx((4 - fn.mean) / fn.std)
    with pytest.raises(ValueError, match="same score"):
        StandardizedReward.fit(length, ["a", "b"], ["x", "y"])
