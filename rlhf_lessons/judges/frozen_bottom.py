"""Run a causal LM's bottom layers once per text, and only its top layers after that.

When only the top ``k`` of a model's ``L`` decoder layers change (a LoRA adapter on them), the
first ``m = L - k`` layers compute a fixed function of the text: the hidden states entering
layer ``m``, ``h_m(x)`` (T, H), never change. So :class:`LayerCache` computes each text's
``h_m`` once (no gradient), and every later pass - the zero-shot judge, each training step,
each seed's fine-tuned judge - runs only the top ``k`` layers on it:

    logits(x) = top(h_m(x)),    h_m(x) = bottom(x)  (computed once, cached)

which equals the whole model's logits (a test checks it) at ``k / L`` of the cost. It is the
"feature caching" of fine-tuning a network's last layers, applied to a transformer: the cache
holds every position's state, because the top layers still attend over the whole text.

The top is the model's own modules (its last ``k`` layers, final norm and output layer, shared
with the model, adapters included) run as a ``k``-layer model on ``inputs_embeds``. That needs
a Llama-style decoder (``model.model.layers``, ``.norm``, ``.rotary_emb``, ``lm_head``):
SmolLM2, Llama, Mistral, Qwen2 and most open decoders are.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from rlhf_lessons import lm
from rlhf_lessons.course.progress import progress
from rlhf_lessons.judges.llm_judge import Judge


class _Stop(Exception):
    """Raised by the hook that captures layer m's input: the layers above are not needed."""


def base_model(model) -> nn.Module:
    """The transformers model inside a peft wrapper (or ``model`` itself)."""
    get = getattr(model, "get_base_model", None)
    return get() if get is not None else model


def decoder_layers(model) -> nn.ModuleList:
    """The decoder layers of a Llama-style causal LM (``model.model.layers``)."""
    inner = getattr(base_model(model), "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList) or not all(
        hasattr(inner, a) for a in ("norm", "rotary_emb", "embed_tokens")
    ):
        raise TypeError(
            f"{type(base_model(model)).__name__} is not a Llama-style decoder (model.model.layers"
            ", .norm, .rotary_emb, lm_head): LayerCache cannot split it; use a SmolLM2, Llama, "
            "Mistral or Qwen2 model"
        )
    return layers


def top_view(model, split: int) -> nn.Module:
    """A model of the same class made of ``model``'s layers ``split...L-1``, final norm, rotary
    embedding and output layer (the same modules, not copies): called with ``inputs_embeds`` =
    the hidden states entering layer ``split``, it returns the model's own logits."""
    base = base_model(model)
    layers = decoder_layers(base)
    if not 0 < split < len(layers):
        raise ValueError(f"split must be in 1..{len(layers) - 1} (the model has {len(layers)} "
                         f"layers), got {split}")  # fmt: skip
    config = copy.deepcopy(base.config)
    config.num_hidden_layers = len(layers) - split
    if getattr(config, "layer_types", None):  # per-layer attention kinds (sliding windows)
        config.layer_types = list(config.layer_types)[split:]
    with torch.device("meta"):  # no weights are allocated: every module is replaced below
        top = type(base)(config)
    top.model.layers = nn.ModuleList(layers[split:])
    for name in ("norm", "rotary_emb", "embed_tokens"):
        setattr(top.model, name, getattr(base.model, name))
    top.lm_head = base.lm_head
    return top.eval()


def _pad(states: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad (T_i, H) states into (B, T, H) and their attention mask (B, T)."""
    width = max(s.shape[0] for s in states)
    h = states[0].new_zeros(len(states), width, states[0].shape[1])
    mask = torch.zeros(len(states), width, dtype=torch.long, device=h.device)
    for i, s in enumerate(states):
        h[i, : s.shape[0]], mask[i, : s.shape[0]] = s, 1
    return h, mask


class LayerCache:
    """The hidden states entering layer ``split = L - top_layers`` of ``model``, per text.

    :meth:`add` computes the missing ones (the bottom layers only, in length-sorted batches);
    :meth:`next_token_logits` runs the top layers on them (with gradients when asked) and
    returns the logits of the token that follows each text. ``bottom_tokens`` counts the
    tokens the bottom layers have read (the cost the cache saves on every later pass).
    """

    def __init__(self, model, tokenizer, top_layers: int, batch_size: int = 8,
                 show_progress: bool = True):  # fmt: skip
        layers = decoder_layers(model)
        if not 0 < top_layers < len(layers):
            raise ValueError(f"top_layers must be in 1..{len(layers) - 1}, got {top_layers}")
        self.model, self.tokenizer = model, tokenizer
        self.split = len(layers) - top_layers
        self.top = top_view(model, self.split)
        self.batch_size, self.show_progress = batch_size, show_progress
        self.states: dict[str, torch.Tensor] = {}
        self.bottom_tokens = 0

    def __len__(self) -> int:
        return len(self.states)

    @torch.no_grad()
    def add(self, texts: Sequence[str]) -> None:
        """Compute and keep the states of the texts not cached yet."""
        new = list(dict.fromkeys(t for t in texts if t not in self.states))
        if not new:
            return
        base = base_model(self.model)
        ids = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in new]
        order = np.argsort([len(i) for i in ids], kind="stable")
        captured = {}

        def grab(module, args, kwargs):
            captured["h"] = args[0] if args else kwargs["hidden_states"]
            raise _Stop

        hook = decoder_layers(base)[self.split].register_forward_pre_hook(grab, with_kwargs=True)
        device = next(base.parameters()).device
        try:
            chunks = range(0, len(order), self.batch_size)
            for start in progress(chunks, desc="judge: bottom layers, once per text",
                                  disable=not self.show_progress):  # fmt: skip
                rows = order[start : start + self.batch_size]
                mask = torch.zeros(len(rows), max(len(ids[i]) for i in rows), dtype=torch.long)
                input_ids = torch.zeros_like(mask)  # padding: masked out, any id will do
                for j, i in enumerate(rows):
                    input_ids[j, : len(ids[i])], mask[j, : len(ids[i])] = torch.tensor(ids[i]), 1
                input_ids, mask = input_ids.to(device), mask.to(device)
                try:
                    base.model(input_ids=input_ids, attention_mask=mask,
                               position_ids=lm.position_ids(mask), use_cache=False)  # fmt: skip
                except _Stop:
                    pass
                for j, i in enumerate(rows):
                    self.states[new[i]] = captured["h"][j, : len(ids[i])].detach().clone()
                self.bottom_tokens += int(mask.sum())
        finally:
            hook.remove()

    def next_token_logits(self, texts: Sequence[str], grad: bool = False) -> torch.Tensor:
        """(N, V) logits of the token after each text, from the top layers on the cached
        states (computing missing states first). One batch: the caller chunks."""
        self.add(texts)
        h, mask = _pad([self.states[t] for t in texts])
        last = (mask.sum(-1) - 1).view(-1, 1)  # each row's last real position
        with torch.set_grad_enabled(grad):
            out = self.top(inputs_embeds=h, attention_mask=mask,
                           position_ids=lm.position_ids(mask), logits_to_keep=last,
                           use_cache=False)  # fmt: skip
        return out.logits[:, -1].float()


class CachedJudge(Judge):
    """A :class:`~rlhf_lessons.judges.llm_judge.Judge` whose log-prob verdicts and grades run
    the top layers on a :class:`LayerCache` (text mode still generates with the whole model).
    Judging the same texts again (another adapter, another seed) costs only the top layers."""

    def __init__(self, model, tokenizer, cache: LayerCache, **kwargs):
        super().__init__(model, tokenizer, **kwargs)
        if base_model(cache.model) is not base_model(model):
            raise ValueError("the cache must be built on the judge's own model")
        self.cache = cache

    @torch.no_grad()
    def option_logprobs(self, contexts: Sequence[str], options: Sequence[str],
                        desc: str | None = None) -> torch.Tensor:  # fmt: skip
        ids = [self.tokenizer(o, add_special_tokens=False)["input_ids"] for o in options]
        if any(len(i) != 1 for i in ids):  # a multi-token option needs whole sequences
            return super().option_logprobs(contexts, options, desc)
        self.cache.add(contexts)
        order = np.argsort([self.cache.states[c].shape[0] for c in contexts], kind="stable")
        out = torch.empty(len(contexts), len(options))
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            logits = self.cache.next_token_logits([contexts[i] for i in rows])
            out[rows] = torch.log_softmax(logits, -1)[:, [i[0] for i in ids]].cpu()
        return out
