"""Preference pairs for the DPO family (lessons 06-07): records to tokens, and the reference's
log-probabilities of them, computed once.

- :func:`pair_texts` checks every ``{"prompt", "chosen", "rejected"}`` record and renders
  conversational ones with the chat template; :func:`tokenize_preferences` turns N pairs into
  one :class:`~rlhf_lessons.lm.Batch` of 2N rows, chosen rows first, then rejected rows.
- The reference pi_ref is frozen, so log pi_ref(y_w | x) and log pi_ref(y_l | x) are numbers
  attached to each pair: :func:`precompute_reference_logps` computes them once, before training
  (TRL's ``precompute_ref_log_probs``); the loop then runs only the policy.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from rlhf_lessons.alignment.lora import adapter_disabled
from rlhf_lessons.course.device import torch_threads
from rlhf_lessons.lm import (
    Batch,
    completion_logprobs,
    format_prompt,
    sequence_logprobs,
    tokenize_pairs,
)
from rlhf_lessons.rewards.preference_data import PreferenceDataError, validate_pair
from rlhf_lessons.training import eval_mode


def _completion_text(messages: Sequence[Mapping], field: str, where: str) -> str:
    if len(messages) != 1:
        raise PreferenceDataError(
            f"{where}: field '{field}' has {len(messages)} messages; the trainer takes one "
            "assistant message per response. Keep only the final assistant turn"
        )
    return messages[0]["content"]


def pair_texts(tokenizer, pairs: Sequence[Mapping]) -> tuple[list[str], list[str], list[str]]:
    """Check every pair (:func:`rlhf_lessons.rewards.preference_data.validate_pair`) and return
    the prompts, chosen and rejected texts to tokenise. Standard records' prompts are taken to
    be already formatted; conversational records' prompt messages are rendered with
    :func:`rlhf_lessons.lm.format_prompt` (the chat template, assistant turn opened), and their
    single assistant message is the completion."""
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
    n, rows = len(prompts), torch.cat([batch.input_ids, batch.attention_mask], dim=-1)
    same = (rows[:n] == rows[n:]).all(-1)
    if same.any():
        i = int(same.nonzero()[0, 0])
        raise PreferenceDataError(
            f"pairs[{i}]: 'chosen' and 'rejected' are the same tokens after tokenisation and "
            f"truncation to max_completion_length={max_completion_length} (they differ only "
            "after the cut, or in characters the tokenizer ignores). Raise "
            "max_completion_length or drop the pair"
        )
    return batch


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

    def check_rows(self, rows: int, name: str) -> None:
        """A clear error unless these are the log-probs of ``rows`` rows (2 per pair)."""
        if len(self) != rows:
            raise ValueError(
                f"{name} holds {len(self)} rows but the {rows // 2} pairs make {rows} (chosen "
                "rows, then rejected rows): precompute it on tokenize_preferences of the same "
                "pairs, with the config's lengths"
            )


#: completion-token logits (tokens x V floats, 128 MiB in fp32) per no-grad forward pass
LOGITS_BUDGET = 2**25


def rows_per_pass(model, batch: Batch, limit: int = 64) -> int:
    """How many rows of ``batch`` one no-grad forward pass should take: as many as keep their
    completion-token logits (rows x completion tokens x V) within :data:`LOGITS_BUDGET`
    floats, at most ``limit``. The log-softmax over the vocabulary is memory-bound: SmolLM2
    (V = 49152) is fastest on a CPU in chunks of a few rows, the review model (V = 459) in
    large chunks; the budget gives each its own."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    vocab = head.weight.shape[0] if head is not None else model.config.vocab_size
    width = int(batch.completion_mask.sum(-1).max()) if len(batch) else 1
    return max(1, min(limit, LOGITS_BUDGET // (max(width, 1) * vocab)))


@torch.no_grad()
def precompute_reference_logps(
    ref_model,
    batch: Batch,
    chunk_size: int | None = None,
    disable_adapter: bool = False,
    threads: int | None = None,
) -> ReferenceLogps:
    """The sequence log-probs (sum and mean) of every row of ``batch`` (prompt + completion
    rows, e.g. :func:`tokenize_preferences`) under the frozen ``ref_model``, computed once.

    ``ref_model`` is a causal LM, or a peft model whose base is the reference
    (``disable_adapter=True`` bypasses its adapters meanwhile). It runs in eval mode under
    ``no_grad`` on ``threads`` (None: as they are), ``chunk_size`` rows per pass (None:
    :func:`rows_per_pass`). Rows with the same prompt (a pair's two responses) share a pass,
    where the prompt runs once (:func:`rlhf_lessons.lm.completion_logprobs`), and passes take
    rows of similar length. Results come back in the batch's row order.
    """
    if chunk_size is None:
        chunk_size = rows_per_pass(ref_model, batch)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    start = time.perf_counter()
    device = next(ref_model.parameters()).device
    sums, means = [], []
    by_length = _pass_order(batch)
    context = adapter_disabled(ref_model) if disable_adapter else contextlib.nullcontext()
    with eval_mode(ref_model), context, torch_threads(threads):
        for i in range(0, len(batch), chunk_size):
            rows = batch.rows(by_length[i : i + chunk_size]).trimmed().to(device)
            logp = completion_logprobs(ref_model, rows, share_prompts=True)
            sums.append(sequence_logprobs(logp, rows.completion_mask).cpu())
            means.append(sequence_logprobs(logp, rows.completion_mask, average=True).cpu())
    back = torch.argsort(by_length)  # sorted position of each row: back to the batch's order
    return ReferenceLogps(
        torch.cat(sums)[back], torch.cat(means)[back], time.perf_counter() - start
    )


def _pass_order(batch: Batch) -> torch.Tensor:
    """Row order for the reference passes: by prompt length, rows with the same prompt next to
    each other, then by completion length."""
    prompt = batch.attention_mask * (1 - batch.completion_mask)
    keys = [(int(m.sum()), row[m.bool()].tolist(), int(c.sum()))
            for row, m, c in zip(batch.input_ids, prompt, batch.completion_mask, strict=True)]  # fmt: skip
    return torch.tensor(sorted(range(len(keys)), key=keys.__getitem__), dtype=torch.long)
