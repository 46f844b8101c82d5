from .configuration_blip_pruned import BlipPrunedConfig
from .modeling_blip_pruned import (
    BlipPrunedForConditionalGeneration,
    BlipPrunedForImageTextRetrieval,
    BlipPrunedForQuestionAnswering,
    BlipPrunedModel,
    BlipPrunedTextModel,
    BlipPrunedVisionModel,
)

__all__ = [
    "BlipPrunedConfig",
    "BlipPrunedForConditionalGeneration",
    "BlipPrunedForImageTextRetrieval",
    "BlipPrunedForQuestionAnswering",
    "BlipPrunedModel",
    "BlipPrunedTextModel",
    "BlipPrunedVisionModel",
]
