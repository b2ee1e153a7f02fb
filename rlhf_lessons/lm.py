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

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import GenerationConfig


@dataclass
class Batch:
    """Prompt + completion token rows. All tensors (B, T)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor

    def to(self, device) -> Batch:
        return Batch(*(t.to(device) for t in (self.input_ids, self.attention_mask,
                                               self.completion_mask)))  # fmt: skip

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def rows(self, index) -> Batch:
        """The rows ``index`` (an int tensor, list or slice) of every tensor: a minibatch."""
        return Batch(self.input_ids[index], self.attention_mask[index],
                     self.completion_mask[index])  # fmt: skip

    def trimmed(self) -> Batch:
        """The batch without the columns that are padding in every row (right-padded rows: a
        minibatch of short rows cut from a batch padded to its longest)."""
        width = int(self.attention_mask.sum(-1).max())
        return Batch(self.input_ids[:, :width], self.attention_mask[:, :width],
                     self.completion_mask[:, :width])  # fmt: skip


def format_prompt(tokenizer, prompt: str | Sequence[dict], system: str | None = None) -> str:
    """Turn a user message (or a list of chat messages) into the text the model is prompted
    with: the tokenizer's chat template with the assistant turn opened, when it has one;
    otherwise the raw text (base models, the course's tiny GPTs)."""
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    else:
        messages = list(prompt)
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
    for p, c in zip(prompts, completions, strict=True):
        p_ids = tokenizer(p, add_special_tokens=False)["input_ids"]
        c_ids = tokenizer(c, add_special_tokens=False)["input_ids"]
        if add_eos and tokenizer.eos_token_id is not None:
            c_ids = c_ids + [tokenizer.eos_token_id]
        if max_prompt_length is not None:
            p_ids = p_ids[-max_prompt_length:]
        if max_completion_length is not None:
            c_ids = c_ids[:max_completion_length]
        if not c_ids:
            raise ValueError(f"completion {c!r} has no tokens")
        rows.append((p_ids, c_ids))
    width = max(len(p) + len(c) for p, c in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention = torch.zeros(len(rows), width, dtype=torch.long)
    completion = torch.zeros(len(rows), width, dtype=torch.long)
    for i, (p, c) in enumerate(rows):
        n = len(p) + len(c)
        input_ids[i, :n] = torch.tensor(p + c)
        attention[i, :n] = 1
        completion[i, len(p) : n] = 1
    return Batch(input_ids, attention, completion)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so a left-padded row starts at position 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


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
    out = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=position_ids(batch.attention_mask),
        logits_to_keep=(index - 1).view(-1, 1).to(batch.input_ids.device),
    )
    return out.logits[:, -1].float() / temperature


def _aligned_forward(model, batch: Batch, temperature: float, hidden: bool = False):
    """One forward pass; ``(logits, out)`` with ``logits[:, t]`` (B, T - 1, V) the float logits
    that score token ``t + 1``, divided by the temperature; ``out`` is the model output. No copy
    of the (B, T, V) logits is made at temperature 1: callers pad their (B, T - 1) results."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    out = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=position_ids(batch.attention_mask),
        output_hidden_states=hidden,
    )
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
        chunk = list(prompts[start : start + batch_size])
        enc = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in chunk]
        width = max(len(e) for e in enc)
        ids = torch.tensor([[pad] * (width - len(e)) + e for e in enc], device=device)
        attn = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in enc], device=device)
        out = model.generate(input_ids=ids, attention_mask=attn, generation_config=config)
        new = out[:, width:]
        # completion mask: tokens up to and including the first EOS
        is_eos = new == eos if eos is not None else torch.zeros_like(new, dtype=torch.bool)
        after_eos = (is_eos.long().cumsum(-1) - is_eos.long()) > 0
        comp = (~after_eos).long()
        for i in range(len(chunk)):
            texts.append(tokenizer.decode(new[i][comp[i].bool()], skip_special_tokens=True))
        ids_rows.append(out.cpu())
        attn_rows.append(torch.cat([attn, comp], dim=1).cpu())
        comp_rows.append(torch.cat([torch.zeros_like(attn), comp], dim=1).cpu())
    width = max(x.shape[1] for x in ids_rows)

    def rpad(x, value):  # chunks can differ in width: pad them on the right to a common one
        return F.pad(x, (0, width - x.shape[1]), value=value)

    batch = Batch(
        torch.cat([rpad(x, pad) for x in ids_rows]),
        torch.cat([rpad(x, 0) for x in attn_rows]),
        torch.cat([rpad(x, 0) for x in comp_rows]),
    )
    return Generation(list(prompts), texts, batch)
