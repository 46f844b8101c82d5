"""FastV and PyramidDrop: drop visual tokens between a multimodal LLM's layers, ranked by the attention the last
prompt token pays them (Chen et al., 2024; Xing et al., 2025).

The model computes that one attention row from the scoring layer's query and keys (`last_token_attention`), so
every other layer keeps its fused attention kernel.
"""

from __future__ import annotations

import math

import torch

from .base import TokenReducer
from .registry import register_reducer


def top_visual_tokens(scores: torch.Tensor, visual: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """`[B, P]` mask of the tokens to keep: every non-visual token and each sample's `keep[b]` best visual tokens.

    Args:
        scores: `[B, P]` importance of each token (only visual tokens are compared); ties go to the lower index.
        visual: `[B, P]` bool, the visual tokens still present.
        keep: `[B]` visual tokens each sample keeps.
    """
    ranked = torch.where(visual, scores.float(), torch.full_like(scores, -math.inf, dtype=torch.float))
    order = torch.argsort(ranked, dim=1, descending=True, stable=True)
    positions = torch.arange(order.shape[1], device=order.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, positions)
    return ~visual | (rank < keep[:, None])


@register_reducer("fastv")
class FastVReducer(TokenReducer):
    """From layer K on (`vision_layers=[K]`, default 2) only the visual tokens the last prompt token attended to most
    in layer K-1 (head average) remain; the rest are gone for layer K and every later one, and from their KV cache."""

    location = "language_model"
    architectures = ("llava",)
    paper = ("Chen et al., An Image is Worth 1/2 Tokens After Layer 2: Plug-and-Play Inference Acceleration for "
             "Large Vision-Language Models, ECCV 2024")
    citation = """@inproceedings{chen2024fastv,
  title     = {An Image is Worth 1/2 Tokens After Layer 2: Plug-and-Play Inference Acceleration for Large
               Vision-Language Models},
  author    = {Chen, Liang and Zhao, Haozhe and Liu, Tianyu and Bai, Shuai and Lin, Junyang and Zhou, Chang and
               Chang, Baobao},
  booktitle = {European Conference on Computer Vision},
  year      = {2024}
}"""

    @classmethod
    def default_layers(cls, num_layers: int) -> list[int]:
        return [min(2, num_layers - 1)]

    def tokens_kept(self, layer_idx: int, num_visual: torch.Tensor) -> torch.Tensor:
        """`[B]` visual tokens each sample keeps after this layer, from its `[B]` original visual token count."""
        return torch.floor(num_visual.float() * self.target_keep(layer_idx) + 0.5).long().clamp(min=1)


@register_reducer("pdrop")
class PyramidDropReducer(FastVReducer):
    """FastV in stages: at each of `vision_layers` (default: a quarter, half and three quarters of the depth) a
    share of the surviving visual tokens is dropped; by default the same share at every stage (a geometric
    schedule, PyramidDrop's lambda)."""

    paper = ("Xing et al., PyramidDrop: Accelerating Your Large Vision-Language Models via Pyramid Visual Redundancy "
             "Reduction, CVPR 2025")
    citation = """@inproceedings{xing2025pyramiddrop,
  title     = {{PyramidDrop}: Accelerating Your Large Vision-Language Models via Pyramid Visual Redundancy
               Reduction},
  author    = {Xing, Long and Huang, Qidong and Dong, Xiaoyi and Lu, Jiajie and Zhang, Pan and Zang, Yuhang and
               Cao, Yuhang and He, Conghui and Wang, Jiaqi and Wu, Feng and Lin, Dahua},
  booktitle = {IEEE/CVF Conference on Computer Vision and Pattern Recognition},
  year      = {2025}
}"""

    @classmethod
    def default_layers(cls, num_layers: int) -> list[int]:
        return sorted({max(1, num_layers * i // 4) for i in (1, 2, 3)})

    @classmethod
    def default_schedule(cls, keep: float, num_stages: int) -> list[float]:
        return [keep ** ((i + 1) / num_stages) for i in range(num_stages)]
