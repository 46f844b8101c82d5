"""Grounding supervision: the scene records teach a BLIP trained from scratch where each named object is.

ITM alone teaches a small BLIP to bind words to image regions slowly and spatial relations not at all within a CPU
budget (measured on the `tiny` preset: relation statements at chance after 1000 steps). The synthetic scenes say where
every object is, so four auxiliary losses supervise what ITM has to discover:

- patch labels: every vision patch predicts the colour and shape of the object covering it (or background);
- patch positions: every vision patch predicts its own place in the grid, so positions survive to the last layer;
- attention grounding: in the first fused layer, each noun of a statement puts its cross-attention (mean over heads)
  on the patches of the objects it names;
- noun positions: a fused noun that names exactly one object predicts that object's centre.

On the `tiny` preset they take relation statements from chance to over 90% in the same 1000 steps (ITM accuracy
69.6% -> 80.0% on the data before count statements were de-biased); counting is still not learned. `docs/benchmarks.md`
has the ablation. The heads live beside the model during training only
(`hf_vltprune.embedded.RetrievalPretrainingModel`): the saved model is a stock `BlipForImageTextRetrieval`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..data.scenes import COLORS, SHAPES, object_radius
from ..data.texts import count_noun

COLOR_IDS = {color: i + 1 for i, color in enumerate(COLORS)}  # 0 = background
SHAPE_IDS = {shape: i + 1 for i, shape in enumerate(SHAPES)}


def covered_patches(objects: list[dict], grid: int) -> torch.Tensor:
    """`(grid * grid,)` bool: the patches (row-major) that overlap one of `objects` (its inner 80%)."""
    low = torch.arange(grid) / grid
    high = low + 1 / grid
    covered = torch.zeros(grid, grid, dtype=torch.bool)
    for obj in objects:
        # Distance from the object's centre to the nearest point of each patch, per axis.
        dx = (torch.maximum(low - obj["x"], obj["x"] - high)).clamp(min=0)
        dy = (torch.maximum(low - obj["y"], obj["y"] - high)).clamp(min=0)
        covered |= (dy[:, None] ** 2 + dx[None, :] ** 2).sqrt() < 0.8 * object_radius(obj["size"], 1.0)
    return covered.flatten()


def patch_labels(objects: list[dict], grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Colour and shape class of the object covering each patch (0: none), each `(grid * grid,)`."""
    color, shape = torch.zeros(grid * grid, dtype=torch.long), torch.zeros(grid * grid, dtype=torch.long)
    for obj in objects:
        covered = covered_patches([obj], grid)
        color[covered], shape[covered] = COLOR_IDS[obj["color"]], SHAPE_IDS[obj["shape"]]
    return color, shape


def named_objects(statement: dict, objects: list[dict]) -> list[tuple[str, list[dict]]]:
    """Each noun of `statement` in reading order, with the objects of the scene it names (maybe none)."""

    def matching(color: str, shape: str, size: str = "") -> list[dict]:
        return [o for o in objects if o["shape"] == shape and color in ("", o["color"]) and size in ("", o["size"])]

    if statement["kind"] == "exists":
        return [(statement["shape"], matching(statement["color"], statement["shape"], statement["size"]))]
    if statement["kind"] == "count":
        return [(count_noun(statement), matching("", statement["shape"]))]
    return [(statement["shape"], matching(statement["color"], statement["shape"])),
            (statement["shape2"], matching(statement["color2"], statement["shape2"]))]


def noun_targets(offsets: torch.Tensor, texts: list[str], statements: list[dict], scenes: list[list[dict]],
                 grid: int) -> dict[str, torch.Tensor]:
    """Where each noun that names objects is in the tokens and in the image.

    `offsets`: the tokenizer's `offset_mapping` of `texts` (`(texts, tokens, 2)`). Returns `noun_rows` / `noun_tokens`
    (text and token of each noun), `noun_patches` (`(nouns, grid * grid)` bool) and `noun_centres` (`(nouns, 2)`,
    NaN where a noun names more than one object).
    """
    rows, tokens, patches, centres = [], [], [], []
    for row, (text, statement, objects) in enumerate(zip(texts, statements, scenes)):
        start = 0
        for noun, named in named_objects(statement, objects):
            char = text.index(noun, start)
            start = char + len(noun)
            token = (offsets[row, :, 0] == char).nonzero()
            if not named or len(token) == 0:  # nothing to look at, or truncated away
                continue
            rows.append(row)
            tokens.append(int(token[0, 0]))
            patches.append(covered_patches(named, grid))
            centres.append((named[0]["x"], named[0]["y"]) if len(named) == 1 else (float("nan"), float("nan")))
    return {
        "noun_rows": torch.tensor(rows, dtype=torch.long),
        "noun_tokens": torch.tensor(tokens, dtype=torch.long),
        "noun_patches": torch.stack(patches) if patches else torch.zeros(0, grid * grid, dtype=torch.bool),
        "noun_centres": torch.tensor(centres, dtype=torch.float).reshape(-1, 2),
    }


def grid_centres(grid: int) -> torch.Tensor:
    """`(grid * grid, 2)`: the (x, y) centre of each patch, row-major, in [0, 1]."""
    centres = (torch.arange(grid) + 0.5) / grid
    return torch.stack([centres.repeat(grid), centres.repeat_interleave(grid)], dim=-1)


class GroundingHeads(nn.Module):
    """Linear probes for the grounding losses: patch colour, patch shape, patch position, noun position."""

    def __init__(self, vision_hidden_size: int, text_hidden_size: int):
        super().__init__()
        self.patch_color = nn.Linear(vision_hidden_size, len(COLORS) + 1)
        self.patch_shape = nn.Linear(vision_hidden_size, len(SHAPES) + 1)
        self.patch_position = nn.Linear(vision_hidden_size, 2)
        self.noun_position = nn.Linear(text_hidden_size, 2)

    def forward(self, image_embeds: torch.Tensor, fused: torch.Tensor, first_cross_attention: torch.Tensor,
                batch: dict) -> dict[str, torch.Tensor]:
        """The four losses. `image_embeds`: vision output with [CLS] first; `fused` and `first_cross_attention`
        (`(texts, heads, tokens, image tokens)`): the fused text encoder's last hidden state and its first layer's
        cross-attention, over the texts `batch["noun_rows"]` indexes."""
        patches = image_embeds[:, 1:]
        if patches.shape[1] != batch["patch_color"].shape[1]:
            raise ValueError(f"grounding targets cover {batch['patch_color'].shape[1]} patches but the vision model "
                             f"returned {patches.shape[1]}: train with every patch kept (no vision pruning) and the "
                             f"collator's patch_grid = image_size // patch_size.")
        grid_size = int(patches.shape[1] ** 0.5)
        losses = {
            "patch_labels": F.cross_entropy(self.patch_color(patches).flatten(0, 1), batch["patch_color"].flatten())
            + F.cross_entropy(self.patch_shape(patches).flatten(0, 1), batch["patch_shape"].flatten()),
            # Positions in [0, 1]; x10 brings the squared error to the scale of the other losses.
            "patch_positions": 10 * F.mse_loss(self.patch_position(patches).sigmoid(),
                                               grid_centres(grid_size).to(patches).expand_as(patches[..., :2])),
        }
        rows, tokens = batch["noun_rows"], batch["noun_tokens"]
        if len(rows):
            attention = first_cross_attention.mean(1)[rows, tokens, 1:]  # (nouns, patches): image [CLS] left out
            mass = (attention * batch["noun_patches"]).sum(-1)
            losses["attention_grounding"] = -(mass + 1e-6).log().mean()
            single = ~batch["noun_centres"].isnan().any(-1)
            if single.any():
                predicted = self.noun_position(fused[rows[single], tokens[single]]).sigmoid()
                losses["noun_positions"] = 10 * F.mse_loss(predicted, batch["noun_centres"][single])
        return losses
