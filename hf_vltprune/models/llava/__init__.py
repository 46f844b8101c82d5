from .configuration_llava_pruned import LlavaPrunedConfig
from .modeling_llava_pruned import LlavaPrunedForConditionalGeneration, LlavaPrunedModel

__all__ = ["LlavaPrunedConfig", "LlavaPrunedForConditionalGeneration", "LlavaPrunedModel"]
