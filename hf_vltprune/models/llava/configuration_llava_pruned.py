"""`LlavaPrunedConfig`: a stock `LlavaConfig` plus the `pruning` settings."""

from __future__ import annotations

from transformers import LlavaConfig

from ...config import PruningConfig
from ...reduce import get_reducer_class
from ..pruned_config import PrunedConfigMixin


def _fail(field_name: str, value, allowed: str) -> None:
    raise ValueError(f"PruningConfig.{field_name}={value!r} is invalid for this LLaVA model: allowed {allowed}.")


class LlavaPrunedConfig(PrunedConfigMixin, LlavaConfig):
    r"""Configuration of a pruning-enabled LLaVA model.

    Everything a [`~transformers.LlavaConfig`] holds, plus `pruning`: the [`PruningConfig`] as a dict, written to
    `config.json` and restored by `from_pretrained`. Methods act in the vision tower (`tome`, `crossget`, `random`),
    between the vision tower and the language model (`visionzip`, `textguided`) or inside the language model
    (`fastv`, `pdrop`; `vision_layers` then indexes language-model layers).

    Args:
        pruning (`dict` or [`PruningConfig`], *optional*):
            How the model reduces its visual tokens. Defaults to `PruningConfig()` (the stock model).
        base_model_name_or_path (`str`, *optional*):
            The stock checkpoint (Hub id or folder) this model was converted from; the model card's `base_model`.
    """

    model_type = "llava_pruned"

    pruning: dict | PruningConfig | None = None
    base_model_name_or_path: str | None = None

    @property
    def tokens_per_image(self) -> int:
        """Visual tokens one image puts into the prompt (patches, plus [CLS] with the "full" strategy)."""
        patches = (self.vision_config.image_size // self.vision_config.patch_size) ** 2
        return patches + (self.vision_feature_select_strategy == "full")

    @property
    def vision_layers_run(self) -> int:
        """Vision tower layers the deepest selected feature layer needs (the rest are never computed)."""
        layers = self.vision_feature_layer
        layers = layers if isinstance(layers, list) else [layers]
        depth = self.vision_config.num_hidden_layers
        return max(layer % (depth + 1) for layer in layers)

    @property
    def pruning_config(self) -> PruningConfig:
        """The validated [`PruningConfig`] stored in `pruning` (`vision_tokens` turned into `vision_keep`)."""
        return PruningConfig.from_dict(self.pruning).with_token_count(self.tokens_per_image)

    def _validate_pruning(self, pruning: PruningConfig) -> None:
        pruning.validate_for_architecture("llava")
        if pruning.reduces("text"):
            _fail("text_keep", pruning.text_keep, "1.0 (LLaVA's text tokens are the prompt, never reduced)")
        resolved = pruning.with_token_count(self.tokens_per_image)
        location = get_reducer_class(pruning.method).location
        if location == "encoder":
            if pruning.reduces("vision") and isinstance(self.vision_feature_layer, list):
                raise ValueError(f"PruningConfig.method={pruning.method!r} reduces inside the vision tower, so the "
                                 f"layers' token counts differ: vision_feature_layer must be one layer, got "
                                 f"{self.vision_feature_layer}.")
            resolved.validate_for_model(self.vision_layers_run, 1)
        elif location == "language_model" and pruning.token_positions != "original":
            _fail("token_positions", pruning.token_positions, f"'original' for method {pruning.method!r} (the layers "
                  "before the drop already cached the tokens at their original positions)")
        if location == "language_model" and pruning.reduces("vision"):
            depth = self.text_config.num_hidden_layers
            layers = resolved.reducing_layers("vision", depth)
            schedule = resolved.vision_schedule
            if any(layer < 1 or layer >= depth for layer in layers) or (schedule and len(schedule) > len(layers)):
                _fail("vision_layers", pruning.vision_layers or layers,
                      f"language-model layer indices in [1, {depth - 1}] (a layer scores the tokens the next one "
                      f"drops; the language model has {depth} layers), one per vision_schedule entry")
