"""hf_vltprune: cross-modal token pruning and merging for Hugging Face vision-language transformers.

Importing the package registers the pruned model types with the transformers Auto classes.
"""

from .auto import AutoPrunedModel, get_pruned_model, register_auto_classes
from .config import PruningConfig
from .measure import measure
from .models.blip import (
    BlipPrunedConfig,
    BlipPrunedForConditionalGeneration,
    BlipPrunedForImageTextRetrieval,
    BlipPrunedForQuestionAnswering,
    BlipPrunedModel,
)
from .models.llava import LlavaPrunedConfig, LlavaPrunedForConditionalGeneration, LlavaPrunedModel
from .reduce import pruning_disabled, reducer_names, register_reducer
from .training import KeepRatioScheduler, PruningTrainer, SelfDistillation

register_auto_classes()

__version__ = "0.1.0"

__all__ = [
    "AutoPrunedModel",
    "BlipPrunedConfig",
    "BlipPrunedForConditionalGeneration",
    "BlipPrunedForImageTextRetrieval",
    "BlipPrunedForQuestionAnswering",
    "BlipPrunedModel",
    "KeepRatioScheduler",
    "LlavaPrunedConfig",
    "LlavaPrunedForConditionalGeneration",
    "LlavaPrunedModel",
    "PruningTrainer",
    "PruningConfig",
    "SelfDistillation",
    "get_pruned_model",
    "measure",
    "pruning_disabled",
    "reducer_names",
    "register_reducer",
]
