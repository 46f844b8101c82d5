"""Text-guided selection of a multimodal LLM's visual tokens: VisionZip's selection, ranked by the prompt too.

The cross-modal guidance of MADTP and CrossGET, without training: besides the vision tower's [CLS] attention (what
the image is about), each patch is scored by the attention the prompt's text tokens pay it in the language model's
first layer (what the question is about). Both are distributions over the patches; their mixture ranks them.
"""

from __future__ import annotations

import torch

from .registry import register_reducer
from .visionzip import VisionZipReducer


@register_reducer("textguided")
class TextGuidedReducer(VisionZipReducer):
    """Keeps the patches the [CLS] token and the prompt attend to most, plus merged contextual tokens."""

    default_options = {"contextual_fraction": 10 / 64, "text_weight": 0.5}
    paper = ""
    citation = ""

    @classmethod
    def resolve_options(cls, options):
        options = super().resolve_options(options)
        weight = options["text_weight"]
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0.0 <= weight <= 1.0:
            raise ValueError(f"method_options['text_weight']={weight!r} is invalid: allowed a number in [0, 1] (the "
                             "weight of the prompt's attention against the [CLS] attention).")
        return options

    def importance(self, dominance: torch.Tensor, relevance: torch.Tensor | None) -> torch.Tensor:
        if relevance is None:
            raise ValueError("textguided needs the prompt: call the model with input_ids (or inputs_embeds).")
        weight = self.options["text_weight"]
        return (1.0 - weight) * dominance.float() + weight * relevance.float()
