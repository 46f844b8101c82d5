"""Model-agnostic token reduction on tensors (no transformers import in this package)."""

from .base import Budget, HeadMask, LayerMetric, TokenReducer
from .crossget import CrossGETReducer, js_divergence
from .madtp import MADTPReducer
from .matching import (
    Matching,
    bipartite_soft_matching,
    complete_graph_soft_matching,
    merge_tokens,
)
from .random_drop import RandomDropReducer
from .registry import get_reducer_class, reducer_names, register_reducer
from .smarttrim import SmartTrimReducer
from .state import TokenState, attention_bias, compact
from .switch import pruning_disabled, pruning_losses, reducers_of
from .tome import ToMeReducer

__all__ = [
    "Budget",
    "CrossGETReducer",
    "HeadMask",
    "LayerMetric",
    "MADTPReducer",
    "RandomDropReducer",
    "SmartTrimReducer",
    "Matching",
    "ToMeReducer",
    "TokenReducer",
    "TokenState",
    "attention_bias",
    "bipartite_soft_matching",
    "compact",
    "complete_graph_soft_matching",
    "get_reducer_class",
    "js_divergence",
    "merge_tokens",
    "pruning_disabled",
    "pruning_losses",
    "reducers_of",
    "reducer_names",
    "register_reducer",
]
