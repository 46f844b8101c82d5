"""The `vltprune` command."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from .config import PruningConfig
from .reduce import reducer_names


def _pruning_from_args(args) -> PruningConfig:
    options = json.loads(args.method_options) if args.method_options else {}
    return PruningConfig(method=args.method, vision_keep=args.vision_keep, text_keep=args.text_keep,
                         method_options=options)


def _add_pruning_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", default="tome", choices=reducer_names())
    parser.add_argument("--vision-keep", type=float, default=0.5, help="fraction of vision tokens left, in (0, 1]")
    parser.add_argument("--text-keep", type=float, default=1.0, help="fraction of text tokens left, in (0, 1]")
    parser.add_argument("--method-options", default=None, help="JSON dict of method options")


def cmd_convert(args) -> int:
    """Stock BLIP checkpoint (Hub id or folder) -> pruning-enabled checkpoint folder."""
    from transformers import AutoConfig

    from .auto import PRUNED_ARCHITECTURES

    config = AutoConfig.from_pretrained(args.checkpoint)
    architecture = (config.architectures or ["BlipForImageTextRetrieval"])[0]
    pruned_name = architecture.replace("Blip", "BlipPruned", 1)
    if pruned_name not in PRUNED_ARCHITECTURES:
        raise SystemExit(f"vltprune convert: {args.checkpoint} is a {architecture}; supported: "
                         f"{sorted(n.replace('BlipPruned', 'Blip', 1) for n in PRUNED_ARCHITECTURES)}")
    model = PRUNED_ARCHITECTURES[pruned_name].from_pretrained(args.checkpoint, pruning_config=_pruning_from_args(args))
    model.save_pretrained(args.output)
    try:
        from transformers import AutoProcessor

        AutoProcessor.from_pretrained(args.checkpoint).save_pretrained(args.output)
    except (OSError, ValueError):
        print("no processor found next to the checkpoint; saved the model only", file=sys.stderr)
    print(f"saved {pruned_name} ({model.pruning_config.method}, vision_keep={model.pruning_config.vision_keep}, "
          f"text_keep={model.pruning_config.text_keep}) to {args.output}")
    return 0


def cmd_demo(args) -> int:
    """Every method at a few budgets on a small random BLIP: GFLOPs, latency, tokens, agreement with unpruned."""
    from .demo import run_demo

    run_demo(output_dir=args.output, budgets=args.budgets, batch_size=args.batch_size)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vltprune", description="Token pruning for vision-language transformers.")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help=cmd_demo.__doc__, description=cmd_demo.__doc__)
    demo.add_argument("--output", type=Path, default=Path("vltprune-demo"), help="folder for the table and JSON")
    demo.add_argument("--budgets", type=float, nargs="+", default=[0.5, 0.25], help="vision keep ratios to compare")
    demo.add_argument("--batch-size", type=int, default=4)
    demo.set_defaults(func=cmd_demo)

    convert = commands.add_parser("convert", help=cmd_convert.__doc__, description=cmd_convert.__doc__)
    convert.add_argument("checkpoint", help="stock BLIP checkpoint: Hub id or local folder")
    convert.add_argument("output", type=Path, help="folder for the pruned checkpoint")
    _add_pruning_arguments(convert)
    convert.set_defaults(func=cmd_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as error:  # configuration errors: say what is wrong, no traceback
        print(f"vltprune {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
