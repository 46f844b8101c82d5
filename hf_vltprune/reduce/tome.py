"""ToMe: training-free bipartite soft matching with size-weighted merging (Bolya et al., 2023)."""

from __future__ import annotations

from .base import LayerMetric, TokenReducer, dense_limit
from .matching import bipartite_soft_matching, merge_tokens
from .registry import register_reducer
from .state import TokenState


@register_reducer("tome")
class ToMeReducer(TokenReducer):
    """Merges the most redundant tokens into their most similar partner, using the layer's keys as the metric."""

    def forward(self, layer_idx: int, state: TokenState, metric: LayerMetric) -> TokenState:
        budget = self.tokens_to_remove(layer_idx, state)
        if budget.width == 0:
            return state
        eligible = state.valid() & ~state.protected()
        matching = bipartite_soft_matching(metric.keys.mean(dim=1), budget, eligible, dense_limit(state))
        return merge_tokens(state, matching)
