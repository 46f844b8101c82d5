"""Speed of BLIP-base's vision encoder (ViT-B/16 at 384 px, 577 tokens, random weights) with and without reduction.

Rows: the stock transformers encoder (eager attention), ours unpruned (SDPA), and `tome` / `crossget` at
vision_keep 0.5 and 0.25. For each reduced row, the "ideal" is the same encoder run on the same number of tokens per
layer with no reducer, so `overhead` is what matching and merging cost on top of the smaller sequences.

    python benchmarks/speed_blip.py                 # GPU if present: batch 32, bf16; else CPU: batch 2, fp32
    python benchmarks/speed_blip.py --batch-size 8 --dtype float32 --out benchmarks/results

Writes `speed_blip.json` and `speed_blip.md` in `--out`. Targets: unpruned SDPA >= 1.3x faster than stock eager;
reducer overhead <= 10% of the ideal.
"""

from __future__ import annotations

import argparse
import datetime
import platform
from pathlib import Path

import torch
from transformers import BlipVisionConfig
from transformers.models.blip.modeling_blip import BlipVisionModel

from hf_vltprune import PruningConfig
from hf_vltprune.measure import count_flops, count_tokens, time_forward
from hf_vltprune.models.blip.modeling_blip_pruned import BlipPrunedVisionModel
from hf_vltprune.reduce import TokenState
from hf_vltprune.report import markdown_table, save_report

BLIP_BASE_VISION = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                        image_size=384, patch_size=16)


def build(pruning: PruningConfig | None, attn: str, device, dtype) -> torch.nn.Module:
    config = BlipVisionConfig(**BLIP_BASE_VISION)
    config._attn_implementation = attn
    torch.manual_seed(0)
    model = BlipVisionModel(config) if pruning is None else BlipPrunedVisionModel(config, pruning)
    return model.to(device=device, dtype=dtype).eval()


class IdealEncoder(torch.nn.Module):
    """The unpruned encoder fed exactly `counts[i]` tokens at layer i (the first ones), with no reducer.

    With `size_bias`, every layer also adds a proportional-attention bias (as the reduced model does), which
    separates the cost of the biased attention kernel from the cost of matching and merging.
    """

    def __init__(self, model: BlipPrunedVisionModel, counts: list[int], size_bias: bool = False):
        super().__init__()
        self.model, self.counts, self.size_bias = model, counts, size_bias

    def forward(self, pixel_values):
        hidden = self.model.embeddings(pixel_values)
        for layer, count in zip(self.model.encoder.layers, self.counts):
            hidden = hidden[:, :count]
            size = torch.full(hidden.shape[:2], 2.0, device=hidden.device) if self.size_bias else None
            hidden, _ = layer(hidden, state=TokenState(hidden, size=size), implementation="sdpa")
        return self.model.post_layernorm(hidden)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cuda = torch.cuda.is_available()
    parser.add_argument("--batch-size", type=int, default=32 if cuda else 2)
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                        default="bfloat16" if cuda else "float32")
    parser.add_argument("--repeats", type=int, default=20 if cuda else 5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--keeps", type=float, nargs="+", default=[0.5, 0.25], help="vision_keep values to time")
    parser.add_argument("--compile", action="store_true",
                        help="also time every reduced model and its ideal under torch.compile")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.repeats < 1:
        parser.error("--batch-size and --repeats must be >= 1")

    device = torch.device("cuda" if cuda else "cpu")
    dtype = getattr(torch, args.dtype)
    pixels = torch.randn(args.batch_size, 3, 384, 384, device=device, dtype=dtype)
    inputs = {"pixel_values": pixels}

    rows = []

    def record(name, model, forward=None, ideal_ms=None, keep=1.0):
        ms = time_forward(model, inputs, repeats=args.repeats, warmup=3, forward=forward)
        flops, _ = count_flops(model, inputs)
        row = dict(variant=name, vision_keep=keep, ms_per_batch=round(ms, 3),
                   gflops_per_sample=round(flops / args.batch_size / 1e9, 2))
        if ideal_ms is not None:
            row.update(ideal_ms=round(ideal_ms, 3), overhead_pct=round(100 * (ms - ideal_ms) / ideal_ms, 1))
        rows.append(row)
        print(row, flush=True)
        return ms

    stock_ms = record("stock eager", build(None, "eager", device, dtype))
    ours = build(PruningConfig(), "sdpa", device, dtype)
    ours_ms = record("ours sdpa, unpruned", ours)
    rows[-1]["speedup_vs_stock"] = round(stock_ms / ours_ms, 2)
    if args.compile:
        record("ours sdpa, unpruned (torch.compile)", ours, forward=torch.compile(ours))
        rows[-1]["speedup_vs_stock"] = round(stock_ms / rows[-1]["ms_per_batch"], 2)
    for method in ("tome", "crossget"):
        for keep in args.keeps:
            model = build(PruningConfig(method=method, vision_keep=keep), "sdpa", device, dtype)
            counts = [round(c) for c in count_tokens(model, inputs)["encoder"]]
            ideal = IdealEncoder(model, counts)
            ideal_ms = time_forward(ideal, inputs, repeats=args.repeats, warmup=3)
            biased_ms = time_forward(IdealEncoder(model, counts, size_bias=True), inputs, repeats=args.repeats,
                                     warmup=3)
            ms = record(f"{method}", model, ideal_ms=ideal_ms, keep=keep)
            rows[-1]["speedup_vs_stock"] = round(stock_ms / ms, 2)
            rows[-1]["ideal_with_size_bias_ms"] = round(biased_ms, 3)
            if args.compile:
                # Dense batches plan their budget in Python, so the whole reduced encoder compiles to one graph.
                ideal_ms = time_forward(ideal, inputs, repeats=args.repeats, warmup=3, forward=torch.compile(ideal))
                ms = record(f"{method} (torch.compile)", model, forward=torch.compile(model), ideal_ms=ideal_ms,
                            keep=keep)
                rows[-1]["speedup_vs_stock"] = round(stock_ms / ms, 2)

    machine = torch.cuda.get_device_name(device) if cuda else f"CPU ({platform.processor() or platform.machine()})"
    meta = dict(date=datetime.date.today().isoformat(), machine=machine, torch=torch.__version__,
                batch_size=args.batch_size, dtype=args.dtype, shape="BLIP-base ViT-B/16 @384 (577 tokens)")
    columns = ["variant", "vision_keep", "ms_per_batch", "gflops_per_sample", "speedup_vs_stock", "ideal_ms",
               "ideal_with_size_bias_ms", "overhead_pct"]
    table = [f"{meta['shape']}, batch {args.batch_size}, {args.dtype}, {machine}, {meta['date']}", "",
             *markdown_table(rows, columns)]
    print(save_report(args.out, "speed_blip", meta, rows, table))


if __name__ == "__main__":
    main()
