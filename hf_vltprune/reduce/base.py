"""`TokenReducer`: the interface every method implements, and the budget arithmetic they share."""

from __future__ import annotations

import math
from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn
from transformers import initialization as init

from .state import TokenState


class LayerMetric(NamedTuple):
    """What a layer's self-attention computed anyway and reducers may read: `[B, H, N, d]` queries, keys, values,
    and the `[B, H, N, N]` attention probabilities when the layer computed them (eagerly, for a reducer that
    `reads_attention`; `None` under SDPA)."""

    queries: torch.Tensor
    keys: torch.Tensor
    values: torch.Tensor | None = None
    probs: torch.Tensor | None = None


class TokenReducer(nn.Module):
    """Reduces the tokens of one encoder (vision or text).

    An encoder calls `start` after its embeddings, `before_layer` at the top of every layer, `forward` between the
    self-attention residual and the next sub-layer of every layer listed in `schedule`, and `finish` before the heads
    read the output.

    Args:
        schedule: layer index -> fraction of the original (unprotected) tokens left after that layer.
        hidden_size: width of the encoder's hidden states.
        num_layers: depth of the encoder.
        options: the method's options, already resolved by `resolve_options`.
        num_heads: attention heads of the encoder's self-attention.
        guidance_size: width of the other modality's summary vector the encoder passes to `start` (0: none).
    """

    method_name: ClassVar[str] = ""
    default_options: ClassVar[dict[str, Any]] = {}
    # Whether the method handles padded (text) batches; those that do not are rejected for text_keep < 1.
    supports_padded: ClassVar[bool] = True
    # Initial value of each own parameter that a checkpoint may lack: normal std, 0.0 for zeros (the default);
    # `initialize_parameter` is the hook for other starting values.
    init_std: ClassVar[dict[str, float]] = {}
    # Whether the method's decisions are learned and meaningless before fine-tuning (MADTP's prototypes).
    needs_training: ClassVar[bool] = False
    # Whether the method reads the full attention probabilities of its layers (`LayerMetric.probs`): those layers
    # then run eager attention, which returns them, instead of the method computing them a second time.
    reads_attention: ClassVar[bool] = False
    # The method's paper, as the model card cites it: a one-line reference and a BibTeX entry ("" when none).
    paper: ClassVar[str] = ""
    citation: ClassVar[str] = ""
    # Where the method acts: "encoder" (inside an encoder, between self-attention and MLP), "before_language_model"
    # (on a multimodal LLM's visual tokens, between the vision tower and the language model) or "language_model"
    # (drops visual tokens between the language model's layers).
    location: ClassVar[str] = "encoder"
    # Model families the method is built for ("blip", "llava").
    architectures: ClassVar[tuple[str, ...]] = ("blip", "llava")

    @classmethod
    def default_layers(cls, num_layers: int) -> list[int]:
        """The reducing layers when the configuration names none (every layer by default)."""
        return list(range(num_layers))

    @classmethod
    def default_schedule(cls, keep: float, num_stages: int) -> list[float]:
        """Fraction of the tokens left after each of `num_stages` reducing layers to end at `keep`: by default the
        same number removed in every layer (ToMe's constant r)."""
        return [1.0 - (1.0 - keep) * (i + 1) / num_stages for i in range(num_stages)]

    def __init__(self, schedule: dict[int, float], hidden_size: int, num_layers: int, options: dict[str, Any],
                 num_heads: int = 1, guidance_size: int = 0):
        super().__init__()
        self.schedule = dict(schedule)
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.options = dict(options)
        self.num_heads = num_heads  # of the encoder's self-attention
        self.guidance_size = guidance_size  # width of the other modality's summary passed to `start` (0: none)
        # Off inside `pruning_disabled`: the encoder then runs as if it had no reducer (the unpruned model).
        self.enabled = True
        # How far along the way from keep 1.0 to the schedule's targets (set by `KeepRatioScheduler`); 1.0 after
        # training, so a saved model always reduces to its configured targets.
        self.progress = 1.0

    @classmethod
    def resolve_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        """Fill in defaults and reject unknown option names (called by `PruningConfig`)."""
        unknown = sorted(set(options) - set(cls.default_options))
        if unknown:
            allowed = sorted(cls.default_options) or "none"
            raise ValueError(
                f"PruningConfig.method_options has unknown option(s) {unknown} for method {cls.method_name!r}: "
                f"allowed {allowed}."
            )
        return {**cls.default_options, **options}

    def initialize_parameter(self, name: str, param: torch.Tensor) -> None:
        """Set the reducer's own parameter `name` (not its submodules') to its starting value: `init_std[name]`."""
        std = self.init_std.get(name, 0.0)
        init.zeros_(param) if std == 0.0 else init.normal_(param, std=std)

    def reduces_at(self, layer_idx: int) -> bool:
        return layer_idx in self.schedule

    def target_keep(self, layer_idx: int) -> float:
        """Fraction of the original tokens to leave after this layer, at the current `progress`."""
        return 1.0 - self.progress * (1.0 - self.schedule[layer_idx])

    def start(self, state: TokenState, guidance: torch.Tensor | None = None) -> TokenState:
        """Called after the embeddings; `guidance` is the other modality's `[B, guidance_size]` summary, if any."""
        return state

    def head_mask(self, layer_idx: int, state: TokenState) -> "HeadMask | None":
        """Which self-attention heads each sample runs in this layer (`None`: all). Called first in each layer."""
        return None

    def neuron_mask(self, layer_idx: int) -> "HeadMask | None":
        """Which groups of feed-forward neurons each sample runs in this layer (`None`: all), over groups of
        consecutive intermediate features. Called before the layer's feed-forward block."""
        return None

    def before_layer(self, layer_idx: int, state: TokenState) -> TokenState:
        return state

    def forward(self, layer_idx: int, state: TokenState, metric: LayerMetric) -> TokenState:
        raise NotImplementedError

    def finish(self, state: TokenState) -> TokenState:
        return state.drop_guides()

    def share_with(self, other: "TokenReducer") -> None:
        """Called on the text encoder's reducer with the vision encoder's when both exist (parts both use)."""

    def losses(self) -> dict[str, torch.Tensor]:
        """Weighted auxiliary training losses of the forward passes since `clear_losses` (none by default)."""
        return {}

    def clear_losses(self) -> None:
        """Forget what `losses` would report (called after every training step's loss is built)."""

    def tokens_to_remove(self, layer_idx: int, state: TokenState) -> "Budget":
        """How many tokens each sample must lose in this layer to meet the schedule.

        The target is absolute (a fraction of the sample's original token count, which the sizes preserve), so a
        layer that could not remove enough leaves the rest to the next reducing layer. A dense batch is planned in
        Python (no device synchronisation); a padded one per sample.
        """
        keep = self.target_keep(layer_idx)
        if state.is_dense:
            protected = 1 + state.num_guides
            target = max(1, int(math.floor((state.num_original - 1) * keep + 0.5)))
            remove = max(0, state.num_tokens - protected - target)
            return Budget(torch.full((state.batch_size,), remove, device=state.hidden.device), remove, True)
        protected = (state.protected() & state.valid()).sum(dim=1)
        original = state.original_counts().round().long() - protected
        target = torch.floor(original * keep + 0.5).long().clamp(min=1)
        remove = (state.counts() - protected - target).clamp(min=0)
        return Budget(remove, int(remove.max()), False)


class HeadMask(NamedTuple):
    """Per-sample units of a layer, self-attention heads or groups of feed-forward neurons: `weight` `[B, units]`
    (1 run, 0 skip; straight-through in training) and `active`, the units any sample of the batch runs (inference):
    only those are computed. `None` computes all."""

    weight: torch.Tensor
    active: torch.Tensor | None = None


class Budget(NamedTuple):
    """Tokens to remove: `remove[b]` for sample b, at most `width`; `uniform` when every sample removes `width`."""

    remove: torch.Tensor
    width: int
    uniform: bool


def dense_limit(state: TokenState) -> int | None:
    """For a dense batch, the most tokens one matching step may remove: half of the unprotected ones."""
    return (state.num_tokens - 1 - state.num_guides) // 2 if state.is_dense else None
