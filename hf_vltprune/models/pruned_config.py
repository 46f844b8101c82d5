"""What every pruning-enabled model config shares: turning its `pruning` entry into a validated dict."""

from __future__ import annotations

from ..config import PruningConfig


class PrunedConfigMixin:
    """Mixed in before a stock config class. The subclass declares the fields `pruning` (`dict | PruningConfig |
    None`) and `base_model_name_or_path` itself (transformers reads a config's fields from its own annotations) and
    checks the settings against the model in `_validate_pruning`."""

    def __post_init__(self, **kwargs):
        pruning = self.pruning
        if not isinstance(pruning, PruningConfig):
            pruning = PruningConfig.from_dict(dict(pruning or {}))
        # Loading a stock checkpoint passes its model type along ("blip", "llava"); this config is the pruned type,
        # which is also what transformers' weight renaming is looked up by.
        kwargs.pop("model_type", None)
        super().__post_init__(**kwargs)
        self._validate_pruning(pruning)
        self.pruning = pruning.to_dict()

    def _validate_pruning(self, pruning: PruningConfig) -> None:
        raise NotImplementedError
