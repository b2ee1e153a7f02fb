"""SPIN (lesson 10): its loss is DPO's with chosen = data, rejected = the model's sample and the
previous iterate as reference; its pairs, its skips and the data likelihood it should raise."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from toy_sft import DATA

from rlhf_lessons.alignment import spin
from rlhf_lessons.alignment.dpo import DPOConfig
from rlhf_lessons.alignment.dpo_losses import dpo_loss
from rlhf_lessons.alignment.sft import check_sft_data
from rlhf_lessons.lm import Generation, sequence_logprobs, token_logprobs, tokenize_pairs

pytestmark = pytest.mark.usefixtures("one_thread")


def spin_loss_reference(lp_real, lp_real_ref, lp_gen, lp_gen_ref, lam=0.1):
    """The SPIN objective as written in the paper / lucidrains' spin.py: l(lambda [(lp(real) -
    lp_ref(real)) - (lp(gen) - lp_ref(gen))]) with l(u) = log(1 + exp(-u))."""
    u = lam * ((lp_real - lp_real_ref) - (lp_gen - lp_gen_ref))
    return torch.log1p(torch.exp(-u)).mean()


def test_spin_loss_is_dpo_with_data_as_chosen():
    lp_real, lp_real_ref = torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -5.5])
    lp_gen, lp_gen_ref = torch.tensor([-6.0, -2.0]), torch.tensor([-5.0, -2.5])
    loss, _ = dpo_loss(lp_real, lp_gen, lp_real_ref, lp_gen_ref, beta=0.1)
    expected = spin_loss_reference(lp_real, lp_real_ref, lp_gen, lp_gen_ref)
    torch.testing.assert_close(loss, expected)
    # by hand: u = 0.1 * [(1) - (-1)] = 0.2 and 0.1 * [(0.5) - (0.5)] = 0
    hand = (math.log1p(math.exp(-0.2)) + math.log(2)) / 2
    assert loss.item() == pytest.approx(hand, abs=1e-6)
    torch.testing.assert_close(expected, -F.logsigmoid(0.1 * torch.tensor([2.0, 0.0])).mean())
    # the module's spin_loss is the paper's formula, and DPO's loss with data as chosen
    ours, m = spin.spin_loss(lp_real, lp_gen, lp_real_ref, lp_gen_ref, lam=0.1)
    torch.testing.assert_close(ours, expected)
    torch.testing.assert_close(ours, loss)
    assert m["accuracy"] == 0.5  # u = 0.2 > 0 wins, u = 0 does not
    with pytest.raises(ValueError, match="same shape"):
        spin.spin_loss(lp_real, lp_gen[:1], lp_real_ref, lp_gen_ref)


def test_spin_pairs_take_the_data_answer_and_the_models_sample(tiny_lm):
    model, tok = tiny_lm
    pairs, skipped = spin.spin_pairs(model, tok, DATA, spin.SPINConfig(max_new_tokens=5))
    assert len(pairs) + skipped.total() == len(DATA)
    for pair in pairs:
        record = next(r for r in DATA if r["prompt"] == pair["prompt"])  # no chat template
        assert pair["chosen"] == record["completion"] and pair["rejected"].strip()
    again, _ = spin.spin_pairs(model, tok, DATA, spin.SPINConfig(max_new_tokens=5))
    assert again == pairs  # seeded


def test_spin_pairs_skip_empty_samples_and_copies_of_the_data(tiny_lm, monkeypatch):
    model, tok = tiny_lm
    samples = ["", "great and good", "good", "was great "]

    def fake_generate(model, tokenizer, prompts, **kw):
        return Generation(list(prompts), samples[: len(prompts)], None)

    monkeypatch.setattr(spin.lm, "generate", fake_generate)
    pairs, skipped = spin.spin_pairs(model, tok, DATA)
    assert skipped == {"empty": 1, "same as data": 2}
    assert pairs == [{"prompt": "the acting was ", "chosen": "not bad", "rejected": "good"}]


def test_spin_iteration_uses_the_previous_iterate_as_reference(tiny_lm):
    model, tok = tiny_lm
    policy = copy.deepcopy(model)
    before = spin.data_logprob(policy, tok, DATA)
    dpo = DPOConfig(lr=1e-2, epochs=3, batch_size=2, beta=0.1)
    history, pairs, _ = spin.spin_iteration(policy, tok, DATA, spin.SPINConfig(max_new_tokens=5),
                                            dpo)  # fmt: skip
    assert pairs and history.reference == "policy before training"
    assert history.loss[0] == pytest.approx(math.log(2), abs=1e-5)  # pi_theta = pi_t at start
    assert history.loss[-1] < history.loss[0]
    # the data's answers became more likely than under the previous iterate
    assert spin.data_logprob(policy, tok, DATA)["token"] > before["token"]


def test_data_logprob_matches_a_direct_computation(tiny_lm):
    model, tok = tiny_lm
    out = spin.data_logprob(model, tok, DATA, batch_size=3)
    batch = tokenize_pairs(tok, [r["prompt"] for r in DATA], [r["completion"] for r in DATA])
    with torch.no_grad():
        seq = sequence_logprobs(token_logprobs(model, batch), batch.completion_mask)
    assert out["sequence"] == pytest.approx(seq.mean().item(), abs=1e-5)
    assert out["token"] == pytest.approx(seq.sum().item() / batch.completion_mask.sum().item(),
                                         abs=1e-5)  # fmt: skip
    assert out["perplexity"] == pytest.approx(math.exp(-out["token"]))


def test_bad_sft_data_is_rejected_with_the_field_named():
    with pytest.raises(ValueError, match="empty"):
        check_sft_data([])
    with pytest.raises(ValueError, match=r"data\[1\].*'completion'"):
        check_sft_data([DATA[0], {"prompt": "x", "answer": "y"}])
    with pytest.raises(ValueError, match=r"data\[0\]: 'completion' is empty"):
        check_sft_data([{"prompt": "x", "completion": "  "}])
    with pytest.raises(TypeError, match="list"):
        check_sft_data(DATA[0])
    with pytest.raises(ValueError, match="temperature"):
        spin.SPINConfig(temperature=0)


@pytest.mark.slow
def test_spin_raises_the_true_reward_in_the_review_world():
    """From review-gpt fine-tuned on a few positive answers, two SPIN iterations on the others
    raise the true reward of its completions of held-out prompts."""
    from rlhf_lessons.alignment.sft import SFTConfig, train_sft
    from rlhf_lessons.review_world.evaluation import evaluate_policy
    from rlhf_lessons.review_world.grammar import is_grammatical, prompts
    from rlhf_lessons.review_world.self_judge import lexicon_grades, review_seed_data
    from rlhf_lessons.review_world.tiny_lm import load_sft_model

    base, tok = load_sft_model()
    ift = review_seed_data(base, tok, prompts(600, seed=10), lexicon_grades, is_grammatical)["ift"]
    model = copy.deepcopy(base)
    train_sft(model, tok, ift[:100], SFTConfig(lr=1e-3, batch_size=32), show_progress=False)

    def evaluate(m):
        return evaluate_policy(m, base, tok, prompts(48, seed=1), max_new_tokens=16, threads=1)[
            "reward"
        ]

    before = evaluate(model)
    for t in range(2):
        history, pairs, _ = spin.spin_iteration(
            model, tok, ift[100:], spin.SPINConfig(max_new_tokens=16, chat=False, seed=t),
            DPOConfig(lr=1e-4, epochs=2, batch_size=16),
        )  # fmt: skip
        assert len(pairs) > 0.9 * len(ift[100:]) and history.loss[0] == pytest.approx(math.log(2))
    after = evaluate(model)
    assert after - before >= 0.05, (before, after)
