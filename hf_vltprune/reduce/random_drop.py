"""`random`: drops random tokens at the same budget as the other methods; the floor every method must beat."""

from __future__ import annotations

import torch

from .base import LayerMetric, TokenReducer
from .registry import register_reducer
from .state import TokenState, keep_tokens


@register_reducer("random")
class RandomDropReducer(TokenReducer):
    """Removes uniformly random unprotected tokens (no merging, so the dropped tokens' content is lost).

    Dense (vision) batches only: dropped tokens take their share of the original count with them, which the
    per-sample budget of a padded text batch could not recover. Draws from torch's global generator, so
    `torch.manual_seed` makes a run repeatable.
    """

    supports_padded = False

    def forward(self, layer_idx: int, state: TokenState, metric: LayerMetric) -> TokenState:
        if not state.is_dense:
            raise ValueError("method 'random' reduces dense (vision) batches only: set text_keep=1.0.")
        budget = self.tokens_to_remove(layer_idx, state)
        if budget.width == 0:
            return state
        scores = torch.rand(state.hidden.shape[:2], device=state.hidden.device)
        scores = scores.masked_fill(state.protected(), 2.0)  # protected tokens sort last: never dropped
        dropped = scores.argsort(dim=1)[:, : budget.width]
        keep = torch.ones_like(scores, dtype=torch.bool).scatter_(1, dropped, False)
        return keep_tokens(state, keep, state.num_tokens - budget.width)
