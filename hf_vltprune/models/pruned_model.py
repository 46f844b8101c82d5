"""What every pruning-enabled model class shares: initialising reducer parameters, the pruning settings, and
loading a stock checkpoint with new pruning settings."""

from __future__ import annotations

import os

from ..config import PruningConfig
from ..hub import PrunedModelHubMixin
from ..reduce import TokenReducer


class PrunedInitMixin:
    """Initialises the reducers' own parameters when they are missing from a checkpoint (e.g. a stock one)."""

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, TokenReducer):
            for name, param in module.named_parameters(recurse=False):
                module.initialize_parameter(name, param)


def pruning_dict(pruning_config: PruningConfig | dict) -> dict:
    """A validated `PruningConfig` as the dict a model config stores."""
    if isinstance(pruning_config, PruningConfig):
        return pruning_config.to_dict()
    return PruningConfig.from_dict(dict(pruning_config)).to_dict()


class PrunedModelMixin(PrunedModelHubMixin, PrunedInitMixin):
    """Mixed into every top-level pruned class (before the stock class it subclasses)."""

    _supports_sdpa = True

    @property
    def pruning_config(self) -> PruningConfig:
        return self.config.pruning_config

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, pruning_config=None, **kwargs):
        """Load a pruned checkpoint, or a stock checkpoint with `pruning_config` (stock weights unchanged, only the
        reducers' parameters newly initialised).

        Args:
            pruning_config ([`PruningConfig`] or `dict`, *optional*):
                Replaces the checkpoint's pruning settings (required to prune a stock checkpoint; without it a stock
                checkpoint loads with keep 1.0, i.e. unpruned).
        """
        if pruning_config is not None:
            if kwargs.get("config") is not None:
                raise ValueError("Pass either `config` or `pruning_config` to from_pretrained, not both.")
            config_kwargs = {k: kwargs.pop(k) for k in ("cache_dir", "revision", "token", "local_files_only")
                             if k in kwargs}
            config = cls.config_class.from_pretrained(
                pretrained_model_name_or_path, pruning=pruning_dict(pruning_config), **config_kwargs
            )
            if config.base_model_name_or_path is None:  # a stock checkpoint: remember where it came from
                config.base_model_name_or_path = os.fspath(pretrained_model_name_or_path)
            kwargs["config"] = config
            kwargs.update(config_kwargs)
        return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
