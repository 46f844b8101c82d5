"""What per-sample (dynamic) methods share: straight-through keep decisions, fusing each sample's dropped tokens
into one, and removing them with masks in training or by gathering at inference."""

from __future__ import annotations

from dataclasses import replace

import torch

from .state import TokenState, keep_tokens


def straight_through(hard: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """The value of `hard` with the gradient of `soft`."""
    return hard.to(soft.dtype) + soft - soft.detach()


def fused_token(state: TokenState, drop: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """`remove_dropped`'s `appended` token: the `weight`-weighted mean of each sample's dropped tokens (`weight`
    `[B, N]`, zero on the tokens that stay), their total size and whether the sample dropped any."""
    weight = weight / weight.sum(dim=1, keepdim=True).clamp_min(torch.finfo(weight.dtype).tiny)
    hidden = weight[:, None, :].to(state.hidden.dtype) @ state.hidden
    size = (state.sizes() * drop).sum(dim=1, keepdim=True)
    return hidden, size, drop.any(dim=1, keepdim=True)


def remove_dropped(state: TokenState, drop: torch.Tensor, keep: torch.Tensor, masked: bool,
                   appended: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> TokenState:
    """Each sample without its `drop`ped tokens (`[B, N]` bool), optionally plus one `appended` token.

    Args:
        keep: `[B, N]` keep values, 1 on every token that stays (straight-through in training, so the loss reaches
            the decisions through the kept tokens they scale).
        masked: training: every position stays, dropped tokens leave attention through the mask. Otherwise (inference)
            the survivors are gathered to the front in order and the batch is cut to its longest row.
        appended: `(hidden [B, 1, C], size [B, 1], exists [B, 1] bool)` of a token added after the survivors (MADTP's
            fused token); where `exists` is False it is padding.
    """
    stays = state.valid() & ~drop
    hidden, size, guide = state.hidden, state.sizes(), state.guide
    if masked:
        factor = torch.where(state.protected(), torch.ones_like(keep), keep)
        hidden = hidden * factor[..., None].to(hidden.dtype)
    if appended is not None:
        extra_hidden, extra_size, exists = appended
        hidden, size = torch.cat([hidden, extra_hidden], dim=1), torch.cat([size, extra_size], dim=1)
        stays = torch.cat([stays, exists], dim=1)
        guide = torch.cat([guide, torch.zeros_like(exists)], dim=1) if guide is not None else None
    if masked:
        return replace(state, hidden=hidden, size=size, mask=stays, guide=guide)
    return keep_tokens(replace(state, hidden=hidden, size=size, mask=None, guide=guide), stays)
