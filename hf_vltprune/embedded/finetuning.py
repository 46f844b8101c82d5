"""Fine-tuning a pruned retrieval model on the embedded task: keep-ratio warm-up plus self-distillation."""

from __future__ import annotations

from transformers import TrainingArguments

from ..training import KeepRatioScheduler, PruningTrainer, SelfDistillation, itm_loss
from .retrieval_training import RetrievalCollator


def finetune_pruned(model, processor, train_dataset, output_dir, max_steps: int = 200, batch_size: int = 32,
                    learning_rate: float = 1e-4, reducer_learning_rate: float = 1e-2, warmup_steps: int | None = None,
                    warmup_shape: str = "linear", distillation: dict | None = None, seed: int = 0,
                    **training_arguments) -> PruningTrainer:
    """Train `model` (a pruned `BlipPrunedForImageTextRetrieval`) with ITM on one statement per image.

    The keep ratio warms up from 1.0 over `warmup_steps` (default: half the steps), along `warmup_shape`
    (`KeepRatioScheduler`'s `shape`: "linear", "cosine" or "step"), while the model distils from itself with pruning
    off (`distillation`: `SelfDistillation` arguments; `None` for its defaults, `alpha=1`); learned reducers add their
    own losses and train their parameters at `reducer_learning_rate`. Returns the trainer (after training).
    """
    args = TrainingArguments(
        output_dir=str(output_dir), max_steps=max_steps, per_device_train_batch_size=batch_size,
        learning_rate=learning_rate, warmup_steps=max_steps // 10, logging_steps=max(1, max_steps // 10),
        save_strategy="no", report_to=[], remove_unused_columns=False, ddp_find_unused_parameters=True, seed=seed,
        **training_arguments,
    )
    warmup = max_steps // 2 if warmup_steps is None else warmup_steps
    trainer = PruningTrainer(
        model=model, args=args, train_dataset=train_dataset,
        data_collator=RetrievalCollator(processor, train=False),  # one statement per image, label 1 = it holds
        compute_loss_func=itm_loss, reducer_learning_rate=reducer_learning_rate,
        callbacks=[KeepRatioScheduler(warmup_steps=warmup, shape=warmup_shape),
                   SelfDistillation(**(distillation or {}))],
    )
    trainer.train()
    return trainer
