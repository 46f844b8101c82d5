"""VisionZip: dominant visual tokens by [CLS] attention plus a few merged contextual tokens (Yang et al., 2025).

Acts between a multimodal LLM's vision tower and its language model: the language model receives `k` tokens per
image instead of every patch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import TokenReducer
from .registry import register_reducer


def dominant_and_contextual(features: torch.Tensor, keys: torch.Tensor, scores: torch.Tensor, num_dominant: int,
                            num_contextual: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the `num_dominant` highest-scoring tokens and merge the rest into `num_contextual` tokens.

    The contextual tokens are anchored at evenly spaced leftover tokens; every other leftover token is averaged into
    the anchor its key is most similar to (cosine), so no patch is simply lost.

    Args:
        features: `[B, N, C]` the tokens to reduce.
        keys: `[B, N, Ck]` what similarity is measured on.
        scores: `[B, N]` importance; ties go to the lower index, so the choice is deterministic.

    Returns:
        `[B, num_dominant + num_contextual, C]` tokens in patch order, and `[B, k]` the patch each one sits at.
    """
    order = torch.argsort(scores, dim=1, descending=True, stable=True)
    dominant, leftover = order[:, :num_dominant], order[:, num_dominant:].sort(dim=1).values
    num_contextual = min(num_contextual, leftover.shape[1])
    if num_contextual == 0:
        anchors = dominant.sort(dim=1).values
        return gather_rows(features, anchors), anchors

    # Evenly spaced anchors among the leftover tokens (in patch order); the others join their most similar anchor.
    spacing = torch.arange(num_contextual, device=scores.device) * leftover.shape[1] // num_contextual
    is_anchor = torch.zeros(leftover.shape[1], dtype=torch.bool, device=scores.device)
    is_anchor[spacing] = True
    anchors, others = leftover[:, is_anchor], leftover[:, ~is_anchor]
    similarity = F.normalize(gather_rows(keys, others).float(), dim=-1) @ \
        F.normalize(gather_rows(keys, anchors).float(), dim=-1).transpose(1, 2)
    assignment = similarity.argmax(dim=-1)  # [B, others]
    totals = gather_rows(features, anchors).float()
    totals = totals.scatter_add(1, assignment[..., None].expand(-1, -1, features.shape[-1]),
                                gather_rows(features, others).float())
    counts = torch.ones(anchors.shape, device=scores.device).scatter_add(1, assignment, torch.ones_like(
        assignment, dtype=torch.float))
    contextual = (totals / counts[..., None]).to(features.dtype)

    tokens = torch.cat([gather_rows(features, dominant), contextual], dim=1)
    positions = torch.cat([dominant, anchors], dim=1)
    patch_order = positions.argsort(dim=1)
    return gather_rows(tokens, patch_order), positions.gather(1, patch_order)


def gather_rows(tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """`tokens[b, index[b]]` for `[B, N, C]` tokens and `[B, M]` indices."""
    return tokens.gather(1, index[..., None].expand(-1, -1, tokens.shape[-1]))


@register_reducer("visionzip")
class VisionZipReducer(TokenReducer):
    """Text-agnostic: each image keeps its most [CLS]-attended patches plus merged contextual tokens.

    The model passes the vision tower's [CLS] attention over the patches and their keys, both from the layer whose
    output feeds the projector.
    """

    location = "before_language_model"
    architectures = ("llava",)
    default_options = {"contextual_fraction": 10 / 64}
    paper = "Yang et al., VisionZip: Longer is Better but Not Necessary in Vision Language Models, CVPR 2025"
    citation = """@inproceedings{yang2025visionzip,
  title     = {{VisionZip}: Longer is Better but Not Necessary in Vision Language Models},
  author    = {Yang, Senqiao and Chen, Yukang and Tian, Zhuotao and Wang, Chengyao and Li, Jingyao and
               Yu, Bei and Jia, Jiaya},
  booktitle = {IEEE/CVF Conference on Computer Vision and Pattern Recognition},
  year      = {2025}
}"""

    @classmethod
    def resolve_options(cls, options):
        options = super().resolve_options(options)
        fraction = options["contextual_fraction"]
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= fraction < 1.0:
            raise ValueError(f"method_options['contextual_fraction']={fraction!r} is invalid: allowed a number in "
                             "[0, 1) (the share of kept tokens that are merged contextual tokens).")
        return options

    @classmethod
    def default_layers(cls, num_layers: int) -> list[int]:
        return [0]  # one reduction step

    def tokens_kept(self, num_tokens: int) -> int:
        """How many tokens an image of `num_tokens` tokens keeps at the current `progress`."""
        return max(1, min(num_tokens, int(num_tokens * self.target_keep(0) + 0.5)))

    def importance(self, dominance: torch.Tensor, relevance: torch.Tensor | None) -> torch.Tensor:
        """`[images, N]` score each patch is ranked by: its [CLS] attention."""
        return dominance

    def select(self, features: torch.Tensor, keys: torch.Tensor, dominance: torch.Tensor,
               relevance: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`[images, k, C]` kept tokens of `[images, N, C]` `features` and the `[images, k]` patch each sits at."""
        keep = self.tokens_kept(features.shape[1])
        num_contextual = int(keep * self.options["contextual_fraction"] + 0.5) if keep < features.shape[1] else 0
        return dominant_and_contextual(features, keys, self.importance(dominance, relevance), keep - num_contextual,
                                       num_contextual)
