"""VQA accuracy of a tiny LLaVA against the visual tokens it keeps, for every LLaVA method, on the embedded task.

    python benchmarks/quality_llava.py --preset tiny          # CPU: trains the tiny LLaVA once (~20 min), cached

The tiny LLaVA (CLIP tower and Llama as wide and deep as the preset's BLIP, trained from scratch to answer the
synthetic questions by generation) is evaluated unpruned and with each method keeping `--budgets` visual tokens per
image (of 64 on `tiny`). Writes `quality_llava.json` and `quality_llava.md` to `--out`.
"""

import argparse
import datetime
import json
import platform
from pathlib import Path

import torch
from transformers import BlipProcessor, LlavaForConditionalGeneration

from hf_vltprune.embedded import PRESETS
from hf_vltprune.embedded.base_models import task_data
from hf_vltprune.embedded.llava_vqa import LLAVA_METHODS, compare_llava_methods, llava_model_dir
from hf_vltprune.report import markdown_table, save_report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    parser.add_argument("--budgets", type=int, nargs="+", default=[32, 16, 8], help="visual tokens per image")
    parser.add_argument("--methods", nargs="+", default=list(LLAVA_METHODS), choices=LLAVA_METHODS)
    parser.add_argument("--max-examples", type=int, default=None, help="validation examples (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)

    folder = llava_model_dir(args.preset, args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = LlavaForConditionalGeneration.from_pretrained(folder).to(device).eval()
    processor = BlipProcessor.from_pretrained(folder)
    validation = task_data(PRESETS[args.preset], args.seed)["validation"]
    if args.max_examples:
        validation = validation.select(range(min(args.max_examples, len(validation))))
    rows = compare_llava_methods(model, processor, validation, args.budgets, args.methods, args.seed)

    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.machine()})"
    meta = dict(date=datetime.date.today().isoformat(), machine=machine, preset=args.preset,
                examples=len(validation), trained=json.loads((folder / "metrics.json").read_text())["preset"])
    columns = list(rows[0])
    table = [f"Tiny LLaVA VQA ({args.preset}, {len(validation)} validation questions), {machine}, {meta['date']}", "",
             *markdown_table(rows, columns)]
    print(save_report(args.out, "quality_llava", meta, rows, table))


if __name__ == "__main__":
    main()
