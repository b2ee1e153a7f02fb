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
import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pad_sequence

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
    """Right-pad (T_i, ...) states into (B, T, ...) and their attention mask (B, T)."""
    lengths = torch.tensor([s.shape[0] for s in states], device=states[0].device)
    mask = torch.arange(int(lengths.max()), device=lengths.device) < lengths[:, None]
    return pad_sequence(list(states), batch_first=True), mask.long()


def _base(module: nn.Module) -> nn.Module:
    """The linear map under a peft LoRA layer (or the module itself)."""
    return getattr(module, "base_layer", module)


def _lora_delta(module: nn.Module, x: torch.Tensor) -> torch.Tensor | float:
    """The active LoRA adapters' part of a peft ``lora.Linear``'s output: sum s B A x (0 for a
    plain linear map)."""
    if not hasattr(module, "lora_A") or module.disable_adapters:
        return 0.0
    return sum(
        (module.lora_B[a](module.lora_A[a](module.lora_dropout[a](x))) * module.scaling[a]
         for a in module.active_adapters if a in module.lora_A), 0.0,
    )  # fmt: skip


def last_layer_at_end(layer, rotary: nn.Module, h_end: torch.Tensor, position: torch.Tensor,
                      k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """A Llama-style decoder layer computed at one position per row (its last real one).

    h_end (B, H): the layer's input there; position (B,): its index; k, v (B, kv heads, T, d):
    every position's keys and values (``LayerCache._keys_values``); mask (B, T) -> (B, H),
    the layer's output at that position. Only that output is needed for the next-token logits,
    so the query, the attention output and the MLP run at one position:

        q = W_q norm1(h_end)  (rotary at its position);   a = softmax(q K^T / sqrt(d) + mask) V
        y = h_end + W_o a;    out = y + mlp(norm2(y))
    """
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

    attn, b = layer.self_attn, h_end.shape[0]
    q = attn.q_proj(layer.input_layernorm(h_end)).view(b, -1, 1, attn.head_dim)
    cos, sin = rotary(h_end[:, None], position.view(-1, 1))  # (B, 1, d)
    q = apply_rotary_pos_emb(q, q, cos, sin)[0]
    k, v = repeat_kv(k, attn.num_key_value_groups), repeat_kv(v, attn.num_key_value_groups)
    a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.bool()[:, None, None, :],
                                       scale=attn.scaling)  # fmt: skip
    y = h_end + attn.o_proj(a.reshape(b, -1))
    return y + layer.mlp(layer.post_attention_layernorm(y))


def output_logits(lm_head: nn.Module, x: torch.Tensor, tokens: Sequence[int] | None = None):
    """``lm_head(x)`` (..., V), or only its entries ``tokens`` (..., len(tokens)), computed
    from those rows of the output weight (a plain linear layer; an adapted one runs whole)."""
    if tokens is None or not isinstance(lm_head, nn.Linear) or hasattr(lm_head, "lora_A"):
        out = lm_head(x)
        return out if tokens is None else out[..., list(tokens)]
    rows = torch.as_tensor(list(tokens), device=x.device)
    bias = None if lm_head.bias is None else lm_head.bias[rows]
    return F.linear(x, lm_head.weight[rows], bias)


class LayerCache:
    """The hidden states entering layer ``split = L - top_layers`` of ``model``, per text.

    :meth:`add` computes the missing ones (the bottom layers only), reusing the keys and values
    of the longest beginning a text shares with the text before it in token order.
    :meth:`next_token_logits` runs the top layers on the cached states (with gradients when
    asked) and returns the logits of the token that follows each text. With ``top_layers=1``
    the last layer runs at that one position (:func:`last_layer_at_end`, checked once against
    the whole layer), on keys and values whose frozen parts are cached per text too
    (:meth:`_keys_values`): a training step then costs about one position of one layer per
    example. ``bottom_tokens`` counts the tokens the bottom layers have read.
    """

    def __init__(self, model, tokenizer, top_layers: int, show_progress: bool = True):
        layers = decoder_layers(model)
        if not 0 < top_layers < len(layers):
            raise ValueError(f"top_layers must be in 1..{len(layers) - 1}, got {top_layers}")
        self.model, self.tokenizer = model, tokenizer
        self.split = len(layers) - top_layers
        self.top = top_view(model, self.split)
        self.show_progress = show_progress
        self.states: dict[str, torch.Tensor] = {}
        self.kv: dict[str, tuple[torch.Tensor, ...]] = {}  # x, W_k x, W_v x: see _keys_values
        self._kv_signature: tuple = ()
        self.bottom_tokens = 0
        self.one_position = None if top_layers == 1 else False  # None: not checked yet

    def __len__(self) -> int:
        return len(self.states)

    def _bottom(self, input_ids, mask, position_ids, cache=None) -> torch.Tensor:
        """The states entering layer ``split`` (the layers above are not run)."""
        base, captured = base_model(self.model), {}

        def grab(module, args, kwargs):
            captured["h"] = args[0] if args else kwargs["hidden_states"]
            raise _Stop

        hook = decoder_layers(base)[self.split].register_forward_pre_hook(grab, with_kwargs=True)
        try:
            base.model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids,
                       cache=cache, use_cache=cache is not None)  # fmt: skip
        except _Stop:
            pass
        finally:
            hook.remove()
        return captured["h"]

    @torch.no_grad()
    def add(self, texts: Sequence[str]) -> None:
        """Compute and keep the states of the texts not cached yet, one text at a time in token
        order (sorted as sequences of ids): the text before a text in that order shares the
        longest beginning with it, so only the rest runs. Judge prompts share a lot: the system
        message and instructions, a question across both orders of its pair, a question and
        first answer across pairs that differ in the second."""
        from transformers import DynamicCache

        new = list(dict.fromkeys(t for t in texts if t not in self.states))
        if not new:
            return
        config = base_model(self.model).config
        device = next(base_model(self.model).parameters()).device
        ids = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in new]
        before: list[int] = []  # the previous text's ids, its states and bottom keys/values
        h_before, kv_before = None, []
        for i in progress(sorted(range(len(new)), key=ids.__getitem__),
                          desc="judge: bottom layers, once per text",
                          disable=not self.show_progress):  # fmt: skip
            row = ids[i]
            if not row:
                raise ValueError(f"text {new[i]!r} has no tokens")
            shared = len(os.path.commonprefix([before, row]))  # works on lists of token ids
            p = min(shared, len(row) - 1)  # run at least the last token
            past = [(k[:, :, :p], v[:, :, :p]) for k, v in kv_before] if p else None
            cache = DynamicCache(ddp_cache_data=past, config=config)
            x = torch.tensor([row[p:]], device=device)
            h = self._bottom(x, torch.ones(1, len(row), dtype=torch.long, device=device),
                             torch.arange(p, len(row), device=device)[None], cache)[0]  # fmt: skip
            if p:
                h = torch.cat([h_before[:p], h])
            self.states[new[i]] = h
            before, h_before = row, h
            kv_before = [(cache.layers[j].keys, cache.layers[j].values) for j in range(self.split)]
            self.bottom_tokens += len(row) - p

    def _inputs_frozen(self, norm: nn.Module, projections: Sequence[nn.Module]) -> bool:
        """Whether ``x = norm(h)`` and the base projections ``W x`` are fixed: norm and base
        weights frozen, any LoRA adapter plain and unmerged. Then they are cached per text (and
        the cache is dropped if those weights were changed in place since)."""
        if hasattr(norm, "lora_A") or any(
            getattr(m, "merged", False) or getattr(m, "lora_variant", None) for m in projections
        ):
            return False
        params = [*norm.parameters(), *(p for m in projections for p in _base(m).parameters())]
        if any(p.requires_grad for p in params):
            return False
        signature = tuple((p.data_ptr(), p._version) for p in params)
        if signature != self._kv_signature:
            self.kv, self._kv_signature = {}, signature
        return True

    def _keys_values(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded (B, kv heads, T, d) keys (rotary applied) and values of the last layer for the
        texts: ``k = W_k x + s B_k A_k x`` with ``x = norm(h)`` (no adapter term without a LoRA
        adapter), ``v`` alike. When ``x``, ``W_k x`` and ``W_v x`` are fixed
        (:meth:`_inputs_frozen`) they are cached per text and a step computes only the rank-r
        part; otherwise everything is recomputed."""
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        layer = self.top.model.layers[-1]
        attn, norm = layer.self_attn, layer.input_layernorm
        if self._inputs_frozen(norm, (attn.k_proj, attn.v_proj)):
            with torch.no_grad():
                for t in dict.fromkeys(texts):
                    if t not in self.kv:
                        x = norm(self.states[t])
                        self.kv[t] = (x, _base(attn.k_proj)(x), _base(attn.v_proj)(x))
            k, mask = _pad([self.kv[t][1] for t in texts])
            v = _pad([self.kv[t][2] for t in texts])[0]
            if any(hasattr(m, "lora_A") for m in (attn.k_proj, attn.v_proj)):
                x = _pad([self.kv[t][0] for t in texts])[0]
                k, v = k + _lora_delta(attn.k_proj, x), v + _lora_delta(attn.v_proj, x)
        else:
            h, mask = _pad([self.states[t] for t in texts])
            x = norm(h)
            k, v = attn.k_proj(x), attn.v_proj(x)
        (b, t, _), d = k.shape, attn.head_dim
        k, v = k.view(b, t, -1, d).transpose(1, 2), v.view(b, t, -1, d).transpose(1, 2)
        cos, sin = self.top.model.rotary_emb(k, lm.position_ids(mask))  # (k: dtype and device)
        return apply_rotary_pos_emb(k, k, cos, sin)[1], v

    def _one_position_logits(self, texts: Sequence[str], mask, last, tokens=None) -> torch.Tensor:
        top = self.top.model
        h_end = torch.stack([self.states[t][-1] for t in texts])
        k, v = self._keys_values(texts)
        y = last_layer_at_end(top.layers[-1], top.rotary_emb, h_end, last.view(-1), k, v, mask)
        return output_logits(self.top.lm_head, top.norm(y), tokens).float()

    def next_token_logits(self, texts: Sequence[str], grad: bool = False,
                          tokens: Sequence[int] | None = None) -> torch.Tensor:  # fmt: skip
        """(N, V) logits of the token after each text, from the top layers on the cached
        states (computing missing states first). One batch: the caller chunks. ``tokens``:
        only those vocabulary entries, (N, len(tokens)) (the output layer then multiplies by
        those rows of its weight only, the bulk of a training step's cost otherwise)."""
        self.add(texts)
        mask = _pad([self.states[t][:, :1] for t in texts])[1]
        last = (mask.sum(-1) - 1).view(-1, 1)  # each row's last real position
        with torch.set_grad_enabled(grad):
            if self.one_position is None:  # check the one-position layer against the layer
                with torch.no_grad():
                    whole = self._whole_top(texts, mask, last)
                    self.one_position = bool(torch.allclose(
                        self._one_position_logits(texts, mask, last), whole, atol=1e-4,
                        rtol=1e-4))  # fmt: skip
            if self.one_position:
                return self._one_position_logits(texts, mask, last, tokens)
            logits = self._whole_top(texts, mask, last)
            return logits if tokens is None else logits[:, list(tokens)]

    def _whole_top(self, texts: Sequence[str], mask, last) -> torch.Tensor:
        h = _pad([self.states[t] for t in texts])[0]
        out = self.top(inputs_embeds=h, attention_mask=mask, position_ids=lm.position_ids(mask),
                       logits_to_keep=last, use_cache=False)  # fmt: skip
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
    def option_logprobs(self, contexts: Sequence[str], options: Sequence[str]) -> torch.Tensor:
        ids = [self.tokenizer(o, add_special_tokens=False)["input_ids"] for o in options]
        if any(len(i) != 1 for i in ids):  # a multi-token option needs whole sequences
            return super().option_logprobs(contexts, options)
        self.cache.add(contexts)
        order = np.argsort([self.cache.states[c].shape[0] for c in contexts], kind="stable")
        out = torch.empty(len(contexts), len(options))
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            logits = self.cache.next_token_logits([contexts[i] for i in rows])
            out[rows] = torch.log_softmax(logits, -1)[:, [i[0] for i in ids]].cpu()
        return out
