"""`BlipPrunedConfig`: a stock `BlipConfig` plus the `pruning` settings."""

from __future__ import annotations

from transformers import BlipConfig

from ...config import PruningConfig
from ..pruned_config import PrunedConfigMixin


class BlipPrunedConfig(PrunedConfigMixin, BlipConfig):
    r"""Configuration of a pruning-enabled BLIP model.

    Everything a [`~transformers.BlipConfig`] holds, plus `pruning`: the [`PruningConfig`] as a dict, so that it is
    written to `config.json` and restored by `from_pretrained`.

    Args:
        pruning (`dict` or [`PruningConfig`], *optional*):
            How the model reduces tokens. Defaults to `PruningConfig()` (keep 1.0: the stock model).
        base_model_name_or_path (`str`, *optional*):
            The stock checkpoint (Hub id or folder) this model was converted from; the model card's `base_model`.
    """

    model_type = "blip_pruned"

    pruning: dict | PruningConfig | None = None
    base_model_name_or_path: str | None = None

    def _validate_pruning(self, pruning: PruningConfig) -> None:
        pruning.validate_for_architecture("blip")
        pruning.with_token_count(self.num_patches).validate_for_model(
            self.vision_config.num_hidden_layers, self.text_config.num_hidden_layers
        )

    @property
    def num_patches(self) -> int:
        """Vision tokens per image besides [CLS]."""
        return (self.vision_config.image_size // self.vision_config.patch_size) ** 2

    @property
    def pruning_config(self) -> PruningConfig:
        """The validated [`PruningConfig`] stored in `pruning` (`vision_tokens` turned into `vision_keep`)."""
        return PruningConfig.from_dict(self.pruning).with_token_count(self.num_patches)
