"""Registration with the transformers Auto classes, `AutoPrunedModel`, and `get_pruned_model`."""

from __future__ import annotations

import json
import os

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageTextToText,
    AutoModelForVisualQuestionAnswering,
    AutoModelForZeroShotImageClassification,
    PreTrainedModel,
)
from transformers.utils import cached_file

from .config import PruningConfig
from .models.blip import (
    BlipPrunedConfig,
    BlipPrunedForConditionalGeneration,
    BlipPrunedForImageTextRetrieval,
    BlipPrunedForQuestionAnswering,
    BlipPrunedModel,
)
from .models.blip.modeling_blip_pruned import BLIP_PRUNED_CLASSES
from .models.llava import LlavaPrunedConfig, LlavaPrunedForConditionalGeneration, LlavaPrunedModel
from .models.llava.modeling_llava_pruned import LLAVA_PRUNED_CLASSES

# Stock class -> pruned class, for `get_pruned_model`.
PRUNED_CLASSES = {**BLIP_PRUNED_CLASSES, **LLAVA_PRUNED_CLASSES}

PRUNED_ARCHITECTURES = {
    cls.__name__: cls
    for cls in (
        BlipPrunedModel,
        BlipPrunedForImageTextRetrieval,
        BlipPrunedForQuestionAnswering,
        BlipPrunedForConditionalGeneration,
        LlavaPrunedModel,
        LlavaPrunedForConditionalGeneration,
    )
}


# (Auto class, config class, model class): what `import hf_vltprune` registers, in order of preference for loading.
AUTO_REGISTRATIONS = [
    (AutoModel, BlipPrunedConfig, BlipPrunedModel),
    (AutoModelForZeroShotImageClassification, BlipPrunedConfig, BlipPrunedModel),
    (AutoModelForVisualQuestionAnswering, BlipPrunedConfig, BlipPrunedForQuestionAnswering),
    (AutoModelForImageTextToText, BlipPrunedConfig, BlipPrunedForConditionalGeneration),
    (AutoModel, LlavaPrunedConfig, LlavaPrunedModel),
    (AutoModelForImageTextToText, LlavaPrunedConfig, LlavaPrunedForConditionalGeneration),
]

# The Hub task of each architecture (a model card's `pipeline_tag`). BLIP retrieval has no task of its own: its
# image-text similarity scores are closest to zero-shot image classification.
PIPELINE_TAGS = {
    "BlipPrunedModel": "zero-shot-image-classification",
    "BlipPrunedForImageTextRetrieval": "zero-shot-image-classification",
    "BlipPrunedForQuestionAnswering": "visual-question-answering",
    "BlipPrunedForConditionalGeneration": "image-to-text",
    "LlavaPrunedModel": "image-text-to-text",
    "LlavaPrunedForConditionalGeneration": "image-text-to-text",
}


def register_auto_classes() -> None:
    """Make `AutoConfig` / `AutoModel*` resolve the pruned model types (idempotent)."""
    for auto_class, config_class, model_class in AUTO_REGISTRATIONS:
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        auto_class.register(config_class, model_class, exist_ok=True)
    _register_weight_renaming()


def _register_weight_renaming() -> None:
    """Stock LLaVA checkpoints in the older layout (`language_model.model.*`) are renamed on loading by a mapping
    transformers keys by model type and class name; the pruned types get the same (transformers >= 5.2x; older
    versions rename through the inherited `_checkpoint_conversion_mapping`)."""
    try:
        from transformers.conversion_mapping import (
            get_checkpoint_conversion_mapping,
            register_checkpoint_conversion_mapping,
        )
    except ImportError:
        return
    for pruned, stock in (("llava_pruned", "llava"), ("LlavaPrunedModel", "LlavaModel")):
        mapping = get_checkpoint_conversion_mapping(stock)
        if mapping is not None:
            register_checkpoint_conversion_mapping(pruned, mapping, overwrite=True)


def loading_class(architecture: str) -> tuple[str, str, str | None]:
    """`(module, class, pipeline tag)`: how a model card tells users to load a checkpoint of `architecture`."""
    for auto_class, _, model_class in AUTO_REGISTRATIONS:
        if model_class.__name__ == architecture:
            return "transformers", auto_class.__name__, PIPELINE_TAGS.get(architecture)
    return "hf_vltprune", "AutoPrunedModel", PIPELINE_TAGS.get(architecture)


def auto_map_entries(config_class: type) -> dict[str, str]:
    """Auto class name -> class name, for the `auto_map` of a checkpoint whose config is a `config_class`."""
    entries = {"AutoConfig": config_class.__name__}
    for auto_class, registered_config, model_class in AUTO_REGISTRATIONS:
        if registered_config is config_class:
            entries[auto_class.__name__] = model_class.__name__
    return entries


class AutoPrunedModel:
    """Loads any hf_vltprune checkpoint into the class named by its config's `architectures`.

    Like peft's `AutoPeftModel`: BLIP retrieval has no transformers Auto class, so this is the one entry point that
    brings back every head.

    Example:
        ```python
        model = AutoPrunedModel.from_pretrained("out/blip-itm-tome-50")
        ```
    """

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> PreTrainedModel:
        hub_kwargs = {k: kwargs[k] for k in ("cache_dir", "revision", "token", "local_files_only") if k in kwargs}
        config_file = cached_file(pretrained_model_name_or_path, "config.json", **hub_kwargs)
        with open(config_file, encoding="utf-8") as handle:
            architectures = json.load(handle).get("architectures") or []
        for name in architectures:
            if name in PRUNED_ARCHITECTURES:
                return PRUNED_ARCHITECTURES[name].from_pretrained(pretrained_model_name_or_path, **kwargs)
        raise ValueError(
            f"{os.fspath(pretrained_model_name_or_path)!r} is not an hf_vltprune checkpoint: its architectures "
            f"{architectures} name none of {sorted(PRUNED_ARCHITECTURES)}."
        )


def get_pruned_model(model: PreTrainedModel, pruning_config: PruningConfig | dict) -> PreTrainedModel:
    """The pruning-enabled version of an already loaded stock BLIP or LLaVA model, with the same weights.

    Args:
        model: a `BlipModel`, `BlipForImageTextRetrieval`, `BlipForQuestionAnswering`,
            `BlipForConditionalGeneration`, `LlavaModel` or `LlavaForConditionalGeneration` (a pruned one is
            re-configured).
        pruning_config: the pruning settings.
    """
    stock_class = next((stock for stock in PRUNED_CLASSES if isinstance(model, stock)), None)
    if stock_class is None:
        raise ValueError(
            f"get_pruned_model supports {sorted(c.__name__ for c in PRUNED_CLASSES)}, got {type(model).__name__}."
        )
    pruned_class = PRUNED_CLASSES[stock_class]
    if not isinstance(pruning_config, PruningConfig):
        pruning_config = PruningConfig.from_dict(dict(pruning_config))
    config_dict = model.config.to_dict()
    config_dict.pop("model_type", None)
    config_dict["pruning"] = pruning_config.to_dict()
    config = pruned_class.config_class.from_dict(config_dict)
    if config.base_model_name_or_path is None and model.name_or_path:
        config.base_model_name_or_path = model.name_or_path
    pruned = pruned_class(config)
    missing, unexpected = pruned.load_state_dict(model.state_dict(), strict=False)
    # Reducer parameters may be new (stock model) or dropped (re-configured to a method without them).
    stock_missing = [key for key in missing if ".reducer." not in key]
    unexpected = [key for key in unexpected if ".reducer." not in key]
    if unexpected or stock_missing:
        raise RuntimeError(
            f"Weights of {type(model).__name__} did not map onto {pruned_class.__name__}: missing {stock_missing}, "
            f"unexpected {unexpected}."
        )
    parameter = next(model.parameters())
    pruned.to(device=parameter.device, dtype=parameter.dtype)
    if getattr(model, "generation_config", None) is not None:
        pruned.generation_config = model.generation_config
    return pruned.train(model.training)
