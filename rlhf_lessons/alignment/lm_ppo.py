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
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from rlhf_lessons.alignment.kl_control import (
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    shape_rewards,
)
from rlhf_lessons.alignment.rollouts import (
    Rollout,
    collect_rollout,
    forward_by_length,
    logprobs_in_chunks,
)
from rlhf_lessons.course.device import torch_threads
from rlhf_lessons.course.seeding import seed_everything
from rlhf_lessons.lm import Batch, token_logprobs_and_states, tokenize_pairs
from rlhf_lessons.rl.advantages import gae, masked_mean, masked_whiten
from rlhf_lessons.rl.ppo import clipped_surrogate_loss, value_loss
from rlhf_lessons.training import (
    EvalFn,
    History,
    RewardFn,
    Stopwatch,
    check_frozen_reference,
    mean,
    optimizer_step,
    trainable_parameters,
)

VALUE_HEAD_FILE = "value_head.safetensors"  # next to the model's own files


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
        (its log-prob, V of the state it is chosen in, the entropy of that choice); zero on
        padding. Rows run in groups of similar length (:func:`~rlhf_lessons.alignment.rollouts.
        forward_by_length`): the same numbers as one padded pass, with less compute."""
        return forward_by_length(lambda b: self._forward(b, temperature), batch)

    def _forward(self, batch: Batch, temperature: float):
        logp, states, entropy = token_logprobs_and_states(self.lm, batch, temperature)
        return logp, self.v_head(states).squeeze(-1), entropy

    def save_pretrained(self, folder, tokenizer=None) -> Path:
        """The language model as ``lm.save_pretrained`` writes it (a LoRA adapter alone for a
        peft model), the value head to ``value_head.safetensors``, and the tokenizer."""
        from safetensors.torch import save_file

        folder = Path(folder)
        self.lm.save_pretrained(folder)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)
        head = {k: v.detach().cpu().contiguous() for k, v in self.v_head.state_dict().items()}
        save_file(head, str(folder / VALUE_HEAD_FILE))
        return folder

    @classmethod
    def from_pretrained(cls, folder, lm=None, **kwargs) -> PolicyWithValueHead:
        """A policy saved by :meth:`save_pretrained`: ``lm`` if given (e.g. the base model
        with the saved adapter loaded), else ``AutoModelForCausalLM.from_pretrained(folder,
        **kwargs)``; the value head from the folder (a folder without one is an error: a
        fresh head is ``PolicyWithValueHead(lm)``)."""
        from safetensors.torch import load_file
        from transformers import AutoModelForCausalLM

        path = Path(folder) / VALUE_HEAD_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: {folder} was not saved with its value "
                                    "head; start a fresh one with PolicyWithValueHead(lm)")  # fmt: skip
        policy = cls(AutoModelForCausalLM.from_pretrained(folder, **kwargs) if lm is None else lm)
        policy.v_head.load_state_dict(load_file(str(path)))  # copied onto the head's device
        return policy


@dataclass
class LMPPOConfig:
    """Settings of :func:`train_lm_ppo` (old TRL ``PPOConfig`` defaults in brackets)."""

    iterations: int = 60  # rollout + update rounds
    batch_size: int = 64  # prompts (= completions) per rollout [128]
    minibatch_size: int = 16  # [128: one minibatch per epoch]
    epochs: int = 4  # passes over each batch [ppo_epochs 4]
    lr: float = 3e-4  # Adam; a 0.5M-parameter model from scratch tolerates far more than 1.41e-5
    max_grad_norm: float = 1.0
    max_new_tokens: int = 16
    temperature: float = 1.0  # for sampling and every log-prob of it
    beta: float = 0.1  # KL coefficient (the adaptive controller's start) [init_kl_coef 0.2]
    adaptive_kl: bool = False  # [True]
    kl_target: float = 4.0  # nats per sequence, for the adaptive controller [6]
    kl_horizon: int = 10_000  # [10000]
    kl_estimator: str = "k1"  # per-token KL in the reward: "k1" or "k3"
    gamma: float = 1.0  # [1]
    gae_lambda: float = 0.95  # [lam 0.95]
    clip_eps: float = 0.2  # [cliprange 0.2]
    clip_value: float = 0.2  # [cliprange_value 0.2]
    vf_coef: float = 0.1  # [0.1]
    missing_eos_penalty: float | None = 1.0  # subtracted from completions cut off before EOS
    threads: int | None = None  # torch threads while training (None: leave as is)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(
                f"LMPPOConfig.kl_estimator must be one of {KL_ESTIMATORS}, got "
                f"{self.kl_estimator!r}"
            )
        if self.batch_size % self.minibatch_size:
            raise ValueError(
                f"LMPPOConfig.batch_size ({self.batch_size}) must be a multiple of "
                f"minibatch_size ({self.minibatch_size})"
            )
        if self.beta < 0:
            raise ValueError(f"LMPPOConfig.beta must be >= 0, got {self.beta}")
        if self.iterations < 1 or self.epochs < 1:
            raise ValueError("LMPPOConfig.iterations and epochs must be >= 1")


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


class LMPPO:
    """PPO's state between updates: the policy, the frozen reference, Adam and the KL
    controller. :meth:`update` is one PPO update on a rollout; :meth:`step` builds that rollout
    from completions you sampled and scored yourself (old TRL's ``PPOTrainer.step(queries,
    responses, scores)``); :func:`train_lm_ppo` is the loop that samples, then updates.
    """

    def __init__(
        self, policy: PolicyWithValueHead, tokenizer, config: LMPPOConfig | None = None, *,
        ref: nn.Module,
    ) -> None:  # fmt: skip
        check_frozen_reference(policy, ref)
        self.policy, self.tokenizer, self.ref = policy, tokenizer, ref
        self.cfg = cfg = config or LMPPOConfig()
        self.params = trainable_parameters(policy.lm)
        ref.eval()  # never trained: its log-probs are taken under no_grad
        policy.eval()  # dropout off for rollouts and updates alike ("N details", no. 8)
        self.optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.lr, eps=1e-5)
        self.kl_ctl = (AdaptiveKLController(cfg.beta, cfg.kl_target, cfg.kl_horizon)
                       if cfg.adaptive_kl else FixedKLController(cfg.beta))  # fmt: skip

    def update(self, ro: Rollout) -> dict[str, float]:
        """One PPO update on the rollout ``ro`` (its ``ref_logp`` and ``scores`` filled in);
        returns the rollout's and the update's metrics (see :func:`train_lm_ppo`)."""
        cfg, policy, tau, mask = self.cfg, self.policy, self.cfg.temperature, ro.mask
        # 1. The policy's log-probs and values of the sampled tokens, at temperature tau.
        with torch.no_grad():
            logp, old_values, _ = policy(ro.batch, tau)
        ro.logp, old_values = logp * mask, old_values * mask

        # 2. Per-token rewards: -beta * kl_t everywhere, plus the score at the last token.
        beta = self.kl_ctl.value
        rewards, shaped = shape_rewards(ro.scores, ro.logp, ro.ref_logp, mask, beta,
                                        cfg.kl_estimator)  # fmt: skip
        advantages, returns = lm_advantages(rewards, old_values, mask, cfg.gamma, cfg.gae_lambda)

        # 3. PPO epochs over shuffled minibatches of the batch.
        stats = defaultdict(list)
        for _ in range(cfg.epochs):
            for idx in torch.randperm(len(ro)).split(cfg.minibatch_size):
                new_logp, new_values, entropy = policy(ro.batch.rows(idx), tau)
                pg_loss, pg = clipped_surrogate_loss(
                    new_logp, ro.logp[idx], advantages[idx], cfg.clip_eps, mask[idx]
                )
                vf_loss, vf = value_loss(
                    new_values, old_values[idx], returns[idx], cfg.clip_value, mask[idx]
                )
                loss = pg_loss + cfg.vf_coef * vf_loss
                # zero, backward, clip to the global norm, step
                optimizer_step(loss, self.optimizer, list(policy.parameters()), cfg.max_grad_norm)
                for k, v in (*pg.items(), *vf.items()):
                    stats[k].append(v)
                stats["entropy"].append(masked_mean(entropy.detach(), mask[idx]).item())

        # 4. The adaptive controller moves beta towards the KL target.
        self.kl_ctl.update(shaped["kl"], len(ro))
        return {"score": shaped["score"], "kl": shaped["kl"], "beta": beta,
                "reward": shaped["reward"], "length": ro.lengths().float().mean().item(),
                "ended": ro.ended.float().mean().item(),
                **{k: mean(v) for k, v in stats.items()}}  # fmt: skip

    def step(self, prompts: Sequence[str], completions: Sequence[str], scores) -> dict[str, float]:
        """One PPO update on completions sampled and scored elsewhere.

        ``prompts``: formatted prompts (B); ``completions``: the policy's completions of them,
        as text (B), each ended by EOS (appended, as the policy emitted it); ``scores``: (B,)
        their rewards (a reward model's, a judge's, a person's). Returns :meth:`update`'s
        metrics.
        """
        scores = torch.as_tensor(scores, dtype=torch.float32).flatten()
        if not len(prompts) == len(completions) == len(scores):
            raise ValueError(f"got {len(prompts)} prompts, {len(completions)} completions and "
                             f"{len(scores)} scores: pass one of each per sample")  # fmt: skip
        if len(prompts) < self.cfg.minibatch_size:
            raise ValueError(f"a step needs at least minibatch_size ({self.cfg.minibatch_size}) "
                             f"samples, got {len(prompts)}")  # fmt: skip
        batch = tokenize_pairs(self.tokenizer, prompts, completions)
        ref_logp = logprobs_in_chunks(self.ref, batch, self.cfg.temperature) * batch.completion_mask
        ended = torch.full((len(batch),), self.tokenizer.eos_token_id is not None)
        return self.update(Rollout(list(prompts), list(completions), batch, None, ref_logp,
                                   scores, scores, ended))  # fmt: skip


def train_lm_ppo(
    policy: PolicyWithValueHead,
    tokenizer,
    prompts: Sequence[str],
    config: LMPPOConfig | None = None,
    *,
    ref: nn.Module,
    reward_fn: RewardFn,
    eval_fn: EvalFn | None = None,
    eval_every: int = 0,
    show_progress: bool = True,
) -> History:
    """Fine-tune ``policy`` (a :class:`PolicyWithValueHead`, changed in place) with PPO.

    ``policy`` is typically a copy of the SFT model with a new head; each iteration draws
    ``batch_size`` of the formatted ``prompts``; ``ref`` is the frozen reference (SFT) model;
    ``reward_fn(prompts, completions) -> (B,)`` scores (a reward model, or the true one);
    ``eval_fn(policy.lm) -> dict`` runs every ``eval_every`` iterations and at the end (e.g.
    :func:`rlhf_lessons.review_world.evaluation.evaluate_policy`), outside ``seconds``.
    Returns a :class:`~rlhf_lessons.training.History`, one row per iteration: the rollout's
    ``score``, sequence ``kl``, ``beta``, shaped ``reward``, ``length`` and ``ended``, the
    update's mean ``policy_loss``, ``value_loss``, ``approx_kl``, ``clipfrac``, ``entropy``,
    and ``seconds``; ``info["samples"]`` holds a few of the last samples.
    """
    cfg = config or LMPPOConfig()
    if len(prompts) < cfg.batch_size:
        raise ValueError(
            f"prompts has {len(prompts)} prompts, fewer than batch_size {cfg.batch_size}: pass "
            "more prompts or a smaller batch"
        )
    ppo = LMPPO(policy, tokenizer, cfg, ref=ref)  # Adam, the KL controller, the checks
    seed_everything(cfg.seed)
    rng = random.Random(cfg.seed)
    history = History(
        "ppo", asdict(cfg), info={"trainable_parameters": sum(p.numel() for p in ppo.params)}
    )
    watch = Stopwatch()
    with torch_threads(cfg.threads):
        for _ in history.loop(range(cfg.iterations), cfg.iterations, policy.lm, eval_fn,
                              eval_every, desc="PPO", show_progress=show_progress,
                              show=("score", "kl")):  # fmt: skip
            with watch:
                # Rollout: sample, score, the reference's log-probs (the policy's come with its
                # values in the update's first pass); then the PPO update (LMPPO.update).
                ro = collect_rollout(
                    policy.lm, ref, tokenizer, rng.sample(list(prompts), cfg.batch_size),
                    reward_fn, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                    missing_eos_penalty=cfg.missing_eos_penalty, policy_logprobs=False,
                )  # fmt: skip
                metrics = ppo.update(ro)
            history.log(seconds=watch.seconds, **metrics)
        history.info["samples"] = ro.samples()
    return history
