"""A judge with signal (lesson 09): SmolLM2 fine-tuned with LoRA to give the human verdict.

Papers: Zheng et al. 2023 (MT-Bench, arXiv 2306.05685) list fine-tuned judges among the
remedies for a judge's biases; Zhu et al. 2023, "JudgeLM: Fine-tuned Large Language Models are
Scalable Judges", arXiv 2310.17631, fine-tune judges on judge-format data with *swap
augmentation* (every example in both orders) against position bias; Yuan et al. 2024
(self-rewarding LMs, arXiv 2401.10020) build their judge's training data (EFT) from ranked
answers in the same way.

The data (:func:`verdict_data`): each *training* pair in both orders, as the exact text the
judge reads at test time (the chat-formatted judge prompt and the verdict prefix ``[[``) and the
verdict the ranking implies (``A`` when the better answer is shown first, else ``B``). The two
orders carry the same pair with opposite answers, so preferring a position cannot lower the
loss.

The loss (:func:`verdict_loss`) is supervised fine-tuning on the verdict token, with the
softmax over the verdict options the judge is read by (``JudgeTuneConfig.options``,
``A``, ``B``, ``C``; ``None``: the whole vocabulary):

    L = -(1/B) sum_b log p(y_b | x_b),   p(v | x) = exp l_v(x) / sum_{u in {A, B, C}} exp l_u(x)

with ``x_b`` = judge prompt + "[[", ``y_b`` in {"A", "B"}, logits (B, K) at the one position
after ``x_b`` and targets (B,) option indices. ``p`` is exactly the distribution the log-prob
judge reads its verdict from (:mod:`rlhf_lessons.judges.llm_judge`), and it needs K rows of
the output layer instead of its whole vocabulary (49,152 rows for SmolLM2). Only a LoRA
adapter (Hu et al. 2021, arXiv 2106.09685) on the top ``top_layers`` decoder layers trains, so
the bottom layers run once per text (:class:`~rlhf_lessons.judges.frozen_bottom.LayerCache`)
and each step runs only the top layers; several seeds share that one bottom pass.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from rlhf_lessons.course.device import torch_threads
from rlhf_lessons.course.seeding import seed_everything
from rlhf_lessons.judges.frozen_bottom import LayerCache, base_model, decoder_layers
from rlhf_lessons.judges.judge_bias import JudgedPair
from rlhf_lessons.judges.llm_judge import Judge, PairwiseConfig
from rlhf_lessons.training import (
    EvalFn,
    History,
    Stopwatch,
    check_minibatch_config,
    minibatch_plan,
    optimizer_step,
    trainable_parameters,
    warmup_schedule,
)

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class JudgeTuneConfig:
    """Settings of :func:`train_judge` (Adam, constant learning rate after a warm-up) and of
    its adapter (:func:`add_judge_adapter`): LoRA of rank ``lora_rank`` on ``target_modules``
    of the top ``top_layers`` decoder layers."""

    lr: float = 1e-3
    epochs: int = 3
    batch_size: int = 16
    max_steps: int | None = None
    warmup_steps: int = 5
    max_grad_norm: float = 1.0
    top_layers: int = 4
    lora_rank: int = 8
    lora_alpha: int = 16
    target_modules: tuple[str, ...] = ALL_LINEAR
    options: tuple[str, ...] | None = ("A", "B", "C")  # the loss's softmax; None: vocabulary
    seed: int = 0
    threads: int | None = None

    def __post_init__(self) -> None:
        check_minibatch_config(self)
        if self.top_layers < 1 or self.lora_rank < 1:
            raise ValueError("JudgeTuneConfig needs top_layers >= 1 and lora_rank >= 1")
        if self.options is not None and len(set(self.options)) < 2:
            raise ValueError("JudgeTuneConfig.options must be None or at least two different "
                             f"verdict options, got {self.options!r}")  # fmt: skip


def verdict_data(judge: Judge, pairs: Sequence[JudgedPair],
                 config: PairwiseConfig | None = None) -> list[dict]:  # fmt: skip
    """The module doc's data as ``{"context", "target"}`` records: every pair in both orders,
    ``target`` the option naming the better answer."""
    config = config or PairwiseConfig()
    prefix, options = config.split_verdicts()
    users = [config.format(p.prompt, p.better, p.worse) for p in pairs]
    users += [config.format(p.prompt, p.worse, p.better) for p in pairs]
    targets = [options[0]] * len(pairs) + [options[1]] * len(pairs)
    return [{"context": c + prefix, "target": t}
            for c, t in zip(judge.chat(users), targets, strict=True)]  # fmt: skip


def verdict_loss(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Mean NLL of the verdict. logits (B, K) over the K options (or the vocabulary), targets
    (B,) indices into them -> scalar."""
    loss = F.cross_entropy(logits, targets)
    return loss, {
        "loss": loss.item(),
        "accuracy": (logits.argmax(-1) == targets).float().mean().item(),
    }


def add_judge_adapter(model, config: JudgeTuneConfig | None = None, name: str = "default"):
    """A fresh LoRA adapter ``name`` on the top ``config.top_layers`` decoder layers (B = 0, so
    it starts as the model itself; A drawn after seeding torch with ``config.seed``), made the
    active one. ``model`` may already be a peft model with other adapters: each seed of the
    lesson keeps its own adapter, switched with ``model.set_adapter(name)``."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as err:  # pragma: no cover - peft ships with the [lm] extra
        raise ImportError("add_judge_adapter needs peft: pip install 'rlhf-lessons[lm]'") from err
    cfg = config or JudgeTuneConfig()
    n = len(decoder_layers(model))
    lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha,
                      target_modules=list(cfg.target_modules), lora_dropout=0.0,
                      layers_to_transform=list(range(n - cfg.top_layers, n)),
                      layers_pattern="layers", task_type="CAUSAL_LM")  # fmt: skip
    torch.manual_seed(cfg.seed)
    with warnings.catch_warnings():  # peft calls a method transformers 5 deprecates
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing")
        if hasattr(model, "peft_config"):
            if name in model.peft_config:
                raise ValueError(f"the model already has an adapter named {name!r}")
            model.add_adapter(name, lora)
        else:
            model = get_peft_model(model, lora, adapter_name=name)
    model.set_adapter(name)
    return model.eval()


def _one_token(tokenizer, text: str, what: str) -> int:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"{what} {text!r} must be one token, got {len(ids)}")
    return ids[0]


def _check_data(data: Sequence[Mapping], tokenizer, options) -> tuple[list, list | None, Tensor]:
    """The contexts, the option tokens (None: the vocabulary) and each target's index there."""
    if isinstance(data, Mapping | str) or not data:
        raise ValueError("data must be a non-empty list of {'context', 'target'} records "
                         "(verdict_data makes them)")  # fmt: skip
    targets = []
    for i, r in enumerate(data):
        if not isinstance(r, Mapping) or not {"context", "target"} <= set(r):
            raise ValueError(f"data[{i}] must be a dict with 'context' and 'target', got {r!r:.80}")
        targets.append(_one_token(tokenizer, r["target"], f"data[{i}]['target']"))
    contexts = [r["context"] for r in data]
    if options is None:
        return contexts, None, torch.tensor(targets)
    tokens = [_one_token(tokenizer, o, "JudgeTuneConfig.options entry") for o in options]
    index = {t: i for i, t in enumerate(tokens)}
    missing = sorted(set(targets) - set(index))
    if missing:
        raise ValueError(f"targets {tokenizer.decode(missing)!r} are not among "
                         f"JudgeTuneConfig.options {options!r}")  # fmt: skip
    return contexts, tokens, torch.tensor([index[t] for t in targets])


def _checked_cache(cache: LayerCache | None, policy, tokenizer, cfg: JudgeTuneConfig,
                   show_progress: bool) -> LayerCache:  # fmt: skip
    """``cache`` (None: a new one) after the checks that keep its bottom states valid: the same
    model, split below the config's ``top_layers``, and every trainable parameter in a layer at
    or above the split (the cached states are only valid while the layers below stay fixed)."""
    if cache is None:
        cache = LayerCache(policy, tokenizer, cfg.top_layers, show_progress=show_progress)
    if base_model(cache.model) is not base_model(policy):
        raise ValueError("cache was built on another model than policy")
    if len(decoder_layers(policy)) - cache.split != cfg.top_layers:
        raise ValueError(f"cache splits the model above layer {cache.split}, config.top_layers "
                         f"is {cfg.top_layers}: build the cache with the config's top_layers")  # fmt: skip
    for name, p in policy.named_parameters():
        m = re.search(r"\.layers\.(\d+)\.", name)
        if p.requires_grad and (m is None or int(m.group(1)) < cache.split):
            raise ValueError(
                f"parameter {name} trains but is not in the top layers (>= {cache.split}): the "
                "cached bottom states would go stale; train only an adapter made by "
                "add_judge_adapter with the same top_layers"
            )
    return cache


def train_judge(
    policy,
    tokenizer,
    data: Sequence[Mapping],
    config: JudgeTuneConfig | None = None,
    *,
    cache: LayerCache | None = None,
    eval_fn: EvalFn | None = None,
    eval_every: int = 0,
    show_progress: bool = True,
) -> History:
    """Fine-tune ``policy``'s active adapter (:func:`add_judge_adapter`) in place on verdict
    records (:func:`verdict_data`) with :func:`verdict_loss`. ``cache``: a
    :class:`~rlhf_lessons.judges.frozen_bottom.LayerCache` of the same model and
    ``top_layers`` (shared between seeds: its states are computed once); None builds one.

    Returns a :class:`~rlhf_lessons.training.History`: per step ``loss``, ``accuracy`` (of the
    verdict token) and ``seconds``; ``info``: ``examples``, ``bottom_tokens`` (read by the bottom
    layers in this call: 0 when the cache already had every text) and ``bottom_seconds``.
    """
    cfg = config or JudgeTuneConfig()
    contexts, tokens, targets = _check_data(data, tokenizer, cfg.options)
    params = trainable_parameters(policy)
    cache = _checked_cache(cache, policy, tokenizer, cfg, show_progress)
    history = History("judge_sft", asdict(cfg), info={"examples": len(contexts)})
    with torch_threads(cfg.threads):
        seed_everything(cfg.seed)
        watch, read = Stopwatch(), cache.bottom_tokens
        with watch:  # the bottom pass (on texts the cache lacks) counts as training time
            cache.add(contexts)
        history.info.update(bottom_tokens=cache.bottom_tokens - read, bottom_seconds=watch.seconds)
        optimizer = torch.optim.Adam(params, lr=cfg.lr)
        schedule = warmup_schedule(optimizer, cfg.warmup_steps)
        minibatches, total = minibatch_plan(targets, cfg)
        policy.eval()  # no dropout: the loss is the model's own likelihood
        for idx in history.loop(minibatches, total, policy, eval_fn, eval_every,
                                desc="judge SFT (top layers)", show_progress=show_progress):  # fmt: skip
            with watch:
                logits = cache.next_token_logits([contexts[i] for i in idx], True, tokens)
                loss, m = verdict_loss(logits, targets[idx].to(logits.device))
                optimizer_step(loss, optimizer, params, cfg.max_grad_norm, schedule)
            history.log(seconds=watch.seconds, **m)
    return history
