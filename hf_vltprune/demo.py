"""`vltprune demo`: every method at a few budgets on a small BLIP, as a table of GFLOPs, latency and fidelity."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import BlipConfig, BlipForImageTextRetrieval

from .auto import get_pruned_model
from .config import PruningConfig
from .measure import measure
from .reduce import reducer_names

SMALL_BLIP = dict(
    vision_config=dict(hidden_size=192, intermediate_size=768, num_hidden_layers=6, num_attention_heads=3,
                       image_size=224, patch_size=16),
    text_config=dict(vocab_size=1000, hidden_size=192, intermediate_size=768, num_hidden_layers=4,
                     num_attention_heads=3, max_position_embeddings=64, bos_token_id=1, sep_token_id=2,
                     pad_token_id=0, eos_token_id=2),
    projection_dim=64,
    image_text_hidden_size=64,
)


def small_blip_inputs(batch_size: int, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, 1000, (batch_size, 16), generator=generator)
    input_ids[:, 0] = 1
    return dict(pixel_values=torch.randn(batch_size, 3, 224, 224, generator=generator), input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids))


def run_demo(output_dir: Path, budgets: list[float], batch_size: int = 4) -> list[dict]:
    """Measure each registered method at each vision budget against the unpruned model; write JSON and markdown."""
    for keep in budgets:
        PruningConfig(vision_keep=keep)  # validates every budget before the long work starts
    torch.manual_seed(0)
    stock = BlipForImageTextRetrieval(BlipConfig(**SMALL_BLIP)).eval()
    inputs = small_blip_inputs(batch_size)
    runs = [("unpruned", 1.0)] + [(method, keep) for method in reducer_names() for keep in budgets]
    rows, reference = [], None
    for method, keep in tqdm(runs, desc="methods x budgets"):
        model = get_pruned_model(stock, PruningConfig(method="tome" if method == "unpruned" else method,
                                                      vision_keep=keep)).eval()
        with torch.no_grad():
            score = model(**inputs).itm_score.softmax(-1)[:, 1]
        reference = score if reference is None else reference
        measured = measure(model, inputs, latency_repeats=3, warmup=1)
        rows.append(dict(method=method, vision_keep=keep, gflops=round(measured.gflops, 3),
                         latency_ms=round(measured.latency_ms, 2),
                         vision_tokens_last_layer=round(measured.tokens_per_layer["vision_model"][-1]),
                         itm_change=round(float((score - reference).abs().mean()), 4)))
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "demo.json").write_text(json.dumps(rows, indent=2))
    columns = list(rows[0])
    table = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    table += ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in rows]
    (output_dir / "demo.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    return rows
