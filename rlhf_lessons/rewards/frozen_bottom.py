"""Train the top layers of a BERT encoder, and compute its frozen bottom once per input.

Fine-tuning every layer of MiniLM costs a forward and a backward pass through all six layers for
every sequence of every step. When the embeddings and the first ``layers`` transformer layers are
frozen (the usual choice when data is small: the pretrained features are kept, only the top is
adapted), their output for a given token sequence never changes: it can be computed once and
looked up afterwards, in every later step, epoch, seed and model that shares those weights. Only
the top layers then run per step, forward and backward.

:class:`FrozenBottom` holds that computation and its memo: the embeddings and first ``layers``
layers of one reference encoder, in eval mode (no dropout: a memo needs a deterministic function),
and a dict from each input row (its real tokens and token types) to the bottom's output states
``(T, H)``. Rows are computed one at a time, unpadded, so a row's states do not depend on what
else was in its batch, and a run gives the same numbers whatever ran before it.

:meth:`FrozenBottom.attach` prepares a model of the same architecture (a fresh copy of the
encoder, or the encoder inside llm-blender's PairRanker): it copies the reference's bottom
weights into the model and freezes them (so a saved checkpoint holds exactly the weights the memo
was computed with), and replaces the model's ``forward`` by one that looks the bottom up and runs
only the model's own top layers. The model keeps its class, its parameters and its state-dict
keys, so it saves, loads and is called as before. :meth:`FrozenBottom.detach` restores the
original forward.

Rows must be right-padded (real tokens first), as BERT tokenizers and llm-blender's collator
produce them: positions then start at 0 in every row, in the batch and in the memo alike.
"""

from __future__ import annotations

import copy
import types

import torch
from torch import nn


def _layers(encoder: nn.Module) -> nn.ModuleList:
    try:
        return encoder.encoder.layer
    except AttributeError:
        raise TypeError(
            f"expected a BERT-style encoder (model.embeddings, model.encoder.layer), got "
            f"{type(encoder).__name__}"
        ) from None


class FrozenBottom:
    """The frozen embeddings and first ``layers`` layers of ``encoder``, memoised per input row.

    Args:
        encoder: a BERT-style model (``transformers`` ``BertModel``: ``embeddings``,
            ``encoder.layer``); its bottom is copied, so later changes to ``encoder`` do not
            affect the memo.
        layers: how many transformer layers, counted from the bottom, are frozen (with the
            embeddings). ``len(encoder.encoder.layer) - layers`` layers stay trainable.
    """

    def __init__(self, encoder: nn.Module, layers: int) -> None:
        n = len(_layers(encoder))
        if not 0 <= layers < n:
            raise ValueError(
                f"layers must be in [0, {n - 1}] (the encoder has {n} layers and at least one must "
                f"stay trainable), got {layers}"
            )
        self.layers, self.n_layers = layers, n
        self.config = encoder.config
        self.embeddings = copy.deepcopy(encoder.embeddings).eval().requires_grad_(False)
        self.bottom = copy.deepcopy(_layers(encoder)[:layers]).eval().requires_grad_(False)
        self.states: dict[bytes, torch.Tensor] = {}
        self.computed = 0  # rows run through the bottom (memo misses)
        self.looked_up = 0  # rows served from the memo

    def _key(self, ids: torch.Tensor, types_: torch.Tensor) -> bytes:
        return ids.cpu().numpy().tobytes() + b"|" + types_.cpu().numpy().tobytes()

    @torch.no_grad()
    def row(self, ids: torch.Tensor, types_: torch.Tensor) -> torch.Tensor:
        """The bottom's output (T, H) for one unpadded row of token ids and token types (T,)."""
        key = self._key(ids, types_)
        states = self.states.get(key)
        if states is not None:
            self.looked_up += 1
            return states
        h = self.embeddings(input_ids=ids[None], token_type_ids=types_[None])
        for layer in self.bottom:  # one unpadded row: no attention mask needed
            h = layer(h, None)
        self.states[key] = states = h[0]
        self.computed += 1
        return states

    def hidden(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The bottom's output for a right-padded batch, (N, T) ids -> (N, T, H) states (zeros
        at padded positions)."""
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        lengths = mask.sum(-1)
        cols = torch.arange(mask.shape[-1], device=mask.device)
        if not torch.equal(mask, (cols[None] < lengths[:, None]).to(mask.dtype)):
            raise ValueError(
                "FrozenBottom needs right-padded rows (real tokens first, padding at the end); "
                "tokenize with padding_side='right'"
            )
        types_ = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
        out = self.embeddings.word_embeddings.weight.new_zeros(
            *input_ids.shape, self.config.hidden_size
        )
        for i, n in enumerate(lengths.tolist()):
            out[i, :n] = self.row(input_ids[i, :n], types_[i, :n])
        return out

    def attach(self, model: nn.Module) -> nn.Module:
        """Give ``model`` (same architecture) these frozen bottom weights, and a forward that
        looks the bottom up and runs only ``model``'s top layers. Returns ``model``."""
        if (
            len(_layers(model)) != self.n_layers
            or model.config.hidden_size != self.config.hidden_size
        ):
            raise ValueError(
                f"model has {len(_layers(model))} layers of width {model.config.hidden_size}, the "
                f"frozen bottom was cut from {self.n_layers} of width {self.config.hidden_size}: "
                "attach it to a copy of the same encoder"
            )
        model.embeddings.load_state_dict(self.embeddings.state_dict())
        for mine, frozen in zip(_layers(model)[: self.layers], self.bottom, strict=True):
            mine.load_state_dict(frozen.state_dict())
        model.embeddings.requires_grad_(False)
        _layers(model)[: self.layers].requires_grad_(False)
        model.forward = types.MethodType(_top_forward, model)
        model._frozen_bottom = self
        return model

    @staticmethod
    def detach(model: nn.Module) -> nn.Module:
        """Restore ``model``'s own forward (its weights stay as they are)."""
        model.__dict__.pop("forward", None)
        model.__dict__.pop("_frozen_bottom", None)
        return model


def _top_forward(
    self,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    token_type_ids: torch.Tensor | None = None,
    **kwargs,
):
    """``BertModel.forward`` with the bottom looked up (bound to the model by ``attach``):
    ``last_hidden_state``, ``pooler_output`` (if the model has a pooler) and ``hidden_states``
    (only the last one: what llm-blender reads)."""
    from transformers.masking_utils import create_bidirectional_mask
    from transformers.modeling_outputs import BaseModelOutputWithPoolingAndCrossAttentions

    bottom: FrozenBottom = self._frozen_bottom
    h = bottom.hidden(input_ids, attention_mask, token_type_ids)
    if attention_mask is not None:
        attention_mask = create_bidirectional_mask(
            config=self.config, inputs_embeds=h, attention_mask=attention_mask
        )
    for layer in _layers(self)[bottom.layers :]:
        h = layer(h, attention_mask)
    pooled = self.pooler(h) if getattr(self, "pooler", None) is not None else None
    return BaseModelOutputWithPoolingAndCrossAttentions(
        last_hidden_state=h, pooler_output=pooled, hidden_states=(h,)
    )
