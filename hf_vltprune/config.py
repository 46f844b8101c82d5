"""`PruningConfig`: one validated dataclass for every token-reduction method."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from .reduce.registry import get_reducer_class, reducer_names

MODALITIES = ("vision", "text")


def _fail(field_name: str, value: Any, allowed: str) -> None:
    raise ValueError(f"PruningConfig.{field_name}={value!r} is invalid: allowed {allowed}.")


@dataclass
class PruningConfig:
    """How a vision-language model reduces its tokens.

    The budget of each encoder is either `vision_keep` / `text_keep` (the fraction of tokens left after the last
    reducing layer, reached by removing the same share in every reducing layer) or an explicit
    `vision_schedule` / `text_schedule` (the fraction of the original tokens left after each reducing layer,
    non-increasing). A keep of 1.0 leaves that encoder untouched: the model then computes exactly what the stock
    transformers class computes.

    Args:
        method (`str`):
            Name of a registered reducer (`hf_vltprune.reducer_names()`), e.g. `"tome"` or `"crossget"`.
        vision_keep (`float`, in (0, 1]):
            Fraction of the vision tokens (CLS excluded) left after the last reducing vision layer.
        text_keep (`float`, in (0, 1]):
            Fraction of the text tokens (the summary token excluded) left after the last reducing text layer.
        vision_layers (`list[int]`, *optional*):
            Indices of the vision encoder layers that reduce. Defaults to every layer.
        text_layers (`list[int]`, *optional*):
            Indices of the text encoder layers that reduce. Defaults to every layer.
        vision_schedule (`list[float]`, *optional*):
            Fraction of the original vision tokens left after each reducing vision layer (one entry per layer).
        text_schedule (`list[float]`, *optional*):
            As `vision_schedule`, for the text encoder.
        proportional_attention (`bool`, defaults to `True`):
            Add `log(size)` of each key to the attention logits, so a merged token counts as the tokens it stands for.
        method_options (`dict`, *optional*):
            Options of the chosen method; unknown names are rejected. See `docs/methods.md`.
    """

    method: str = "tome"
    vision_keep: float = 1.0
    text_keep: float = 1.0
    vision_layers: list[int] | None = None
    text_layers: list[int] | None = None
    vision_schedule: list[float] | None = None
    text_schedule: list[float] | None = None
    proportional_attention: bool = True
    method_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.method not in reducer_names():
            _fail("method", self.method, f"one of {sorted(reducer_names())}")
        for modality in MODALITIES:
            self._validate_modality(modality)
        if not isinstance(self.proportional_attention, bool):
            _fail("proportional_attention", self.proportional_attention, "True or False")
        if not isinstance(self.method_options, dict):
            _fail("method_options", self.method_options, "a dict of option names to values")
        reducer = get_reducer_class(self.method)
        self.method_options = reducer.resolve_options(self.method_options)
        if self.text_keep < 1.0 and not reducer.supports_padded:
            _fail("text_keep", self.text_keep, f"1.0 for method {self.method!r} (it reduces dense vision batches only)")

    def _validate_modality(self, modality: str) -> None:
        keep_name, layers_name, schedule_name = f"{modality}_keep", f"{modality}_layers", f"{modality}_schedule"
        keep = getattr(self, keep_name)
        if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not (0.0 < keep <= 1.0):
            _fail(keep_name, keep, "a number in (0, 1]")
        setattr(self, keep_name, float(keep))

        layers = getattr(self, layers_name)
        if layers is not None:
            layers = list(layers)
            if not layers or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in layers):
                _fail(layers_name, layers, "a non-empty list of layer indices >= 0")
            if len(set(layers)) != len(layers):
                _fail(layers_name, layers, "distinct layer indices")
            setattr(self, layers_name, sorted(layers))

        schedule = getattr(self, schedule_name)
        if schedule is not None:
            schedule = [float(s) for s in schedule]
            if not schedule or any(not (0.0 < s <= 1.0) for s in schedule):
                _fail(schedule_name, schedule, "a non-empty list of fractions in (0, 1]")
            if any(b > a for a, b in zip(schedule, schedule[1:])):
                _fail(schedule_name, schedule, "a non-increasing list (tokens are only removed, never added)")
            if keep != 1.0 and not math.isclose(keep, schedule[-1]):
                _fail(keep_name, keep, f"1.0 or the schedule's last entry {schedule[-1]} (both were given)")
            if layers is not None and len(layers) != len(schedule):
                _fail(schedule_name, schedule, f"one entry per layer of {layers_name}={layers}")
            setattr(self, schedule_name, schedule)
            setattr(self, keep_name, schedule[-1])
        elif layers is not None and keep == 1.0:
            _fail(layers_name, layers, f"None while {keep_name} is 1.0 (these layers would reduce nothing)")

    def reduces(self, modality: str) -> bool:
        """Whether the encoder of `modality` ("vision" or "text") removes any token."""
        return getattr(self, f"{modality}_keep") < 1.0

    def reducing_layers(self, modality: str, num_layers: int) -> list[int]:
        """Indices of the layers of an encoder with `num_layers` layers that reduce `modality`."""
        if not self.reduces(modality):
            return []
        layers = getattr(self, f"{modality}_layers")
        if layers is None:
            schedule = getattr(self, f"{modality}_schedule")
            # An explicit schedule without layers applies to the last len(schedule) layers.
            return list(range(num_layers - len(schedule), num_layers)) if schedule else list(range(num_layers))
        return layers

    def keep_schedule(self, modality: str, num_layers: int) -> dict[int, float]:
        """Layer index -> fraction of the original tokens left after that layer (only for reducing layers)."""
        layers = self.reducing_layers(modality, num_layers)
        schedule = getattr(self, f"{modality}_schedule")
        if schedule is None:
            # Same number of tokens removed in every reducing layer (ToMe's constant r).
            keep = getattr(self, f"{modality}_keep")
            schedule = [1.0 - (1.0 - keep) * (i + 1) / len(layers) for i in range(len(layers))]
        return dict(zip(layers, schedule))

    def validate_for_model(self, num_vision_layers: int, num_text_layers: int) -> None:
        """Check the layer indices and schedules against the depth of the encoders they apply to."""
        for modality, depth in (("vision", num_vision_layers), ("text", num_text_layers)):
            layers_name = f"{modality}_layers"
            layers = getattr(self, layers_name)
            if layers is not None and max(layers) >= depth:
                _fail(layers_name, layers, f"indices in [0, {depth - 1}] (the {modality} encoder has {depth} layers)")
            schedule = getattr(self, f"{modality}_schedule")
            if layers is None and schedule is not None and len(schedule) > depth:
                _fail(f"{modality}_schedule", schedule, f"at most {depth} entries (one per {modality} layer)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PruningConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"PruningConfig got unknown fields {unknown}: allowed {sorted(known)}.")
        return cls(**data)
