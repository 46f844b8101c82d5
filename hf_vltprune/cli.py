"""The `vltprune` command: demo, train-base, eval, bench, convert, push."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .config import PruningConfig
from .reduce import reducer_names


def _pruning_from_args(args) -> PruningConfig:
    try:
        options = json.loads(args.method_options) if args.method_options else {}
    except json.JSONDecodeError as error:
        raise ValueError(f"--method-options must be a JSON object: {error}") from None
    vision_tokens = getattr(args, "vision_tokens", None)
    vision_keep = args.vision_keep if args.vision_keep is not None else (1.0 if vision_tokens else 0.5)
    return PruningConfig(method=args.method, vision_keep=vision_keep, text_keep=args.text_keep,
                         vision_tokens=vision_tokens, token_positions=getattr(args, "token_positions", "original"),
                         method_options=options)


def _add_pruning_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", default="tome", choices=reducer_names())
    parser.add_argument("--vision-keep", type=float, default=None,
                        help="fraction of vision tokens left, in (0, 1] (default 0.5 unless --vision-tokens)")
    parser.add_argument("--text-keep", type=float, default=1.0, help="fraction of text tokens left, in (0, 1]")
    parser.add_argument("--method-options", default=None, help="JSON object of method options")


def cmd_demo(args) -> int:
    """Data -> base model (trained once, cached) -> every method at a few budgets (the learned ones after a short
    fine-tune) -> accuracy/GFLOPs/latency."""
    from .demo import run_demo

    run_demo(output_dir=args.output, preset=args.preset, budgets=args.budgets, seed=args.seed,
             max_examples=args.max_examples, finetune_steps=args.finetune_steps)
    return 0


def cmd_train_base(args) -> int:
    """Train a BLIP model from scratch on the synthetic task: retrieval (ITC + ITM with hard negatives) or VQA."""
    from .embedded import base_model_dir, train_base_model

    if args.output is None:
        if args.task != "retrieval":
            raise ValueError("--output is required for --task vqa (only retrieval base models are cached)")
        print(f"base model: {base_model_dir(args.preset, args.seed)}")
        return 0
    metrics = train_base_model(args.preset, args.output, task=args.task, seed=args.seed, max_steps=args.max_steps)
    print(json.dumps(metrics, indent=2))
    return 0


def cmd_eval(args) -> int:
    """ITM accuracy and retrieval recall (retrieval checkpoints) or VQA exact match (VQA checkpoints), pruned or
    stock, on the synthetic task."""
    from transformers import BlipProcessor

    from .embedded import evaluate_itm, evaluate_vqa, get_preset, task_data

    model = _load_checkpoint(args.model)
    if args.attach and not hasattr(model, "pruning_config"):
        raise ValueError(f"--attach needs a pruned checkpoint; {args.model} is a stock {type(model).__name__}.")
    processor = BlipProcessor.from_pretrained(args.processor or args.model)
    split = task_data(get_preset(args.preset), args.seed)[args.split]
    if args.max_examples:
        split = split.select(range(min(args.max_examples, len(split))))
    is_vqa = "QuestionAnswering" in type(model).__name__
    evaluate = evaluate_vqa if is_vqa else evaluate_itm
    metrics = evaluate(model, split, processor, progress=True)
    if args.attach:
        _attach_to_card(args, model, processor, split, evaluate, is_vqa, metrics)
    print(json.dumps(metrics, indent=2))
    if args.output:
        Path(args.output).write_text(json.dumps(metrics, indent=2))
    return 0


def _attach_to_card(args, model, processor, split, evaluate, is_vqa, metrics) -> None:
    """Measure the pruned model against itself with pruning off; state both in the checkpoint's model card."""
    from .embedded import RetrievalCollator, VqaCollator
    from .hub import PruningResults, attach_results, measure_against_unpruned
    from .reduce import pruning_disabled

    collator = VqaCollator(processor) if is_vqa else RetrievalCollator(processor, train=False)
    batch = collator([split[i] for i in range(min(8, len(split)))])
    batch = {k: v for k, v in batch.items() if is_vqa or k != "labels"}
    cost = measure_against_unpruned(model, batch, latency_repeats=5)
    with pruning_disabled(model):
        unpruned_metrics = evaluate(model, split, processor, progress=True)
    setup = {"dataset": f"hf-vltprune synthetic ({args.preset}, seed {args.seed})", "split": args.split,
             "examples": len(split)}
    attach_results(args.model, cost.merged(PruningResults(unpruned_metrics, metrics, setup)))
    print(f"model card updated: {Path(args.model) / 'README.md'}", file=sys.stderr)


def _load_checkpoint(folder):
    from transformers import AutoConfig, BlipForImageTextRetrieval, BlipForQuestionAnswering

    from .auto import AutoPrunedModel

    config = AutoConfig.from_pretrained(folder)
    if config.model_type == "blip_pruned":
        return AutoPrunedModel.from_pretrained(folder)
    if "BlipForQuestionAnswering" in (config.architectures or []):
        return BlipForQuestionAnswering.from_pretrained(folder)
    return BlipForImageTextRetrieval.from_pretrained(folder)


def cmd_bench(args) -> int:
    """Accuracy against GFLOPs for every method and budget (JSON, markdown table, PNG plot)."""
    return cmd_demo(args)


def cmd_convert(args) -> int:
    """Stock BLIP or LLaVA checkpoint (Hub id or folder) -> pruning-enabled checkpoint folder."""
    from transformers import AutoConfig

    from .auto import PRUNED_CLASSES

    config = AutoConfig.from_pretrained(args.checkpoint)
    architecture = (config.architectures or ["BlipForImageTextRetrieval"])[0]
    pruned_classes = {stock.__name__: pruned for stock, pruned in PRUNED_CLASSES.items()}
    if architecture not in pruned_classes:
        raise ValueError(f"{args.checkpoint} is a {architecture}; supported: {sorted(pruned_classes)}")
    pruned_class = pruned_classes[architecture]
    pruned_name = pruned_class.__name__
    model = pruned_class.from_pretrained(args.checkpoint, pruning_config=_pruning_from_args(args))
    model.save_pretrained(args.output)
    try:
        from transformers import AutoProcessor

        AutoProcessor.from_pretrained(args.checkpoint).save_pretrained(args.output)
    except (OSError, ValueError):
        print("no processor found next to the checkpoint; saved the model only", file=sys.stderr)
    print(f"saved {pruned_name} ({model.pruning_config.method}, vision_keep={model.pruning_config.vision_keep}, "
          f"text_keep={model.pruning_config.text_keep}) to {args.output}")
    return 0


def cmd_push(args) -> int:
    """Upload a pruned checkpoint folder (model, processor, model card) to the Hub through HfApi."""
    from .hub import PruningResults, push_to_hub

    results = None
    if args.results:
        try:
            results = PruningResults.from_dict(json.loads(Path(args.results).read_text()))
        except json.JSONDecodeError as error:
            raise ValueError(f"--results must be a JSON file of PruningResults: {error}") from None
    url = push_to_hub(args.folder, args.repo_id, results=results, commit_message=args.commit_message,
                      private=args.private or None, revision=args.revision, create_pr=args.create_pr)
    print(url)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .embedded import PRESETS, TASKS

    parser = argparse.ArgumentParser(prog="vltprune", description="Token pruning for vision-language transformers.")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name, func):
        sub = commands.add_parser(name, help=func.__doc__, description=func.__doc__)
        sub.set_defaults(func=func)
        return sub

    for name, func in (("demo", cmd_demo), ("bench", cmd_bench)):
        sub = command(name, func)
        sub.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
        sub.add_argument("--output", type=Path, default=Path(f"vltprune-{name}"), help="folder for table, JSON, PNG")
        sub.add_argument("--budgets", type=float, nargs="+", default=[0.5, 0.25], help="vision keep ratios")
        sub.add_argument("--max-examples", type=int, default=500, help="validation examples to score")
        sub.add_argument("--seed", type=int, default=0)
        sub.add_argument("--finetune-steps", type=int, default=100,
                         help="short fine-tune of the methods that learn (MADTP, SmartTrim); 0: score them untrained")

    train = command("train-base", cmd_train_base)
    train.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    train.add_argument("--task", default="retrieval", choices=TASKS)
    train.add_argument("--output", type=Path, default=None, help="folder (default: the user cache, reused)")
    train.add_argument("--max-steps", type=int, default=None, help="override the preset's step count")
    train.add_argument("--seed", type=int, default=0)

    evaluate = command("eval", cmd_eval)
    evaluate.add_argument("model", help="checkpoint folder (pruned or stock BLIP retrieval or VQA)")
    evaluate.add_argument("--processor", default=None, help="processor folder (default: the model folder)")
    evaluate.add_argument("--preset", default="tiny", choices=sorted(PRESETS), help="which synthetic data")
    evaluate.add_argument("--split", default="validation", choices=["train", "validation", "test"])
    evaluate.add_argument("--max-examples", type=int, default=None)
    evaluate.add_argument("--output", default=None, help="write the metrics as JSON here")
    evaluate.add_argument("--attach", action="store_true",
                          help="pruned checkpoints: also evaluate with pruning off, measure GFLOPs and latency both "
                               "ways, and state it all in the checkpoint's model card")
    evaluate.add_argument("--seed", type=int, default=0)

    convert = command("convert", cmd_convert)
    convert.add_argument("checkpoint", help="stock BLIP or LLaVA checkpoint: Hub id or local folder")
    convert.add_argument("output", type=Path, help="folder for the pruned checkpoint")
    _add_pruning_arguments(convert)
    convert.add_argument("--vision-tokens", type=int, default=None,
                         help="LLaVA: visual tokens per image the language model keeps (instead of --vision-keep)")
    convert.add_argument("--token-positions", choices=["original", "compact"], default="original",
                         help="LLaVA: position ids of the kept tokens")

    push = command("push", cmd_push)
    push.add_argument("folder", help="a pruned checkpoint folder (from convert, save_pretrained or training)")
    push.add_argument("repo_id", help="Hub repository, e.g. me/blip-itm-tome-50 (created if missing)")
    push.add_argument("--results", default=None, help="a PruningResults JSON file to state in the card")
    push.add_argument("--commit-message", default=None)
    push.add_argument("--private", action="store_true", help="create the repository private")
    push.add_argument("--revision", default=None, help="branch to push to")
    push.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as error:  # configuration errors: say what is wrong, no traceback
        print(f"vltprune {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
