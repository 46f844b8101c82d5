"""Token matching and merging on plain tensors.

Every function here works on a padded batch where samples may remove different numbers of tokens: a matching
returns `[B, R]` source and destination indices plus a `[B, R]` bool telling which pairs are real (sample b uses its
first `r[b]` pairs). Matching is index selection, so it runs without gradient; gradients flow through the merge
arithmetic.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .state import TokenState, compact


class Matching(NamedTuple):
    """`[B, R]` pairs: token `src[b, k]` merges into `dst[b, k]` when `valid[b, k]`."""

    src: torch.Tensor
    dst: torch.Tensor
    valid: torch.Tensor


def _pair_mask(num_pairs: torch.Tensor, width: int) -> torch.Tensor:
    return torch.arange(width, device=num_pairs.device)[None, :] < num_pairs[:, None]


@torch.no_grad()
def bipartite_soft_matching(metric: torch.Tensor, r: torch.Tensor, eligible: torch.Tensor) -> Matching:
    """ToMe's bipartite soft matching.

    Tokens at even positions (set A) may merge into tokens at odd positions (set B). Each A token picks its most
    similar B token (cosine of `metric`); the `r[b]` A tokens with the most similar partners become sources.
    Several sources may share a destination; a source is never a destination, so there are no chains.

    Args:
        metric: `[B, N, C]` similarity features (the layer's keys, averaged over heads).
        r: `[B]` number of tokens to remove per sample; clipped to what sample b can remove.
        eligible: `[B, N]` bool, tokens that may be a source or a destination (real and not protected).
    """
    metric = F.normalize(metric.float(), dim=-1)
    a, b = metric[:, ::2], metric[:, 1::2]
    eligible_a, eligible_b = eligible[:, ::2], eligible[:, 1::2]
    scores = a @ b.transpose(1, 2)
    scores = scores.masked_fill(~eligible_a[:, :, None] | ~eligible_b[:, None, :], -torch.inf)
    best_score, best_b = scores.max(dim=-1)
    limit = torch.minimum(eligible.sum(1) // 2, torch.minimum(eligible_a.sum(1), eligible_b.sum(1)))
    r = torch.minimum(r.clamp(min=0), limit)
    width = int(r.max()) if r.numel() else 0
    src_a = best_score.argsort(dim=-1, descending=True, stable=True)[:, :width]
    dst_b = best_b.gather(1, src_a)
    valid = _pair_mask(r, width) & best_score.gather(1, src_a).isfinite()
    return Matching(src=2 * src_a, dst=2 * dst_b + 1, valid=valid)


@torch.no_grad()
def complete_graph_soft_matching(
    metric: torch.Tensor, importance: torch.Tensor, r: torch.Tensor, eligible: torch.Tensor
) -> Matching:
    """CrossGET's complete-graph soft matching.

    1. `S` = cosine similarity of all token pairs, with the diagonal and ineligible rows/columns at -inf.
    2. Tokens are ranked by their most similar neighbour (most redundant first); token i only looks at tokens
       ranked after it, `rho_i = max_{rank j > rank i} S_ij`, so two mutually most similar tokens are never both
       chosen as sources.
    3. The `r[b]` tokens with the lowest `importance - rho` are sources; every other eligible token is a possible
       destination.
    4. Each source merges into its most similar destination. Sources and destinations are disjoint.

    Args:
        metric: `[B, N, C]` similarity features.
        importance: `[B, N]` how much the guide (cross-modal) token cares about each token; important tokens are kept.
        r: `[B]` tokens to remove per sample.
        eligible: `[B, N]` bool, tokens that may be a source or a destination.
    """
    metric = F.normalize(metric.float(), dim=-1)
    n = metric.shape[1]
    pair_ok = eligible[:, :, None] & eligible[:, None, :]
    pair_ok &= ~torch.eye(n, dtype=torch.bool, device=metric.device)[None]
    sim = (metric @ metric.transpose(1, 2)).masked_fill(~pair_ok, -torch.inf)

    redundancy = sim.max(dim=-1).values
    order = redundancy.argsort(dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(n, device=order.device).expand_as(order))
    later = rank[:, None, :] > rank[:, :, None]
    rho = sim.masked_fill(~later, -torch.inf).max(dim=-1).values
    # Tokens with no later-ranked neighbour have nothing to merge into without a chain risk: rho = -inf keeps them.
    priority = (importance.float() - rho).masked_fill(~eligible, torch.inf)

    limit = eligible.sum(1) // 2
    r = torch.minimum(r.clamp(min=0), limit)
    width = int(r.max()) if r.numel() else 0
    src = priority.argsort(dim=-1, stable=True)[:, :width]
    valid = _pair_mask(r, width) & priority.gather(1, src).isfinite()

    is_src = torch.zeros_like(eligible).scatter_(1, src, valid)
    dst_sim = sim.gather(1, src[..., None].expand(-1, -1, n)).masked_fill(is_src[:, None, :], -torch.inf)
    dst = dst_sim.argmax(dim=-1)
    valid &= dst_sim.max(dim=-1).values.isfinite()
    return Matching(src=src, dst=dst, valid=valid)


def merge_tokens(
    state: TokenState,
    matching: Matching,
    src_weight: torch.Tensor | None = None,
    dst_weight: torch.Tensor | None = None,
) -> TokenState:
    """Merge every valid source into its destination, then remove the sources.

    Works on size-scaled features `X = x * s`. For each pair the destination gains `src_weight * X_src +
    dst_weight * X_dst`; sizes add plainly; the result is `X_dst' / s_dst'`. The defaults (1 and 0) give the
    size-weighted mean of ToMe; CrossGET's ensemble passes its importance-based weights.
    """
    # Float32 arithmetic: sizes of heavily merged tokens exceed what bf16 represents exactly.
    hidden, size = state.hidden.float(), state.sizes().float()
    src, dst, valid = matching.src, matching.dst, matching.valid
    channels = hidden.shape[-1]

    scaled = hidden * size[..., None]
    contribution = scaled.gather(1, src[..., None].expand(-1, -1, channels))
    if src_weight is not None:
        contribution = contribution * src_weight[..., None]
    if dst_weight is not None:
        contribution = contribution + scaled.gather(1, dst[..., None].expand(-1, -1, channels)) * dst_weight[..., None]
    contribution = contribution * valid[..., None]
    scaled = scaled.scatter_add(1, dst[..., None].expand(-1, -1, channels), contribution)
    size = size.scatter_add(1, dst, size.gather(1, src) * valid)
    merged = (scaled / size[..., None]).to(state.hidden.dtype)

    removed = torch.zeros_like(state.valid()).scatter_(1, src, valid)
    return compact(TokenState(hidden=merged, size=size, mask=state.valid() & ~removed, guide=state.guide))
