"""ToMe: training-free bipartite soft matching with size-weighted merging (Bolya et al., 2023)."""

from __future__ import annotations

from .base import LayerMetric, TokenReducer, dense_limit
from .matching import bipartite_soft_matching, merge_tokens
from .registry import register_reducer
from .state import TokenState


@register_reducer("tome")
class ToMeReducer(TokenReducer):
    """Merges the most redundant tokens into their most similar partner, using the layer's keys as the metric."""

    paper = "Bolya et al., Token Merging: Your ViT But Faster, ICLR 2023"
    citation = """@inproceedings{bolya2023tome,
  title     = {Token Merging: Your {ViT} But Faster},
  author    = {Bolya, Daniel and Fu, Cheng-Yang and Dai, Xiaoliang and Zhang, Peizhao and
               Feichtenhofer, Christoph and Hoffman, Judy},
  booktitle = {International Conference on Learning Representations},
  year      = {2023}
}"""

    def forward(self, layer_idx: int, state: TokenState, metric: LayerMetric) -> TokenState:
        budget = self.tokens_to_remove(layer_idx, state)
        if budget.width == 0:
            return state
        eligible = state.valid() & ~state.protected()
        matching = bipartite_soft_matching(metric.keys.mean(dim=1), budget, eligible, dense_limit(state))
        return merge_tokens(state, matching)
