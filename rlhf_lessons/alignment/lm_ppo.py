"""RLHF with PPO on a language model: a policy with a value head, a KL-penalised reward.

Papers: Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences" (arXiv
1909.08593); Ouyang et al. 2022 (InstructGPT, arXiv 2203.02155); Huang et al. 2024, "The N
Implementation Details of RLHF with PPO" (ICLR blog track), which reproduces OpenAI's
lm-human-preferences. TRL 1.x has no PPO trainer, so this is the course's own, written like
lesson 02's CartPole PPO (:mod:`rlhf_lessons.rl.ppo`): one loop, every detail visible.

The language model is the agent. A prompt x is the first state; each completion token y_t is an
action in the state (x, y_<t); the episode ends at EOS (or after ``max_new_tokens``). With a
reward model r(x, y) and the frozen SFT model pi_ref, the reward of each token is

    R_t = -beta * kl_t                       for every completion token t,
    R_T = r(x, y) - beta * kl_T              at the last one,   kl_t = log pi(y_t) - log pi_ref(y_t)

(:func:`rlhf_lessons.alignment.kl_control.shape_rewards`), so the return of a whole completion is
``r(x, y) - beta * log pi(y|x) / pi_ref(y|x)``: the reward model's score minus beta times the
k1 estimate of the sequence KL. Then it is PPO as on CartPole, per token:

- a **value head** (one linear layer on the policy's last hidden state, "N details" no. 1)
  predicts V(s_t) at every token; GAE (gamma = 1, lambda = 0.95) over the completion gives
  the advantages, which are whitened over the batch's completion tokens (no. 5);
- the **clipped surrogate** and the clipped value loss, averaged over completion tokens
  (:func:`rlhf_lessons.rl.ppo.clipped_surrogate_loss` and :func:`~rlhf_lessons.rl.ppo.value_loss`
  with a mask), ``vf_coef = 0.1``, 4 epochs over minibatches of each batch;
- beta is fixed or **adapted** to hold the KL near a target (no. 4);
- sampling and every log-prob recomputation use the same **temperature** (no. 6), and
  dropout is off (no. 8): at the first minibatch of each batch the ratio is exactly 1.

Defaults are for the course's tiny review model (:mod:`rlhf_lessons.review_world.tiny_lm`), whose
completions are short (at most 16 tokens); old TRL's defaults are noted where ours differ.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from rlhf_lessons.alignment.kl_control import (
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    shape_rewards,
)
from rlhf_lessons.alignment.rollouts import RewardFn, Rollout, collect_rollout
from rlhf_lessons.course.progress import progress
from rlhf_lessons.course.seeding import seed_everything
from rlhf_lessons.lm import Batch, token_logprobs_and_states
from rlhf_lessons.rl.advantages import gae, masked_mean, masked_whiten
from rlhf_lessons.rl.ppo import clipped_surrogate_loss, value_loss


class PolicyWithValueHead(nn.Module):
    """A causal LM (the policy) and a scalar value head on its last hidden state.

    The head shares the transformer with the policy (as TRL's old
    ``AutoModelForCausalLMWithValueHead``), so the value loss also shapes the body; ``vf_coef``
    keeps that small. The head starts at zero: V = 0 everywhere until it learns.
    """

    def __init__(self, lm) -> None:
        super().__init__()
        self.lm = lm
        self.v_head = nn.Linear(lm.config.hidden_size, 1)
        nn.init.zeros_(self.v_head.weight)
        nn.init.zeros_(self.v_head.bias)
        self.to(next(lm.parameters()).device)

    def forward(
        self, batch: Batch, temperature: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(logp, values, entropy)``, each (B, T), aligned: column t is about choosing token t
        (its log-prob, V of the state it is chosen in, the entropy of that choice)."""
        logp, states, entropy = token_logprobs_and_states(self.lm, batch, temperature)
        return logp, self.v_head(states).squeeze(-1), entropy


@dataclass
class LMPPOConfig:
    """Settings of :func:`train_lm_ppo` (old TRL ``PPOConfig`` defaults in brackets)."""

    iterations: int = 60  # rollout + update rounds
    batch_size: int = 64  # prompts (= completions) per rollout [128]
    minibatch_size: int = 16  # [128: one minibatch per epoch]
    ppo_epochs: int = 4  # passes over each batch [4]
    lr: float = 3e-4  # Adam; a 0.5M-parameter model from scratch tolerates far more than 1.41e-5
    max_grad_norm: float = 1.0
    max_new_tokens: int = 16
    temperature: float = 1.0  # for sampling and every log-prob of it
    init_kl_coef: float = 0.1  # beta [0.2]
    adaptive_kl: bool = False  # [True]
    kl_target: float = 4.0  # nats per sequence, for the adaptive controller [6]
    kl_horizon: int = 10_000  # [10000]
    kl_estimator: str = "k1"  # per-token KL in the reward: "k1" or "k3"
    gamma: float = 1.0  # [1]
    lam: float = 0.95  # [0.95]
    clip_eps: float = 0.2  # [0.2]
    clip_value: float = 0.2  # [0.2]
    vf_coef: float = 0.1  # [0.1]
    whiten_rewards: bool = False  # [False]; advantages are always whitened
    missing_eos_penalty: float | None = 1.0  # subtracted from completions cut off before EOS
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(
                f"kl_estimator must be one of {KL_ESTIMATORS}, got {self.kl_estimator!r}"
            )
        if self.batch_size % self.minibatch_size:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of minibatch_size "
                f"({self.minibatch_size})"
            )
        if self.init_kl_coef < 0:
            raise ValueError(f"init_kl_coef must be >= 0, got {self.init_kl_coef}")
        if self.iterations < 1 or self.ppo_epochs < 1:
            raise ValueError("iterations and ppo_epochs must be >= 1")


@dataclass
class LMTrainHistory:
    """One entry per iteration in each list (the rollout's statistics and the update's means)."""

    config: dict
    score: list[float] = field(default_factory=list)  # mean reward-model score of the samples
    kl: list[float] = field(default_factory=list)  # mean sequence KL (k1) of the samples
    beta: list[float] = field(default_factory=list)  # KL coefficient used for the batch
    reward: list[float] = field(default_factory=list)  # mean score - beta * KL
    length: list[float] = field(default_factory=list)  # mean completion tokens (EOS included)
    ended: list[float] = field(default_factory=list)  # fraction ending with EOS
    policy_loss: list[float] = field(default_factory=list)
    value_loss: list[float] = field(default_factory=list)
    approx_kl: list[float] = field(default_factory=list)  # pi_old -> pi_theta within the update
    clipfrac: list[float] = field(default_factory=list)
    entropy: list[float] = field(default_factory=list)  # mean per-token entropy, nats
    seconds: list[float] = field(default_factory=list)  # wall-clock since the start
    evaluations: list[dict] = field(default_factory=list)  # {"iteration", **eval_fn(policy)}
    samples: list[tuple[str, str, float]] = field(default_factory=list)  # last batch, a few


def completion_dones(completion_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) 1.0 from each row's last completion token on (the episode ends after it), for
    :func:`rlhf_lessons.rl.advantages.gae`; rows are prompt + completion, so 0 before."""
    mask = completion_mask.float()
    last = (mask * torch.arange(mask.shape[1])).argmax(-1, keepdim=True)
    return (torch.arange(mask.shape[1]).unsqueeze(0) >= last).float()


def lm_advantages(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE over each row's completion tokens, whitened. (B, T) x 3 -> (advantages, returns).

    ``rewards`` are the shaped per-token rewards and ``values`` V(s_t) at rollout time, both
    meaningful only where ``mask`` is 1. The value after the last completion token is 0 (the
    episode is over). Returns are ``A + V`` before whitening (the value targets); the
    advantages are whitened over the masked tokens ("N implementation details", no. 5).
    """
    mask = mask.float()
    values = values * mask
    dones = completion_dones(mask)
    adv, returns = gae(
        (rewards * mask).T, values.T, dones.T, torch.zeros(rewards.shape[0]), gamma, lam
    )
    return masked_whiten(adv.T, mask), returns.T * mask


def train_lm_ppo(
    model: PolicyWithValueHead,
    ref,
    tokenizer,
    prompt_pool: Sequence[str],
    reward_fn: RewardFn,
    config: LMPPOConfig | None = None,
    eval_fn: Callable[[nn.Module], dict] | None = None,
    eval_every: int = 0,
    show_progress: bool = True,
) -> LMTrainHistory:
    """Fine-tune ``model`` (a :class:`PolicyWithValueHead`, changed in place) with PPO.

    Args:
        model: the policy and its value head; typically a copy of the SFT model.
        ref: the frozen reference (SFT) model, for the KL penalty.
        prompt_pool: formatted prompts; each iteration draws ``batch_size`` of them at random.
        reward_fn: ``(prompts, completions) -> (B,)`` scores (a reward model, or the true one).
        config: see :class:`LMPPOConfig` (default: its defaults).
        eval_fn: ``policy_lm -> dict`` measured every ``eval_every`` iterations and at the
            end (e.g. :func:`rlhf_lessons.review_world.evaluation.evaluate_policy` with fixed prompts).
    """
    config = config or LMPPOConfig()
    if len(prompt_pool) < config.batch_size:
        raise ValueError(
            f"prompt_pool has {len(prompt_pool)} prompts, fewer than batch_size "
            f"{config.batch_size}: pass more prompts or a smaller batch"
        )
    seed_everything(config.seed)
    rng = random.Random(config.seed)
    if any(p is q for p in model.lm.parameters() for q in ref.parameters()):
        raise ValueError("the policy and ref share weights: pass a copy (copy.deepcopy(ref))")
    if not any(p.requires_grad for p in model.lm.parameters()):
        raise ValueError("the policy has no trainable parameter (requires_grad is False)")
    ref.eval()  # never trained: collect_rollout runs it under no_grad
    model.eval()  # dropout off for rollouts and updates alike ("N details", no. 8)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, eps=1e-5)
    kl_ctl = (
        AdaptiveKLController(config.init_kl_coef, config.kl_target, config.kl_horizon)
        if config.adaptive_kl
        else FixedKLController(config.init_kl_coef)
    )
    history = LMTrainHistory(config=asdict(config))
    tau = config.temperature
    start = time.perf_counter()

    def evaluate(iteration: int) -> None:
        if eval_fn is not None:
            history.evaluations.append({"iteration": iteration, **eval_fn(model.lm)})

    if eval_every:
        evaluate(0)
    for iteration in progress(
        range(1, config.iterations + 1), desc="PPO", disable=not show_progress
    ):
        # 1. Rollout: sample, score, and the log-probs of both models at temperature tau.
        prompts = rng.sample(list(prompt_pool), config.batch_size)
        ro: Rollout = collect_rollout(
            model.lm, ref, tokenizer, prompts, reward_fn, max_new_tokens=config.max_new_tokens,
            temperature=tau, missing_eos_penalty=config.missing_eos_penalty,
        )  # fmt: skip
        mask = ro.mask
        with torch.no_grad():
            _, old_values, _ = model(ro.batch, tau)
        old_values = old_values * mask

        # 2. Per-token rewards: -beta * kl_t everywhere, plus the score at the last token.
        beta = kl_ctl.value
        rewards, shaped = shape_rewards(
            ro.scores, ro.logp, ro.ref_logp, mask, beta, config.kl_estimator
        )
        if config.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False)
        advantages, returns = lm_advantages(rewards, old_values, mask, config.gamma, config.lam)

        # 3. PPO epochs over shuffled minibatches of the batch.
        stats: dict[str, list[float]] = {
            k: [] for k in ("policy_loss", "value_loss", "approx_kl", "clipfrac", "entropy")
        }
        for _ in range(config.ppo_epochs):
            for idx in torch.randperm(config.batch_size).split(config.minibatch_size):
                mb_mask = mask[idx]
                new_logp, new_values, entropy = model(ro.batch.rows(idx), tau)
                pg_loss, pg = clipped_surrogate_loss(
                    new_logp, ro.logp[idx], advantages[idx], config.clip_eps, mb_mask
                )
                vf_loss, vf = value_loss(
                    new_values, old_values[idx], returns[idx], config.clip_value, mb_mask
                )
                loss = pg_loss + config.vf_coef * vf_loss
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                for k, v in (*pg.items(), *vf.items()):
                    stats[k].append(v)
                stats["entropy"].append(masked_mean(entropy.detach(), mb_mask).item())

        # 4. Bookkeeping; the adaptive controller moves beta towards the KL target.
        kl_ctl.update(shaped["kl"], config.batch_size)
        history.score.append(shaped["score"])
        history.kl.append(shaped["kl"])
        history.beta.append(beta)
        history.reward.append(shaped["reward"])
        history.length.append(ro.lengths().float().mean().item())
        history.ended.append(ro.ended.float().mean().item())
        for k, v in stats.items():
            getattr(history, k).append(sum(v) / len(v))
        history.seconds.append(time.perf_counter() - start)
        if eval_every and iteration % eval_every == 0 and iteration != config.iterations:
            evaluate(iteration)
    history.samples = [
        (p, c, s)
        for p, c, s in zip(
            ro.prompts[:8], ro.completions[:8], ro.raw_scores[:8].tolist(), strict=True
        )
    ]
    evaluate(config.iterations)
    return history
