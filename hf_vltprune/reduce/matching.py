"""Token matching and merging on plain tensors.

Every function here works on a padded batch where samples may remove different numbers of tokens: a matching
holds `[B, R]` source and destination indices plus which pairs are real (sample b uses its first `remove[b]`
pairs). A dense batch that removes the same number everywhere (`Budget.uniform`) skips every per-sample mask and
device synchronisation. Matching is index selection, so it runs without gradient; gradients flow through the
merge arithmetic.
"""

from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .base import Budget
from .state import TokenState, keep_tokens


class Matching(NamedTuple):
    """`[B, R]` pairs: token `src[b, k]` merges into `dst[b, k]` when `valid[b, k]` (`None`: every pair is real)."""

    src: torch.Tensor
    dst: torch.Tensor
    valid: torch.Tensor | None


def _clip(budget: Budget, limit: torch.Tensor | int) -> Budget:
    """Never remove more than `limit` tokens per sample."""
    if budget.uniform and isinstance(limit, int):
        width = min(budget.width, limit)
        return Budget(budget.remove.clamp(max=width), width, True)
    remove = torch.minimum(budget.remove, torch.as_tensor(limit, device=budget.remove.device))
    return Budget(remove, int(remove.max()) if remove.numel() else 0, False)


def _valid_pairs(budget: Budget, best_score: torch.Tensor) -> torch.Tensor | None:
    if budget.uniform:
        return None
    ranks = torch.arange(budget.width, device=budget.remove.device)
    return (ranks[None, :] < budget.remove[:, None]) & best_score.isfinite()


@torch.no_grad()
def bipartite_soft_matching(metric: torch.Tensor, budget: Budget, eligible: torch.Tensor,
                            dense_limit: int | None = None) -> Matching:
    """ToMe's bipartite soft matching.

    Tokens at even positions (set A) may merge into tokens at odd positions (set B). Each A token picks its most
    similar B token (cosine of `metric`); the A tokens with the most similar partners become sources. Several
    sources may share a destination; a source is never a destination, so there are no chains.

    Args:
        metric: `[B, N, C]` similarity features (the layer's keys, averaged over heads).
        budget: tokens to remove per sample; clipped to what each sample can remove.
        eligible: `[B, N]` bool, tokens that may be a source or a destination (real and not protected).
        dense_limit: for a dense batch, the number of tokens every sample can lose (skips counting `eligible`).
    """
    metric = F.normalize(metric.float(), dim=-1)
    a, b = metric[:, ::2], metric[:, 1::2]
    eligible_a, eligible_b = eligible[:, ::2], eligible[:, 1::2]
    scores = (a @ b.transpose(1, 2)).masked_fill(~eligible_a[:, :, None] | ~eligible_b[:, None, :], -torch.inf)
    best_score, best_b = scores.max(dim=-1)
    limit = dense_limit
    if limit is None:
        limit = torch.minimum(eligible.sum(1) // 2, torch.minimum(eligible_a.sum(1), eligible_b.sum(1)))
    budget = _clip(budget, limit)
    src_a = best_score.argsort(dim=-1, descending=True, stable=True)[:, : budget.width]
    dst_b = best_b.gather(1, src_a)
    return Matching(src=2 * src_a, dst=2 * dst_b + 1, valid=_valid_pairs(budget, best_score.gather(1, src_a)))


@torch.no_grad()
def complete_graph_soft_matching(metric: torch.Tensor, importance: torch.Tensor, budget: Budget,
                                 eligible: torch.Tensor, dense_limit: int | None = None) -> Matching:
    """CrossGET's complete-graph soft matching.

    1. `S` = cosine similarity of all token pairs, with the diagonal and ineligible rows/columns at -inf.
    2. Tokens are ranked by their most similar neighbour (most redundant first); token i only looks at tokens
       ranked after it, `rho_i = max_{rank j > rank i} S_ij`, so two mutually most similar tokens are never both
       chosen as sources.
    3. The tokens with the lowest `importance - rho` are sources; every other eligible token may be a destination.
    4. Each source merges into its most similar destination. Sources and destinations are disjoint.

    Args:
        metric: `[B, N, C]` similarity features.
        importance: `[B, N]` how much the guide (cross-modal) token cares about each token; important tokens stay.
        budget: tokens to remove per sample.
        eligible: `[B, N]` bool, tokens that may be a source or a destination.
        dense_limit: as in `bipartite_soft_matching`.
    """
    metric = F.normalize(metric.float(), dim=-1)
    n = metric.shape[1]
    pair_ok = eligible[:, :, None] & eligible[:, None, :]
    pair_ok.diagonal(dim1=1, dim2=2).fill_(False)
    sim = (metric @ metric.transpose(1, 2)).masked_fill(~pair_ok, -torch.inf)

    order = sim.max(dim=-1).values.argsort(dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(n, device=order.device).expand_as(order))
    later = rank[:, None, :] > rank[:, :, None]
    rho = sim.masked_fill(~later, -torch.inf).max(dim=-1).values
    # A token with no later-ranked neighbour gets rho = -inf: it has nothing to merge into without a chain, so stays.
    priority = (importance.float() - rho).masked_fill(~eligible, torch.inf)

    budget = _clip(budget, dense_limit if dense_limit is not None else eligible.sum(1) // 2)
    src = priority.argsort(dim=-1, stable=True)[:, : budget.width]
    valid = _valid_pairs(budget, priority.gather(1, src))
    is_src = torch.zeros_like(eligible).scatter_(1, src, True if valid is None else valid)
    dst_sim = sim.gather(1, src[..., None].expand(-1, -1, n)).masked_fill(is_src[:, None, :], -torch.inf)
    best, dst = dst_sim.max(dim=-1)
    if valid is not None:
        valid = valid & best.isfinite()
    return Matching(src=src, dst=dst, valid=valid)


def merge_tokens(
    state: TokenState,
    matching: Matching,
    src_weight: torch.Tensor | None = None,
    dst_weight: torch.Tensor | None = None,
) -> TokenState:
    """Merge every valid source into its destination and remove the sources; survivors keep their order.

    Works on size-scaled features `X = x * s`. For each pair the destination gains `src_weight * X_src +
    dst_weight * X_dst`; sizes add plainly; the result is `X_dst' / s_dst'`. The defaults (1 and 0) give the
    size-weighted mean of ToMe; CrossGET's ensemble passes its importance-based weights.

    The survivors are gathered first, so the float32 arithmetic runs on the shorter sequence only.
    """
    src, dst, valid = matching.src, matching.dst, matching.valid
    channels = state.hidden.shape[-1]
    removed = torch.zeros(state.hidden.shape[:2], dtype=torch.bool, device=state.hidden.device)
    removed.scatter_(1, src, True if valid is None else valid)
    alive = ~removed if state.mask is None else state.mask & ~removed
    # Every sample of a dense batch lost the same count: its length is known without a device sync.
    dense = valid is None and state.mask is None
    survivors = keep_tokens(state, alive, state.num_tokens - src.shape[1] if dense else None)
    dst_position = (alive.cumsum(dim=1) - 1).gather(1, dst)

    # Float32 arithmetic: sizes of heavily merged tokens exceed what bf16 represents exactly.
    size = survivors.sizes().float()
    src_size = state.sizes().float().gather(1, src)
    scaled = survivors.hidden.float() * size[..., None]
    contribution = state.hidden.gather(1, src[..., None].expand(-1, -1, channels)).float() * src_size[..., None]
    if src_weight is not None:
        contribution = contribution * src_weight[..., None]
    if dst_weight is not None:
        scaled_dst = scaled.gather(1, dst_position[..., None].expand(-1, -1, channels))
        contribution = contribution + scaled_dst * dst_weight[..., None]
    if valid is not None:
        contribution = contribution * valid[..., None]
        src_size = src_size * valid
    scaled = scaled.scatter_add(1, dst_position[..., None].expand(-1, -1, channels), contribution)
    size = size.scatter_add(1, dst_position, src_size)
    return replace(survivors, hidden=(scaled / size[..., None]).to(state.hidden.dtype), size=size)
