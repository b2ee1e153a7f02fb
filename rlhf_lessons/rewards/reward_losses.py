"""Reward-model losses (lesson 04): Bradley-Terry, InstructGPT's K-wise loss, Plackett-Luce.

Papers: Bradley & Terry 1952, "Rank analysis of incomplete block designs"; Ouyang et al. 2022,
"Training language models to follow instructions with human feedback" (InstructGPT),
arXiv 2203.02155, eq. 1; Plackett 1975 and Luce 1959 for the listwise model, used for reward
models and DPO by Zhu, Jordan & Jiao 2023 (arXiv 2301.11270) and Rafailov et al. 2023
(arXiv 2305.18290, appendix A.3).

A reward model r(x, y) gives each (prompt, response) a scalar. The three losses are negative
log-likelihoods of the human judgements under three models of how judgements arise:

- **Bradley-Terry** (one pair): P(y_w > y_l) = sigma(r_w - r_l);
- **K-wise** (InstructGPT): a ranking of K responses is read as its C(K, 2) pairwise judgements,
  each a Bradley-Terry term, averaged per prompt (so every prompt weighs the same whatever its K);
- **Plackett-Luce** (the whole ranking): the best response is picked from all K with probability
  softmax(r)_1, the second from the remaining K-1, and so on.

For K = 2 all three are the same number. Every function here is pure: it takes reward tensors
(with gradient) and returns ``(loss, metrics)``, and it never detaches the loss (one widely
copied K-wise implementation did, and its reward model never trained).

Batched rankings are (B, K) tensors in rank order, best first, with a boolean ``mask`` (B, K)
marking real responses, so prompts with fewer than K responses are padded. Padded entries may
hold any value, even NaN: they are replaced before any arithmetic, so they receive exactly zero
gradient. Valid positions need not be a prefix; they keep their order (left = better).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _check_finite(name: str, values: torch.Tensor) -> None:
    bad = ~torch.isfinite(values.detach())
    if bad.any():
        kind = "NaN" if torch.isnan(values.detach()[bad]).any() else "infinite"
        where = bad.nonzero()[0].tolist()
        raise ValueError(
            f"{name} has {int(bad.sum())} {kind} value(s) (first at index {where}); a reward "
            "model's outputs must be finite: check the model and its inputs (e.g. an empty "
            "sequence or a diverged run)"
        )


def _bool_mask(mask, values: torch.Tensor, mask_name: str, name: str) -> torch.Tensor:
    """``mask`` checked to have the shape of ``values``, as bool (all True if None)."""
    if mask is None:
        return torch.ones_like(values, dtype=torch.bool)
    if not torch.is_tensor(mask) or mask.shape != values.shape:
        shape = tuple(mask.shape) if torch.is_tensor(mask) else type(mask).__name__
        raise ValueError(
            f"{mask_name} must have the shape of {name} {tuple(values.shape)}, got {shape}"
        )
    return mask.to(device=values.device, dtype=torch.bool)


def _check_ranked(rewards: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Validate (B, K) rewards and mask; return the mask as bool (all True if None)."""
    if not torch.is_tensor(rewards) or rewards.dim() != 2:
        shape = tuple(rewards.shape) if torch.is_tensor(rewards) else type(rewards).__name__
        raise ValueError(f"rewards must be a (B, K) tensor, got {shape}")
    if not rewards.is_floating_point():
        raise ValueError(f"rewards must be floating point, got {rewards.dtype}")
    if rewards.shape[0] == 0:
        raise ValueError("rewards is empty (B = 0): there is no prompt to compute a loss on")
    mask = _bool_mask(mask, rewards, "mask", "rewards")
    counts = mask.sum(-1)
    if (counts < 2).any():
        row = int((counts < 2).nonzero()[0])
        raise ValueError(
            f"prompt {row} has {int(counts[row])} valid response(s) in mask; a ranking needs at "
            "least 2 to compare: drop that prompt from the batch"
        )
    _check_finite("rewards (at valid positions)", rewards[mask])
    return mask


def bradley_terry_loss(
    r_chosen: torch.Tensor,
    r_rejected: torch.Tensor,
    margin: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Bradley-Terry pairwise loss, TRL ``RewardTrainer``'s loss.

    L = -mean_b log sigma(r_chosen[b] - r_rejected[b] - margin[b])

    Args:
        r_chosen: (B,) rewards of the preferred responses, with gradient.
        r_rejected: (B,) rewards of the rejected responses, with gradient.
        margin: optional (B,) tensor or a float: how much the chosen reward should exceed the
            rejected one (Llama 2 uses a larger margin for more clearly preferred pairs).

    Returns:
        ``(loss, metrics)``: a scalar loss; metrics ``loss``, ``accuracy`` (fraction of pairs
        with r_chosen > r_rejected, ties count as wrong), ``margin`` (mean r_chosen -
        r_rejected, without the ``margin`` argument) and ``pairs`` (B).
    """
    if not torch.is_tensor(r_chosen) or not torch.is_tensor(r_rejected):
        raise ValueError("r_chosen and r_rejected must be tensors")
    if r_chosen.dim() != 1 or r_chosen.shape != r_rejected.shape:
        raise ValueError(
            "r_chosen and r_rejected must share shape (B,), got "
            f"{tuple(r_chosen.shape)} and {tuple(r_rejected.shape)}"
        )
    if r_chosen.shape[0] == 0:
        raise ValueError("r_chosen is empty (B = 0): there is no pair to compute a loss on")
    _check_finite("r_chosen", r_chosen)
    _check_finite("r_rejected", r_rejected)
    diff = r_chosen - r_rejected
    logits = diff
    if margin is not None:
        margin = torch.as_tensor(margin, dtype=diff.dtype, device=diff.device)
        if margin.dim() not in (0, 1) or (margin.dim() == 1 and margin.shape != diff.shape):
            raise ValueError(
                f"margin must be a float or a ({diff.shape[0]},) tensor, got shape "
                f"{tuple(margin.shape)}"
            )
        _check_finite("margin", margin)
        logits = diff - margin
    loss = -F.logsigmoid(logits).mean()
    with torch.no_grad():
        metrics = {
            "loss": loss.item(),
            "accuracy": (diff > 0).float().mean().item(),
            "margin": diff.mean().item(),
            "pairs": float(diff.shape[0]),
        }
    return loss, metrics


def pair_indices(k: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The C(k, 2) index pairs (i, j) with i < j, in the order (0,1), (0,2), ..., (k-2,k-1).

    The same order as :func:`rlhf_lessons.rewards.preference_data.ranked_to_pairs`. Returns two
    (P,) long tensors ``(better, worse)``.
    """
    if k < 2:
        raise ValueError(f"k must be >= 2 to form a pair, got {k}")
    i, j = torch.triu_indices(k, k, offset=1, device=device)
    return i, j


def kwise_loss_from_margins(
    margins: torch.Tensor, pair_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """The K-wise loss given each prompt's per-pair margins (the pair-level core of
    :func:`kwise_loss`).

    L = mean_b [ (1/P_b) sum_{p valid} -log sigma(margins[b, p]) ],  P_b = number of valid pairs

    With scalar rewards ``margins[b, p] = r[b, i_p] - r[b, j_p]``, but the formula does not
    need that: implementations with per-token rewards (e.g. withmartian's multinomial_reward)
    give each pair its own margin. If every margin equals m, the loss is log(1 + e^-m) for any
    number of pairs: the 1/P_b normalisation at work.

    Args:
        margins: (B, P) r_better - r_worse for each pair, with gradient.
        pair_mask: (B, P) bool, True for real pairs (default: all).

    Returns:
        ``(loss, metrics)``; metrics ``loss``, ``accuracy`` (fraction of all valid pairs with a
        positive margin), ``margin`` (mean margin over valid pairs), ``pairs`` (valid pairs)
        and ``prompts`` (B).
    """
    if not torch.is_tensor(margins) or margins.dim() != 2:
        shape = tuple(margins.shape) if torch.is_tensor(margins) else type(margins).__name__
        raise ValueError(f"margins must be a (B, P) tensor, got {shape}")
    if margins.shape[0] == 0 or margins.shape[1] == 0:
        raise ValueError(f"margins is empty (shape {tuple(margins.shape)})")
    pair_mask = _bool_mask(pair_mask, margins, "pair_mask", "margins")
    n_pairs = pair_mask.sum(-1)
    if (n_pairs == 0).any():
        row = int((n_pairs == 0).nonzero()[0])
        raise ValueError(f"prompt {row} has no valid pair in pair_mask: drop it from the batch")
    _check_finite("margins (at valid pairs)", margins[pair_mask])
    # Padded margins are replaced (not multiplied by 0), so a NaN there cannot leak into the
    # gradient; valid ones keep theirs.
    safe = margins.masked_fill(~pair_mask, 0.0)
    per_pair = -F.logsigmoid(safe) * pair_mask
    per_prompt = per_pair.sum(-1) / n_pairs  # the 1/C(K,2) normalisation
    loss = per_prompt.mean()
    with torch.no_grad():
        valid = margins[pair_mask]
        metrics = {
            "loss": loss.item(),
            "accuracy": (valid > 0).float().mean().item(),
            "margin": valid.mean().item(),
            "pairs": float(valid.numel()),
            "prompts": float(margins.shape[0]),
        }
    return loss, metrics


def ranked_margins(
    rewards: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """All pairwise margins of batched rankings: (B, K) -> margins (B, P), pair_mask (B, P).

    ``margins[b, p] = rewards[b, i_p] - rewards[b, j_p]`` for the P = C(K, 2) pairs i < j of
    :func:`pair_indices` (i ranked better); a pair is valid when both responses are.
    """
    mask = _check_ranked(rewards, mask)
    i, j = pair_indices(rewards.shape[1], device=rewards.device)
    safe = rewards.masked_fill(~mask, 0.0)
    return safe[:, i] - safe[:, j], mask[:, i] & mask[:, j]


def kwise_loss(
    rewards: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """InstructGPT's K-wise reward-model loss (arXiv 2203.02155, eq. 1).

    For prompt b with k_b valid responses in rank order (best first):

        L_b = -(1 / C(k_b, 2)) sum_{i<j valid} log sigma(r[b, i] - r[b, j]),   L = mean_b L_b

    All of a prompt's pairs live in one batch element and share its k_b reward evaluations
    (K forward passes instead of 2 C(K, 2)). For K = 2 this is :func:`bradley_terry_loss`.

    Args:
        rewards: (B, K) rewards in rank order, best first, with gradient.
        mask: (B, K) bool, True for real responses (default: all); every prompt needs >= 2.

    Returns ``(loss, metrics)``, metrics as :func:`kwise_loss_from_margins`.
    """
    margins, pair_mask = ranked_margins(rewards, mask)
    return kwise_loss_from_margins(margins, pair_mask)


def plackett_luce_loss(
    rewards: torch.Tensor, mask: torch.Tensor | None = None, normalize: bool = False
) -> tuple[torch.Tensor, dict[str, float]]:
    """Plackett-Luce (listwise, "ListMLE") negative log-likelihood of each ranking.

    For prompt b with valid responses in rank order (best first),

        L_b = -log P(ranking) = -sum_k [ r[b, k] - logsumexp_{j >= k, j valid} r[b, j] ]

    over valid positions k (the last term is 0: one response left, no choice). L = mean_b L_b.

    Normalisation: by default none, so L_b is the exact negative log-likelihood and a prompt
    with more responses (which carries more information) weighs more, as in maximum
    likelihood. ``normalize=True`` divides L_b by its k_b - 1 choice stages, so that every
    prompt weighs the same (the analogue of the K-wise loss's 1/C(K,2)). Either way K = 2 gives
    :func:`bradley_terry_loss`.

    Args:
        rewards: (B, K) rewards in rank order, best first, with gradient.
        mask: (B, K) bool, True for real responses (default: all); every prompt needs >= 2.

    Returns:
        ``(loss, metrics)``; metrics ``loss``, ``accuracy`` and ``pairs`` (pairwise accuracy and
        count over all valid pairs, as in :func:`kwise_loss`) and ``top1`` (fraction of prompts
        whose best response has the highest reward).
    """
    mask = _check_ranked(rewards, mask)
    k = rewards.shape[1]
    safe = rewards.masked_fill(~mask, 0.0)
    pos = torch.arange(k, device=rewards.device)
    # choice stage k chooses among the valid j >= k; the diagonal j == k is always included so
    # that even a padded stage has a finite logsumexp (its term is then masked out)
    later = pos[None, :] >= pos[:, None]  # (K stages, K candidates)
    candidates = later[None] & (
        mask[:, None, :] | torch.eye(k, dtype=torch.bool, device=pos.device)
    )
    scores = safe[:, None, :].expand(-1, k, -1).masked_fill(~candidates, float("-inf"))
    stage = (safe - torch.logsumexp(scores, dim=-1)) * mask  # (B, K) log-prob of each choice
    per_prompt = -stage.sum(-1)
    if normalize:
        per_prompt = per_prompt / (mask.sum(-1) - 1)
    loss = per_prompt.mean()
    with torch.no_grad():
        margins, pair_mask = ranked_margins(rewards, mask)
        valid = margins[pair_mask]
        best = mask.float().argmax(-1)  # first valid position = the best response
        top = safe.masked_fill(~mask, float("-inf")).argmax(-1)
        metrics = {
            "loss": loss.item(),
            "accuracy": (valid > 0).float().mean().item(),
            "pairs": float(valid.numel()),
            "top1": (top == best).float().mean().item(),
        }
    return loss, metrics
