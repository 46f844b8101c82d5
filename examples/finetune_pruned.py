"""Fine-tune a pruned BLIP retrieval model on the synthetic task with the stock Trainer machinery: the keep ratio
warms up from 1.0 to its target while the model distils from itself with pruning off.

    python examples/finetune_pruned.py --preset tiny --method tome --vision-keep 0.25
    python examples/finetune_pruned.py --preset tiny --method madtp --method-options '{"importance_mass": 0.98}'
    accelerate launch --num_processes 2 examples/finetune_pruned.py --preset tiny     # 2 GPUs (or CPU processes)

The base model is the preset's cached one (trained on first use). Writes the fine-tuned checkpoint, its processor
and a model card with accuracy and GFLOPs before (pruning off) and after to --output.
"""

import argparse
import json

from transformers import TrainingArguments

from hf_vltprune import PruningConfig, get_pruned_model
from hf_vltprune.embedded import (
    RetrievalCollator,
    evaluate_itm,
    finetune_pruned,
    get_preset,
    load_base_model,
    task_data,
)
from hf_vltprune.hub import measure_against_unpruned
from hf_vltprune.training.callbacks import SCHEDULE_SHAPES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--method", default="tome")
    parser.add_argument("--vision-keep", type=float, default=0.25)
    parser.add_argument("--text-keep", type=float, default=1.0)
    parser.add_argument("--method-options", type=json.loads, default={}, help="the method's options, as JSON")
    parser.add_argument("--max-steps", type=int, default=200)
    parser.add_argument("--warmup-steps", type=int, default=None, help="keep-ratio warm-up (default: half the steps)")
    parser.add_argument("--warmup-shape", default="linear", choices=SCHEDULE_SHAPES, help="of the keep-ratio warm-up")
    parser.add_argument("--alpha", type=float, default=1.0, help="self-distillation weight")
    parser.add_argument("--batch-size", type=int, default=32, help="per device")
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--reducer-learning-rate", type=float, default=1e-2, help="of the method's own parameters")
    parser.add_argument("--output", default="finetuned-pruned")
    args = parser.parse_args()

    preset = get_preset(args.preset)
    with TrainingArguments(output_dir=args.output).main_process_first(desc="base model and data"):
        base, processor = load_base_model(preset)  # trained once, then read from the cache
        data = task_data(preset)
    model = get_pruned_model(base, PruningConfig(method=args.method, vision_keep=args.vision_keep,
                                                 text_keep=args.text_keep, method_options=args.method_options))
    trainer = finetune_pruned(model, processor, data["train"], args.output, max_steps=args.max_steps,
                              batch_size=args.batch_size, learning_rate=args.learning_rate,
                              reducer_learning_rate=args.reducer_learning_rate, warmup_steps=args.warmup_steps,
                              warmup_shape=args.warmup_shape, distillation={"alpha": args.alpha})

    if trainer.is_world_process_zero():
        model = trainer.accelerator.unwrap_model(trainer.model).eval()
        validation = data["validation"]
        batch = RetrievalCollator(processor, train=False)([validation[i] for i in range(min(8, len(validation)))])
        batch = {k: v.to(model.device) for k, v in batch.items() if k != "labels"}
        results = measure_against_unpruned(
            model, batch, evaluate=lambda m: {"itm_accuracy": evaluate_itm(m, validation, processor)["itm_accuracy"]},
            setup={"dataset": f"hf-vltprune synthetic ({preset.name})", "split": "validation"})
        model.save_pretrained(args.output, pruning_results=results)
        processor.save_pretrained(args.output)
        print(f"ITM accuracy: unpruned {results.unpruned['itm_accuracy']:.1%}, pruned "
              f"{results.pruned['itm_accuracy']:.1%}; GFLOPs {results.unpruned['gflops']:.3g} -> "
              f"{results.pruned['gflops']:.3g}; saved to {args.output}")


if __name__ == "__main__":
    main()
