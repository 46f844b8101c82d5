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

PRUNED_ARCHITECTURES = {
    cls.__name__: cls
    for cls in (
        BlipPrunedModel,
        BlipPrunedForImageTextRetrieval,
        BlipPrunedForQuestionAnswering,
        BlipPrunedForConditionalGeneration,
    )
}


def register_auto_classes() -> None:
    """Make `AutoConfig` / `AutoModel*` resolve the `blip_pruned` model type (idempotent)."""
    AutoConfig.register(BlipPrunedConfig.model_type, BlipPrunedConfig, exist_ok=True)
    AutoModel.register(BlipPrunedConfig, BlipPrunedModel, exist_ok=True)
    AutoModelForZeroShotImageClassification.register(BlipPrunedConfig, BlipPrunedModel, exist_ok=True)
    AutoModelForVisualQuestionAnswering.register(BlipPrunedConfig, BlipPrunedForQuestionAnswering, exist_ok=True)
    AutoModelForImageTextToText.register(BlipPrunedConfig, BlipPrunedForConditionalGeneration, exist_ok=True)


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
    """The pruning-enabled version of an already loaded stock BLIP model, with the same weights.

    Args:
        model: a `BlipModel`, `BlipForImageTextRetrieval`, `BlipForQuestionAnswering` or
            `BlipForConditionalGeneration` (a pruned one is re-configured).
        pruning_config: the pruning settings.
    """
    stock_class = next((stock for stock in BLIP_PRUNED_CLASSES if isinstance(model, stock)), None)
    if stock_class is None:
        raise ValueError(
            f"get_pruned_model supports {sorted(c.__name__ for c in BLIP_PRUNED_CLASSES)}, got {type(model).__name__}."
        )
    pruned_class = BLIP_PRUNED_CLASSES[stock_class]
    if not isinstance(pruning_config, PruningConfig):
        pruning_config = PruningConfig.from_dict(dict(pruning_config))
    config_dict = model.config.to_dict()
    config_dict.pop("model_type", None)
    config_dict["pruning"] = pruning_config.to_dict()
    config = BlipPrunedConfig.from_dict(config_dict)
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
