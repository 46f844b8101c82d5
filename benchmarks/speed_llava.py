"""Speed of LLaVA-1.5-7B's shape (CLIP ViT-L/14 at 336 px, 576 visual tokens; LLaMA-7B) with fewer visual tokens.

Random weights. For each budget of visual tokens per image (default 192, 128, 64) and method (visionzip, textguided:
before the language model; fastv, pdrop: inside it), at each batch size (default 1 and 8): prefill latency (the
forward that fills the KV cache), per-token decode latency (from `generate()` with 1 and 1 + `--decode-tokens` new
tokens), prefill GFLOPs per sample and peak memory. The "ideal" row is the plain model fed that many visual tokens
(the vision tower plus the language model on the shorter prompt): what a reduction could at best achieve.

    python benchmarks/speed_llava.py                          # GPU: bf16, LLaVA-1.5-7B shape
    python benchmarks/speed_llava.py --shape tiny --budgets 8 4 --batch-sizes 2   # CPU smoke run

Writes `speed_llava.json` and `speed_llava.md` in `--out`. Target: at batch 8 and 64 tokens, prefill >= 3.5x faster
than with all 576.
"""

from __future__ import annotations

import argparse
import datetime
import platform
from pathlib import Path

import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from hf_vltprune import LlavaPrunedConfig, LlavaPrunedForConditionalGeneration
from hf_vltprune.measure import count_flops, time_forward
from hf_vltprune.report import markdown_table, save_report

SHAPES = {
    "llava-1.5-7b": dict(
        vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                    image_size=336, patch_size=14, projection_dim=768),
        text=dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                  num_key_value_heads=32, vocab_size=32064, max_position_embeddings=4096),
    ),
    "tiny": dict(
        vision=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, image_size=64,
                    patch_size=8, projection_dim=64),
        text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=4, vocab_size=1000, max_position_embeddings=512),
    ),
}


def llava_config(shape: str) -> LlavaConfig:
    parts = SHAPES[shape]
    vocab = parts["text"]["vocab_size"]
    return LlavaConfig(vision_config=CLIPVisionConfig(**parts["vision"]), text_config=LlamaConfig(**parts["text"]),
                       image_token_id=vocab - 1, pad_token_id=0)


def build(config: LlavaConfig, pruning: dict | None, device, dtype, weights: dict | None = None):
    """The stock model (`pruning=None`) or the pruned one, on `device` in `dtype`, sharing `weights` if given."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            if pruning is None:
                model = LlavaForConditionalGeneration(config)
            else:
                data = {k: v for k, v in config.to_dict().items() if k != "model_type"}
                model = LlavaPrunedForConditionalGeneration(LlavaPrunedConfig.from_dict({**data, "pruning": pruning}))
    finally:
        torch.set_default_dtype(default)
    if weights is not None:
        model.load_state_dict(weights, strict=False, assign=True)  # the same tensors: no copy
    return model.eval()


def prompt_inputs(config: LlavaConfig, batch: int, text_tokens: int, device, dtype) -> dict:
    """`[BOS] <image>*N text` for one image per sample, with random text tokens."""
    vision = config.vision_config
    patches = (vision.image_size // vision.patch_size) ** 2
    generator = torch.Generator().manual_seed(0)
    text = torch.randint(2, config.image_token_id, (batch, text_tokens - 1), generator=generator)
    ids = torch.cat([torch.ones(batch, 1, dtype=torch.long), torch.full((batch, patches), config.image_token_id),
                     text], dim=1)
    pixels = torch.randn(batch, 3, vision.image_size, vision.image_size, generator=generator)
    return dict(input_ids=ids.to(device), attention_mask=torch.ones_like(ids).to(device),
                pixel_values=pixels.to(device=device, dtype=dtype))


def generate_fn(model, new_tokens: int):
    def run(**inputs):
        return model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                              pad_token_id=0)
    return run


def peak_memory_gib(model, inputs: dict, device) -> float | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode():
        model(**inputs)
    torch.cuda.synchronize(device)
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2)


def ideal_fn(stock, visual_tokens: int):
    """The vision tower on the image, then the language model on the prompt with only `visual_tokens` of its image
    tokens: the plain model fed that many tokens."""
    def run(input_ids, attention_mask, pixel_values):
        stock.model.get_image_features(pixel_values=pixel_values)
        is_image = input_ids == stock.config.image_token_id
        first = int(is_image[0].nonzero()[0])
        keep = torch.ones(input_ids.shape[1], dtype=torch.bool, device=input_ids.device)
        keep[first + visual_tokens:first + int(is_image[0].sum())] = False
        embeds = stock.get_input_embeddings()(input_ids[:, keep])
        return stock(inputs_embeds=embeds, attention_mask=attention_mask[:, keep], use_cache=True)
    return run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cuda = torch.cuda.is_available()
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llava-1.5-7b" if cuda else "tiny")
    parser.add_argument("--budgets", type=int, nargs="+", default=[192, 128, 64], help="visual tokens per image")
    parser.add_argument("--methods", nargs="+", default=["visionzip", "textguided", "fastv", "pdrop"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--text-tokens", type=int, default=64, help="prompt tokens besides the image")
    parser.add_argument("--decode-tokens", type=int, default=8, help="new tokens timed for the decode rate")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                        default="bfloat16" if cuda else "float32")
    parser.add_argument("--repeats", type=int, default=5 if cuda else 2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    if min(args.batch_sizes) < 1 or args.repeats < 1 or args.decode_tokens < 1 or min(args.budgets) < 1:
        parser.error("--batch-sizes, --budgets, --repeats and --decode-tokens must be >= 1")

    device, dtype = torch.device("cuda" if cuda else "cpu"), getattr(torch, args.dtype)
    config = llava_config(args.shape)
    patches = (config.vision_config.image_size // config.vision_config.patch_size) ** 2
    torch.manual_seed(0)
    stock = build(config, None, device, dtype)
    weights = stock.state_dict()
    variants = [("stock", patches, None)]
    for budget in args.budgets:
        variants.append(("ideal", budget, None))
        variants += [(method, budget, dict(method=method, vision_tokens=budget)) for method in args.methods]

    machine = torch.cuda.get_device_name(device) if cuda else f"CPU ({platform.processor() or platform.machine()})"
    meta = dict(date=datetime.date.today().isoformat(), machine=machine, torch=torch.__version__, dtype=args.dtype,
                shape=args.shape, text_tokens=args.text_tokens, visual_tokens_per_image=patches,
                decode_tokens=args.decode_tokens)
    rows, baseline = [], {}
    batches = {batch: prompt_inputs(config, batch, args.text_tokens, device, dtype) for batch in args.batch_sizes}
    for name, budget, pruning in variants:  # each variant is built once (it shares the stock weights)
        model = stock if pruning is None else build(config, pruning, device, dtype, weights)
        for batch, inputs in batches.items():
            prefill = ideal_fn(stock, budget) if name == "ideal" else None
            prefill_ms = time_forward(model, inputs, args.repeats, warmup=2, forward=prefill)
            flops, _ = count_flops(model, inputs, prefill)
            row = dict(method=name, visual_tokens=budget, batch_size=batch, prefill_ms=round(prefill_ms, 2),
                       gflops_per_sample=round(flops / batch / 1e9, 3))
            if name != "ideal":
                first = time_forward(model, inputs, args.repeats, warmup=1, forward=generate_fn(model, 1))
                more = time_forward(model, inputs, args.repeats, warmup=1,
                                    forward=generate_fn(model, 1 + args.decode_tokens))
                row["decode_ms_per_token"] = round((more - first) / args.decode_tokens, 2)
                row["peak_memory_gib"] = peak_memory_gib(model, inputs, device)
            baseline.setdefault(batch, prefill_ms)  # the stock model comes first
            row["prefill_speedup"] = round(baseline[batch] / prefill_ms, 2)
            rows.append(row)
            print(row, flush=True)
        write_report(rows, meta, args.out)
        if model is not stock:
            del model
            if cuda:
                torch.cuda.empty_cache()
    print(write_report(rows, meta, args.out))


def write_report(rows: list[dict], meta: dict, out: Path) -> str:
    """`speed_llava.json` and `speed_llava.md` in `out` (rewritten after every variant, so a cut-off run keeps what
    it measured); returns the table."""
    rows = sorted(rows, key=lambda row: row["batch_size"])  # one block per batch size, variants in order
    columns = ["method", "visual_tokens", "batch_size", "prefill_ms", "prefill_speedup", "decode_ms_per_token",
               "gflops_per_sample", "peak_memory_gib"]
    table = [f"{meta['shape']}, {meta['text_tokens']} text tokens, {meta['dtype']}, {meta['machine']}, "
             f"{meta['date']}", "", *markdown_table(rows, columns)]
    target = [r["prefill_speedup"] for r in rows if r["batch_size"] == 8 and r["visual_tokens"] == 64
              and r["method"] not in ("ideal", "stock")]
    if target:
        table += ["", f"Best prefill speed-up at batch 8 and 64 tokens: {max(target)}x (target >= 3.5x)."]
    return save_report(out, "speed_llava", meta, rows, table)


if __name__ == "__main__":
    main()
