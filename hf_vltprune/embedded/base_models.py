"""Base models of the embedded default: trained once on the synthetic task with the stock `Trainer`, then cached."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from transformers import (
    BlipForImageTextRetrieval,
    BlipForQuestionAnswering,
    BlipProcessor,
    Trainer,
    TrainingArguments,
)

from ..data import make_dataset
from ..data.dataset import DATA_VERSION
from ..data.processor import build_processor, dataset_corpus
from .evaluation import evaluate_itm
from .presets import Preset, get_preset
from .retrieval_training import RetrievalCollator, RetrievalPretrainer, RetrievalPretrainingModel
from .vqa_training import VqaCollator, evaluate_vqa

TASKS = ("retrieval", "vqa")


def cache_dir() -> Path:
    """Where data and trained base models are kept: `$HF_VLTPRUNE_CACHE` or `~/.cache/hf_vltprune`."""
    return Path(os.environ.get("HF_VLTPRUNE_CACHE", Path.home() / ".cache" / "hf_vltprune"))


def task_data(preset: Preset, seed: int = 0):
    """The preset's synthetic splits (generated once, then read from the `datasets` cache)."""
    return make_dataset(preset.num_train, preset.num_validation, preset.num_test, seed=seed, spec=preset.scene_spec(),
                        num_proc=min(2, os.cpu_count() or 1), cache_dir=str(cache_dir() / "datasets"))


def _training_arguments(preset: Preset, output_dir: Path, steps: int, seed: int, report_to: str) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(output_dir / "checkpoints"),
        max_steps=steps,
        per_device_train_batch_size=preset.batch_size,
        learning_rate=preset.learning_rate,
        warmup_steps=int(preset.warmup_ratio * steps),
        lr_scheduler_type="cosine",
        weight_decay=0.05,
        logging_steps=max(1, steps // 20),
        save_strategy="no",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        report_to=report_to,
        seed=seed,
        use_cpu=not torch.cuda.is_available(),
        bf16=torch.cuda.is_available(),
    )


def train_base_model(preset: Preset | str, output_dir: str | Path, task: str = "retrieval", seed: int = 0,
                     max_steps: int | None = None, report_to: str = "none") -> dict:
    """Train a BLIP model from scratch on the synthetic task and save it with its processor.

    `task="retrieval"`: `BlipForImageTextRetrieval` with ITC + ITM on hard negatives (`RetrievalPretrainer`), plus
    the grounding losses when the preset weights them.
    `task="vqa"`: `BlipForQuestionAnswering` with its own answer-generation loss (the stock `Trainer`).
    Returns the validation metrics, also written to `output_dir/metrics.json` with the training log.
    """
    if task not in TASKS:
        raise ValueError(f"task={task!r} is invalid: allowed {TASKS}.")
    preset = get_preset(preset) if isinstance(preset, str) else preset
    output_dir = Path(output_dir)
    args = _training_arguments(preset, output_dir, max_steps or preset.max_steps, seed, report_to)
    with args.main_process_first(desc="synthetic data"):  # several processes: one generates, the others read
        data = task_data(preset, seed)
    processor = build_processor(dataset_corpus(data["train"]), preset.image_size)
    torch.manual_seed(seed)
    if task == "retrieval":
        model = BlipForImageTextRetrieval(preset.blip_config(processor.tokenizer))
        grid = preset.patch_grid if preset.grounding else None
        collator = RetrievalCollator(processor, train=True, seed=seed, patch_grid=grid)
        trainer = RetrievalPretrainer(model=RetrievalPretrainingModel(model, grounding_weight=preset.grounding),
                                      args=args, train_dataset=data["train"], data_collator=collator)
    else:
        model = BlipForQuestionAnswering(preset.blip_config(processor.tokenizer))
        trainer = Trainer(model=model, args=args, train_dataset=data["train"], data_collator=VqaCollator(processor))
    trainer.train()
    evaluate = evaluate_itm if task == "retrieval" else evaluate_vqa
    metrics = evaluate(model, data["validation"], processor)
    save_trained(output_dir, model, processor, trainer, metrics, preset=preset.to_dict(), task=task, seed=seed)
    return metrics


def save_trained(output_dir: Path, model, processor, trainer, metrics: dict, **record) -> None:
    """Model, processor and `metrics.json` (validation metrics, training log, `record`) into `output_dir`, by the
    first of several processes only."""
    if not trainer.is_world_process_zero():
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    record.update(validation=metrics, log_history=trainer.state.log_history)
    (output_dir / "metrics.json").write_text(json.dumps(record, indent=2))


def train_retrieval_model(preset: Preset | str, output_dir: str | Path, seed: int = 0, max_steps: int | None = None,
                          report_to: str = "none") -> dict:
    """`train_base_model(..., task="retrieval")`."""
    return train_base_model(preset, output_dir, "retrieval", seed, max_steps, report_to)


def cached_model_dir(kind: str, preset: Preset | str, seed: int, train) -> Path:
    """Folder of a cached `kind` model of a preset: `train(preset, folder, seed=seed)` on first use, reused
    afterwards (a folder counts once training wrote its `metrics.json`)."""
    preset = get_preset(preset) if isinstance(preset, str) else preset
    folder = cache_dir() / "models" / f"{kind}-{preset.name}-seed{seed}-data{DATA_VERSION}"
    if not (folder / "metrics.json").exists():
        train(preset, folder, seed=seed)
    return folder


def base_model_dir(preset: Preset | str, seed: int = 0) -> Path:
    """Folder of the cached base model of a preset: trained on first use, reused afterwards."""
    return cached_model_dir("blip-itm", preset, seed, train_retrieval_model)


def load_base_model(preset: Preset | str, seed: int = 0) -> tuple[BlipForImageTextRetrieval, BlipProcessor]:
    folder = base_model_dir(preset, seed)
    return BlipForImageTextRetrieval.from_pretrained(folder), BlipProcessor.from_pretrained(folder)
