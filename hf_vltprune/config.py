"""`PruningConfig`: one validated dataclass for every token-reduction method."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from .reduce.registry import get_reducer_class, reducer_names

MODALITIES = ("vision", "text")
TOKEN_POSITIONS = ("original", "compact")


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
        vision_tokens (`int`, *optional*):
            LLaVA: the number of visual tokens per image the language model keeps, instead of `vision_keep` (which is
            then `vision_tokens / tokens per image`). Must not exceed the tokens an image has.
        token_positions (`str`, defaults to `"original"`):
            LLaVA: the position ids of the tokens after visual tokens are removed. `"original"`: every kept token keeps
            the position it had (a merged token takes the position of the patch it is anchored at), so the text after
            the image sits where it always did; `"compact"`: the kept tokens are renumbered without gaps.
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
    vision_tokens: int | None = None
    token_positions: str = "original"
    proportional_attention: bool = True
    method_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.method not in reducer_names():
            _fail("method", self.method, f"one of {sorted(reducer_names())}")
        for modality in MODALITIES:
            self._validate_modality(modality)
        self._validate_vision_tokens()
        if self.token_positions not in TOKEN_POSITIONS:
            _fail("token_positions", self.token_positions, f"one of {list(TOKEN_POSITIONS)}")
        if not isinstance(self.proportional_attention, bool):
            _fail("proportional_attention", self.proportional_attention, "True or False")
        if not isinstance(self.method_options, dict):
            _fail("method_options", self.method_options, "a dict of option names to values")
        reducer = get_reducer_class(self.method)
        self.method_options = reducer.resolve_options(self.method_options)
        if self.text_keep < 1.0 and not reducer.supports_padded:
            _fail("text_keep", self.text_keep, f"1.0 for method {self.method!r} (it reduces dense vision batches only)")
        if reducer.location == "before_language_model":
            for name in ("vision_layers", "vision_schedule"):
                if getattr(self, name) is not None:
                    _fail(name, getattr(self, name), f"None for method {self.method!r} (it reduces once, before the "
                          "language model)")

    def _validate_vision_tokens(self) -> None:
        tokens = self.vision_tokens
        if tokens is None:
            return
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
            _fail("vision_tokens", tokens, "a positive number of tokens")
        if self.vision_keep < 1.0 or self.vision_schedule is not None:
            _fail("vision_tokens", tokens, "None when vision_keep or vision_schedule is given (one budget only)")

    def with_token_count(self, num_tokens: int) -> "PruningConfig":
        """This configuration for an encoder whose images have `num_tokens` tokens: `vision_tokens` becomes the
        equivalent `vision_keep`. Raises `ValueError` when more tokens are asked for than exist."""
        if self.vision_tokens is None:
            return self
        if self.vision_tokens > num_tokens:
            _fail("vision_tokens", self.vision_tokens, f"at most {num_tokens} (the tokens of one image)")
        data = {**self.to_dict(), "vision_tokens": None, "vision_keep": self.vision_tokens / num_tokens}
        return PruningConfig.from_dict(data)

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
        if modality == "vision" and self.vision_tokens is not None:
            return True
        return getattr(self, f"{modality}_keep") < 1.0

    def reducing_layers(self, modality: str, num_layers: int) -> list[int]:
        """Indices of the layers of an encoder with `num_layers` layers that reduce `modality`."""
        if not self.reduces(modality):
            return []
        layers = getattr(self, f"{modality}_layers")
        if layers is None:
            layers = get_reducer_class(self.method).default_layers(num_layers)
            schedule = getattr(self, f"{modality}_schedule")
            # An explicit schedule without layers applies to the last len(schedule) default layers.
            return layers[max(0, len(layers) - len(schedule)):] if schedule else layers
        return layers

    def keep_schedule(self, modality: str, num_layers: int) -> dict[int, float]:
        """Layer index -> fraction of the original tokens left after that layer (only for reducing layers)."""
        layers = self.reducing_layers(modality, num_layers)
        schedule = getattr(self, f"{modality}_schedule")
        if schedule is None:
            schedule = get_reducer_class(self.method).default_schedule(getattr(self, f"{modality}_keep"), len(layers))
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

    def validate_for_architecture(self, architecture: str) -> None:
        """Check that the method is built for `architecture` ("blip" or "llava")."""
        supported = get_reducer_class(self.method).architectures
        if architecture not in supported:
            _fail("method", self.method, f"a method for {architecture} models (it supports {list(supported)} only)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PruningConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"PruningConfig got unknown fields {unknown}: allowed {sorted(known)}.")
        return cls(**data)
