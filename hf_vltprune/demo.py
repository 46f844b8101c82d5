"""`vltprune demo`: data -> base model (trained once, cached) -> every method at a few budgets -> table and plot."""

from __future__ import annotations

import datetime
import platform
from pathlib import Path

import torch

from .config import PruningConfig
from .embedded import get_preset, load_base_model, task_data
from .embedded.quality import compare_methods, write_report


def run_demo(output_dir: Path, preset: str = "tiny", budgets: list[float] = (0.5, 0.25), seed: int = 0,
             max_examples: int | None = 500) -> list[dict]:
    """Accuracy / GFLOPs / latency of every registered method against the unpruned base model of `preset`."""
    preset_ = get_preset(preset)
    for keep in budgets:  # fail before training anything
        PruningConfig(vision_keep=keep)
    model, processor = load_base_model(preset_, seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model.to(device).eval()
    validation = task_data(preset_, seed)["validation"]
    if max_examples is not None:
        validation = validation.select(range(min(max_examples, len(validation))))
    rows = compare_methods(model, processor, validation, list(budgets), seed=seed)
    machine = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({platform.machine()})"
    title = (f"Preset {preset}, {len(validation)} validation examples, {machine}, "
             f"{datetime.date.today().isoformat()}")
    print(write_report(rows, output_dir, title, meta=dict(preset=preset, seed=seed, machine=machine)))
    print(f"written: {output_dir / 'quality.md'}, {output_dir / 'quality.png'}")
    return rows
