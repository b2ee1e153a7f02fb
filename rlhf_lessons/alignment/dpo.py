"""Direct preference optimisation: DPO, IPO, hinge and SimPO trained on preference pairs
(lessons 06-07).

Papers: Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model is Secretly a
Reward Model", arXiv 2305.18290 (DPO); Azar et al. 2023, "A General Theoretical Paradigm to
Understand Learning from Human Preferences", arXiv 2310.12036 (IPO); Zhao et al. 2023,
"SLiC-HF", arXiv 2305.10425 (the hinge loss); Meng, Xia & Chen 2024, "SimPO: Simple Preference
Optimization with a Reference-Free Reward", arXiv 2405.14734. The losses themselves live in
:mod:`rlhf_lessons.alignment.dpo_losses` (checked against TRL there); this module is the trainer around
them, written like the course's other trainers: a config, one readable loop, a history.

RLHF with PPO (lesson 05) learns a reward model r from preferences, then maximises
``E[r(x, y)] - beta KL(pi || pi_ref)`` by sampling. That objective's optimum is
``pi*(y|x) = pi_ref(y|x) exp(r(x, y) / beta) / Z(x)``, so ``r = beta log pi*/pi_ref + beta log
Z(x)``: a policy *defines* a reward, its **implicit reward** ``beta log pi(y|x) / pi_ref(y|x)``.
Put that into the reward model's Bradley-Terry loss and Z(x) cancels within a pair:

    DPO:    L = -log sigma(beta h),   h = [log pi(y_w) - log pi_ref(y_w)] - [log pi(y_l) - log pi_ref(y_l)]
    IPO:    L = (h - 1 / (2 beta))^2                 (h from token-*averaged* log-probs, as TRL)
    hinge:  L = relu(1 - beta h)
    SimPO:  L = -log sigma(beta [avg log pi(y_w) - avg log pi(y_l)] - gamma)   (no pi_ref)

with log pi(y|x) the sum of the completion's token log-probs (:func:`rlhf_lessons.lm.
sequence_logprobs`). It is supervised learning on a fixed set of pairs: no sampling, no reward
model, no critic. At the start pi = pi_ref, so h = 0: the DPO loss is log 2 and IPO's is
1 / (4 beta^2), whatever the data.

**The reference is a constant.** pi_ref is frozen, so log pi_ref(y_w|x) and log pi_ref(y_l|x)
are numbers attached to each pair. :func:`precompute_reference_logps` computes them once, in
chunks under ``no_grad``, before the first step (TRL's ``precompute_ref_log_probs``); the
training loop then runs only the policy, and no reference model has to stay in memory:

- with ``ref_model`` given, it is run once and can be dropped afterwards;
- with a **LoRA** policy (a peft ``PeftModel``) and no ``ref_model``, the reference is the same
  model with its adapter switched off (``with model.disable_adapter():``, see
  :func:`adapter_disabled`): the frozen base weights *are* pi_ref, so there is never a second
  copy of the model (TRL does the same);
- with neither, the reference is the policy itself *as it is before training*: DPO starts
  from pi_theta = pi_ref = pi_SFT, so its log-probs at step 0 are the reference's;
- SimPO has no reference at all.

**What it does to log-probabilities.** The loss only sees the *difference* h. On the review
model DPO raises it mostly by pushing log pi(y_l) down, and log pi(y_w) falls too (from -13.0 to
-19.0 nats on average at beta 0.1, while log pi(y_l) falls to -27.4): the mass that leaves both
goes to responses that are in no pair, some of them ungrammatical. ``history.logps_chosen`` and
``logps_rejected`` show it.

**Defaults** (:class:`DPOConfig`, :meth:`DPOConfig.ipo`, :meth:`DPOConfig.simpo`) are for the
course's tiny review model (:mod:`rlhf_lessons.review_world.tiny_lm`) on pairs it sampled itself, the DPO
paper's IMDb setup in miniature: 4 completions of each of 1000 prompts ranked by VADER
(:func:`rlhf_lessons.review_world.preferences.sample_ranked_completions`, 5 s) give ~5100 pairs;
batches of 64 pairs (the paper's), Adam at 5e-4 (a 0.5M-parameter model; the paper's RMSprop at
1e-6 is for GPT-2 large), one epoch: 81 steps, ~14 s on one thread after a ~4 s reference pass.
On 64 held-out prompts (the SFT model: true reward 0.075, KL 0, 74% grammatical), one epoch
reaches

    DPO   beta 0.1 / 0.5 / 2.0    reward 0.66 / 0.59 / 0.47   KL 9.2 / 2.4 / 0.8 nats
    IPO   beta 0.25 / 1.0         reward 0.63 / 0.51          KL 10.7 / 1.2
    SimPO gamma 0.5 / 2.0         reward 0.66 / 0.66          KL 12.7 / 15.2

with 27-62% (DPO), 24-64% (IPO) and ~20% (SimPO) grammatical completions. DPO's implicit
reward ranks 79-83% of held-out pairs right (:func:`implicit_reward_accuracy`; SimPO's 72%).
For comparison, lesson 05's PPO reached 0.65 at KL 5.3 on the true reward and 0.59 at KL 3.1 on
a learned one, both with ~55% grammatical: DPO matches PPO's reward for its KL here, but does
not beat it, and keeps fewer completions grammatical. IPO on token-*averaged* log-ratios (TRL's
convention, the default here) needs a larger beta than DPO for the same KL: its target
1 / (2 beta) is then per token, and beta 0.1 asks for 5 nats per token (reward 0.51 at KL 12).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from rlhf_lessons.alignment.dpo_losses import dpo_loss, simpo_loss
from rlhf_lessons.course.device import torch_threads
from rlhf_lessons.course.progress import progress
from rlhf_lessons.course.seeding import seed_everything
from rlhf_lessons.lm import Batch, format_prompt, sequence_logprobs, token_logprobs, tokenize_pairs
from rlhf_lessons.rewards.preference_data import PreferenceDataError, validate_pair
from rlhf_lessons.training import EvalFn, History, Stopwatch, trainable_parameters, warmup_schedule

LOSSES = ("dpo", "ipo", "hinge", "simpo")
DEFAULT_BETA = {"dpo": 0.1, "ipo": 0.1, "hinge": 0.1, "simpo": 2.0}
_LOSS_TYPE = {"dpo": "sigmoid", "ipo": "ipo", "hinge": "hinge"}  # dpo_losses.dpo_loss names


# --- Configuration ---------------------------------------------------------------------------


@dataclass
class DPOConfig:
    """Settings of :func:`train_dpo` (TRL 1.x's ``DPOConfig`` / ``CPOConfig`` defaults in
    brackets). ``beta=None`` takes the loss's usual value (:data:`DEFAULT_BETA`)."""

    loss: str = "dpo"  # "dpo", "ipo", "hinge" or "simpo" [loss_type "sigmoid"]
    beta: float | None = None  # DPO 0.1 (paper, TRL); IPO's tau; SimPO 2.0 (paper)
    gamma: float = 0.5  # SimPO's target margin, in reward units [simpo_gamma 0.5]
    label_smoothing: float = 0.0  # cDPO / SimPO only: probability a label is flipped [0.0]
    ipo_average: bool = True  # IPO on token-averaged log-probs, as TRL (False: summed)
    lr: float = 5e-4  # Adam (the paper: RMSprop 1e-6); a 0.5M-parameter model [1e-6]
    epochs: int = 1  # passes over the pairs [num_train_epochs 3]
    max_steps: int | None = None  # stop after this many steps (None: run all epochs) [-1]
    batch_size: int = 64  # pairs per step (the paper's 64) [per_device_train_batch_size 8]
    warmup_steps: int = 0  # linear warm-up of the learning rate (the paper: 150)
    max_grad_norm: float = 1.0  # [1.0]
    max_prompt_length: int | None = 32  # tokens; longer prompts lose their start [512]
    max_completion_length: int | None = 32  # tokens, EOS included; longer ones lose the end
    add_eos: bool = True  # append EOS to each completion, so the model learns to stop
    ref_chunk_size: int | None = None  # rows per reference pass (None: rows_per_pass)
    threads: int | None = 1  # torch threads while training (None: leave as is)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"DPOConfig.loss must be one of {LOSSES}, got {self.loss!r}")
        if self.beta is None:
            self.beta = DEFAULT_BETA[self.loss]
        if not (isinstance(self.beta, int | float) and math.isfinite(self.beta) and self.beta > 0):
            raise ValueError(f"DPOConfig.beta must be a number > 0, got {self.beta!r}")
        if not math.isfinite(self.gamma) or self.gamma < 0:
            raise ValueError(f"DPOConfig.gamma must be >= 0 (a target margin), got {self.gamma}")
        if not 0.0 <= self.label_smoothing <= 0.5:
            raise ValueError(
                f"DPOConfig.label_smoothing must be in [0, 0.5], got {self.label_smoothing}"
            )
        if self.label_smoothing and self.loss not in ("dpo", "simpo"):
            raise ValueError(
                f"DPOConfig.label_smoothing applies to loss 'dpo' (cDPO) and 'simpo' only, got "
                f"loss={self.loss!r}"
            )
        if not self.lr > 0:
            raise ValueError(f"DPOConfig.lr must be > 0, got {self.lr}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"DPOConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.ref_chunk_size is not None and self.ref_chunk_size < 1:
            raise ValueError(
                f"DPOConfig.ref_chunk_size must be >= 1 or None, got {self.ref_chunk_size}"
            )
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"DPOConfig.max_steps must be >= 1 or None, got {self.max_steps}")
        if self.warmup_steps < 0 or self.max_grad_norm <= 0:
            raise ValueError("DPOConfig needs warmup_steps >= 0 and max_grad_norm > 0")

    @property
    def average_logps(self) -> bool:
        """Whether the loss uses per-token *average* log-probs (SimPO; IPO as TRL) instead of
        sums (DPO, hinge)."""
        return self.loss == "simpo" or (self.loss == "ipo" and self.ipo_average)

    @property
    def needs_reference(self) -> bool:
        """Every loss but SimPO compares the policy with pi_ref."""
        return self.loss != "simpo"

    @classmethod
    def dpo(cls, **overrides) -> DPOConfig:
        """DPO on the tiny review model (beta 0.1, the paper's)."""
        return replace(cls(loss="dpo"), **overrides)

    @classmethod
    def ipo(cls, **overrides) -> DPOConfig:
        """IPO on the tiny review model, on token-averaged log-ratios (TRL's convention).

        Averaged, h is a per-token log-ratio, so IPO's target 1 / (2 beta) is per token too:
        beta 0.1 asks every token of y_w to gain 5 nats on y_l relative to pi_ref. On sums
        (``ipo_average=False``) the same beta asks for 5 nats over the whole response."""
        return replace(cls(loss="ipo"), **overrides)

    @classmethod
    def simpo(cls, **overrides) -> DPOConfig:
        """SimPO on the tiny review model: the paper's beta 2.0 and gamma 0.5 (TRL's too)."""
        return replace(cls(loss="simpo"), **overrides)


# --- Pairs to tokens -------------------------------------------------------------------------


def _completion_text(messages: Sequence[Mapping], field: str, where: str) -> str:
    if len(messages) != 1:
        raise PreferenceDataError(
            f"{where}: field '{field}' has {len(messages)} messages; the trainer takes one "
            "assistant message per response. Keep only the final assistant turn"
        )
    return messages[0]["content"]


def pair_texts(tokenizer, pairs: Sequence[Mapping]) -> tuple[list[str], list[str], list[str]]:
    """Check every pair (:func:`rlhf_lessons.rewards.preference_data.validate_pair`) and return the
    prompts, chosen and rejected texts to tokenise.

    Standard records (strings) are used as they are: their prompts are taken to be already
    formatted, as :func:`rlhf_lessons.lm.tokenize_pairs` expects (the review prompts are plain
    text). Conversational records have their prompt messages rendered with
    :func:`rlhf_lessons.lm.format_prompt` (the chat template, assistant turn opened) and their
    single assistant message as the completion.
    """
    if isinstance(pairs, Mapping) or isinstance(pairs, str):
        raise PreferenceDataError(
            "pairs must be a list of {'prompt', 'chosen', 'rejected'} records, got a single "
            f"{type(pairs).__name__}"
        )
    pairs = list(pairs)
    if not pairs:
        raise PreferenceDataError("pairs is empty: there is nothing to train on")
    prompts, chosen, rejected = [], [], []
    for i, pair in enumerate(pairs):
        where = f"pairs[{i}]"
        if validate_pair(pair, where) == "standard":
            prompts.append(pair["prompt"])
            chosen.append(pair["chosen"])
            rejected.append(pair["rejected"])
        else:
            prompts.append(format_prompt(tokenizer, pair["prompt"]))
            chosen.append(_completion_text(pair["chosen"], "chosen", where))
            rejected.append(_completion_text(pair["rejected"], "rejected", where))
    return prompts, chosen, rejected


def tokenize_preferences(
    tokenizer,
    pairs: Sequence[Mapping],
    max_prompt_length: int | None = None,
    max_completion_length: int | None = None,
    add_eos: bool = True,
) -> Batch:
    """N pairs -> one right-padded :class:`~rlhf_lessons.lm.Batch` of 2N rows: row i is
    prompt i + chosen i, row N + i is prompt i + rejected i (:func:`rlhf_lessons.lm.
    tokenize_pairs`). One forward pass over rows ``[idx, idx + N]`` scores both responses of
    the pairs ``idx`` (TRL's "concatenated forward")."""
    prompts, chosen, rejected = pair_texts(tokenizer, pairs)
    batch = tokenize_pairs(tokenizer, prompts + prompts, chosen + rejected, max_prompt_length,
                           max_completion_length, add_eos)  # fmt: skip
    n = len(prompts)
    same = (batch.input_ids[:n] == batch.input_ids[n:]).all(-1) & (
        batch.attention_mask[:n] == batch.attention_mask[n:]
    ).all(-1)
    if same.any():
        i = int(same.nonzero()[0, 0])
        raise PreferenceDataError(
            f"pairs[{i}]: 'chosen' and 'rejected' are the same tokens after tokenisation and "
            f"truncation to max_completion_length={max_completion_length} (they differ only "
            "after the cut, or in characters the tokenizer ignores). Raise "
            "max_completion_length or drop the pair"
        )
    return batch


# --- The reference, computed once ------------------------------------------------------------


@dataclass
class ReferenceLogps:
    """log pi_ref(y | x) of every row of a Batch: the sum and the per-token mean over the
    completion's tokens, (B,) each, computed once (:func:`precompute_reference_logps`)."""

    sum: torch.Tensor
    mean: torch.Tensor
    seconds: float = 0.0

    def __len__(self) -> int:
        return self.sum.shape[0]

    def select(self, average: bool) -> torch.Tensor:
        return self.mean if average else self.sum


def is_peft_model(model) -> bool:
    """Whether ``model`` is a peft ``PeftModel`` (a base model wrapped with adapters)."""
    try:
        from peft import PeftModel
    except ImportError:  # peft is optional: without it no model is a PeftModel
        return False
    return isinstance(model, PeftModel)


def add_lora(
    model,
    r: int = 8,
    alpha: int = 16,
    target_modules: Sequence[str] = ("q_proj", "v_proj"),
    dropout: float = 0.0,
    seed: int = 0,
):
    """Wrap ``model`` with a fresh LoRA adapter (peft): ``W x + (alpha / r) B A x`` on the
    ``target_modules`` linear layers, B = 0 at the start (so the wrapped model computes exactly
    what ``model`` does) and A random, drawn after seeding torch with ``seed``: two calls with
    the same seed give the same adapter. Only A and B train; the base weights are frozen and,
    with the adapter disabled, are the DPO reference (:func:`adapter_disabled`).

    Defaults: rank 8 on the attention queries and values, as in Hu et al. 2021 (LoRA,
    arXiv 2106.09685) and TRL's examples; no dropout, so log-probs are deterministic.
    """
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as err:  # pragma: no cover - peft ships with the [lm] extra
        raise ImportError("add_lora needs peft: pip install 'rlhf-lessons[lm]'") from err
    torch.manual_seed(seed)
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=list(target_modules),
                        lora_dropout=dropout, task_type="CAUSAL_LM")  # fmt: skip
    with warnings.catch_warnings():  # peft calls a method transformers 5 deprecates
        warnings.filterwarnings(
            "ignore", message=".*is_gradient_checkpointing", category=FutureWarning
        )
        return get_peft_model(model, config)


@contextlib.contextmanager
def adapter_disabled(model) -> Iterator[nn.Module]:
    """Run a peft model as its base model: ``with adapter_disabled(policy) as ref: ...``.

    Inside the block every adapter (LoRA) is bypassed, so the model computes exactly what the
    frozen base weights compute: pi_ref, when the base is the SFT model. This is how DPO with
    LoRA gets its reference without a second copy of the model.
    """
    if not is_peft_model(model):
        raise ValueError(
            f"adapter_disabled needs a peft PeftModel (e.g. peft.get_peft_model(model, "
            f"LoraConfig(...))), got {type(model).__name__}: a plain model has no adapter to "
            "switch off. Pass the reference model itself instead"
        )
    with model.disable_adapter():
        yield model


LOGITS_BUDGET = 2**25  # logits (rows x T x V floats, 128 MiB in fp32) per no-grad forward pass


def rows_per_pass(model, batch: Batch, limit: int = 64) -> int:
    """How many rows of ``batch`` one no-grad forward pass should take: as many as keep their
    (rows, T, V) logits within :data:`LOGITS_BUDGET` floats, at most ``limit``.

    The log-softmax over the vocabulary is memory-bound: SmolLM2 (V = 49152, T ~ 130) runs
    twice as fast on a CPU in chunks of 4-16 rows as in chunks of 64, while the review model
    (V = 459) is fastest in large chunks. The budget gives each its own.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    vocab = head.weight.shape[0] if head is not None else model.config.vocab_size
    width = int(batch.attention_mask.sum(-1).max()) if len(batch) else 1
    return max(1, min(limit, LOGITS_BUDGET // (width * vocab)))


@torch.no_grad()
def precompute_reference_logps(
    ref_model,
    batch: Batch,
    chunk_size: int | None = None,
    disable_adapter: bool = False,
    threads: int | None = None,
) -> ReferenceLogps:
    """The reference's sequence log-probs of every row of ``batch``, computed once.

    Runs ``ref_model`` over ``chunk_size`` rows at a time (default :func:`rows_per_pass`) in
    eval mode under ``no_grad`` (no activations are kept for a backward pass), and reduces each
    row's completion-token log-probs to their sum and their mean
    (:func:`rlhf_lessons.lm.sequence_logprobs`). The chunks hold rows of similar length
    (sorted by length, so little of each forward pass is padding); the results come back in
    the batch's row order. The model's train/eval mode is restored afterwards.

    Args:
        ref_model: the frozen reference, a causal LM; or a peft model with
            ``disable_adapter=True`` (its base model is the reference, see
            :func:`adapter_disabled`).
        batch: prompt + completion rows (e.g. from :func:`tokenize_preferences`).
        chunk_size: rows per forward pass; bounds the memory (None: :func:`rows_per_pass`).
        disable_adapter: bypass the peft adapters of ``ref_model`` while computing.
        threads: torch threads meanwhile (``None``: leave as is).

    Returns:
        :class:`ReferenceLogps` with ``sum`` and ``mean`` (B,) on the CPU, and ``seconds``.
    """
    if chunk_size is None:
        chunk_size = rows_per_pass(ref_model, batch)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    start = time.perf_counter()
    was_training = ref_model.training
    ref_model.eval()
    device = next(ref_model.parameters()).device
    sums, means = [], []
    by_length = torch.argsort(batch.attention_mask.sum(-1), stable=True)
    context = adapter_disabled(ref_model) if disable_adapter else contextlib.nullcontext()
    try:
        with context, torch_threads(threads):
            for i in range(0, len(batch), chunk_size):
                rows = batch.rows(by_length[i : i + chunk_size]).trimmed().to(device)
                logp = token_logprobs(ref_model, rows)
                sums.append(sequence_logprobs(logp, rows.completion_mask).cpu())
                means.append(sequence_logprobs(logp, rows.completion_mask, average=True).cpu())
    finally:
        ref_model.train(was_training)
    back = torch.argsort(by_length)  # sorted position of each row: back to the batch's order
    return ReferenceLogps(
        torch.cat(sums)[back], torch.cat(means)[back], time.perf_counter() - start
    )


def _check_lora_frozen(policy) -> None:
    """A peft policy must train only its adapters: its base weights are the reference. peft
    keys every adapter weight by the adapter's name ("...lora_A.default.weight")."""
    names = list(policy.peft_config)

    def in_adapter(param: str) -> bool:
        return any(f".{a}." in param or param.endswith(f".{a}") for a in names)

    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    base = [n for n in trainable if not in_adapter(n)]
    if base:
        raise ValueError(
            f"the peft policy has trainable base weights (e.g. {base[0]}); with the adapter "
            "disabled they are the reference, so training them would move pi_ref too. Freeze "
            "them (peft.get_peft_model does), or pass ref_model explicitly"
        )


# --- Training --------------------------------------------------------------------------------


def pair_order(n: int, config: DPOConfig) -> list[torch.Tensor]:
    """The order in which :func:`train_dpo` visits ``n`` pairs: one random permutation per
    epoch from a generator seeded with ``config.seed``. Consecutive ``config.batch_size``
    slices of each are the minibatches (:func:`rlhf_lessons.trl_runs.dpo.train_with_trl` feeds TRL
    the same order, so both trainers see the same minibatches)."""
    generator = torch.Generator().manual_seed(config.seed)
    return [torch.randperm(n, generator=generator) for _ in range(config.epochs)]


def _pair_loss(cfg: DPOConfig, chosen, rejected, ref_chosen, ref_rejected):
    if cfg.loss == "simpo":
        return simpo_loss(chosen, rejected, beta=cfg.beta, gamma=cfg.gamma,
                          label_smoothing=cfg.label_smoothing)  # fmt: skip
    return dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=cfg.beta,
                    loss_type=_LOSS_TYPE[cfg.loss], label_smoothing=cfg.label_smoothing)  # fmt: skip


def _reference(policy, batch: Batch, cfg: DPOConfig, ref_model, ref_logps):
    """log pi_ref of every row of ``batch`` and where it came from (see :func:`train_dpo`)."""
    if not cfg.needs_reference:
        return None, "none (reference-free)"
    if ref_logps is not None:
        if ref_model is not None:
            raise ValueError("give ref_model or ref_logps, not both")
        if len(ref_logps) != len(batch):
            raise ValueError(
                f"ref_logps holds {len(ref_logps)} rows but the {len(batch) // 2} pairs make "
                f"{len(batch)} (chosen rows, then rejected rows): precompute it on "
                "tokenize_preferences of the same pairs, with the config's lengths"
            )
        return ref_logps, "ref_logps (precomputed)"
    if ref_model is not None:
        return precompute_reference_logps(ref_model, batch, cfg.ref_chunk_size), "ref_model"
    if is_peft_model(policy):
        ref = precompute_reference_logps(policy, batch, cfg.ref_chunk_size, disable_adapter=True)
        return ref, "policy with its adapter disabled"
    return precompute_reference_logps(policy, batch, cfg.ref_chunk_size), "policy before training"


def train_dpo(
    policy,
    tokenizer,
    pairs: Sequence[Mapping],
    config: DPOConfig | None = None,
    *,
    ref_model=None,
    ref_logps: ReferenceLogps | None = None,
    eval_fn: EvalFn | None = None,
    eval_every: int = 0,
    show_progress: bool = True,
) -> History:
    """Fine-tune ``policy`` (a causal LM or a peft LoRA model, changed in place) on preference
    pairs with DPO, IPO, the hinge loss or SimPO (``config.loss``).

    1. Check and tokenise the pairs (:func:`tokenize_preferences`): a clear
       :class:`~rlhf_lessons.rewards.preference_data.PreferenceDataError` names the first bad
       record.
    2. Compute log pi_ref of every chosen and rejected response once
       (:func:`precompute_reference_logps`; skipped for SimPO). The reference is, in order:
       ``ref_logps`` or ``ref_model`` if given; else, for a peft policy, the policy with its
       adapter disabled; else the policy itself before its first update.
    3. ``epochs`` passes over the shuffled pairs in minibatches of ``batch_size`` pairs: one
       forward pass of the policy over both responses, sequence log-probs (sums, or per-token
       means for SimPO and TRL-style IPO), the loss, an Adam step with clipped gradients.

    Args:
        policy: the model to train, e.g. ``copy.deepcopy(sft)`` or :func:`add_lora` of it.
        tokenizer: its tokenizer.
        pairs: ``[{"prompt", "chosen", "rejected"}, ...]`` in the standard (already formatted
            prompt) or conversational format; extra keys are ignored.
        config: :class:`DPOConfig` (default: its defaults, DPO with beta 0.1).
        ref_model: the frozen reference (never updated, run once). SimPO ignores it.
        ref_logps: the reference's log-probs, already computed with
            :func:`precompute_reference_logps` on ``tokenize_preferences(tokenizer, pairs,
            config.max_prompt_length, config.max_completion_length, config.add_eos)``: runs on
            the same pairs (a sweep over beta) then share one reference pass.
        eval_fn: ``policy -> dict`` measured every ``eval_every`` steps (and at step 0 when
            ``eval_every``) and at the end; its time is not counted in ``seconds``.

    Returns:
        a :class:`~rlhf_lessons.training.History`, one row per step: the loss's metrics
        (``loss``, ``rewards_chosen``, ``rewards_rejected``, ``margin``, ``accuracy``,
        ``logps_chosen``, ``logps_rejected``), ``grad_norm``, ``lr``, ``epoch``, ``seconds``;
        ``info``: ``reference`` (where pi_ref came from), ``n_pairs``, ``ref_seconds``.
    """
    cfg = config or DPOConfig()
    if ref_model is not None and ref_model is policy:
        raise ValueError(
            "ref_model is the policy itself: leave ref_model=None to use the policy's state "
            "before training (or its base model, for a LoRA policy) as the reference"
        )
    if is_peft_model(policy):
        _check_lora_frozen(policy)
    params = trainable_parameters(policy)
    history = History(cfg.loss, asdict(cfg))
    with torch_threads(cfg.threads):
        seed_everything(cfg.seed)
        batch = tokenize_preferences(tokenizer, pairs, cfg.max_prompt_length,
                                     cfg.max_completion_length, cfg.add_eos)  # fmt: skip
        n = len(batch) // 2

        # 1. The reference, once: log pi_ref(y_w | x) (rows :n) and log pi_ref(y_l | x) (n:).
        ref, history.info["reference"] = _reference(policy, batch, cfg, ref_model, ref_logps)
        history.info.update(
            n_pairs=n, ref_seconds=ref.seconds if ref not in (None, ref_logps) else 0.0
        )
        ref_seq = None if ref is None else ref.select(cfg.average_logps)

        # 2. Optimise. Dropout off: the log-probs must be the model's, not a noisy version.
        policy.eval()
        optimizer = torch.optim.Adam(params, lr=cfg.lr)
        schedule = warmup_schedule(optimizer, cfg.warmup_steps)
        per_epoch = math.ceil(n / cfg.batch_size)
        total = min(per_epoch * cfg.epochs, cfg.max_steps or per_epoch * cfg.epochs)
        device, watch = next(policy.parameters()).device, Stopwatch()
        if eval_every:
            history.evaluate(eval_fn, policy)
        bar = progress(total=total, desc=cfg.loss.upper(), disable=not show_progress)
        minibatches = ((e, idx) for e, order in enumerate(pair_order(n, cfg))
                       for idx in order.split(cfg.batch_size))  # fmt: skip
        for epoch, idx in itertools.islice(minibatches, total):
            with watch:
                mb = batch.rows(torch.cat([idx, idx + n])).trimmed().to(device)
                logp = token_logprobs(policy, mb)
                seq = sequence_logprobs(logp, mb.completion_mask, average=cfg.average_logps)
                k = len(idx)
                ref_w = ref_l = None
                if ref_seq is not None:
                    ref_w, ref_l = ref_seq[idx].to(device), ref_seq[idx + n].to(device)
                loss, m = _pair_loss(cfg, seq[:k], seq[k:], ref_w, ref_l)
                optimizer.zero_grad()
                loss.backward()
                norm = nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                lr = optimizer.param_groups[0]["lr"]
                optimizer.step()
                schedule.step()
            done = history.steps + 1 - epoch * per_epoch
            history.log(seconds=watch.seconds, **m, grad_norm=float(norm), lr=lr,
                        epoch=epoch + min(1.0, done / per_epoch))  # fmt: skip
            bar.update(1)
            bar.set_postfix(loss=f"{m['loss']:.3f}", acc=f"{m['accuracy']:.2f}")
            if history.due(eval_every, total):
                history.evaluate(eval_fn, policy)
        bar.close()
        history.evaluate(eval_fn, policy)
    return history


# --- The implicit reward as a classifier -----------------------------------------------------


@torch.no_grad()
def implicit_reward_accuracy(
    policy,
    tokenizer,
    pairs: Sequence[Mapping],
    reference=None,
    beta: float = 0.1,
    average: bool = False,
    config: DPOConfig | None = None,
    chunk_size: int | None = None,
    max_prompt_length: int | None = 32,
    max_completion_length: int | None = 32,
    threads: int | None = 1,
) -> dict:
    """How often the policy's implicit reward ranks a pair as its label does (held-out pairs).

    The implicit reward of a response is ``beta (log pi(y|x) - log pi_ref(y|x))`` (DPO, IPO),
    or ``beta log pi(y|x)`` with no reference (SimPO: with ``average``, the per-token mean).
    A pair is ranked right when its chosen response's reward is higher. Ties (every pair, when
    pi = pi_ref) count 1/2, a coin flip, so an untrained policy scores 0.5; TRL's logged
    ``rewards/accuracies`` (and :func:`train_dpo`'s history) count ties as wrong.

    Args:
        policy: the trained model (a causal LM or a peft model).
        tokenizer: its tokenizer.
        pairs: ``{"prompt", "chosen", "rejected"}`` records, as for :func:`train_dpo`.
        reference: pi_ref as a model (run once here); the policy itself, when it is a peft
            model (its adapter is disabled for the reference; a plain model as its own
            reference gives every response reward 0, accuracy 0.5); a :class:`ReferenceLogps`
            precomputed on :func:`tokenize_preferences` of the same pairs with the same
            lengths; or ``None`` for a reference-free reward.
        beta: the reward scale (it changes the margin, not the accuracy).
        average: use per-token mean log-probs (SimPO, and IPO as TRL) instead of sums.
        config: take ``beta``, ``average``, the lengths and ``threads`` from a
            :class:`DPOConfig` instead (and no reference for SimPO).
        chunk_size: rows per forward pass (None: :func:`rows_per_pass`).
        threads: torch threads meanwhile (``None``: leave as is).

    Returns:
        dict: ``accuracy`` (ties 1/2), ``ties`` (fraction of pairs with equal rewards),
        ``margin`` (mean chosen - rejected reward), ``rewards_chosen``, ``rewards_rejected``
        (means) and ``n_pairs``.
    """
    if config is not None:
        beta, average = config.beta, config.average_logps
        max_prompt_length = config.max_prompt_length
        max_completion_length = config.max_completion_length
        threads = config.threads
        if not config.needs_reference:
            reference = None
    if not (isinstance(beta, int | float) and beta > 0):
        raise ValueError(f"beta must be > 0, got {beta!r}")
    batch = tokenize_preferences(tokenizer, pairs, max_prompt_length, max_completion_length)
    n = len(batch) // 2
    logps = precompute_reference_logps(policy, batch, chunk_size, threads=threads)
    rewards = logps.select(average)
    if reference is not None:
        if isinstance(reference, ReferenceLogps):
            ref = reference
            if len(ref) != len(batch):
                raise ValueError(
                    f"reference holds log-probs of {len(ref)} rows but these pairs make "
                    f"{len(batch)} (2 per pair): precompute it on tokenize_preferences of the "
                    "same pairs"
                )
        elif reference is policy and is_peft_model(policy):
            ref = precompute_reference_logps(policy, batch, chunk_size, disable_adapter=True,
                                             threads=threads)  # fmt: skip
        else:
            ref = precompute_reference_logps(reference, batch, chunk_size, threads=threads)
        rewards = rewards - ref.select(average)
    rewards = beta * rewards
    chosen, rejected = rewards[:n], rewards[n:]
    right = (chosen > rejected).float() + 0.5 * (chosen == rejected).float()
    return {
        "accuracy": right.mean().item(),
        "ties": (chosen == rejected).float().mean().item(),
        "margin": (chosen - rejected).mean().item(),
        "rewards_chosen": chosen.mean().item(),
        "rewards_rejected": rejected.mean().item(),
        "n_pairs": n,
    }
