"""Forward passes by length (lesson 05's rollouts): the same numbers as one padded pass."""

import pytest
import torch

from rlhf_lessons.alignment.rollouts import collect_rollout, forward_by_length, logprobs_by_length
from rlhf_lessons.lm import Batch, generate, token_logprobs, token_logprobs_and_states

PROMPTS = ["the movie was", "a", "the plot is very good and", "the acting was not", "a film"]


@pytest.fixture(scope="module")
def sampled(tiny_lm):
    model, tok = tiny_lm
    return generate(model, tok, PROMPTS * 3, max_new_tokens=6, temperature=1.0, seed=0).batch


@pytest.mark.parametrize("rows", [1, 4, 32])
def test_logprobs_by_length_equal_one_padded_pass(tiny_lm, sampled, rows):
    model, _ = tiny_lm
    m = sampled.completion_mask.bool()
    with torch.no_grad():
        full = token_logprobs(model, sampled, temperature=0.7)
        ours = logprobs_by_length(model, sampled, temperature=0.7, rows=rows)
    torch.testing.assert_close(ours[m], full[m], atol=1e-5, rtol=1e-5)
    assert (ours[~sampled.attention_mask.bool()] == 0).all()  # zero on padding


def test_gradients_and_several_outputs_go_through(tiny_lm, sampled):
    model, _ = tiny_lm
    m = sampled.completion_mask.float()
    weights = torch.randn(m.shape, generator=torch.Generator().manual_seed(0)) * m

    def grads(fn):
        model.zero_grad()
        (fn() * weights).sum().backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = grads(lambda: token_logprobs(model, sampled))
    chunked = grads(lambda: logprobs_by_length(model, sampled, rows=4))
    for a, b in zip(plain, chunked, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    model.zero_grad()
    with torch.no_grad():
        logp, states, entropy = forward_by_length(
            lambda b: token_logprobs_and_states(model, b), sampled, rows=3
        )
        ref = token_logprobs_and_states(model, sampled)
    bm = sampled.completion_mask.bool()
    for ours, full in zip((logp, states, entropy), ref, strict=True):
        assert ours.shape == full.shape
        torch.testing.assert_close(ours[bm], full[bm], atol=1e-5, rtol=1e-5)


def test_rows_with_holes_are_refused(tiny_lm):
    model, _ = tiny_lm
    ids = torch.tensor([[3, 4, 5, 6]])
    holes = Batch(ids, torch.tensor([[1, 0, 1, 1]]), torch.tensor([[0, 0, 1, 1]]))
    with pytest.raises(ValueError, match="contiguous"):
        logprobs_by_length(model, holes)
    with pytest.raises(ValueError, match="rows"):
        logprobs_by_length(model, Batch(ids, torch.ones_like(ids), torch.ones_like(ids)), rows=0)


def test_rollout_can_leave_the_policy_logprobs_to_the_trainer(tiny_lm):
    model, tok = tiny_lm
    reward = lambda p, c: torch.zeros(len(c))  # noqa: E731
    full = collect_rollout(model, model, tok, PROMPTS, reward, max_new_tokens=5, seed=3)
    lean = collect_rollout(model, model, tok, PROMPTS, reward, max_new_tokens=5, seed=3,
                           policy_logprobs=False)  # fmt: skip
    assert lean.logp is None and lean.completions == full.completions
    torch.testing.assert_close(lean.ref_logp, full.ref_logp)
