"""`TokenState`: the tokens of one encoder as they flow through its layers."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass
class TokenState:
    """Hidden states plus what a reducer needs to know about each token.

    Args:
        hidden: `[B, N, C]` token features.
        size: `[B, N]` number of original tokens each token stands for, or `None` while nothing was merged (all 1).
        mask: `[B, N]` bool, `True` for real tokens, or `None` while every token is real (a dense batch). Padding
            (text) and tokens removed by a per-instance method are `False`.
        guide: `[B, N]` bool, `True` for guide tokens that a method appended (CrossGET's cross token), or `None`.
            Guide tokens are never merged and are dropped before the heads read the output.
        num_guides: guide tokens per sample (methods append the same number to every sample).
        num_original: input tokens per sample while the batch is dense. Sizes always sum to it, so reducers can
            plan a dense batch's budget in Python, without waiting for the device.
    """

    hidden: torch.Tensor
    size: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    guide: torch.Tensor | None = None
    num_guides: int = 0
    num_original: int | None = None

    def __post_init__(self):
        if self.num_original is None and self.mask is None and self.size is None and self.guide is None:
            self.num_original = self.hidden.shape[1]

    @property
    def batch_size(self) -> int:
        return self.hidden.shape[0]

    @property
    def num_tokens(self) -> int:
        return self.hidden.shape[1]

    @property
    def is_dense(self) -> bool:
        """Every sample has the same real tokens count (no padding) and a known original count."""
        return self.mask is None and self.num_original is not None

    def with_hidden(self, hidden: torch.Tensor) -> "TokenState":
        return replace(self, hidden=hidden)

    def sizes(self) -> torch.Tensor:
        if self.size is not None:
            return self.size
        return torch.ones(self.hidden.shape[:2], dtype=torch.float32, device=self.hidden.device)

    def valid(self) -> torch.Tensor:
        if self.mask is not None:
            return self.mask
        return torch.ones(self.hidden.shape[:2], dtype=torch.bool, device=self.hidden.device)

    def protected(self) -> torch.Tensor:
        """Tokens no reducer may touch: the summary token at index 0 (CLS) and guide tokens."""
        protected = torch.zeros(self.hidden.shape[:2], dtype=torch.bool, device=self.hidden.device)
        protected[:, 0] = True
        if self.guide is not None:
            protected |= self.guide
        return protected

    def counts(self) -> torch.Tensor:
        """`[B]` number of real tokens per sample."""
        return self.valid().sum(dim=1)

    def original_counts(self) -> torch.Tensor:
        """`[B]` number of original tokens the real tokens stand for (sizes always sum to this)."""
        return (self.sizes() * self.valid()).sum(dim=1)

    def attention_bias(self, dtype: torch.dtype, proportional: bool = True) -> torch.Tensor | None:
        """Additive key bias `[B, 1, 1, N]` for attention, or `None` when it would be all zeros."""
        return attention_bias(self.size if proportional else None, self.mask, dtype)

    def drop_guides(self) -> "TokenState":
        if self.guide is None:
            return self
        if self.mask is None:
            # Dense batches keep guide tokens at the end (methods append them there; merging keeps order).
            keep = slice(0, self.num_tokens - self.num_guides)
            size = self.size[:, keep] if self.size is not None else None
            return replace(self, hidden=self.hidden[:, keep], size=size, guide=None, num_guides=0)
        return compact(replace(self, mask=self.valid() & ~self.guide, guide=None, num_guides=0))


def attention_bias(size: torch.Tensor | None, mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """`log(size)` of each key (proportional attention) plus the dtype's minimum where the key is masked out.

    The minimum (not -inf) matches transformers' own padding masks, so a masked key gets exactly zero weight without
    producing NaN in rows that are themselves padding.
    """
    if size is None and mask is None:
        return None
    if size is not None:
        bias = size.log().to(dtype)
        if mask is not None:
            bias = bias.masked_fill(~mask, torch.finfo(dtype).min)
    else:
        bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    return bias[:, None, None, :]


def gather_tokens(state: TokenState, index: torch.Tensor, mask: torch.Tensor | None) -> TokenState:
    """The tokens at `index` (`[B, M]`) of every sample, with `mask` as their new padding mask."""
    hidden = state.hidden.gather(1, index[..., None].expand(-1, -1, state.hidden.shape[-1]))
    size = state.size.gather(1, index) if state.size is not None else None
    guide = state.guide.gather(1, index) if state.guide is not None else None
    return replace(state, hidden=hidden, size=size, mask=mask, guide=guide)


def keep_tokens(state: TokenState, keep: torch.Tensor, length: int | None = None) -> TokenState:
    """Each sample's `keep` tokens (`[B, N]` bool), moved to the front in their original order.

    With `length` (every sample keeps exactly that many) the batch is cut there without reading the device; without
    it, the batch is cut to its longest row and a padding mask marks the shorter rows.
    """
    exact = length is not None
    if not exact:
        length = int(keep.sum(dim=1).max())
    # A stable sort of "is removed" puts kept tokens first without reordering them.
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :length]
    mask = None if exact else keep.gather(1, order)
    return gather_tokens(state, order, None if mask is None or bool(mask.all()) else mask)


def compact(state: TokenState) -> TokenState:
    """Gather each sample's real tokens to the front (original order kept) and cut the batch to its longest row."""
    if state.mask is None:
        return state
    if bool(state.mask.all()):
        return replace(state, mask=None)
    return keep_tokens(state, state.mask)
