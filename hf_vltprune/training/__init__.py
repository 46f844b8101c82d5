"""Pruning-aware fine-tuning with the stock `Trainer`: callbacks, `PruningTrainer`, loss terms."""

from .callbacks import KeepRatioScheduler, SelfDistillation, set_pruning_progress
from .losses import distillation_loss, itm_loss, summary_state_loss
from .trainer import PruningTrainer

__all__ = [
    "KeepRatioScheduler",
    "PruningTrainer",
    "SelfDistillation",
    "distillation_loss",
    "itm_loss",
    "set_pruning_progress",
    "summary_state_loss",
]
