"""Seeds trained as one batched computation are the runs they would be alone."""

import numpy as np
import pytest
import torch
from torch import nn

from rlhf_lessons.rl.batched import (
    SeedAdam,
    SeedLinear,
    SeedRandom,
    TanhMLP,
    clip_grad_norm_per_seed_,
    load_seed_,
    minibatches,
    stack_seeds,
    tanh_mlp,
    tanh_mlp_backward,
    tanh_mlp_forward,
)
from rlhf_lessons.rl.ppo import (
    ActorCritic,
    PPOConfig,
    SeedActorCritic,
    clipped_surrogate_loss,
    train_ppo_seeds,
)
from rlhf_lessons.rl.reinforce import PolicyNet, ReinforceConfig, train_reinforce_seeds

pytestmark = pytest.mark.usefixtures("one_thread")


def _nets(n, seed=0):
    torch.manual_seed(seed)
    return [ActorCritic() for _ in range(n)]


def test_stacked_network_computes_each_member():
    members = _nets(3)
    stacked = stack_seeds(members)
    obs = torch.randn(3, 5, 4)
    for i, m in enumerate(members):
        torch.testing.assert_close(stacked.value(obs)[i], m.value(obs[i]))
        torch.testing.assert_close(stacked.log_probs(obs)[i], m.log_probs(obs[i]))
    # extra dimensions between the seed and the features are fine
    obs4 = torch.randn(3, 2, 5, 4)
    torch.testing.assert_close(stacked.value(obs4)[1, 1], members[1].value(obs4[1, 1]))
    with pytest.raises(ValueError, match="leading dimension"):
        stacked.value(torch.randn(5, 4))
    assert "seeds=3" in repr(stacked.actor[0])


def test_load_seed_copies_weights_back():
    members = _nets(2)
    stacked = stack_seeds(members)
    with torch.no_grad():
        for p in stacked.parameters():
            p.add_(1.0)
    fresh = ActorCritic()
    load_seed_(fresh, stacked, 1)
    obs = torch.randn(1, 7, 4)
    torch.testing.assert_close(fresh.value(obs[0]), stacked.value(obs.expand(2, 7, 4))[1])


def test_stack_seeds_refuses_parameters_outside_linear_layers():
    with pytest.raises(TypeError, match="LayerNorm"):
        stack_seeds([nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2))])
    with pytest.raises(ValueError, match="bias"):
        SeedLinear([nn.Linear(2, 2, bias=False)])


def test_each_seed_gets_its_own_gradient_and_clipping():
    """S x mean over seeds = the sum of each seed's loss: seed i's gradient (after clipping by
    its own norm) equals the one-network gradient (after torch's clipping)."""
    members = _nets(3, seed=1)
    stacked = stack_seeds(members)
    obs, ret = torch.randn(3, 16, 4), torch.randn(3, 16) * 10
    (3 * (stacked.value(obs) - ret).pow(2).mean()).backward()
    norms = clip_grad_norm_per_seed_(stacked.parameters(), max_norm=0.5)
    for i, m in enumerate(members):
        (m.value(obs[i]) - ret[i]).pow(2).mean().backward()
        norm = nn.utils.clip_grad_norm_(m.parameters(), 0.5)
        torch.testing.assert_close(norms[i], norm)
        for name, layer in m.named_modules():
            if isinstance(layer, nn.Linear) and layer.weight.grad is not None:
                seed_layer = stacked.get_submodule(name)
                torch.testing.assert_close(seed_layer.weight.grad[i], layer.weight.grad.T)
                torch.testing.assert_close(seed_layer.bias.grad[i, 0], layer.bias.grad)


def test_seed_actor_critic_computes_each_member_and_its_gradient():
    """PPO's fused network: seed i's (log pi, V) and their gradients (after clipping by the
    seed's own norm) are member i's; the critic's padding column gets no gradient."""
    members = _nets(3, seed=2)
    fused = SeedActorCritic(members)
    obs, ret = torch.randn(3, 16, 4), torch.randn(3, 16) * 10
    log_pi, value = fused(obs)
    for i, m in enumerate(members):
        torch.testing.assert_close(log_pi[i], m.log_probs(obs[i]))
        torch.testing.assert_close(value[i], m.value(obs[i]))
    obs4 = torch.randn(3, 2, 5, 4)  # extra dimensions between the seed and the features
    torch.testing.assert_close(fused.value(obs4)[1, 1], members[1].value(obs4[1, 1]))
    with pytest.raises(ValueError, match="seeds=3"):
        fused(torch.randn(5, 4))

    actions = torch.randint(0, 2, (3, 16))
    loss = lambda lp, v, a, r: (v - r).pow(2).mean() - lp.gather(-1, a[..., None]).mean()  # noqa: E731
    (3 * loss(log_pi, value, actions, ret)).backward()
    norms = clip_grad_norm_per_seed_(fused.parameters(), max_norm=0.5, seeds=3)
    assert (
        fused.weight2.grad[1::2, :, 1].abs().max() == 0 and fused.bias2.grad[1::2, 0, 1].eq(0).all()
    )
    for i, m in enumerate(members):
        loss(m.log_probs(obs[i]), m.value(obs[i]), actions[i], ret[i]).backward()
        torch.testing.assert_close(norms[i], nn.utils.clip_grad_norm_(m.parameters(), 0.5))
        torch.testing.assert_close(fused.weight1.grad[2 * i], m.actor[2].weight.grad.T)
        torch.testing.assert_close(fused.weight1.grad[2 * i + 1], m.critic[2].weight.grad.T)
        torch.testing.assert_close(fused.bias2.grad[2 * i + 1, 0, :1], m.critic[4].bias.grad)

    with torch.no_grad():
        for p in fused.parameters():
            p.add_(0.5)
    fresh = load_seed_(ActorCritic(), fused, 2)  # the fused network unstacks itself
    torch.testing.assert_close(fresh.value(obs[2]), fused.value(obs)[2])
    torch.testing.assert_close(fresh.log_probs(obs[2]), fused.log_probs(obs)[2])


def test_tanh_mlp_forward_and_written_out_backward_match_autograd():
    torch.manual_seed(0)
    shapes = [(3, 4, 8), (3, 1, 8), (3, 8, 8), (3, 1, 8), (3, 8, 2), (3, 1, 2)]
    ws = [torch.randn(s, dtype=torch.float64, requires_grad=True) for s in shapes]
    x = torch.randn(3, 5, 4, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(TanhMLP.apply, (x, *ws))  # the backward is the forward's gradient
    plain = tanh_mlp(x, *ws)  # torch.tanh and autograd's own backward
    torch.testing.assert_close(TanhMLP.apply(x, *ws), plain)
    grads = torch.autograd.grad(plain.square().sum(), (x, *ws))
    fused = torch.autograd.grad(TanhMLP.apply(x, *ws).square().sum(), (x, *ws))
    for a, b in zip(fused, grads, strict=True):
        torch.testing.assert_close(a, b)
    # out=: the weights' gradients written into given tensors, the same numbers
    with torch.no_grad():
        out, saved = tanh_mlp_forward(x, *ws)
        returned = tanh_mlp_backward(saved, 2 * out)
        given = [torch.empty_like(w) for w in ws]
        written = tanh_mlp_backward(saved, 2 * out, input_grad=False, out=given)
    assert written[0] is None and all(w is g for w, g in zip(written[1:], given, strict=True))
    for a, b in zip(given, returned[1:], strict=True):
        assert torch.equal(a, b)


def test_seed_adam_is_torch_adam():
    torch.manual_seed(0)
    ours = [nn.Parameter(torch.randn(2, 3, 4)), nn.Parameter(torch.randn(2, 1, 4))]
    theirs = [nn.Parameter(p.detach().clone()) for p in ours]
    opt = SeedAdam(ours, lr=1e-2, eps=1e-5)
    ref = torch.optim.Adam(theirs, lr=1e-2, eps=1e-5)
    for step in range(5):
        lr = 1e-2 * (1 - step / 5)  # a schedule, set as the trainers set it
        opt.lr, ref.param_groups[0]["lr"] = lr, lr
        for params, o in ((ours, opt), (theirs, ref)):
            o.zero_grad()
            sum((p * torch.arange(p.numel()).view(p.shape)).sin().sum() for p in params).backward()
            o.step()
        for a, b in zip(ours, theirs, strict=True):
            torch.testing.assert_close(a, b)
    opt.zero_grad()
    with pytest.raises(ValueError, match="gradient"):
        opt.step()


def test_seed_streams_do_not_depend_on_the_neighbours():
    alone, together = SeedRandom([7]), SeedRandom([3, 7])
    torch.testing.assert_close(alone.uniform(5)[0], together.uniform(5)[1])
    assert alone.numpy[0].random() == together.numpy[1].random()
    a, b = alone.build(PolicyNet)[0], together.build(PolicyNet)[1]
    torch.testing.assert_close(a.net[0].weight, b.net[0].weight)
    before = torch.random.get_rng_state()
    SeedRandom([1]).build(PolicyNet)
    assert torch.equal(before, torch.random.get_rng_state())  # global generator untouched
    with pytest.raises(ValueError, match="repeats"):
        SeedRandom([1, 1])
    with pytest.raises(ValueError, match="one seed"):
        together.only(PolicyNet())


def test_gumbel_max_samples_the_policy():
    rand = SeedRandom([0])
    log_pi = torch.tensor([0.2, 0.5, 0.3]).log()
    draws = (log_pi + rand.gumbel(60_000, 3)[0]).argmax(-1)
    freq = torch.bincount(draws, minlength=3).float() / draws.numel()
    torch.testing.assert_close(freq, log_pi.exp(), atol=0.01, rtol=0)


def test_minibatches_cover_each_seed_in_its_own_order():
    rand = SeedRandom([0, 1])
    batch = [torch.arange(8.0).expand(2, 8)]
    whole = list(minibatches(batch, 8, 3, rand))
    assert len(whole) == 3 and all(mb[0] is batch[0] for mb in whole)
    parts = list(minibatches(batch, 4, 2, rand))
    assert len(parts) == 4 and parts[0][0].shape == (2, 4)
    for epoch in (parts[:2], parts[2:]):
        rows = torch.cat([mb[0] for mb in epoch], dim=1)
        for s in range(2):
            assert sorted(rows[s].tolist()) == list(range(8))
    assert not torch.equal(parts[0][0][0], parts[0][0][1])  # the seeds' orders differ


def _assert_same_run(batched, alone, rows, atol):
    """The batched seed's first rows and episodes are the one-seed run's."""
    a, b = batched.to_frame().iloc[:rows], alone.to_frame().iloc[:rows]
    cols = [c for c in a.columns if c != "seconds"]
    np.testing.assert_allclose(a[cols].to_numpy(float), b[cols].to_numpy(float), atol=atol)
    n = min(len(batched.info["episode_returns"]), len(alone.info["episode_returns"]), 20)
    assert batched.info["episode_returns"][:n] == alone.info["episode_returns"][:n]


def test_ppo_seed_in_a_batch_is_the_one_seed_run():
    cfg = PPOConfig(total_timesteps=1024)
    both = train_ppo_seeds([3, 7], cfg, show_progress=False)
    for h, seed in zip(both, [3, 7], strict=True):
        (alone,) = train_ppo_seeds([seed], cfg, show_progress=False)
        _assert_same_run(h, alone, rows=1, atol=1e-5)  # the first update: same data, same loss
        for p, q in zip(h.policy.parameters(), alone.policy.parameters(), strict=True):
            torch.testing.assert_close(p, q, atol=1e-4, rtol=1e-4)


def test_ppo_first_update_matches_a_plain_network_on_the_same_batch():
    """Seed 1's first clipped-surrogate loss equals the plain (unbatched) computation."""
    rand = SeedRandom([5, 6])
    members = rand.build(ActorCritic)
    stacked = stack_seeds(members)
    obs, actions = torch.randn(2, 32, 4), torch.randint(0, 2, (2, 32))
    old = torch.log(torch.full((2, 32), 0.5))
    adv = torch.randn(2, 32)
    new = stacked.log_probs(obs).gather(-1, actions[..., None]).squeeze(-1)
    batched, _ = clipped_surrogate_loss(new[1:], old[1:], adv[1:], 0.2)
    plain_new = members[1].log_probs(obs[1]).gather(-1, actions[1, :, None]).squeeze(-1)
    plain, _ = clipped_surrogate_loss(plain_new, old[1], adv[1], 0.2)
    torch.testing.assert_close(batched, plain)


def test_reinforce_seed_in_a_batch_is_the_one_seed_run():
    cfg = ReinforceConfig(episodes=8)
    both = train_reinforce_seeds([2, 9], cfg, show_progress=False)
    for h, seed in zip(both, [2, 9], strict=True):
        (alone,) = train_reinforce_seeds([seed], cfg, show_progress=False)
        _assert_same_run(h, alone, rows=2, atol=1e-5)


@pytest.mark.slow
def test_batched_seeds_learn_like_single_runs():
    """Statistically the same runs: over five seeds, the batch's final greedy returns and its
    episodes to a 20-episode average of 195 agree with the one-seed runs'."""
    seeds = [0, 1, 2, 3, 4]
    cfg = PPOConfig(total_timesteps=30_720)
    batched = train_ppo_seeds(seeds, cfg, show_progress=False)
    alone = [train_ppo_seeds([s], cfg, show_progress=False)[0] for s in seeds]

    def first_195(h):
        r = np.convolve(h.info["episode_returns"], np.ones(20) / 20, mode="valid")
        hits = np.flatnonzero(r >= 195)
        return hits[0] if hits.size else len(r)

    b = np.array([first_195(h) for h in batched])
    a = np.array([first_195(h) for h in alone])
    assert abs(b.mean() - a.mean()) <= 0.25 * a.mean() + 5, (b, a)
    fb = np.array([h.final_return for h in batched])
    fa = np.array([h.final_return for h in alone])
    assert abs(fb.mean() - fa.mean()) <= 100, (fb, fa)
