"""A tiny pruned BLIP retrieval model, a random matching dataset and Trainer arguments, shared by the training
tests and the 2-process script (`ddp_train.py`)."""

import torch
from torch.utils.data import Dataset
from transformers import TrainingArguments

from hf_vltprune import BlipPrunedForImageTextRetrieval, PruningConfig

from .conftest import make_inputs, tiny_blip_config

NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def tiny_retrieval_model(method="tome", vision_keep=0.5, text_keep=1.0, seed=0,
                         method_options=None) -> BlipPrunedForImageTextRetrieval:
    torch.manual_seed(seed)
    config = tiny_blip_config()
    config["text_config"].update(NO_DROPOUT)
    config["vision_config"]["attention_dropout"] = 0.0
    pruning = PruningConfig(method=method, vision_keep=vision_keep, text_keep=text_keep,
                            method_options=method_options or {}).to_dict()
    return BlipPrunedForImageTextRetrieval(BlipPrunedForImageTextRetrieval.config_class(**config, pruning=pruning))


class MatchingData(Dataset):
    """Random images and texts with random match labels: enough for the loss to move."""

    def __init__(self, size: int = 16, seed: int = 0):
        self.rows = make_inputs(batch=size, length=9, seed=seed, pad_last=False)
        self.labels = torch.randint(0, 2, (size,), generator=torch.Generator().manual_seed(seed))

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return {**{k: v[index] for k, v in self.rows.items()}, "labels": self.labels[index]}


def training_args(output_dir, **overrides) -> TrainingArguments:
    settings = dict(output_dir=str(output_dir), max_steps=4, per_device_train_batch_size=4, learning_rate=0.05,
                    optim="sgd", lr_scheduler_type="constant", logging_steps=1, save_strategy="no", report_to=[],
                    use_cpu=True, seed=0, disable_tqdm=True, remove_unused_columns=False)
    return TrainingArguments(**{**settings, **overrides})


def minimise_pruning_losses(model, inputs: dict, parameters, steps: int = 60, lr: float = 1e-2) -> list[float]:
    """Train `parameters` on the model's reducer losses alone (no task); returns the loss at each step."""
    from hf_vltprune.reduce import pruning_losses

    optimizer = torch.optim.Adam(parameters, lr=lr)
    history = []
    for _ in range(steps):
        model.train()
        model(**inputs)
        loss = sum(pruning_losses(model).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    return history
