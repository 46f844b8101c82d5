"""Attention over SDPA with an additive key bias (proportional attention + key mask), with an eager fallback."""

from __future__ import annotations

import torch
import torch.nn.functional as F

ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager")


def attend(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    bias: torch.Tensor | None = None,
    dropout: float = 0.0,
    implementation: str = "sdpa",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scaled dot-product attention on `[B, H, N, d]` tensors.

    Args:
        bias: additive `[B, 1, 1 or Nq, Nk]` bias (`log(size)` and padding minimum), or `None`.
        implementation: `"sdpa"` (fused kernel, returns no probabilities) or `"eager"` (returns them, so
            `output_attentions=True` works).

    Returns:
        The `[B, H, Nq, d]` context and the attention probabilities (eager) or `None` (SDPA).
    """
    if bias is not None:
        bias = bias.to(query.dtype)
    if implementation == "sdpa":
        context = F.scaled_dot_product_attention(query, key, value, attn_mask=bias, dropout_p=dropout)
        return context, None
    if implementation != "eager":
        raise ValueError(
            f"attn_implementation={implementation!r} is not supported: allowed {ATTENTION_IMPLEMENTATIONS}."
        )
    scores = torch.matmul(query, key.transpose(-1, -2)) * query.shape[-1] ** -0.5
    if bias is not None:
        scores = scores + bias
    probs = scores.softmax(dim=-1)
    context = torch.matmul(F.dropout(probs, p=dropout) if dropout > 0 else probs, value)
    return context, probs
