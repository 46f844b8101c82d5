"""Synthetic scenes: coloured shapes on a cluttered, textured background, described by structured records.

Many patches are background clutter (redundant); the answer depends on small objects and their relations, so a
token reducer that keeps the wrong patches loses accuracy.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "diamond", "cross")
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 230),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 190),
    "orange": (245, 140, 30),
    "cyan": (40, 210, 220),
    "white": (250, 250, 250),
}
SIZES = ("small", "large")
RELATIONS = ("left of", "right of", "above", "below")


@dataclass(frozen=True)
class SceneSpec:
    """How scenes are drawn.

    Args:
        image_size: side of the square image in pixels.
        min_objects, max_objects: objects per scene (1-6 by default).
        clutter: number of background strokes (texture and distractors in dull colours).
        grid: `None` places objects anywhere; `g` places them on a `g x g` grid of cells, each object centred on
            the cell centre or cell corner that lines its extent up with the cells. Set it to a ViT's patches per
            side to line objects up with the patches: a small ViT trained for minutes on a CPU then reads shapes
            at once, which it does not learn in that time from objects cut across patches at random offsets.
    """

    image_size: int = 224
    min_objects: int = 1
    max_objects: int = 6
    clutter: int = 40
    grid: int | None = None

    def __post_init__(self):
        if self.image_size < 32:
            raise ValueError(f"SceneSpec.image_size={self.image_size} is invalid: allowed >= 32 pixels.")
        if not 1 <= self.min_objects <= self.max_objects <= 6:
            raise ValueError(
                f"SceneSpec.min_objects={self.min_objects}, max_objects={self.max_objects} are invalid: "
                "allowed 1 <= min_objects <= max_objects <= 6."
            )
        if self.clutter < 0:
            raise ValueError(f"SceneSpec.clutter={self.clutter} is invalid: allowed >= 0.")
        if self.grid is not None and not 2 <= self.grid <= self.image_size:
            raise ValueError(f"SceneSpec.grid={self.grid} is invalid: allowed None or 2 <= grid <= image_size "
                             f"({self.image_size}).")


def object_radius(size: str, image_size: int) -> float:
    return image_size * (0.06 if size == "small" else 0.11)


def _apart(x: float, y: float, radius: float, objects: list[dict]) -> bool:
    return all(math.hypot(x - o["x"], y - o["y"]) > radius + object_radius(o["size"], 1) + 0.02 for o in objects)


def grid_positions(radius: float, grid: int) -> list[tuple[float, float]]:
    """Centres (in [0, 1]) that line an object of `radius` up with a `grid x grid` grid of cells: cell centres
    when it spans an odd number of cells, cell corners when even; all keeping it inside the image."""
    span = math.ceil(2 * radius * grid - 1e-9)
    offset = 0.5 if span % 2 else 0.0
    steps = [(i + offset) / grid for i in range(grid + 1)]
    return [(x, y) for y in steps for x in steps if radius <= x <= 1 - radius and radius <= y <= 1 - radius]


def sample_scene(rng: random.Random, spec: SceneSpec) -> list[dict]:
    """Objects with distinct (colour, shape) pairs at non-overlapping positions (centres in [0, 1]); on
    `spec.grid`, at positions where no two objects are equally far apart along both axes (whose relation would be
    a tie). A crowded grid may hold fewer objects than drawn."""
    count = rng.randint(spec.min_objects, spec.max_objects)
    pairs = rng.sample([(c, s) for c in COLORS for s in SHAPES], count)
    objects: list[dict] = []
    for color, shape in pairs:
        size = rng.choice(SIZES)
        radius = object_radius(size, spec.image_size) / spec.image_size
        if spec.grid:
            free = [(x, y) for x, y in grid_positions(radius, spec.grid) if _apart(x, y, radius, objects)
                    and all(not math.isclose(abs(x - o["x"]), abs(y - o["y"]), abs_tol=1e-6) for o in objects)]
            if not free:
                break
            x, y = rng.choice(free)
        else:
            for _ in range(100):
                x, y = rng.uniform(radius, 1 - radius), rng.uniform(radius, 1 - radius)
                if _apart(x, y, radius, objects):
                    break
        objects.append(dict(shape=shape, color=color, size=size, x=round(x, 4), y=round(y, 4)))
    return objects


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "triangle":
        return [(cx, cy - r), (cx + r * 0.95, cy + r * 0.8), (cx - r * 0.95, cy + r * 0.8)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    t = r * 0.35  # cross: a plus sign
    return [(cx - t, cy - r), (cx + t, cy - r), (cx + t, cy - t), (cx + r, cy - t), (cx + r, cy + t), (cx + t, cy + t),
            (cx + t, cy + r), (cx - t, cy + r), (cx - t, cy + t), (cx - r, cy + t), (cx - r, cy - t), (cx - t, cy - t)]


def render_scene(objects: list[dict], rng: random.Random, spec: SceneSpec) -> Image.Image:
    """Draw the objects over a noisy, striped background with dull clutter strokes."""
    n = spec.image_size
    noise = np.random.default_rng(rng.getrandbits(32))
    base = noise.integers(70, 120, size=3)
    background = base + noise.normal(0, 12, size=(n, n, 1)) + np.linspace(-15, 15, n)[None, :, None]
    image = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(spec.clutter):  # texture: short strokes in greys and muted tints, never a full-colour shape
        x0, y0 = rng.uniform(0, n), rng.uniform(0, n)
        x1, y1 = x0 + rng.uniform(-n / 8, n / 8), y0 + rng.uniform(-n / 8, n / 8)
        grey = rng.randint(60, 150)
        draw.line([(x0, y0), (x1, y1)], fill=(grey, grey + rng.randint(-10, 10), grey), width=rng.randint(1, 2))
    for obj in objects:
        cx, cy, r = obj["x"] * n, obj["y"] * n, object_radius(obj["size"], n)
        fill = COLORS[obj["color"]]
        if obj["shape"] == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        elif obj["shape"] == "square":
            draw.rectangle([cx - r * 0.85, cy - r * 0.85, cx + r * 0.85, cy + r * 0.85], fill=fill)
        else:
            draw.polygon(_polygon(obj["shape"], cx, cy, r), fill=fill)
    return image


def relation(a: dict, b: dict) -> str:
    """Where `a` is relative to `b`, along the axis where they are further apart."""
    dx, dy = a["x"] - b["x"], a["y"] - b["y"]
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"
