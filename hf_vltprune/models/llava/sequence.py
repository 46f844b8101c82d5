"""Removing visual tokens from a prompt: which positions go, re-padding, and position ids.

A prompt holds `tokens_per_image` consecutive image placeholders per image. An image reduced to `k` tokens fills the
first `k` placeholders of its block; the others leave the sequence together with their attention mask, labels and
position ids. Rows that lose different numbers of tokens are re-padded on the side the batch was padded on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


@dataclass
class KeptTokens:
    """Which input positions a shorter sequence holds: `index` `[B, M]` into the input, `valid` `[B, M]` (`False`
    for the padding added when rows lost different numbers of tokens; `index` then repeats a real position)."""

    index: torch.Tensor
    valid: torch.Tensor

    def gather(self, values: torch.Tensor, fill=None) -> torch.Tensor:
        """`values` (`[B, N]` or `[B, N, C]`) at the kept positions; `fill` where a slot is padding."""
        index = self.index if values.dim() == 2 else self.index[..., None].expand(-1, -1, values.shape[-1])
        gathered = values.gather(1, index)
        if fill is None:
            return gathered
        valid = self.valid if values.dim() == 2 else self.valid[..., None]
        return torch.where(valid, gathered, torch.full_like(gathered, fill))

    def then(self, later: "KeptTokens") -> "KeptTokens":
        """Positions of the input that a second reduction (indexing this one's output) keeps."""
        return KeptTokens(self.index.gather(1, later.index), self.valid.gather(1, later.index) & later.valid)


def kept_tokens(keep: torch.Tensor, pad_left: bool) -> KeptTokens:
    """The positions where `keep` (`[B, N]` bool) is set, in order, each row padded to the longest on one side."""
    counts = keep.sum(dim=1)
    width = int(counts.max())
    # A stable sort of "is removed" lists the kept positions first, in their order.
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :width]
    slots = torch.arange(width, device=keep.device).expand_as(order)
    if pad_left:  # shift each row right by its shortfall; the freed slots repeat the row's first kept position
        shift = (width - counts)[:, None]
        order = order.gather(1, (slots - shift).clamp(min=0))
        valid = slots >= shift
    else:
        valid = slots < counts[:, None]
        order = torch.where(valid, order, order.gather(1, (counts[:, None] - 1).clamp(min=0)))
    return KeptTokens(order, valid)


def pads_left(attention_mask: torch.Tensor | None) -> bool:
    """Whether rows that become shorter are padded on the left: unless the batch came right-padded (some row ends
    with padding), so that every row's last token stays last, where `generate()` reads the next-token logits."""
    return attention_mask is None or bool(attention_mask[:, -1].all())


def placeholder_ranks(is_image: torch.Tensor, tokens_per_image: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For every image placeholder, the image it belongs to (counted over the batch in reading order, as LLaVA
    fills them) and its rank in that image's block; `-1` elsewhere."""
    running = is_image.flatten().long().cumsum(0).view_as(is_image) - 1
    image = torch.where(is_image, running // tokens_per_image, -1)
    rank = torch.where(is_image, running % tokens_per_image, -1)
    return image, rank


@dataclass
class ReducedPrompt:
    """A prompt after its images were reduced: what the language model reads instead of the input."""

    kept: KeptTokens
    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    # [B] what to subtract from the positions `generate()` counts for later tokens ("compact" positions).
    position_offset: torch.Tensor


def reduce_prompt(inputs_embeds: torch.Tensor, is_image: torch.Tensor, features: list[torch.Tensor],
                  anchors: list[torch.Tensor] | None, tokens_per_image: int, attention_mask: torch.Tensor | None,
                  position_ids: torch.Tensor | None, token_positions: str) -> ReducedPrompt:
    """Put each image's (fewer) features into its first placeholders and remove the rest.

    Args:
        inputs_embeds: `[B, L, D]` the prompt's embeddings (placeholders included).
        is_image: `[B, L]` bool, the image placeholders.
        features: per image `[k_i, D]` tokens in the order LLaVA fills the placeholders.
        anchors: per image `[k_i]` patch index each token sits at (its position in "original" mode), or `None`
            for evenly spaced patches.
        attention_mask, position_ids: `[B, L]` as the model got them (either may be `None`).
        token_positions: "original" (kept tokens keep their positions, text after the image does too) or
            "compact" (renumbered without gaps).
    """
    batch, length = is_image.shape
    device = inputs_embeds.device
    counts = torch.tensor([f.shape[0] for f in features], device=device)
    if anchors is None:
        anchors = [torch.arange(k, device=device) * tokens_per_image // k for k in counts.tolist()]
    image, rank = placeholder_ranks(is_image, tokens_per_image)
    keep = ~is_image | (rank < counts[image.clamp(min=0)])

    mask = attention_mask.bool() if attention_mask is not None else torch.ones_like(is_image)
    kept = kept_tokens(keep, pads_left(attention_mask))
    if position_ids is None:
        position_ids = torch.arange(length, device=device).expand(batch, -1)

    # Each kept image token's anchor patch, in reading order, placed where the token now sits.
    kept_image = keep & is_image
    anchor = torch.zeros_like(rank)
    anchor[kept_image] = torch.cat(anchors).to(device)
    original = position_ids - torch.where(kept_image, rank - anchor, torch.zeros_like(rank))

    new_mask = kept.gather(mask, fill=False)
    # Image slots in reading order are the images' tokens in the order LLaVA fills placeholders.
    embeds = kept.gather(inputs_embeds).masked_scatter((kept.gather(is_image) & kept.valid)[..., None],
                                                       torch.cat(features).to(inputs_embeds.dtype))
    if token_positions == "original":
        positions = kept.gather(original, fill=0)
        offset = torch.zeros(batch, dtype=torch.long, device=device)
    else:
        positions = (new_mask.long().cumsum(1) - 1).clamp(min=0)
        last_original = torch.where(mask, position_ids, -1).amax(dim=1)
        offset = last_original - torch.where(new_mask, positions, -1).amax(dim=1)
    return ReducedPrompt(kept, embeds, new_mask.long(), positions, offset)


def first_supervised(labels: torch.Tensor) -> torch.Tensor:
    """`[B]` the first position whose label is supervised (the end of the prompt in a training example)."""
    supervised = labels != IGNORE_INDEX
    first = supervised.int().argmax(dim=1)
    return torch.where(supervised.any(dim=1), first, torch.full_like(first, labels.shape[1]))
