"""Fine-tuned accuracy at equal GFLOPs: every method, and the unpruned model, fine-tuned with the same recipe.

    python benchmarks/finetune_blip.py --preset tiny --keeps 0.5 0.2 --steps 300     # CPU, about 20 minutes

Starts from the preset's base model (trained once and cached), converts it for each method and vision budget,
fine-tunes it (`hf_vltprune.embedded.finetune_pruned`: keep-ratio warm-up over half the steps, self-distillation
from the model with pruning off, the method's own losses), then scores ITM accuracy on the validation split and
GFLOPs per sample (each sample alone, so per-instance methods are charged what they decided for it), and each
row's accuracy difference to the fine-tuned unpruned model with its paired 95% interval (`vs_unpruned`; the
unpruned row is fine-tuned once per recipe and evaluation set and reused from `--out` by later runs).
`--warmup-steps`, `--warmup-shape` and `--distillation` (`SelfDistillation` arguments as JSON) change the recipe. Writes
`finetune.json` (with every row's per-statement correctness, for paired comparisons between any two rows) and
`finetune.md` to `--out`.
"""

import argparse
import hashlib
import json
import statistics
import time
from pathlib import Path

import torch
from datasets import concatenate_datasets

from hf_vltprune import PruningConfig, get_pruned_model, measure
from hf_vltprune.embedded import (
    PRESETS,
    RetrievalCollator,
    base_model_dir,
    finetune_pruned,
    get_preset,
    load_base_model,
    task_data,
)
from hf_vltprune.embedded.evaluation import itm_predictions
from hf_vltprune.metrics import paired_accuracy_difference
from hf_vltprune.report import markdown_table
from hf_vltprune.training.callbacks import SCHEDULE_SHAPES

DEFAULT_DISTILLATION = {"alpha": 1.0}


def correctness(model, dataset, processor) -> torch.Tensor:
    predictions, labels = itm_predictions(model, dataset, processor)
    return (predictions == labels).int()


def run(method, keep, args, base, processor, data, validation) -> dict:
    unpruned = method == "unpruned"
    pruning = PruningConfig(method="tome" if unpruned else method, vision_keep=keep,
                            vision_schedule=None if unpruned else args.vision_schedule,
                            text_keep=1.0 if unpruned else args.text_keep,
                            method_options={} if unpruned else json.loads(args.method_options))
    seed = args.seed if unpruned or args.finetune_seed is None else args.finetune_seed
    torch.manual_seed(seed)
    model = get_pruned_model(base, pruning)
    before = correctness(model, validation, processor).float().mean().item()
    start = time.perf_counter()
    trainer = finetune_pruned(model, processor, data["train"], args.out / f"run-{method}-{keep}",
                              max_steps=args.steps, batch_size=args.batch_size, learning_rate=args.learning_rate,
                              reducer_learning_rate=args.reducer_learning_rate, warmup_steps=args.warmup_steps,
                              warmup_shape=args.warmup_shape, distillation=args.distillation, seed=seed,
                              disable_tqdm=True)
    seconds = time.perf_counter() - start
    model = trainer.model.eval()
    correct = correctness(model, validation, processor)
    sample = RetrievalCollator(processor, train=False)([validation[i] for i in range(32)])
    sample = {k: v for k, v in sample.items() if k != "labels"}
    cost = measure(model, sample, latency_repeats=0, per_sample=True)
    return dict(method=method, vision_keep=keep, text_keep=pruning.text_keep,
                itm_accuracy_before=round(100 * before, 2), itm_accuracy=round(100 * correct.float().mean().item(), 2),
                gflops=round(statistics.mean(cost.gflops_per_sample), 5),
                keep_vision=round(statistics.mean(cost.keep_per_sample.get("vision_model", [1.0])), 3),
                train_seconds=round(seconds, 1), correct="".join(map(str, correct.tolist())))


def unpruned_row(args, base, processor, data, validation) -> dict:
    """The unpruned model fine-tuned with the same recipe: run once per recipe and evaluation set, then read from
    `--out` (it depends on the base model, not on the methods, budgets or their options)."""
    recipe = {k: getattr(args, k) for k in ("preset", "steps", "batch_size", "learning_rate", "eval_splits",
                                            "max_examples", "seed")}
    if args.distillation != DEFAULT_DISTILLATION:  # keys of earlier runs stay valid
        recipe["distillation"] = args.distillation
    recipe["base_model"] = hashlib.sha256((base_model_dir(args.preset, args.seed) / "model.safetensors").read_bytes()
                                          ).hexdigest()
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    cached = args.out / f"unpruned-{key}.json"
    if cached.exists():
        return json.loads(cached.read_text())
    row = run("unpruned", 1.0, args, base, processor, data, validation)
    cached.write_text(json.dumps(row))
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    parser.add_argument("--methods", nargs="+", default=["tome", "crossget", "madtp", "smarttrim"])
    parser.add_argument("--keeps", type=float, nargs="+", default=[0.5, 0.2], help="vision keep ratios")
    parser.add_argument("--text-keep", type=float, default=1.0)
    parser.add_argument("--vision-schedule", type=float, nargs="+", default=None,
                        help="fraction of vision tokens left after each layer (replaces --keeps; one run per method)")
    parser.add_argument("--method-options", default="{}", help="JSON options for every method (not the unpruned)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--reducer-learning-rate", type=float, default=1e-2, help="of the methods' own parameters")
    parser.add_argument("--warmup-steps", type=int, default=None,
                        help="keep-ratio warm-up from 1.0 to the targets (default: half the steps)")
    parser.add_argument("--warmup-shape", default="linear", choices=SCHEDULE_SHAPES, help="of the keep-ratio warm-up")
    parser.add_argument("--distillation", type=json.loads, default=DEFAULT_DISTILLATION,
                        help="JSON arguments of hf_vltprune.SelfDistillation, e.g. '{\"alpha\": 1, "
                             "\"hidden_weight\": 1, \"hidden_field\": \"question_embeds\"}'")
    parser.add_argument("--eval-splits", nargs="+", default=["validation"], choices=["validation", "test"],
                        help="splits scored (both: twice the statements, a tighter interval)")
    parser.add_argument("--max-examples", type=int, default=None, help="examples scored (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="of the data, the base model and every fine-tuning")
    parser.add_argument("--finetune-seed", type=int, default=None,
                        help="of the pruned models' fine-tuning only (their reducers' initialisation, the data order): "
                             "repeats on the same base model, data and unpruned reference (default: --seed)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    preset = get_preset(args.preset)
    base, processor = load_base_model(preset, args.seed)
    data = task_data(preset, args.seed)
    validation = concatenate_datasets([data[split] for split in args.eval_splits])
    if args.max_examples:
        validation = validation.select(range(min(args.max_examples, len(validation))))
    keeps = [args.vision_schedule[-1]] if args.vision_schedule else args.keeps
    rows = [unpruned_row(args, base, processor, data, validation)]
    rows += [run(method, keep, args, base, processor, data, validation) for keep in keeps for method in args.methods]

    reference = rows[0]
    for row in rows:
        row["gflops_change"] = round(100 * (row["gflops"] / reference["gflops"] - 1), 1)
        difference, half_width = paired_accuracy_difference([int(c) for c in row["correct"]],
                                                            [int(c) for c in reference["correct"]])
        row["vs_unpruned"] = f"{100 * difference:+.1f} ± {100 * half_width:.1f}"
    (args.out / "finetune.json").write_text(json.dumps({"preset": preset.name, "steps": args.steps, "rows": rows},
                                                       indent=2))
    columns = ["method", "vision_keep", "text_keep", "itm_accuracy_before", "itm_accuracy", "vs_unpruned", "gflops",
               "gflops_change", "keep_vision", "train_seconds"]
    table = markdown_table(rows, columns)
    (args.out / "finetune.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
