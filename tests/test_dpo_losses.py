import math
import warnings
from types import SimpleNamespace

import pytest
import torch

from rlhf_lessons.alignment.dpo_losses import LOSS_TYPES, dpo_loss
from rlhf_lessons.alignment.simpo import simpo_loss
from rlhf_lessons.lm import Batch, sequence_logprobs, token_logprobs

# TRL's DPOTrainer calls a transformers helper that warns about its own deprecated name
pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated"),
]


def softplus(x: float) -> float:  # -log sigma(x) = log(1 + e^-x)
    return math.log1p(math.exp(-x))


def random_logps(n: int, seed: int, scale: float = 5.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return -torch.rand(n, generator=g, dtype=torch.float64) * scale


# --- checkable fact 1: DPO and IPO at initialisation (pi = pi_ref, so h = 0) -------------------


@pytest.mark.parametrize("beta", [0.01, 0.1, 0.5, 2.0, 10.0])
def test_fact1_dpo_is_log2_with_gradient_weight_one_half_at_the_reference(beta):
    chosen = random_logps(5, 0).requires_grad_(True)
    rejected = random_logps(5, 1).requires_grad_(True)
    loss, metrics = dpo_loss(chosen, rejected, chosen.detach(), rejected.detach(), beta=beta)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-12)
    assert metrics["margin"] == 0.0 and metrics["accuracy"] == 0.0  # ties count as wrong
    loss.backward()
    # dL/dh per pair is -beta sigma(-beta h) / B; the weight sigma(-beta h) is 1/2 at h = 0
    weight_chosen = -chosen.grad * 5 / beta
    weight_rejected = rejected.grad * 5 / beta
    torch.testing.assert_close(weight_chosen, torch.full((5,), 0.5, dtype=torch.float64))
    torch.testing.assert_close(weight_rejected, torch.full((5,), 0.5, dtype=torch.float64))


@pytest.mark.parametrize("beta", [0.1, 0.5, 1.0, 3.0])
def test_fact1_ipo_is_one_over_four_beta_squared_at_the_reference(beta):
    chosen, rejected = random_logps(4, 2), random_logps(4, 3)
    loss, _ = dpo_loss(chosen, rejected, chosen, rejected, beta=beta, loss_type="ipo")
    assert loss.item() == pytest.approx(1 / (4 * beta**2), rel=1e-12)
    if beta == 0.1:
        assert loss.item() == pytest.approx(25.0)


def test_at_the_reference_the_hinge_loss_is_one():
    x = random_logps(3, 4)
    assert dpo_loss(x, x - 1, x, x - 1, loss_type="hinge")[0].item() == 1.0


# --- checkable fact 2: SimPO reductions ---------------------------------------------------------


@pytest.mark.parametrize("beta", [0.1, 2.0])
def test_fact2_simpo_gamma0_on_summed_logps_is_reference_free_dpo(beta):
    summed_w = random_logps(6, 5, scale=40).requires_grad_(True)
    summed_l = random_logps(6, 6, scale=40).requires_grad_(True)
    simpo, _ = simpo_loss(summed_w, summed_l, beta=beta, gamma=0.0)
    dpo, _ = dpo_loss(summed_w, summed_l, None, None, beta=beta, reference_free=True)
    assert simpo.item() == pytest.approx(dpo.item(), abs=1e-12)
    grads = [torch.autograd.grad(x, (summed_w, summed_l)) for x in (simpo, dpo)]
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


def test_fact2_equal_lengths_simpo_is_reference_free_dpo_with_beta_over_length():
    g = torch.Generator().manual_seed(7)
    length, beta = 6, 2.0
    token_logp = -torch.rand(8, length, generator=g, dtype=torch.float64) * 3
    mask = torch.ones(8, length)
    avg = sequence_logprobs(token_logp, mask, average=True)
    summed = sequence_logprobs(token_logp, mask)
    simpo, _ = simpo_loss(avg[:4], avg[4:], beta=beta, gamma=0.0)
    dpo, _ = dpo_loss(summed[:4], summed[4:], None, None, beta=beta / length, reference_free=True)
    assert simpo.item() == pytest.approx(dpo.item(), abs=1e-12)


@pytest.mark.parametrize("beta", [0.5, 2.0, 10.0])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.4])
def test_fact2_at_delta_zero_simpo_is_log1p_exp_gamma(beta, gamma):
    # gamma in reward units (the paper's, and TRL's simpo_gamma): -log sigma(beta*0 - gamma)
    x = random_logps(3, 8, scale=2)
    loss, metrics = simpo_loss(x, x, beta=beta, gamma=gamma)
    assert loss.item() == pytest.approx(math.log1p(math.exp(gamma)), abs=1e-12)
    assert metrics["gamma"] == gamma
    # with the SimPO code's gamma_beta_ratio the margin is beta * ratio, so the value at Delta = 0
    # is log(1 + e^(beta * ratio)), not log(1 + e^ratio)
    ratio = gamma / beta
    by_ratio, _ = simpo_loss(x, x, beta=beta, gamma_beta_ratio=ratio)
    assert by_ratio.item() == pytest.approx(math.log1p(math.exp(gamma)), abs=1e-12)
    if gamma > 0 and beta != 1:
        assert by_ratio.item() != pytest.approx(math.log1p(math.exp(ratio)), abs=1e-3)


def test_simpo_default_gamma_is_half():
    x = random_logps(2, 9, scale=2)
    assert simpo_loss(x, x)[1]["gamma"] == 0.5
    assert simpo_loss(x, x, beta=2.0, gamma_beta_ratio=0.25)[1]["gamma"] == 0.5


# --- hand-computed values -----------------------------------------------------------------------
# policy (chosen, rejected) and reference log-probs of three pairs, beta = 0.5:
#   log-ratios chosen (0.5, 0, 1.5), rejected (-1, 0.5, -1) -> h = (1.5, -0.5, 2.5), beta h =
#   (0.75, -0.25, 1.25)
PC = torch.tensor([-1.0, -2.0, -0.5])
PR = torch.tensor([-3.0, -1.0, -4.0])
RC = torch.tensor([-1.5, -2.0, -2.0])
RR = torch.tensor([-2.0, -1.5, -3.0])
BH = (0.75, -0.25, 1.25)


def test_hand_computed_sigmoid_and_metrics():
    loss, m = dpo_loss(PC, PR, RC, RR, beta=0.5)
    expected = sum(softplus(z) for z in BH) / 3
    assert expected == pytest.approx(0.4882465024, abs=1e-9)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert m["loss"] == pytest.approx(expected, abs=1e-6)
    assert m["rewards_chosen"] == pytest.approx(0.5 * (0.5 + 0 + 1.5) / 3)
    assert m["rewards_rejected"] == pytest.approx(0.5 * (-1 + 0.5 - 1) / 3)
    assert m["margin"] == pytest.approx(sum(BH) / 3)
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert m["logps_chosen"] == pytest.approx(-3.5 / 3)
    assert m["logps_rejected"] == pytest.approx(-8 / 3)
    assert m["pairs"] == 3


def test_hand_computed_cdpo():
    eps = 0.1
    loss, _ = dpo_loss(PC, PR, RC, RR, beta=0.5, label_smoothing=eps)
    expected = sum((1 - eps) * softplus(z) + eps * softplus(-z) for z in BH) / 3
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_hand_computed_ipo():
    # target h = 1 / (2 beta) = 1: (0.5^2 + 1.5^2 + 1.5^2) / 3
    loss, m = dpo_loss(PC, PR, RC, RR, beta=0.5, loss_type="ipo")
    assert loss.item() == pytest.approx((0.25 + 2.25 + 2.25) / 3, abs=1e-6)
    assert m["margin"] == pytest.approx(sum(BH) / 3)


def test_hand_computed_hinge():
    # relu(1 - beta h): 0.25, 1.25, and 0 for the pair past the margin
    loss, _ = dpo_loss(PC, PR, RC, RR, beta=0.5, loss_type="hinge")
    assert loss.item() == pytest.approx((0.25 + 1.25 + 0.0) / 3, abs=1e-6)


def test_hand_computed_reference_free():
    # h = (2, -1, 3.5), beta h = (1, -0.5, 1.75); rewards are beta * log pi
    loss, m = dpo_loss(PC, PR, None, None, beta=0.5, reference_free=True)
    assert loss.item() == pytest.approx(sum(softplus(z) for z in (1, -0.5, 1.75)) / 3, abs=1e-6)
    assert m["rewards_chosen"] == pytest.approx(0.5 * -3.5 / 3)
    # given reference log-probs are ignored
    assert dpo_loss(PC, PR, RC, RR, beta=0.5, reference_free=True)[0].item() == loss.item()


def test_hand_computed_simpo():
    chosen, rejected = torch.tensor([-0.5, -1.0]), torch.tensor([-1.0, -0.8])
    # Delta = (0.5, -0.2); beta Delta - gamma = (0.5, -0.9)
    expected = (softplus(0.5) + softplus(-0.9)) / 2
    loss, m = simpo_loss(chosen, rejected, beta=2.0, gamma=0.5)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    same, _ = simpo_loss(chosen, rejected, beta=2.0, gamma_beta_ratio=0.25)
    assert same.item() == pytest.approx(expected, abs=1e-6)
    assert m["rewards_chosen"] == pytest.approx(2.0 * -0.75)
    assert m["margin"] == pytest.approx(2.0 * 0.15) and m["accuracy"] == 0.5
    eps = 0.2
    smoothed, _ = simpo_loss(chosen, rejected, beta=2.0, gamma=0.5, label_smoothing=eps)
    expected = sum((1 - eps) * softplus(z) + eps * softplus(-z) for z in (0.5, -0.9)) / 2
    assert smoothed.item() == pytest.approx(expected, abs=1e-6)


# --- gradients ----------------------------------------------------------------------------------


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_gradient_raises_chosen_and_lowers_rejected_logps(loss_type):
    g = torch.Generator().manual_seed(10)
    ref_c, ref_r = -torch.rand(8, generator=g) * 20, -torch.rand(8, generator=g) * 20
    # small log-ratios, so every pair is inside the hinge margin and below the IPO target
    chosen = (ref_c + torch.randn(8, generator=g) * 0.5).requires_grad_(True)
    rejected = (ref_r + torch.randn(8, generator=g) * 0.5).requires_grad_(True)
    ref_c.requires_grad_(True)  # even if the caller forgot no_grad, the reference gets none
    loss, _ = dpo_loss(chosen, rejected, ref_c, ref_r, beta=0.1, loss_type=loss_type)
    loss.backward()
    assert (chosen.grad < 0).all() and (rejected.grad > 0).all()
    assert ref_c.grad is None
    # the policy rejected/chosen gradients are equal and opposite (the loss depends on h only)
    torch.testing.assert_close(chosen.grad, -rejected.grad)


def test_a_gradient_step_on_dpo_raises_the_margin_and_lowers_the_loss():
    ref_c, ref_r = random_logps(4, 11, 20), random_logps(4, 12, 20)
    chosen, rejected = ref_c.clone().requires_grad_(True), ref_r.clone().requires_grad_(True)
    opt = torch.optim.SGD([chosen, rejected], lr=1.0)
    before = dpo_loss(chosen, rejected, ref_c, ref_r)[1]
    for _ in range(3):
        opt.zero_grad()
        dpo_loss(chosen, rejected, ref_c, ref_r)[0].backward()
        opt.step()
    after = dpo_loss(chosen, rejected, ref_c, ref_r)[1]
    assert after["margin"] > before["margin"] and after["loss"] < before["loss"]
    assert after["accuracy"] == 1.0


def test_simpo_gradient_raises_chosen_and_lowers_rejected():
    chosen = random_logps(5, 13, 3).requires_grad_(True)
    rejected = random_logps(5, 14, 3).requires_grad_(True)
    simpo_loss(chosen, rejected)[0].backward()
    assert (chosen.grad < 0).all() and (rejected.grad > 0).all()


def test_simpo_margin_strengthens_the_push_at_delta_zero():
    # at Delta = 0, dL/dDelta = -beta sigma(gamma): the weight is 1/2 without a margin and more
    # with one
    for gamma in (0.0, 1.0):
        x = random_logps(1, 15, 2).requires_grad_(True)
        simpo_loss(x, x.detach(), beta=2.0, gamma=gamma)[0].backward()
        weight = -x.grad.item() / 2.0
        assert weight == pytest.approx(1 / (1 + math.exp(-gamma)), abs=1e-9)


def test_ipo_and_hinge_stop_at_their_targets():
    ref = random_logps(2, 16, 10) - 20
    beta = 0.25
    for loss_type, h in (("ipo", 1 / (2 * beta)), ("hinge", 1 / beta), ("hinge", 2 / beta)):
        chosen = (ref[0] + h).reshape(1).requires_grad_(True)
        loss, _ = dpo_loss(chosen, ref[1:], ref[:1], ref[1:], beta=beta, loss_type=loss_type)
        loss.backward()
        assert loss.item() == pytest.approx(0.0, abs=1e-12)
        assert chosen.grad.item() == pytest.approx(0.0, abs=1e-12)


# --- label smoothing (cDPO) ---------------------------------------------------------------------


def dpo_margin_gradient(h: float, beta: float, eps: float) -> float:
    """dL/dh of the (smoothed) sigmoid loss for one pair with margin h."""
    ref = torch.tensor([-30.0, -30.0], dtype=torch.float64)
    chosen = (ref[:1] + h).requires_grad_(True)
    loss, _ = dpo_loss(chosen, ref[1:], ref[:1], ref[1:], beta=beta, label_smoothing=eps)
    loss.backward()
    return chosen.grad.item()


def test_label_smoothing_one_half_has_zero_gradient_at_h_zero():
    # dL/dh = beta [eps sigma(beta h) - (1 - eps) sigma(-beta h)]: beta (eps - 1/2) at h = 0
    assert dpo_margin_gradient(0.0, beta=0.1, eps=0.5) == pytest.approx(0.0, abs=1e-15)
    assert dpo_margin_gradient(0.0, beta=0.1, eps=0.2) == pytest.approx(0.1 * (0.2 - 0.5))
    # with eps = 1/2 the labels carry no information: any margin is pushed back to 0
    assert dpo_margin_gradient(3.0, beta=0.1, eps=0.5) > 0
    assert dpo_margin_gradient(-3.0, beta=0.1, eps=0.5) < 0


@pytest.mark.parametrize("eps", [0.05, 0.1, 0.3])
def test_cdpo_is_minimised_at_a_finite_margin(eps):
    beta = 0.5
    h_star = math.log((1 - eps) / eps) / beta
    assert dpo_margin_gradient(h_star, beta, eps) == pytest.approx(0.0, abs=1e-12)
    assert dpo_margin_gradient(h_star + 1, beta, eps) > 0
    assert dpo_margin_gradient(h_star - 1, beta, eps) < 0
    assert dpo_margin_gradient(h_star + 1, beta, 0.0) < 0  # plain DPO keeps pushing


# --- bad input ----------------------------------------------------------------------------------


def test_bad_inputs_raise_value_errors_naming_the_field():
    x, y = random_logps(3, 17), random_logps(3, 18)
    with pytest.raises(ValueError, match="policy_rejected_logps has shape"):
        dpo_loss(x, y[:2], x, y)
    with pytest.raises(ValueError, match="ref_rejected_logps has shape"):
        dpo_loss(x, y, x, y[:2])
    with pytest.raises(ValueError, match=r"policy_chosen_logps must be a \(B,\) tensor"):
        dpo_loss(x[:, None], y[:, None], x[:, None], y[:, None])
    with pytest.raises(ValueError, match="policy_chosen_logps must be a"):
        dpo_loss([-1.0, -2.0], y, x, y)
    nan = torch.tensor([-1.0, float("nan"), -2.0], dtype=torch.float64)
    for i, name in enumerate(["policy_chosen_logps", "policy_rejected_logps",
                              "ref_chosen_logps", "ref_rejected_logps"]):  # fmt: skip
        args = [x, y, x, y]
        args[i] = nan
        with pytest.raises(ValueError, match=f"{name} has 1 NaN"):
            dpo_loss(*args)
    with pytest.raises(ValueError, match="ref_chosen_logps has 1 infinite"):
        dpo_loss(x, y, torch.tensor([-1.0, -math.inf, -1.0]), y)
    with pytest.raises(ValueError, match="loss_type must be one of"):
        dpo_loss(x, y, x, y, loss_type="kto")
    for beta in (0.0, -0.1, math.nan, math.inf, "0.1", True):
        with pytest.raises(ValueError, match="beta must be"):
            dpo_loss(x, y, x, y, beta=beta)
        with pytest.raises(ValueError, match="beta must be"):
            simpo_loss(x, y, beta=beta)
    for eps in (-0.1, 0.6):
        with pytest.raises(ValueError, match="label_smoothing must be in"):
            dpo_loss(x, y, x, y, label_smoothing=eps)
        with pytest.raises(ValueError, match="label_smoothing must be in"):
            simpo_loss(x, y, label_smoothing=eps)
    with pytest.raises(ValueError, match="label_smoothing applies to loss_type='sigmoid'"):
        dpo_loss(x, y, x, y, loss_type="ipo", label_smoothing=0.1)
    with pytest.raises(ValueError, match="ref_chosen_logps is None"):
        dpo_loss(x, y, None, None)
    with pytest.raises(ValueError, match="policy_chosen_logps has a positive value"):
        dpo_loss(-x, y, x, y)  # a negative log-likelihood passed as a log-prob
    with pytest.raises(ValueError, match="empty"):
        dpo_loss(x[:0], y[:0], x[:0], y[:0])
    with pytest.raises(ValueError, match="floating point"):
        dpo_loss(x.long(), y.long(), x.long(), y.long())
    with pytest.raises(ValueError, match="not both"):
        simpo_loss(x, y, gamma=0.5, gamma_beta_ratio=0.25)
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        simpo_loss(x, y, gamma=-1.0)
    with pytest.raises(ValueError, match="gamma_beta_ratio must be >= 0"):
        simpo_loss(x, y, gamma_beta_ratio=math.nan)
    with pytest.raises(ValueError, match="policy_rejected_logps has shape"):
        simpo_loss(x, y[:1])
    with pytest.raises(ValueError, match="policy_chosen_logps has 1 NaN"):
        simpo_loss(nan, y)


# --- parity with TRL ----------------------------------------------------------------------------
# TRL 1.16's DPOTrainer has no standalone loss function: DPOTrainer._compute_loss runs the model
# (patched with a "fused LM head" that returns per-token log-probs, zero where the label is
# -100), sums them per sequence, does the same with the reference model, and computes the loss
# inline. So we build a real DPOTrainer from a DPOConfig (a tiny random Llama, never run) and call
# its compute_loss with stub policy and reference models whose forward returns per-token
# log-probs we chose. The log-probs follow rlhf_lessons.lm's convention (out[:, t] scores
# input_ids[:, t], 0 at t = 0), so TRL's shifted ones are out[:, 1:]. Our side reduces the same
# per-token values with lm.sequence_logprobs and calls dpo_loss. Float64, so that any difference
# in the formula, not rounding, is what the 1e-6 tolerance would catch.
#
# CPOTrainer (trl.experimental.cpo) has a standalone cpo_loss(chosen_logps, rejected_logps), but we
# also run its whole compute_loss from logits (a stub model returning fixed logits), so that its
# own log-softmax, length averaging and cpo_alpha = 0 are part of the check. Float64 there too;
# one more test runs the course's float32 pipeline (lm.token_logprobs) end to end.


@pytest.fixture(scope="module")
def trl_setup(tmp_path_factory, word_tokenizer):
    pytest.importorskip("trl")
    from transformers import LlamaConfig

    tok = word_tokenizer(["a", "b"])
    vocab = tok.get_vocab()
    config = LlamaConfig(
        vocab_size=len(vocab), hidden_size=8, intermediate_size=16, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    common = dict(
        output_dir=str(tmp_path_factory.mktemp("trl_dpo")), use_cpu=True, bf16=False,
        report_to="none", save_strategy="no", disable_tqdm=True, activation_checkpointing=False,
    )  # fmt: skip
    return SimpleNamespace(tokenizer=tok, config=config, common=common)


def make_dpo_trainer(setup, **config):
    from datasets import Dataset
    from transformers import LlamaForCausalLM
    from trl import DPOConfig, DPOTrainer

    train = Dataset.from_dict({"prompt": ["a"], "chosen": [" b"], "rejected": [" a"]})
    return DPOTrainer(
        model=LlamaForCausalLM(setup.config),
        ref_model=LlamaForCausalLM(setup.config),
        args=DPOConfig(**setup.common, **config),
        train_dataset=train,
        processing_class=setup.tokenizer,
    )


def make_cpo_trainer(setup, **config):
    from datasets import Dataset
    from transformers import LlamaForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "You are importing from 'trl.experimental'"
        from trl.experimental.cpo import CPOConfig, CPOTrainer

    train = Dataset.from_dict({"prompt": ["a"], "chosen": [" b"], "rejected": [" a"]})
    args = CPOConfig(**setup.common, remove_unused_columns=False, **config)
    return CPOTrainer(
        model=LlamaForCausalLM(setup.config),
        args=args,
        train_dataset=train,
        processing_class=setup.tokenizer,
    )


class _FixedTokenLogProbs(torch.nn.Module):
    """Stands in for a model with TRL's fused LM head: returns fixed per-token log-probs."""

    def __init__(self, token_logp, completion_mask):
        super().__init__()
        self.token_logp, self.mask = token_logp, completion_mask

    def forward(self, input_ids=None, labels=None, fused_lm_head=False, **kwargs):
        from trl.trainer.utils import FusedCausalLMOutput

        assert fused_lm_head
        # TRL scores the tokens whose label is not -100: exactly our completion tokens
        assert torch.equal(labels[:, 1:] != -100, self.mask[:, 1:].bool())
        log_probs = (self.token_logp * self.mask)[:, 1:]  # zero where the label is -100
        zeros = torch.zeros_like(log_probs.detach())
        return FusedCausalLMOutput(
            log_probs=log_probs, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool()
        )


def random_preference_batch(seed: int, pairs: int = 6, length: int = 9):
    """Per-token policy and reference log-probs (2B, T) in lm's convention (chosen rows first,
    as TRL stacks them), and a completion mask with prompts of 1-3 tokens, completions of
    1-6 tokens and right padding, so that lengths differ between chosen and rejected."""
    g = torch.Generator().manual_seed(seed)
    n = 2 * pairs
    policy = -torch.rand(n, length, generator=g, dtype=torch.float64) * 4
    ref = -torch.rand(n, length, generator=g, dtype=torch.float64) * 4
    prompt = torch.randint(1, 4, (n, 1), generator=g)
    completion = torch.randint(1, 7, (n, 1), generator=g)
    pos = torch.arange(length)[None]
    mask = ((pos >= prompt) & (pos < prompt + completion)).long()
    inputs = {
        "input_ids": torch.full((n, length), 3),
        "attention_mask": (pos < prompt + completion).long(),
        "completion_mask": mask,
    }
    return policy, ref, mask, inputs


def trl_dpo_loss(trainer, policy, ref, mask, inputs):
    """TRL's loss and its gradient wrt the per-token policy log-probs."""
    leaf = policy.clone().requires_grad_(True)
    trainer.ref_model = _FixedTokenLogProbs(ref, mask)
    loss = trainer.compute_loss(_FixedTokenLogProbs(leaf, mask), inputs)
    loss.backward()
    return loss.item(), leaf.grad, {k: v[-1] for k, v in trainer._metrics["train"].items()}


def our_dpo_loss(policy, ref, mask, average=False, **kwargs):
    leaf = policy.clone().requires_grad_(True)
    pol = sequence_logprobs(leaf, mask, average=average)
    ref = sequence_logprobs(ref, mask, average=average)
    b = policy.shape[0] // 2
    loss, metrics = dpo_loss(pol[:b], pol[b:], ref[:b], ref[b:], **kwargs)
    loss.backward()
    return loss.item(), leaf.grad, metrics


# (TRL's metric name, ours)
METRIC_NAMES = [
    ("rewards/chosen", "rewards_chosen"),
    ("rewards/rejected", "rewards_rejected"),
    ("rewards/margins", "margin"),
    ("rewards/accuracies", "accuracy"),
    ("logps/chosen", "logps_chosen"),
    ("logps/rejected", "logps_rejected"),
]


@pytest.mark.parametrize(
    "loss_type,beta", [("sigmoid", 0.1), ("sigmoid", 0.5), ("hinge", 0.1), ("hinge", 1.0),
                       ("ipo", 0.1), ("ipo", 0.5)],
)  # fmt: skip
def test_dpo_loss_matches_trl_dpo_trainer(trl_setup, loss_type, beta):
    trainer = make_dpo_trainer(trl_setup, loss_type=loss_type, beta=beta)
    policy, ref, mask, inputs = random_preference_batch(seed=20 + int(beta * 10))
    trl_loss, trl_grad, trl_metrics = trl_dpo_loss(trainer, policy, ref, mask, inputs)
    # TRL's IPO divides each log-ratio by the completion length: we pass averaged log-probs
    average = loss_type == "ipo"
    ours, grad, metrics = our_dpo_loss(
        policy, ref, mask, average=average, beta=beta, loss_type=loss_type
    )
    assert abs(ours - trl_loss) < 1e-6, (ours, trl_loss)
    torch.testing.assert_close(grad, trl_grad, atol=1e-6, rtol=0)
    if loss_type == "ipo":
        # ...and with summed log-probs (eric-mitchell's IPO) the losses differ
        summed, _, _ = our_dpo_loss(policy, ref, mask, beta=beta, loss_type="ipo")
        assert abs(summed - trl_loss) > 1e-2
        return  # TRL logs IPO's rewards and logps from the summed log-probs
    for trl_name, name in METRIC_NAMES:
        assert metrics[name] == pytest.approx(trl_metrics[trl_name], abs=1e-6), name


def test_trl_dpo_trainer_ignores_label_smoothing_for_sigmoid(trl_setup):
    # TRL 1.x applies label_smoothing only to its "robust" and "exo_pair" losses; TRL 0.x's
    # "sigmoid" (and the DPO authors' code) applied it as cDPO. If this fails, TRL has restored
    # cDPO and test_cdpo_matches_trl_cpo_loss can move to DPOTrainer.
    trainer = make_dpo_trainer(trl_setup, loss_type="sigmoid", beta=0.1, label_smoothing=0.2)
    policy, ref, mask, inputs = random_preference_batch(seed=30)
    trl_loss, _, _ = trl_dpo_loss(trainer, policy, ref, mask, inputs)
    plain, _, _ = our_dpo_loss(policy, ref, mask, beta=0.1)
    smoothed, _, _ = our_dpo_loss(policy, ref, mask, beta=0.1, label_smoothing=0.2)
    assert abs(plain - trl_loss) < 1e-6
    assert abs(smoothed - trl_loss) > 1e-3


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5])
def test_cdpo_matches_trl_cpo_loss(trl_setup, eps):
    # CPOTrainer.cpo_loss("sigmoid") is -(1-eps) log sigma(beta z) - eps log sigma(-beta z) with
    # z = chosen - rejected: given the two log-ratios it is cDPO, given raw log-probs it is
    # reference-free cDPO
    trainer = make_cpo_trainer(trl_setup, loss_type="sigmoid", beta=0.3, label_smoothing=eps)
    pc, pr, rc, rr = (random_logps(8, 40 + i, scale=30) for i in range(4))
    trl_losses, _, _ = trainer.cpo_loss(pc - rc, pr - rr)
    ours, _ = dpo_loss(pc, pr, rc, rr, beta=0.3, label_smoothing=eps)
    assert abs(ours.item() - trl_losses.mean().item()) < 1e-6
    trl_free, trl_rc, trl_rr = trainer.cpo_loss(pc, pr)
    free, metrics = dpo_loss(pc, pr, None, None, beta=0.3, label_smoothing=eps, reference_free=True)
    assert abs(free.item() - trl_free.mean().item()) < 1e-6
    assert metrics["rewards_chosen"] == pytest.approx(trl_rc.mean().item(), abs=1e-6)
    assert metrics["rewards_rejected"] == pytest.approx(trl_rr.mean().item(), abs=1e-6)


class _FixedLogits(torch.nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        return SimpleNamespace(logits=self.logits)


def random_cpo_batch(seed: int, pairs: int = 5, length: int = 8, vocab: int = 5, dtype=None):
    g = torch.Generator().manual_seed(seed)
    n = 2 * pairs
    ids = torch.randint(3, vocab, (n, length), generator=g)
    prompt = torch.randint(1, 3, (n, 1), generator=g)
    completion = torch.randint(1, 7, (n, 1), generator=g)
    pos = torch.arange(length)[None]
    mask = (pos >= prompt) & (pos < prompt + completion)
    attention = (pos < prompt + completion).long()
    labels = ids.masked_fill(~mask, -100)
    batch = {
        "chosen_input_ids": ids[:pairs], "chosen_attention_mask": attention[:pairs],
        "chosen_labels": labels[:pairs], "rejected_input_ids": ids[pairs:],
        "rejected_attention_mask": attention[pairs:], "rejected_labels": labels[pairs:],
    }  # fmt: skip
    logits = torch.randn(n, length, vocab, generator=g, dtype=dtype or torch.float64) * 2
    return logits, Batch(ids, attention, mask.long()), batch


def our_logps_from_logits(logits, batch, average, via_lm=False):
    """Our side from logits: per-token log-probs in lm's convention (out[:, t] scores
    input_ids[:, t] from logits[:, t - 1]; 0 at t = 0), then lm.sequence_logprobs. With
    ``via_lm``, lm.token_logprobs itself computes them (in float32, as it always does)."""
    leaf = logits.clone().requires_grad_(True)
    if via_lm:
        token_logp = token_logprobs(_FixedLogits(leaf), batch)
    else:  # the same, in the logits' own precision
        logp = torch.log_softmax(leaf[:, :-1], dim=-1)
        token_logp = logp.gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
        token_logp = torch.nn.functional.pad(token_logp, (1, 0))
    logps = sequence_logprobs(token_logp, batch.completion_mask, average=average)
    b = len(batch) // 2
    return leaf, logps[:b], logps[b:]


def trl_cpo_loss(trainer, logits, batch):
    leaf = logits.clone().requires_grad_(True)
    loss = trainer.compute_loss(_FixedLogits(leaf), batch)
    loss.backward()
    return loss.item(), leaf.grad, {k: v[-1] for k, v in trainer._stored_metrics["train"].items()}


@pytest.mark.parametrize(
    "beta,gamma,eps", [(2.0, 0.5, 0.0), (2.5, 1.4, 0.0), (10.0, 3.0, 0.0), (2.0, 1.0, 0.1)]
)
def test_simpo_matches_trl_cpo_trainer(trl_setup, beta, gamma, eps):
    trainer = make_cpo_trainer(
        trl_setup, loss_type="simpo", beta=beta, simpo_gamma=gamma, cpo_alpha=0.0,
        label_smoothing=eps,
    )  # fmt: skip
    logits, ours_batch, trl_batch = random_cpo_batch(seed=50 + int(gamma * 10))
    trl_loss, trl_grad, trl_metrics = trl_cpo_loss(trainer, logits, trl_batch)
    leaf, chosen, rejected = our_logps_from_logits(logits, ours_batch, average=True)
    loss, metrics = simpo_loss(chosen, rejected, beta=beta, gamma=gamma, label_smoothing=eps)
    loss.backward()
    assert abs(loss.item() - trl_loss) < 1e-6, (loss.item(), trl_loss)
    torch.testing.assert_close(leaf.grad, trl_grad, atol=1e-6, rtol=0)
    for trl_name, name in METRIC_NAMES:
        assert metrics[name] == pytest.approx(trl_metrics[trl_name], abs=1e-5), name
    # the SimPO authors' parametrisation: TRL's simpo_gamma is beta * gamma_beta_ratio
    by_ratio, _ = simpo_loss(
        chosen, rejected, beta=beta, gamma_beta_ratio=gamma / beta, label_smoothing=eps
    )
    assert abs(by_ratio.item() - trl_loss) < 1e-6


def test_reference_free_dpo_matches_trl_cpo_trainer_sigmoid(trl_setup):
    # CPO's "sigmoid" with cpo_alpha = 0 sums the log-probs: reference-free (c)DPO
    trainer = make_cpo_trainer(
        trl_setup, loss_type="sigmoid", beta=0.1, cpo_alpha=0.0, label_smoothing=0.1
    )
    logits, ours_batch, trl_batch = random_cpo_batch(seed=60)
    trl_loss, trl_grad, _ = trl_cpo_loss(trainer, logits, trl_batch)
    leaf, chosen, rejected = our_logps_from_logits(logits, ours_batch, average=False)
    loss, _ = dpo_loss(
        chosen, rejected, None, None, beta=0.1, label_smoothing=0.1, reference_free=True
    )
    loss.backward()
    assert abs(loss.item() - trl_loss) < 1e-6
    torch.testing.assert_close(leaf.grad, trl_grad, atol=1e-6, rtol=0)


def test_simpo_through_lm_token_logprobs_matches_trl_in_float32(trl_setup):
    # the course's own pipeline, float32 end to end: lm.token_logprobs -> sequence_logprobs ->
    # simpo_loss against TRL's compute_loss on the same float32 logits; they agree to float32
    # rounding (about 1e-7 relative)
    trainer = make_cpo_trainer(
        trl_setup, loss_type="simpo", beta=2.0, simpo_gamma=1.0, cpo_alpha=0.0
    )
    logits, ours_batch, trl_batch = random_cpo_batch(seed=70, dtype=torch.float32)
    trl_loss, trl_grad, _ = trl_cpo_loss(trainer, logits, trl_batch)
    leaf, chosen, rejected = our_logps_from_logits(logits, ours_batch, average=True, via_lm=True)
    loss, _ = simpo_loss(chosen, rejected, beta=2.0, gamma=1.0)
    loss.backward()
    assert loss.item() == pytest.approx(trl_loss, rel=1e-6)
    torch.testing.assert_close(leaf.grad, trl_grad, atol=1e-6, rtol=1e-5)
