"""The embedded default: synthetic data, small BLIP models trained on it, and their evaluation."""

from .base_models import (
    TASKS,
    base_model_dir,
    cache_dir,
    load_base_model,
    task_data,
    train_base_model,
    train_retrieval_model,
)
from .evaluation import evaluate_itm
from .finetuning import finetune_pruned
from .presets import PRESETS, Preset, get_preset
from .retrieval_training import RetrievalCollator, RetrievalPretrainer, RetrievalPretrainingModel, itc_itm_loss
from .vqa_training import VqaCollator, evaluate_vqa

__all__ = [
    "PRESETS", "Preset", "RetrievalCollator", "RetrievalPretrainer", "RetrievalPretrainingModel", "TASKS",
    "VqaCollator", "base_model_dir", "cache_dir", "evaluate_itm", "evaluate_vqa", "finetune_pruned",
    "train_base_model", "get_preset", "itc_itm_loss", "load_base_model", "task_data", "train_retrieval_model",
]
