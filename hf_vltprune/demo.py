"""`vltprune demo`: data -> base model (trained once, cached) -> every method at a few budgets (learned methods after a
short fine-tune) -> table and plot."""

from __future__ import annotations

import datetime
import platform
from pathlib import Path

import torch

from .embedded import get_preset, load_base_model, task_data
from .embedded.quality import check_demo_options, compare_methods, write_report


def run_demo(output_dir: Path, preset: str = "tiny", budgets: list[float] = (0.5, 0.25), seed: int = 0,
             max_examples: int | None = 500, finetune_steps: int = 100) -> list[dict]:
    """Accuracy / GFLOPs / latency of every registered method against the unpruned base model of `preset`; methods
    that learn (MADTP, SmartTrim) are fine-tuned for `finetune_steps` first (0: scored untrained)."""
    preset_ = get_preset(preset)
    check_demo_options(budgets, finetune_steps)  # fail before training anything
    model, processor = load_base_model(preset_, seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model.to(device).eval()
    data = task_data(preset_, seed)
    validation = data["validation"]
    if max_examples is not None:
        validation = validation.select(range(min(max_examples, len(validation))))
    rows = compare_methods(model, processor, validation, list(budgets), seed=seed, finetune_steps=finetune_steps,
                           train_dataset=data["train"])
    machine = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({platform.machine()})"
    title = (f"Preset {preset}, {len(validation)} validation examples, {machine}, "
             f"{datetime.date.today().isoformat()}")
    print(write_report(rows, output_dir, title, meta=dict(preset=preset, seed=seed, machine=machine)))
    print(f"written: {output_dir / 'quality.md'}, {output_dir / 'quality.png'}")
    return rows
