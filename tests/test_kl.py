import math

import pytest
import torch

from rlhf_lessons.rl.kl import (
    estimator_samples,
    estimator_stats,
    fit_gaussian,
    gaussian_kl,
    kl_divergence,
    kl_estimates,
    per_token_kl,
    temperature_kl_terms,
)


def test_discrete_kl_lecture_example():
    # 0.2 ln 2 + 0.5 ln 1.25 + 0.3 ln 0.6 = 0.09695 nats
    assert kl_divergence([0.2, 0.5, 0.3], [0.1, 0.4, 0.5]) == pytest.approx(0.0969535, abs=1e-6)


def test_discrete_kl_properties():
    p, q = [0.5, 0.4, 0.1], [0.1, 0.1, 0.8]
    assert kl_divergence(p, p) == 0.0
    assert kl_divergence(p, q) != pytest.approx(kl_divergence(q, p), abs=0.1)  # asymmetric
    assert kl_divergence([0.5, 0.5, 0.0], [0.25, 0.25, 0.5]) == pytest.approx(math.log(2))
    assert kl_divergence([0.5, 0.5], [1.0, 0.0]) == math.inf
    with pytest.raises(ValueError, match="probability distribution"):
        kl_divergence([0.5, 0.6], [0.5, 0.5])
    with pytest.raises(ValueError, match="same length"):
        kl_divergence([1.0], [0.5, 0.5])


def test_estimators_zero_when_equal_and_k3_nonnegative():
    # Checkable fact 5: k3 >= 0 for every sample; k1 = k2 = k3 = 0 when logp = logp_ref.
    zero = kl_estimates(torch.zeros(5))
    assert all(torch.equal(v, torch.zeros(5)) for v in zero.values())
    k = kl_estimates(torch.linspace(-5, 5, 1001))
    assert (k["k3"] >= 0).all() and (k["k2"] >= 0).all() and (k["k1"] < 0).any()


@pytest.mark.parametrize("mu", [0.1, 1.0])
def test_estimator_means_approach_mu_squared_over_two(mu):
    s = estimator_stats(mu, n=400_000, seed=1)
    true = mu**2 / 2
    for name in ("k1", "k3"):
        se = s[name]["std/true"] * true / math.sqrt(400_000)
        assert abs(s[name]["mean"] - true) < 4 * se, (name, s[name])


def test_published_figures_of_schulmans_blog():
    small, large = estimator_stats(0.1, n=400_000), estimator_stats(1.0, n=400_000)
    assert small["k1"]["std/true"] == pytest.approx(20, rel=0.03)
    assert small["k2"]["std/true"] == pytest.approx(1.42, rel=0.03)
    assert small["k3"]["std/true"] == pytest.approx(1.42, rel=0.03)
    assert small["k3"]["std/true"] < small["k1"]["std/true"] / 10
    assert large["k2"]["bias/true"] == pytest.approx(0.25, abs=0.02)


def test_gaussian_kl_closed_form():
    assert gaussian_kl(0, 1, 1, 1) == pytest.approx(0.5)
    assert gaussian_kl(0, 1, 0, 2) == pytest.approx(math.log(2) + 1 / 8 - 0.5)


def test_forward_covers_reverse_seeks():
    grid = torch.linspace(-8, 8, 1601)

    def lognorm(x, m, s):
        return -0.5 * ((x - m) / s) ** 2 - math.log(s) - 0.5 * math.log(2 * math.pi)

    log_p = torch.logaddexp(lognorm(grid, -2.5, 0.7), lognorm(grid, 2.5, 0.7)) - math.log(2)
    mu_f, sigma_f = fit_gaussian(log_p, grid, "forward", steps=1500)
    mu_r, sigma_r = fit_gaussian(log_p, grid, "reverse", steps=1500)
    # forward = moment matching: mean 0, variance 2.5^2 + 0.7^2
    assert mu_f == pytest.approx(0.0, abs=0.05)
    assert sigma_f == pytest.approx(math.sqrt(2.5**2 + 0.7**2), rel=0.02)
    # reverse sits on one mode
    assert mu_r == pytest.approx(2.5, abs=0.05) and sigma_r == pytest.approx(0.7, rel=0.05)
    with pytest.raises(ValueError, match="direction"):
        fit_gaussian(log_p, grid, "sideways")


def test_per_token_kl_matches_discrete_kl_and_masks():
    q = torch.tensor([0.2, 0.5, 0.3]).log()
    p = torch.tensor([0.1, 0.4, 0.5]).log()
    logits_q = q.expand(2, 3, 3)
    logits_p = p.expand(2, 3, 3) + 7.0  # logits are shift-invariant
    kl = per_token_kl(logits_q, logits_p, mask=torch.tensor([[1, 1, 0], [0, 1, 1]]))
    expected = kl_divergence([0.2, 0.5, 0.3], [0.1, 0.4, 0.5])
    torch.testing.assert_close(
        kl, torch.tensor([[expected, expected, 0.0], [0.0, expected, expected]])
    )


def test_k2_bias_for_unit_gaussians_is_mu_squared_over_four():
    # log r = mu x - mu^2/2 with x ~ N(0, 1): E[k2] = (mu^2 + mu^4/4) / 2 = KL (1 + mu^2 / 4)
    for mu in (0.5, 1.0):
        s = estimator_stats(mu, n=400_000, seed=2)
        assert s["k2"]["bias/true"] == pytest.approx(mu**2 / 4, abs=0.01)


def test_estimator_samples_are_the_stats_samples():
    samples = estimator_samples(0.3, n=1000, seed=4)
    stats = estimator_stats(0.3, n=1000, seed=4)
    for name, k in samples.items():
        assert k.shape == (1000,) and k.mean().item() == pytest.approx(stats[name]["mean"])


def test_temperature_kl_terms_match_the_full_logits(tiny_lm):
    from rlhf_lessons.lm import next_token_logits, tokenize_pairs

    model, tok = tiny_lm
    batch = tokenize_pairs(tok, ["the movie", "a film was"], ["was great and", "bad"])
    exact, log_r = temperature_kl_terms(model, batch, temperature=0.7, rows_per_pass=1)
    with torch.no_grad():
        logits = next_token_logits(model, batch)
    mask = batch.completion_mask.float()
    torch.testing.assert_close(exact, per_token_kl(logits / 0.7, logits, mask))
    ids = batch.input_ids.unsqueeze(-1)
    lp = torch.log_softmax(logits, -1).gather(-1, ids).squeeze(-1)
    lq = torch.log_softmax(logits / 0.7, -1).gather(-1, ids).squeeze(-1)
    torch.testing.assert_close(log_r, (lp - lq) * mask)
    assert (exact >= -1e-6).all() and (exact[mask == 0] == 0).all()
