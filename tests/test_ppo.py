import pytest
import torch

from rlhf_lessons.rl.batched import clip_grad_norm_per_seed_
from rlhf_lessons.rl.cartpole import SOLVED_RETURN, first_solved
from rlhf_lessons.rl.ppo import (
    ActorCritic,
    PPOConfig,
    SeedActorCritic,
    ZooGradient,
    clipped_surrogate_loss,
    ppo_loss,
    train_ppo,
    train_ppo_seeds,
    value_loss,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_cleanrl_preset_batch_sizes_and_iterations():
    # Fact sheet, checkable fact 7: batch 512, minibatch 128, 976 iterations.
    cfg = PPOConfig.cleanrl()
    assert (cfg.batch_size, cfg.minibatch_size, cfg.iterations) == (512, 128, 976)
    assert (cfg.epochs, cfg.clip_value, cfg.ent_coef, cfg.vf_coef) == (4, 0.2, 0.01, 0.5)


def test_rl_zoo_preset_matches_hyperparams_file():
    cfg = PPOConfig.rl_zoo()
    assert (cfg.num_envs, cfg.num_steps, cfg.batch_size, cfg.epochs) == (8, 32, 256, 20)
    assert cfg.minibatch_size == 256  # SB3's batch_size: one minibatch per epoch
    assert (cfg.gamma, cfg.gae_lambda, cfg.ent_coef, cfg.lr, cfg.clip_eps) == (
        0.98, 0.8, 0.0, 1e-3, 0.2,
    )  # fmt: skip
    assert cfg.anneal_lr and cfg.anneal_clip and cfg.total_timesteps == 100_000
    assert cfg.clip_value is None and cfg.max_grad_norm == 0.5


def test_config_rejects_indivisible_minibatches():
    with pytest.raises(ValueError, match="multiple of"):
        PPOConfig(num_envs=3, num_steps=5, minibatch_size=2)
    with pytest.raises(ValueError, match="epochs"):
        PPOConfig(epochs=0)


def test_clipped_and_unclipped_coincide_at_ratio_one():
    # Checkable fact 7: at ratio 1 the clipped and unclipped surrogates and their gradients agree.
    torch.manual_seed(0)
    logp = torch.randn(16, requires_grad=True)
    adv = torch.randn(16)
    loss, stats = clipped_surrogate_loss(logp, logp.detach(), adv, clip_eps=0.2)
    (grad_clip,) = torch.autograd.grad(loss, logp)
    logp2 = logp.detach().clone().requires_grad_(True)
    unclipped = -(torch.exp(logp2 - logp.detach()) * adv).mean()
    (grad_plain,) = torch.autograd.grad(unclipped, logp2)
    torch.testing.assert_close(loss, unclipped)
    torch.testing.assert_close(grad_clip, grad_plain)
    assert stats["approx_kl"] == pytest.approx(0.0, abs=1e-7)
    assert stats["clipfrac"] == 0.0


def test_clip_hand_computed():
    # ratio 1.5 with A=+1 is clipped to 1.2; ratio 0.5 with A=+1 is not (min keeps 0.5);
    # ratio 0.5 with A=-1 is clipped to 0.8 -> -0.8; ratio 1.5 with A=-1 keeps -1.5.
    ratios = torch.tensor([1.5, 0.5, 0.5, 1.5])
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    new_logp = ratios.log().requires_grad_(True)
    loss, stats = clipped_surrogate_loss(new_logp, torch.zeros(4), adv, 0.2)
    assert loss.item() == pytest.approx(-(1.2 + 0.5 - 0.8 - 1.5) / 4)
    (grad,) = torch.autograd.grad(loss, new_logp)
    # clipped terms have zero gradient; unclipped ones d(-rho*A/4)/dlogp = -rho*A/4
    torch.testing.assert_close(grad, torch.tensor([0.0, -0.5 / 4, 0.0, 1.5 / 4]))
    assert stats["clipfrac"] == 1.0


def test_value_loss_plain_and_clipped():
    new = torch.tensor([2.0, 0.0])
    old = torch.tensor([1.0, 0.0])
    ret = torch.tensor([1.0, 1.0])
    loss, _ = value_loss(new, old, ret)
    assert loss.item() == pytest.approx(0.5 * (1.0 + 1.0) / 2)
    # clipped: v_clip = old + clip(new-old, +-0.2) = [1.2, 0.0]; max((2-1)^2, 0.2^2)=1, 1
    loss_c, _ = value_loss(new, old, ret, clip_eps=0.2)
    assert loss_c.item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="share one shape"):
        value_loss(new, old, torch.zeros(3))
    assert value_loss(new, old, ret, metrics=False)[1] == {}
    with pytest.raises(ValueError, match="mask"):
        clipped_surrogate_loss(new, old, ret, 0.2, mask=torch.ones(3))


def test_metrics_false_gives_the_same_loss_without_diagnostics():
    torch.manual_seed(1)
    new, old, adv = torch.randn(8), torch.randn(8), torch.randn(8)
    loss, metrics = clipped_surrogate_loss(new, old, adv, 0.2)
    quiet, none = clipped_surrogate_loss(new, old, adv, 0.2, metrics=False)
    assert torch.equal(loss, quiet) and none == {} and set(metrics) == {
        "policy_loss", "approx_kl", "clipfrac",
    }  # fmt: skip


@pytest.mark.parametrize("seeds", [1, 3])
def test_zoo_gradient_is_autograds_gradient_to_the_bit(seeds):
    # ZooGradient (no value clip, no entropy bonus; no autograd) against autograd's gradient of
    # S * ppo_loss (clipped_surrogate_loss + value_loss); ratios far from 1 so that both clip
    # branches and both signs of the advantage are exercised; twice on the same minibatch (the
    # prepared inputs are reused) and then on a new one; then its gradient clipping
    torch.manual_seed(0)
    agent = SeedActorCritic([ActorCritic() for _ in range(seeds)])
    cfg = PPOConfig(vf_coef=0.7)
    zoo = ZooGradient(agent, cfg.vf_coef)

    def minibatch():
        obs, actions = torch.randn(seeds, 64, 4), torch.randint(0, 2, (seeds, 64))
        old_logp, adv = -torch.rand(seeds, 64) * 2, torch.randn(seeds, 64)
        return obs, actions, old_logp, torch.randn(seeds, 64), adv, torch.randn(seeds, 64)

    first = minibatch()
    for obs, actions, old_logp, old_values, adv, returns in (first, first, minibatch()):
        agent.zero_grad()
        zoo.backward_(obs, actions, old_logp, adv, returns, 0.2)
        written = [p.grad.clone() for p in agent.parameters()]
        agent.zero_grad()
        loss = ppo_loss(agent, obs, actions, old_logp, old_values, adv, returns, 0.2, cfg)
        (seeds * loss).backward()
        log_pi, _ = agent(obs)
        ratio = (log_pi.gather(-1, actions.unsqueeze(-1)).squeeze(-1) - old_logp).exp()
        assert ((ratio - 1).abs() > 0.2).any() and ((ratio - 1).abs() < 0.2).any()
        for a, p in zip(written, agent.parameters(), strict=True):
            assert torch.equal(a, p.grad)
        # its clipping (one seed: on its flat buffer) = clip_grad_norm_per_seed_, to the bit
        norms = clip_grad_norm_per_seed_(agent.parameters(), 0.05, seeds=seeds)
        clipped = [p.grad.clone() for p in agent.parameters()]
        zoo.backward_(obs, actions, old_logp, adv, returns, 0.2)
        assert torch.equal(zoo.clip_grad_norm_(0.05), norms) and (norms > 0.05).any()
        for a, p in zip(clipped, agent.parameters(), strict=True):
            assert torch.equal(a, p.grad)
        with torch.no_grad():  # a step, so the next round's weights differ
            for p in agent.parameters():
                p -= 0.01 * p.grad


def test_same_seed_same_run_and_the_contract():
    cfg = PPOConfig(total_timesteps=1024, eval_episodes=2, seed=3)
    a = train_ppo(config=cfg, eval_every=2, show_progress=False)
    b = train_ppo(config=cfg, eval_every=2, show_progress=False)
    assert a.info["episode_returns"] == b.info["episode_returns"]
    assert [e["greedy_return"] for e in a.evaluations] == [
        e["greedy_return"] for e in b.evaluations
    ]
    c = train_ppo(config=PPOConfig(total_timesteps=1024, seed=4), show_progress=False)
    assert a.info["episode_returns"] != c.info["episode_returns"]
    # the contract: History rows per iteration, evaluations before, every 2 and at the end
    assert len(a) == cfg.iterations == 4 and isinstance(a.policy, ActorCritic)
    assert [e["step"] for e in a.evaluations] == [0, 2, 4]
    assert a.env_steps == [256, 512, 768, 1024] and a.config["seed"] == 3
    assert {"approx_kl", "clipfrac", "entropy", "lr", "clip"} <= set(a.to_frame())
    assert a.info["final_return"] == a.evaluations[-1]["greedy_return"]
    assert len(c.evaluations) == 1  # eval_every=0: only the final evaluation
    assert a.seconds[-1] > 0 and a.evaluations[0]["seconds"] == 0.0


def test_a_given_policy_is_trained_in_place_and_eval_fn_sees_each_seed():
    agent = ActorCritic()
    before = [p.detach().clone() for p in agent.parameters()]
    seen = []
    h = train_ppo(
        agent,
        config=PPOConfig(total_timesteps=512),
        eval_fn=lambda policy: seen.append(policy) or {"n": len(seen)},
        show_progress=False,
    )
    assert h.policy is agent and seen == [agent]
    assert any(not torch.equal(p, q) for p, q in zip(agent.parameters(), before, strict=True))
    assert h.evaluations[-1]["n"] == 1
    with pytest.raises(ValueError, match="one seed"):
        train_ppo_seeds([0, 1], PPOConfig(total_timesteps=512), policy=ActorCritic())
    with pytest.raises(ValueError, match="tokenizer=None"):
        train_ppo(tokenizer="gpt2")


def test_truncated_episodes_are_bootstrapped(monkeypatch):
    # A 10-step time limit: every episode that reaches it must be bootstrapped with V(final obs).
    from rlhf_lessons.rl import cartpole, ppo

    seen = {}
    real_gae = ppo.gae

    def spy(rewards, *args, **kwargs):
        seen.setdefault("max_reward", []).append(rewards.max().item())
        return real_gae(rewards, *args, **kwargs)

    monkeypatch.setattr(ppo, "gae", spy)
    monkeypatch.setattr(cartpole, "MAX_STEPS", 10)
    train_ppo(config=PPOConfig(total_timesteps=512), show_progress=False)
    # rewards are 1 except at truncations, where gamma * V(s) is added (V != 0 after init)
    assert any(abs(m - 1.0) > 1e-6 for m in seen["max_reward"])
    seen.clear()
    train_ppo(config=PPOConfig(total_timesteps=512, bootstrap_truncated=False), show_progress=False)
    assert all(m == 1.0 for m in seen["max_reward"])


@pytest.mark.slow
def test_ppo_learns_cartpole():
    cfg = PPOConfig(stop_when_solved=True)
    history = train_ppo(config=cfg, eval_every=8, show_progress=False)
    solved = first_solved(history)
    assert solved is not None, history.evaluations
    assert solved[0] <= 60_000  # rl-zoo settings solve CartPole in well under 100k steps
    assert history.final_return >= SOLVED_RETURN


def test_one_update_equals_stable_baselines3(monkeypatch):
    # Same weights, same rollout, rl-zoo settings: our GAE must give SB3's advantages, and our
    # 20 epochs (advantage normalisation, clipped surrogate, value loss, joint grad-norm clip,
    # Adam eps 1e-5) must move every parameter where SB3's PPO.train() moves it. So a gap in
    # env steps to solve cannot come from the update rule.
    sb3 = pytest.importorskip("stable_baselines3")
    from stable_baselines3.common.env_util import make_vec_env

    from rlhf_lessons.rl import ppo
    from rlhf_lessons.rl.advantages import gae

    cfg = PPOConfig.rl_zoo(total_timesteps=256)  # one iteration: lr 1e-3 and clip 0.2 unannealed
    model = sb3.PPO(
        "MlpPolicy", make_vec_env("CartPole-v1", n_envs=8, seed=0), n_steps=32, batch_size=256,
        n_epochs=20, gamma=0.98, gae_lambda=0.8, ent_coef=0.0, learning_rate=1e-3,
        clip_range=0.2, seed=0, device="cpu",
    )  # fmt: skip
    pol = model.policy
    layers = {
        "actor.0": pol.mlp_extractor.policy_net[0], "actor.2": pol.mlp_extractor.policy_net[2],
        "actor.4": pol.action_net, "critic.0": pol.mlp_extractor.value_net[0],
        "critic.2": pol.mlp_extractor.value_net[2], "critic.4": pol.value_net,
    }  # fmt: skip
    ours = ActorCritic()
    with torch.no_grad():
        for name, theirs in layers.items():
            ours.get_submodule(name).weight.copy_(theirs.weight)
            ours.get_submodule(name).bias.copy_(theirs.bias)
    _, callback = model._setup_learn(cfg.total_timesteps, None)
    model.collect_rollouts(model.env, callback, model.rollout_buffer, n_rollout_steps=32)
    buf = model.rollout_buffer
    # SB3 stores "episode started before step t"; ours "episode ended after step t"
    ends = torch.as_tensor(buf.episode_starts[1:].tolist() + [model._last_episode_starts.tolist()])
    assert ends.sum() > 0  # some episodes end inside the rollout: the cut is exercised
    t = lambda x: torch.as_tensor(x)[None]  # noqa: E731  (T, N) -> (S=1, T, N)
    rollout = ppo.Rollout(
        obs=t(buf.observations), actions=t(buf.actions[..., 0]).long(), logp=t(buf.log_probs),
        values=t(buf.values), rewards=t(buf.rewards), dones=ends.float()[None],
        next_obs=t(model._last_obs),
    )  # fmt: skip
    with torch.no_grad():
        adv, _ = gae(rollout.rewards[0], rollout.values[0], rollout.dones[0],
                     ours.value(rollout.next_obs[0]), cfg.gamma, cfg.gae_lambda)  # fmt: skip
    torch.testing.assert_close(adv, torch.as_tensor(buf.advantages))

    model.train()
    monkeypatch.setattr(ppo, "collect_rollout", lambda *args: rollout)
    train_ppo(ours, config=cfg, show_progress=False)
    for name, theirs in layers.items():
        torch.testing.assert_close(ours.get_submodule(name).weight, theirs.weight)
        torch.testing.assert_close(ours.get_submodule(name).bias, theirs.bias)
