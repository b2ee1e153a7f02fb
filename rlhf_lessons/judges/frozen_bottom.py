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
import torch.nn.functional as F
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


def _pad_heads(xs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Right-pad (heads, T_i, d) keys or values into (B, heads, T, d)."""
    out = xs[0].new_zeros(len(xs), xs[0].shape[0], max(x.shape[1] for x in xs), xs[0].shape[2])
    for i, x in enumerate(xs):
        out[i, :, : x.shape[1]] = x
    return out


def _common_prefix_length(ids: Sequence[Sequence[int]]) -> int:
    """Tokens every row starts with, leaving each row at least one token of its own."""
    n = min(len(i) for i in ids) - 1
    for k in range(max(n, 0)):
        if any(i[k] != ids[0][k] for i in ids):
            return k
    return max(n, 0)


def last_layer_keys_values(layer, rotary: nn.Module, h: torch.Tensor,
                           mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """The keys (rotary applied) and values of a Llama-style layer at every position:
    h (B, T, H), mask (B, T) -> K, V (B, kv heads, T, head dim)."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    attn, (b, t, _) = layer.self_attn, h.shape
    x = layer.input_layernorm(h)
    k = attn.k_proj(x).view(b, t, -1, attn.head_dim).transpose(1, 2)
    v = attn.v_proj(x).view(b, t, -1, attn.head_dim).transpose(1, 2)
    cos, sin = rotary(x, lm.position_ids(mask))
    return apply_rotary_pos_emb(k, k, cos, sin)[1], v


def last_layer_at_end(layer, rotary: nn.Module, h_end: torch.Tensor, position: torch.Tensor,
                      k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """A Llama-style decoder layer computed at one position per row (its last real one).

    h_end (B, H): the layer's input there; position (B,): its index; k, v (B, kv heads, T, d):
    every position's keys and values (:func:`last_layer_keys_values`); mask (B, T) -> (B, H),
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


class LayerCache:
    """The hidden states entering layer ``split = L - top_layers`` of ``model``, per text.

    :meth:`add` computes the missing ones (the bottom layers only, in length-sorted batches).
    The texts of one call usually share a beginning (the system message and the judge's
    instructions): its keys and values are computed once and reused by every batch, so the
    bottom layers read each text's own tokens only. :meth:`next_token_logits` runs the top
    layers on the cached states (with gradients when asked) and returns the logits of the token
    that follows each text. With ``top_layers=1`` the last layer runs at that one position
    (:func:`last_layer_at_end`, checked once against the whole layer), and when its keys and
    values are frozen (an adapter on its queries, output and MLP only) they are cached per text
    too: a training step then costs about one position of one layer per example.
    ``bottom_tokens`` counts the tokens the bottom layers have read.
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
        self.kv: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # see _frozen_keys_values
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

    def _prefix(self, ids: list[int], device) -> tuple[torch.Tensor, list]:
        """The shared beginning's states (P, H) and its keys/values in the bottom layers."""
        from transformers import DynamicCache

        cache = DynamicCache(config=base_model(self.model).config)
        x = torch.tensor([ids], device=device)
        h = self._bottom(x, torch.ones_like(x), None, cache)
        return h[0], [(cache.layers[i].keys, cache.layers[i].values) for i in range(self.split)]

    @torch.no_grad()
    def add(self, texts: Sequence[str]) -> None:
        """Compute and keep the states of the texts not cached yet."""
        from transformers import DynamicCache

        new = list(dict.fromkeys(t for t in texts if t not in self.states))
        if not new:
            return
        device = next(base_model(self.model).parameters()).device
        ids = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in new]
        p = _common_prefix_length(ids) if len(ids) > 1 else 0
        p = p if p >= 8 else 0  # a short shared start is not worth a pass of its own
        if p:
            prefix_h, prefix_kv = self._prefix(ids[0][:p], device)
            self.bottom_tokens += p
        order = np.argsort([len(i) for i in ids], kind="stable")
        chunks = range(0, len(order), self.batch_size)
        for start in progress(chunks, desc="judge: bottom layers, once per text",
                              disable=not self.show_progress):  # fmt: skip
            rows = order[start : start + self.batch_size]
            own = [ids[i][p:] for i in rows]
            mask = torch.zeros(len(rows), max(map(len, own)), dtype=torch.long)
            input_ids = torch.zeros_like(mask)  # padding: masked out, any id will do
            for j, row in enumerate(own):
                input_ids[j, : len(row)], mask[j, : len(row)] = torch.tensor(row), 1
            input_ids, mask = input_ids.to(device), mask.to(device)
            positions, cache = lm.position_ids(mask), None
            if p:  # the shared beginning as past keys/values, one copy per row
                kv = [(k.expand(len(rows), -1, -1, -1).contiguous(),
                       v.expand(len(rows), -1, -1, -1).contiguous()) for k, v in prefix_kv]  # fmt: skip
                cache = DynamicCache(ddp_cache_data=kv, config=base_model(self.model).config)
                positions = positions + p
                mask = torch.cat([mask.new_ones(len(rows), p), mask], 1)
            h = self._bottom(input_ids, mask, positions, cache)
            for j, (i, row) in enumerate(zip(rows, own, strict=True)):
                mine = h[j, : len(row)]
                self.states[new[i]] = torch.cat([prefix_h, mine]) if p else mine.clone()
            self.bottom_tokens += sum(map(len, own))

    def _frozen_keys_values(self) -> bool:
        """Whether the last layer's keys and values are fixed: no adapter and nothing training
        in its k_proj, v_proj and input norm. Then they are cached per text as well (and the
        cache is dropped if those weights were changed in place since)."""
        layer = self.top.model.layers[-1]
        parts = (layer.self_attn.k_proj, layer.self_attn.v_proj, layer.input_layernorm)
        params = [p for m in parts for p in m.parameters()]
        if any(hasattr(m, "lora_A") for m in parts) or any(p.requires_grad for p in params):
            return False
        signature = tuple((p.data_ptr(), p._version) for p in params)
        if signature != self._kv_signature:
            self.kv, self._kv_signature = {}, signature
        return True

    def _keys_values(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded (B, kv heads, T, d) keys and values of the last layer for the texts."""
        layer, rotary = self.top.model.layers[-1], self.top.model.rotary_emb
        if not self._frozen_keys_values():
            h, mask = _pad([self.states[t] for t in texts])
            return last_layer_keys_values(layer, rotary, h, mask)
        with torch.no_grad():
            for t in dict.fromkeys(texts):
                if t not in self.kv:
                    h = self.states[t][None]
                    k, v = last_layer_keys_values(layer, rotary, h, h.new_ones(h.shape[:2]))
                    self.kv[t] = (k[0], v[0])
        return _pad_heads([self.kv[t][0] for t in texts]), _pad_heads(
            [self.kv[t][1] for t in texts]
        )

    def _one_position_logits(self, texts: Sequence[str], mask, last) -> torch.Tensor:
        top = self.top.model
        h_end = torch.stack([self.states[t][-1] for t in texts])
        k, v = self._keys_values(texts)
        y = last_layer_at_end(top.layers[-1], top.rotary_emb, h_end, last.view(-1), k, v, mask)
        return self.top.lm_head(top.norm(y)).float()

    def next_token_logits(self, texts: Sequence[str], grad: bool = False) -> torch.Tensor:
        """(N, V) logits of the token after each text, from the top layers on the cached
        states (computing missing states first). One batch: the caller chunks."""
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
                return self._one_position_logits(texts, mask, last)
            return self._whole_top(texts, mask, last)

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
