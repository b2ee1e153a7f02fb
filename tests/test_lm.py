import pytest
import torch

from rlhf_lessons.lm import (
    Batch,
    backbone_and_head,
    completion_logprobs,
    format_prompt,
    generate,
    head_logprobs,
    next_token_logits,
    sequence_logprobs,
    shared_prompt_states,
    token_logprobs,
    tokenize_pairs,
)


def test_tokenize_pairs_masks(tiny_lm):
    _, tok = tiny_lm
    b = tokenize_pairs(tok, ["the movie was", "the plot"], ["great", "very bad"])
    ids = tok.convert_tokens_to_ids
    assert b.input_ids[0].tolist() == [ids("the"), ids("movie"), ids("was"), ids("great"), 1]
    assert b.completion_mask.tolist() == [[0, 0, 0, 1, 1], [0, 0, 1, 1, 1]]
    assert b.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 1]]
    short = tokenize_pairs(tok, ["the movie was"], ["great"], max_prompt_length=1, add_eos=False)
    assert short.input_ids[0].tolist() == [ids("was"), ids("great")]
    with pytest.raises(ValueError, match="2 prompts but 1"):
        tokenize_pairs(tok, ["a", "b"], ["c"])


def test_format_prompt_without_chat_template(tiny_lm):
    _, tok = tiny_lm
    assert format_prompt(tok, "the movie") == "the movie"
    with pytest.raises(ValueError, match="no chat template"):
        format_prompt(tok, "the movie", system="be nice")


def test_token_logprobs_are_log_softmax_of_the_previous_position(tiny_lm):
    model, tok = tiny_lm
    b = tokenize_pairs(tok, ["the movie was"], ["great"])
    with torch.no_grad():
        lp = token_logprobs(model, b)
        logits = model(b.input_ids).logits
    manual = torch.log_softmax(logits[0, :-1], -1).gather(-1, b.input_ids[0, 1:, None]).squeeze(-1)
    torch.testing.assert_close(lp[0, 1:], manual)
    assert lp[0, 0] == 0.0


def test_left_and_right_padding_give_the_same_logprobs(tiny_lm):
    model, tok = tiny_lm
    right = tokenize_pairs(tok, ["the movie was very", "a"], ["good", "bad plot"])
    # the same rows, left-padded
    n = right.attention_mask.sum(-1)
    width = right.input_ids.shape[1]
    left = Batch(*(torch.zeros_like(right.input_ids) for _ in range(3)))
    for i in range(2):
        for t_src, t_dst in ((right.input_ids, left.input_ids),
                             (right.attention_mask, left.attention_mask),
                             (right.completion_mask, left.completion_mask)):  # fmt: skip
            t_dst[i, width - n[i] :] = t_src[i, : n[i]]
    with torch.no_grad():
        a = sequence_logprobs(token_logprobs(model, right), right.completion_mask)
        b = sequence_logprobs(token_logprobs(model, left), left.completion_mask)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_temperature_divides_the_logits(tiny_lm):
    model, tok = tiny_lm
    b = tokenize_pairs(tok, ["the"], ["movie was good"])
    with torch.no_grad():
        l1 = next_token_logits(model, b)
        l07 = next_token_logits(model, b, temperature=0.7)
    torch.testing.assert_close(l07, l1 / 0.7)
    with pytest.raises(ValueError, match="temperature"):
        next_token_logits(model, b, temperature=0.0)


def test_sequence_logprobs_sum_and_mean():
    lp = torch.tensor([[0.0, -1.0, -2.0, -3.0]])
    mask = torch.tensor([[0, 0, 1, 1]])
    assert sequence_logprobs(lp, mask).item() == -5.0
    assert sequence_logprobs(lp, mask, average=True).item() == -2.5
    with pytest.raises(ValueError, match="empty completion"):
        sequence_logprobs(lp, torch.zeros_like(mask), average=True)


def test_generate_greedy_follows_argmax_and_masks_after_eos(tiny_lm):
    model, tok = tiny_lm
    prompts = ["the movie was", "a", "the plot and the acting"]
    g = generate(model, tok, prompts, max_new_tokens=6, do_sample=False, batch_size=2)
    b = g.batch
    assert len(g.completions) == 3 and b.input_ids.shape[0] == 3
    with torch.no_grad():
        logits = next_token_logits(model, b)
    # every completion token is the argmax of the model's next-token distribution
    comp = b.completion_mask.bool()
    assert torch.equal(logits.argmax(-1)[comp], b.input_ids[comp])
    # nothing after the first EOS is part of the completion
    for row, mask in zip(b.input_ids, b.completion_mask, strict=True):
        toks = row[mask.bool()].tolist()
        assert 1 not in toks[:-1]


def test_generate_sampling_repeats_with_a_seed(tiny_lm):
    model, tok = tiny_lm
    a = generate(model, tok, ["the movie"] * 4, max_new_tokens=5, seed=3)
    b = generate(model, tok, ["the movie"] * 4, max_new_tokens=5, seed=3)
    assert a.completions == b.completions
    assert torch.equal(a.batch.input_ids, b.batch.input_ids)


# --- completion_logprobs: the same numbers as token_logprobs, with less work --------------------


def _pairs_batch(tok):
    """Two prompts, each followed by two different completions (a DPO pair), and one alone."""
    prompts = ["the movie was", "a", "the movie was", "a", "the plot and the acting"]
    completions = ["great", "very bad plot", "awful and bad", "good", "not good"]
    return tokenize_pairs(tok, prompts, completions)


def _left_padded(right: Batch) -> Batch:
    n, width = right.attention_mask.sum(-1), right.input_ids.shape[1]
    left = Batch(*(torch.zeros_like(right.input_ids) for _ in range(3)))
    for i in range(len(right)):
        for src, dst in ((right.input_ids, left.input_ids), (right.attention_mask,
                         left.attention_mask), (right.completion_mask, left.completion_mask)):  # fmt: skip
            dst[i, width - n[i] :] = src[i, : n[i]]
    return left


@pytest.mark.parametrize("share_prompts", [False, True])
@pytest.mark.parametrize("padding", ["right", "left"])
def test_completion_logprobs_equal_masked_token_logprobs(tiny_lm, share_prompts, padding):
    model, tok = tiny_lm
    batch = _pairs_batch(tok)
    if padding == "left":
        batch = _left_padded(batch)
    with torch.no_grad():
        expected = token_logprobs(model, batch, temperature=0.8) * batch.completion_mask
        got = completion_logprobs(model, batch, temperature=0.8, share_prompts=share_prompts)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert (got[batch.completion_mask == 0] == 0).all()


def test_shared_prompts_give_the_same_gradients(tiny_lm):
    """The prompt's keys and values are reused, with gradients, by both completions."""
    import copy

    model, tok = copy.deepcopy(tiny_lm[0]), tiny_lm[1]
    batch = _pairs_batch(tok)
    weights = torch.arange(1.0, len(batch) + 1)  # a loss that weighs every row differently
    grads = []
    for share in (False, True):
        model.zero_grad()
        logp = completion_logprobs(model, batch, share_prompts=share)
        (sequence_logprobs(logp, batch.completion_mask) * weights).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-4)
    assert grads[0].abs().max() > 0


def test_shared_prompt_states_only_when_prompts_repeat(tiny_lm):
    model, tok = tiny_lm
    backbone, head = backbone_and_head(model)
    distinct = tokenize_pairs(tok, ["the movie", "a"], ["good", "bad"])
    assert shared_prompt_states(backbone, distinct) is None
    states, targets = shared_prompt_states(backbone, _pairs_batch(tok))
    assert states.shape == (int(_pairs_batch(tok).completion_mask.sum()), head.in_features)
    assert targets.shape == states.shape[:1]


def test_head_logprobs_is_the_log_softmax_at_the_target(tiny_lm):
    model, _ = tiny_lm
    head = model.get_output_embeddings()
    hidden, targets = torch.randn(7, head.in_features), torch.randint(0, head.out_features, (7,))
    expected = torch.log_softmax(head(hidden) / 0.5, -1).gather(-1, targets[:, None]).squeeze(-1)
    torch.testing.assert_close(head_logprobs(head, hidden, targets, 0.5), expected)


def test_models_without_a_separable_head_take_the_full_path(tiny_lm):
    model, tok = tiny_lm

    class Wrapper(torch.nn.Module):  # not a Hugging Face model: no backbone / head to split
        def __init__(self):
            super().__init__()
            self.lm = model

        def forward(self, *args, **kwargs):
            return self.lm(*args, **kwargs)

    assert backbone_and_head(Wrapper()) is None
    batch = _pairs_batch(tok)
    with torch.no_grad():
        torch.testing.assert_close(completion_logprobs(Wrapper(), batch, share_prompts=True),
                                   token_logprobs(model, batch) * batch.completion_mask)  # fmt: skip
