"""The A-LoL objectives (lesson 11): values by hand, the fact sheet's checkable facts, the
gradients they promise, the repository's formulation, and clear errors."""

import math

import pytest
import torch

from rlhf_lessons.alignment.alol_losses import (
    ADVANTAGE_METHODS,
    METHODS,
    a_lol_kl_loss,
    a_lol_loss,
    a_lol_ref_free_loss,
    a_lol_seq_loss,
    alol_objective,
    nll_loss,
    r_gold_loss,
    r_lol_loss,
    wbc_loss,
)

# Two responses: row 0 has 2 completion tokens, row 1 has 1; the rest is prompt or padding,
# filled with garbage on purpose (it must not matter).
MASK = torch.tensor([[0.0, 1.0, 1.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
LOGP = torch.tensor([[-9.0, -1.0, -2.0], [7.0, -0.5, 3.0]], dtype=torch.float64)
REF = torch.tensor([[4.0, -1.5, -2.0], [-3.0, -0.2, 1.0]], dtype=torch.float64)
NLL = [3.0, 0.5]  # -(-1 - 2), -(-0.5)
LOG_RATIO = [0.5, -0.3]  # sum_t logp - ref over the completion: (-1 + 1.5) + 0, -0.5 + 0.2


def leaf(x=LOGP):
    return x.clone().requires_grad_(True)


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


def random_batch(seed, b=6, length=5, spread=4.0):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(b, length, generator=g, dtype=torch.float64) * spread
    ref = -torch.rand(b, length, generator=g, dtype=torch.float64) * spread
    mask = torch.ones(b, length, dtype=torch.float64)
    mask[:, 0] = 0  # a prompt token
    mask[0, -2:] = 0  # padding
    return logp, ref, mask


# --- values by hand ----------------------------------------------------------------------------


def test_nll_and_wbc_by_hand():
    loss, m = nll_loss(leaf(), MASK)
    assert loss.item() == pytest.approx(sum(NLL) / 2)
    assert m["nll"] == pytest.approx(1.75) and m["weight"] == 1.0
    loss, m = wbc_loss(leaf(), MASK, t(0.2, 0.8))
    assert loss.item() == pytest.approx((0.2 * 3.0 + 0.8 * 0.5) / 2)
    assert m["weight"] == pytest.approx(0.5)


def test_r_gold_by_hand():
    # token weights max(p, 0.1): e^-1 = 0.368, e^-2 = 0.135, e^-0.5 = 0.607
    loss, m = r_gold_loss(leaf(), MASK, t(1.0, 0.5), min_prob=0.1)
    row0 = math.exp(-1) * 1.0 + math.exp(-2) * 2.0
    row1 = math.exp(-0.5) * 0.5
    assert loss.item() == pytest.approx((1.0 * row0 + 0.5 * row1) / 2)
    # with u = 0.2 the second token's weight is lifted from 0.135 to 0.2
    loss, m = r_gold_loss(leaf(), MASK, t(1.0, 0.5), min_prob=0.2)
    row0 = math.exp(-1) * 1.0 + 0.2 * 2.0
    assert loss.item() == pytest.approx((row0 + 0.5 * row1) / 2)
    assert m["clipfrac"] == pytest.approx(1 / 3)  # 1 of the 3 completion tokens was lifted


@pytest.mark.parametrize("clip_eps", [0.9, 0.2, None])
def test_r_lol_and_a_lol_by_hand(clip_eps):
    ratios = [math.exp(x) for x in LOG_RATIO]  # 1.649, 0.741
    if clip_eps is not None:
        ratios = [min(max(r, 1 - clip_eps), 1 + clip_eps) for r in ratios]
    loss, m = r_lol_loss(leaf(), REF, MASK, t(0.6, 1.0), clip_eps=clip_eps)
    assert loss.item() == pytest.approx((0.6 * ratios[0] * 3.0 + 1.0 * ratios[1] * 0.5) / 2)
    adv = t(0.4, -0.7)  # the second advantage is negative: A+ = 0
    loss, m = a_lol_loss(leaf(), REF, MASK, adv, clip_eps=clip_eps)
    assert loss.item() == pytest.approx(0.4 * ratios[0] * 3.0 / 2)
    assert m["advantage"] == pytest.approx(0.2)
    expected_clipped = 0.0 if clip_eps is None else 0.5 * (clip_eps == 0.2) * 2
    assert m["clipfrac"] == pytest.approx(expected_clipped)  # eps 0.2 clips both ratios


def test_a_lol_ref_free_and_seq_by_hand():
    adv = t(0.5, 2.0)
    loss, _ = a_lol_ref_free_loss(leaf(), MASK, adv)
    assert loss.item() == pytest.approx((0.5 * 3.0 + 2.0 * 0.5) / 2)
    # per-token ratios: e^0.5, e^0 on row 0; e^-0.3 on row 1; eps 0.2 clips e^0.5 and e^-0.3
    loss, m = a_lol_seq_loss(leaf(), REF, MASK, adv, clip_eps=0.2)
    row0 = 1.2 * 1.0 + 1.0 * 2.0
    row1 = 0.8 * 0.5
    assert loss.item() == pytest.approx((0.5 * row0 + 2.0 * row1) / 2)
    assert m["clipfrac"] == pytest.approx(2 / 3)
    assert m["weight_min"] == pytest.approx(0.8) and m["weight_max"] == pytest.approx(1.2)


def test_a_lol_kl_by_hand():
    adv = t(0.5, -1.0)
    loss, m = a_lol_kl_loss(leaf(), REF, MASK, adv, kl_beta=0.1)
    expected = (0.5 * 3.0 + 0.0) / 2 + 0.1 * sum(LOG_RATIO) / 2
    assert loss.item() == pytest.approx(expected)
    assert m["kl_term"] == pytest.approx(0.1 * 0.1)


# --- checkable fact 10 ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ADVANTAGE_METHODS)
def test_fact10_non_positive_advantage_gives_zero_gradient(method):
    logp, ref, mask = random_batch(0)
    adv = torch.tensor([0.0, -0.1, -2.0, 0.0, -5.0, -1e-6], dtype=torch.float64)
    x = logp.clone().requires_grad_(True)
    loss, _ = alol_objective(method, x, mask, ref, advantages=adv, kl_beta=0.0)
    loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_a_lol_kl_still_moves_on_non_positive_advantages_when_beta_is_positive():
    # its "KL" term is beta * grad log pi(y) on the data: not zero even when A+ = 0
    logp, ref, mask = random_batch(1)
    x = logp.clone().requires_grad_(True)
    a_lol_kl_loss(x, ref, mask, -torch.ones(6, dtype=torch.float64), kl_beta=0.1)[0].backward()
    torch.testing.assert_close(x.grad, 0.1 * mask / 6)


@pytest.mark.parametrize("method", ["r_lol", "a_lol", "a_lol_seq"])
@pytest.mark.parametrize("clip_eps", [0.9, 0.5, 0.2])
def test_fact10_importance_weights_stay_in_the_clip_range(method, clip_eps):
    logp, ref, mask = random_batch(2, b=32, length=12, spread=8.0)  # ratios far from 1
    ones = torch.ones(32, dtype=torch.float64)
    _, m = alol_objective(method, logp.requires_grad_(True), mask, ref, rewards=ones * 0.5,
                          advantages=ones, clip_eps=clip_eps)  # fmt: skip
    assert 1 - clip_eps - 1e-12 <= m["weight_min"] <= m["weight_max"] <= 1 + clip_eps + 1e-12
    assert m["clipfrac"] > 0.2  # the clip was exercised, not trivially satisfied


def test_fact10_default_weights_are_in_0_1_to_1_9():
    logp, ref, mask = random_batch(3, b=64, length=12, spread=10.0)
    _, m = a_lol_loss(logp.requires_grad_(True), ref, mask, torch.ones(64, dtype=torch.float64))
    assert m["weight_min"] == pytest.approx(0.1) and m["weight_max"] == pytest.approx(1.9)


def test_fact10_ref_free_with_unit_advantage_and_wbc_with_unit_reward_are_nll():
    logp, ref, mask = random_batch(4)
    ones = torch.ones(6, dtype=torch.float64)
    grads = []
    for fn in (
        lambda x: nll_loss(x, mask),
        lambda x: a_lol_ref_free_loss(x, mask, ones),
        lambda x: wbc_loss(x, mask, ones),
    ):
        x = logp.clone().requires_grad_(True)
        loss, _ = fn(x)
        loss.backward()
        grads.append((loss.detach(), x.grad))
    for loss, grad in grads[1:]:
        torch.testing.assert_close(loss, grads[0][0])
        torch.testing.assert_close(grad, grads[0][1])


# --- gradients and reductions ----------------------------------------------------------------


def test_a_lol_gradient_is_the_off_policy_policy_gradient():
    # d L / d logp_t = -A+ * w / B on completion tokens: the weight is a constant
    logp, ref, mask = random_batch(5)
    adv = torch.linspace(-0.5, 1.0, 6, dtype=torch.float64)
    x = logp.clone().requires_grad_(True)
    a_lol_loss(x, ref, mask, adv, clip_eps=0.9)[0].backward()
    w = (((logp - ref) * mask).sum(-1)).exp().clamp(0.1, 1.9)
    torch.testing.assert_close(x.grad, -(adv.clamp(min=0) * w)[:, None] * mask / 6)


def test_a_lol_kl_is_ref_free_with_the_advantage_lowered_by_beta():
    logp, ref, mask = random_batch(6)
    adv = torch.linspace(0.0, 1.0, 6, dtype=torch.float64)
    x = logp.clone().requires_grad_(True)
    a_lol_kl_loss(x, ref, mask, adv, kl_beta=0.3)[0].backward()
    torch.testing.assert_close(x.grad, -(adv - 0.3)[:, None] * mask / 6)


def test_at_the_reference_the_weighted_objectives_reduce_to_their_unweighted_forms():
    logp, _, mask = random_batch(7)
    adv = torch.linspace(-0.2, 1.0, 6, dtype=torch.float64)
    rewards = torch.linspace(0.0, 1.0, 6, dtype=torch.float64)
    x = logp.clone().requires_grad_(True)
    ref_free = a_lol_ref_free_loss(x, mask, adv)[0]
    for loss in (a_lol_loss(x, logp, mask, adv)[0], a_lol_seq_loss(x, logp, mask, adv)[0]):
        torch.testing.assert_close(loss, ref_free)  # every ratio is 1
    torch.testing.assert_close(r_lol_loss(x, logp, mask, rewards)[0],
                               wbc_loss(x, mask, rewards)[0])  # fmt: skip
    torch.testing.assert_close(r_gold_loss(x, mask, rewards, min_prob=1.0)[0],
                               wbc_loss(x, mask, rewards)[0])  # fmt: skip


def test_matches_the_repository_formulation():
    # LoL-RL works with negative log-probs: ratio = exp(ref_nll - nll), clamped; the loss is
    # mean(sum(nll_t * mask) * ratio * A+) (a_lol) and mean(sum(nll_t * clamp(exp(ref_nll_t -
    # nll_t)) * mask) * A+) (a_lol_seq). Recomputed here in that form.
    logp, ref, mask = random_batch(8, b=8, length=7, spread=3.0)
    adv = torch.linspace(-0.3, 0.9, 8, dtype=torch.float64)
    nll_t, ref_nll_t = -logp, -ref
    seq_ratio = torch.exp((ref_nll_t * mask).sum(1) - (nll_t * mask).sum(1)).clamp(0.1, 1.9)
    repo_a_lol = ((nll_t * mask).sum(1) * seq_ratio * adv.clamp(min=0)).mean()
    tok_ratio = (torch.exp(ref_nll_t - nll_t) * mask).clamp(0.1, 1.9) * mask
    repo_seq = ((nll_t * tok_ratio * mask).sum(1) * adv.clamp(min=0)).mean()
    x = logp.clone().requires_grad_(True)
    torch.testing.assert_close(a_lol_loss(x, ref, mask, adv)[0], repo_a_lol)
    torch.testing.assert_close(a_lol_seq_loss(x, ref, mask, adv)[0], repo_seq)


def test_padding_and_prompt_positions_do_not_matter():
    logp, ref, mask = random_batch(9)
    noisy_logp = torch.where(mask.bool(), logp, torch.full_like(logp, 123.0))
    noisy_ref = torch.where(mask.bool(), ref, torch.full_like(ref, -77.0))
    ones = torch.ones(6, dtype=torch.float64)
    for method in METHODS:
        a = alol_objective(method, logp, mask, ref, ones * 0.7, ones * 0.4)[0]
        b = alol_objective(method, noisy_logp, mask, noisy_ref, ones * 0.7, ones * 0.4)[0]
        torch.testing.assert_close(a, b, msg=method)


# --- errors ----------------------------------------------------------------------------------


def test_negative_rewards_are_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"rewards must be >= 0.*\(r \+ 1\) / 2"):
        wbc_loss(leaf(), MASK, t(0.5, -0.2))


def test_bad_inputs_name_the_field():
    with pytest.raises(ValueError, match="mask must have the shape of logp"):
        nll_loss(leaf(), MASK[:, :2])
    with pytest.raises(ValueError, match=r"advantages must be a \(2,\) tensor"):
        a_lol_ref_free_loss(leaf(), MASK, t(1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match="clip_eps must be in"):
        a_lol_loss(leaf(), REF, MASK, t(1.0, 1.0), clip_eps=1.5)
    with pytest.raises(ValueError, match="clip_eps must be in"):
        a_lol_loss(leaf(), REF, MASK, t(1.0, 1.0), clip_eps=0.0)
    with pytest.raises(ValueError, match="rewards contains NaN"):
        wbc_loss(leaf(), MASK, t(0.5, math.nan))
    with pytest.raises(ValueError, match="mask row 1 has no completion token"):
        nll_loss(leaf(), torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64))
    with pytest.raises(ValueError, match="method 'a_lol' needs ref_logp"):
        alol_objective("a_lol", leaf(), MASK, advantages=t(1.0, 1.0))
    with pytest.raises(ValueError, match="method must be one of"):
        alol_objective("ppo", leaf(), MASK)
    with pytest.raises(ValueError, match="kl_beta must be a number >= 0"):
        a_lol_kl_loss(leaf(), REF, MASK, t(1.0, 1.0), kl_beta=-0.1)
