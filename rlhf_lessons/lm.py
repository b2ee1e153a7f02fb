"""The shared language-model layer: prompts, batched generation and log-probabilities.

Every LM lesson (KL, reward models on a causal LM, PPO, DPO, SimPO, SPIN, A-LoL, the judges)
goes through these few functions, so that "the log-probability of a completion" means the same
thing everywhere. Conventions:

- A :class:`Batch` holds prompt and completion tokens side by side in one row:
  ``input_ids`` (B, T), ``attention_mask`` (B, T) = 1 on real tokens, and
  ``completion_mask`` (B, T) = 1 on the completion's tokens (the ones a policy is trained on).
  Rows may be padded on either side; positions are computed from ``attention_mask``, so left
  padding (used for batched generation) and right padding give the same log-probs.
- :func:`token_logprobs` returns ``out[b, t] = log p(input_ids[b, t] | input_ids[b, :t])``
  (0 at t = 0, which has no context). Summing ``out * completion_mask`` over t gives
  ``log pi(y | x)``, the quantity DPO, PPO's ratio and the KL penalty are built from.
- Sampling at temperature tau draws from ``softmax(logits / tau)``; the log-probs of those
  samples must be computed with the same tau (``temperature=`` below), or the policy's
  probabilities and the ones used in the loss disagree ("N implementation details", no. 6).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationConfig


@dataclass
class Batch:
    """Prompt + completion token rows. All tensors (B, T)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor

    @classmethod
    def from_rows(cls, rows: Sequence[tuple[Sequence[int], Sequence[int]]], pad: int) -> Batch:
        """``(prompt ids, completion ids)`` rows, right-padded (``input_ids`` with ``pad``)."""
        ids, attention = _pad_rows([torch.tensor([*p, *c]) for p, c in rows], left=False, value=pad)
        completion = torch.zeros_like(ids)
        for i, (p, c) in enumerate(rows):
            completion[i, len(p) : len(p) + len(c)] = 1
        return cls(ids, attention, completion)

    def _map(self, fn) -> Batch:
        return Batch(fn(self.input_ids), fn(self.attention_mask), fn(self.completion_mask))

    def to(self, device) -> Batch:
        return self._map(lambda t: t.to(device))

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def rows(self, index) -> Batch:
        """The rows ``index`` (an int tensor, list or slice) of every tensor: a minibatch."""
        return self._map(lambda t: t[index])

    def trimmed(self) -> Batch:
        """The batch without the columns that are padding in every row (right-padded rows: a
        minibatch of short rows cut from a batch padded to its longest)."""
        width = int(self.attention_mask.sum(-1).max())
        return self._map(lambda t: t[:, :width])


def format_prompt(tokenizer, prompt: str | Sequence[dict], system: str | None = None) -> str:
    """Turn a user message (or a list of chat messages) into the text the model is prompted
    with: the tokenizer's chat template with the assistant turn opened, when it has one;
    otherwise the raw text (base models, the course's tiny GPTs)."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system is not None:
        messages = [{"role": "system", "content": system}, *messages]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if len(messages) != 1 or messages[0]["role"] != "user":
        raise ValueError(
            "this tokenizer has no chat template, so only a single user message (a plain "
            "string prompt) can be formatted; pass the prompt text instead of messages"
        )
    return messages[0]["content"]


def _pad_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError(
            "the tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token"
        )
    return pad


def tokenize_pairs(
    tokenizer,
    prompts: Sequence[str],
    completions: Sequence[str],
    max_prompt_length: int | None = None,
    max_completion_length: int | None = None,
    add_eos: bool = True,
) -> Batch:
    """Tokenise already-formatted prompts and their completions into a right-padded Batch.

    Prompt and completion are tokenised separately and concatenated (as TRL does), so the
    boundary between them is exact. Over-long prompts lose their *start* (the end of a prompt
    is what the completion follows); over-long completions lose their end. ``add_eos``
    appends the EOS token to each completion, so models learn to stop.
    """
    if len(prompts) != len(completions):
        raise ValueError(f"got {len(prompts)} prompts but {len(completions)} completions")
    if not prompts:
        raise ValueError("prompts is empty")
    pad = _pad_id(tokenizer)
    rows = []
    for p_ids, c_ids, c in zip(_encode(tokenizer, prompts), _encode(tokenizer, completions),
                               completions, strict=True):  # fmt: skip
        if add_eos and tokenizer.eos_token_id is not None:
            c_ids = c_ids + [tokenizer.eos_token_id]
        if max_prompt_length is not None:
            p_ids = p_ids[-max_prompt_length:]
        if max_completion_length is not None:
            c_ids = c_ids[:max_completion_length]
        if not c_ids:
            raise ValueError(f"completion {c!r} has no tokens")
        rows.append((p_ids, c_ids))
    return Batch.from_rows(rows, pad)


def _encode(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text (no special tokens): each distinct text once, all in one call (a
    fast tokenizer encodes the list in Rust, with no Python call per text)."""
    distinct = list(dict.fromkeys(texts))
    ids = dict(zip(distinct, tokenizer(distinct, add_special_tokens=False)["input_ids"],
                   strict=True))  # fmt: skip
    return [ids[t] for t in texts]


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so a left-padded row starts at position 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _forward(model, batch: Batch, **kwargs):
    """``model`` (or a backbone) on ``batch``, at the positions of its real tokens."""
    mask = batch.attention_mask
    return model(
        input_ids=batch.input_ids, attention_mask=mask, position_ids=position_ids(mask), **kwargs
    )


def next_token_logits(model, batch: Batch, temperature: float = 1.0) -> torch.Tensor:
    """Logits aligned with the tokens they predict: ``out[:, t]`` scores ``input_ids[:, t]``
    given the tokens before it. Shape (B, T, V); ``out[:, 0]`` is zero (no context)."""
    return F.pad(_aligned_forward(model, batch, temperature)[0], (0, 0, 1, 0))


def next_token_logits_at(
    model, batch: Batch, index: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """``next_token_logits(model, batch)[b, index[b]]`` for every row b, shape (B, V): the
    logits scoring token ``index[b]`` given the tokens before it. The output layer runs at
    these B positions only (``logits_to_keep``), not at all B x T: on long prompts that saves
    most of the memory and a fifth of the compute (lesson 09's judges read one position)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if index.shape != (len(batch),) or (index < 1).any():
        raise ValueError("index must hold one position >= 1 per row (position 0 has no context)")
    out = _forward(model, batch, logits_to_keep=(index - 1).view(-1, 1).to(batch.input_ids.device))
    return out.logits[:, -1].float() / temperature


def _aligned_forward(model, batch: Batch, temperature: float, hidden: bool = False):
    """One forward pass; ``(logits, out)`` with ``logits[:, t]`` (B, T - 1, V) the float logits
    that score token ``t + 1``, divided by the temperature; ``out`` is the model output. No copy
    of the (B, T, V) logits is made at temperature 1: callers pad their (B, T - 1) results."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    out = _forward(model, batch, output_hidden_states=hidden)
    logits = out.logits[:, :-1].float()
    return (logits if temperature == 1.0 else logits / temperature), out


def token_logprobs(model, batch: Batch, temperature: float = 1.0) -> torch.Tensor:
    """Per-token log-probabilities of ``batch.input_ids`` under ``model``. Shape (B, T).

    ``out[b, t] = log softmax(logits_{t-1} / temperature)[input_ids[b, t]]``, 0 at t = 0.
    Multiply by ``batch.completion_mask`` to keep the completion's tokens.
    """
    logits, _ = _aligned_forward(model, batch, temperature)
    logp = torch.log_softmax(logits, dim=-1).gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
    return F.pad(logp, (1, 0))


def backbone_and_head(model) -> tuple[nn.Module, nn.Linear] | None:
    """``(backbone, head)`` of a Hugging Face causal LM (or a peft model around one) whose
    logits are exactly ``head(backbone(...).last_hidden_state)``; None for any other model
    (then callers compute the full logits). Models that scale or cap their logits (Gemma 2's
    soft-capping, Cohere's ``logit_scale``, ...) return None too."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not hasattr(inner, "get_output_embeddings") or not hasattr(inner, "base_model"):
        return None
    head, backbone = inner.get_output_embeddings(), inner.base_model
    config = getattr(inner, "config", None)
    scaled = any(getattr(config, k, None) not in (None, 1.0) for k in _LOGIT_SCALERS)
    if not isinstance(head, nn.Linear) or backbone is inner or scaled:
        return None
    return backbone, head


# config fields of models whose logits are not just the output layer's (transformers 5)
_LOGIT_SCALERS = ("final_logit_softcapping", "logit_scale", "output_multiplier",
                  "lm_head_multiplier", "logits_scaling")  # fmt: skip


def completion_logprobs(
    model, batch: Batch, temperature: float = 1.0, share_prompts: bool = False
) -> torch.Tensor:
    """Per-token log-probabilities of the *completion* tokens only: (B, T), 0 elsewhere.

    Equal to ``token_logprobs(model, batch, temperature) * batch.completion_mask``, computed
    with less work (``benchmarks/dpo_step.py`` measures it):

    - the output layer and the log-softmax run only at the states that predict a completion
      token (:func:`backbone_and_head`), not at every position of every row: the prompt and
      the padding cost no (T, V) logits. On SmolLM2 (V = 49152) the output layer is a fifth of
      the forward pass and its log-softmax the most memory-hungry step. (TRL 1.x's trainers
      patch the model with a chunked "fused LM head" for the same reason.)
    - with ``share_prompts``, rows with the same prompt tokens (a DPO pair's chosen and rejected
      responses, a GRPO group's samples) run their prompt through the model once
      (:func:`shared_prompt_states`): its keys and values are reused, with gradients, by every
      completion that follows it: a DPO pair pays for its prompt once instead of twice.

    Rows may be left- or right-padded; each row's completion must follow its prompt directly.
    """
    parts = backbone_and_head(model)
    if parts is None:  # any other model: full logits, then the mask
        return token_logprobs(model, batch, temperature) * batch.completion_mask
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    backbone, head = parts
    shared = shared_prompt_states(backbone, batch) if share_prompts else None
    if shared is not None:
        states, targets = shared
        where = batch.completion_mask.bool()
    else:
        hidden = _forward(backbone, batch, use_cache=False).last_hidden_state
        where = batch.completion_mask.bool().clone()
        where[:, 0] = False  # the state at t - 1 predicts token t; token 0 has no context
        states, targets = hidden[:, :-1][where[:, 1:]], batch.input_ids[where]
    logp = head_logprobs(head, states, targets, temperature)
    return torch.zeros(where.shape, dtype=logp.dtype, device=logp.device).masked_scatter(
        where, logp
    )


def shared_prompt_states(backbone, batch: Batch) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The last-layer states that predict each completion token, computing every distinct
    prompt once: ``(states, targets)``, (N, H) and (N,) for the N completion tokens of
    ``batch`` in row order. None when no two rows share a prompt, or a row has no prompt.

    Two passes: the P distinct prompts, left-padded (so each ends in the last column, whose
    state predicts the first completion token), with a key/value cache; then the B
    completions, right-padded, attending to their prompt's cached keys and values (the cache
    rows are gathered per completion, a differentiable copy), at positions continuing their
    prompt's. The result equals one pass over the full rows, up to float rounding.
    """
    real = batch.attention_mask.bool()
    in_prompt = real & ~batch.completion_mask.bool()
    prompts = [tuple(row[m].tolist()) for row, m in zip(batch.input_ids, in_prompt, strict=True)]
    distinct: dict[tuple, int] = {}
    index = [distinct.setdefault(p, len(distinct)) for p in prompts]
    if len(distinct) == len(prompts) or not all(prompts):
        return None
    device = batch.input_ids.device
    comps = [row[m] for row, m in zip(batch.input_ids, batch.completion_mask.bool(), strict=True)]
    p_ids, p_mask = _pad_rows([torch.tensor(p, device=device) for p in distinct], left=True)
    c_ids, c_mask = _pad_rows(comps, left=False)
    index = torch.tensor(index, device=device)
    out = backbone(input_ids=p_ids, attention_mask=p_mask, position_ids=position_ids(p_mask),
                   use_cache=True)  # fmt: skip
    cache = out.cache if hasattr(out, "cache") else out.past_key_values
    cache.reorder_cache(index)  # prompt row -> one copy per completion that follows it
    mask = torch.cat([p_mask[index], c_mask], dim=1)
    hidden = backbone(input_ids=c_ids, attention_mask=mask,
                      position_ids=position_ids(mask)[:, p_ids.shape[1]:],
                      **{_cache_argument(backbone): cache}, use_cache=True).last_hidden_state  # fmt: skip
    # the state predicting completion token j: the prompt's last for j = 0, else completion j - 1
    states = torch.cat([out.last_hidden_state[index, -1:], hidden[:, :-1]], dim=1)
    keep = c_mask.bool()
    return states[keep], c_ids[keep]


def _cache_argument(backbone) -> str:
    """The name of the key/value-cache argument: "cache" in recent transformers 5 releases,
    "past_key_values" before."""
    names = inspect.signature(backbone.forward).parameters
    return "cache" if "cache" in names else "past_key_values"


def _pad_rows(
    rows: Sequence[torch.Tensor], left: bool, value: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows (1-D tensors) padded with ``value`` to their longest, on the left or the right:
    ``(ids, mask)``, (R, W) each."""
    width = max(len(r) for r in rows)
    ids = rows[0].new_full((len(rows), width), value)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        cols = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, cols], mask[i, cols] = r, 1
    return ids, mask


def head_logprobs(
    head: nn.Linear, hidden: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """``log softmax(head(hidden) / temperature)[targets]`` for N states: (N, H), (N,) -> (N,),
    as ``logit[target] - logsumexp(logits)`` (no (N, V) log-softmax tensor is kept)."""
    logits = head(hidden).float()
    if temperature != 1.0:
        logits = logits / temperature
    return logits.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def token_logprobs_and_states(
    model, batch: Batch, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward pass for an actor-critic: per-token log-probs, the hidden states they were
    predicted from, and the entropy of each predictive distribution.

    Returns ``(logp, states, entropy)``: ``logp`` (B, T) as :func:`token_logprobs`; ``states``
    (B, T, H) where ``states[:, t]`` is the last layer's hidden state at position t - 1, the
    state in which token t is chosen (a value head on it gives V(s_t), aligned with
    ``logp[:, t]``), zero at t = 0; ``entropy`` (B, T) of ``softmax(logits_{t-1} / tau)``.
    """
    logits, out = _aligned_forward(model, batch, temperature, hidden=True)
    states = F.pad(out.hidden_states[-1][:, :-1], (0, 0, 1, 0))
    log_probs = torch.log_softmax(logits, dim=-1)
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    logp = log_probs.gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
    return F.pad(logp, (1, 0)), states, F.pad(entropy, (1, 0))


def sequence_logprobs(
    token_logp: torch.Tensor, completion_mask: torch.Tensor, average: bool = False
) -> torch.Tensor:
    """log pi(y | x) per row: the sum (or, with ``average``, the mean) of the completion's token
    log-probs. (B, T), (B, T) -> (B,). DPO uses the sum, SimPO and IPO-in-TRL the mean."""
    if token_logp.shape != completion_mask.shape:
        raise ValueError(
            f"token_logp {tuple(token_logp.shape)} and completion_mask "
            f"{tuple(completion_mask.shape)} must have the same shape"
        )
    mask = completion_mask.to(token_logp.dtype)
    total = (token_logp * mask).sum(-1)
    if not average:
        return total
    count = mask.sum(-1)
    if (count == 0).any():
        raise ValueError("a row has an empty completion: its average log-prob is undefined")
    return total / count


@dataclass
class Generation:
    """Sampled completions: the texts and the Batch (left-padded prompt + completion)."""

    prompts: list[str]
    completions: list[str]
    batch: Batch


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_p: float = 1.0,
    do_sample: bool = True,
    batch_size: int = 8,
    seed: int | None = None,
) -> Generation:
    """Sample one completion per (already formatted) prompt, ``batch_size`` prompts at a time.

    Prompts are left-padded (within a chunk every completion starts at the same column) and
    rows are right-padded to a common width. The returned Batch marks each completion up to and
    including its first EOS; later tokens are padding (attention_mask 0).
    """
    if not prompts:
        raise ValueError("prompts is empty")
    if seed is not None:
        torch.manual_seed(seed)
    pad = _pad_id(tokenizer)
    eos = tokenizer.eos_token_id
    device = next(model.parameters()).device
    # A complete config, so a model's own generation defaults (repetition penalties, top-k, ...)
    # cannot silently change the distribution we sample from.
    config = GenerationConfig(
        do_sample=do_sample, max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=eos,
        **({"temperature": temperature, "top_p": top_p, "top_k": 0} if do_sample else {}),
    )  # fmt: skip
    texts, ids_rows, attn_rows, comp_rows = [], [], [], []
    for start in range(0, len(prompts), batch_size):
        enc = _encode(tokenizer, prompts[start : start + batch_size])
        rows = [torch.tensor(e, dtype=torch.long, device=device) for e in enc]
        ids, attn = _pad_rows(rows, left=True, value=pad)
        out = model.generate(input_ids=ids, attention_mask=attn, generation_config=config)
        new = out[:, ids.shape[1] :]
        # completion mask: tokens up to and including the first EOS
        is_eos = new == eos if eos is not None else torch.zeros_like(new, dtype=torch.bool)
        after_eos = (is_eos.long().cumsum(-1) - is_eos.long()) > 0
        comp = (~after_eos).long()
        for row, keep in zip(new, comp.bool(), strict=True):
            texts.append(tokenizer.decode(row[keep], skip_special_tokens=True))
        ids_rows += out.cpu()
        attn_rows += torch.cat([attn, comp], dim=1).cpu()
        comp_rows += torch.cat([torch.zeros_like(attn), comp], dim=1).cpu()

    def stack(rows, value):  # chunks can differ in width: right-pad every row to the longest
        return nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=value)

    batch = Batch(stack(ids_rows, pad), stack(attn_rows, 0), stack(comp_rows, 0))
    return Generation(list(prompts), texts, batch)
