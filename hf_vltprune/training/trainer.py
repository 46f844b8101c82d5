"""`PruningTrainer`: the stock `Trainer` plus what pruning-aware fine-tuning adds to the loss and the logs."""

from __future__ import annotations

import inspect

import torch
from transformers import Trainer

from ..measure import measure
from ..reduce import pruning_disabled, pruning_losses, reducers_of
from .callbacks import SelfDistillation
from .losses import distillation_loss, summary_state_loss

LOGIT_FIELDS = ("logits", "itm_score", "logits_per_image")


class PruningTrainer(Trainer):
    """A `Trainer` for pruned models: the reducers' own training losses (`pruning_losses`), self-distillation
    (when a `SelfDistillation` callback is given) and, at every logging step, the realised GFLOPs per sample and
    token keep ratios of the last training batch.

    Args:
        reducer_learning_rate: learning rate of the reducers' own parameters (default: the same as the rest).

    Everything else is the stock `Trainer`: pass `compute_loss_func` for heads without a loss of their own (BLIP
    retrieval), `KeepRatioScheduler` for a keep-ratio warm-up, and launch with `accelerate` / `torchrun` as usual.
    Each micro-batch loss is a mean and the `Trainer` divides it by the accumulation steps, so gradient accumulation
    gives the same loss scale as one large batch.
    """

    def __init__(self, *args, reducer_learning_rate: float | None = None, **kwargs):
        if reducer_learning_rate is not None and not reducer_learning_rate > 0:
            raise ValueError(f"PruningTrainer.reducer_learning_rate={reducer_learning_rate!r} is invalid: allowed "
                             "numbers > 0 (or None: the learning rate of the rest).")
        super().__init__(*args, **kwargs)
        self.reducer_learning_rate = reducer_learning_rate
        distillers = [c for c in self.callback_handler.callbacks if isinstance(c, SelfDistillation)]
        if len(distillers) > 1:
            raise ValueError("PruningTrainer: give at most one SelfDistillation callback.")
        self.distillation = distillers[0] if distillers else None
        if self.distillation is not None:
            self.distillation.attached = True
        # Our loss is a per-batch mean: the model must not normalise by `num_items_in_batch`, and the Trainer then
        # scales for gradient accumulation (5.17 derives this from `model_accepts_loss_kwargs`, 5.23 reads
        # `loss_is_scaled_for_ga`).
        self.model_accepts_loss_kwargs = False
        self.loss_is_scaled_for_ga = False
        self._parts: dict[str, list[float]] = {}
        self._last_inputs: dict | None = None

    def create_optimizer(self, model=None):
        """The stock optimizer; with `reducer_learning_rate`, the reducers' parameters (thresholds, prototypes,
        trimmers: new and small, so they need a larger step than the pretrained weights) form a group of their own."""
        optimizer = super().create_optimizer(model)
        if self.reducer_learning_rate is None:
            return optimizer
        owned = {id(p) for reducer in reducers_of(model or self.model) for p in reducer.parameters()}
        moved = []
        for group in optimizer.param_groups:
            moved += [p for p in group["params"] if id(p) in owned]
            group["params"] = [p for p in group["params"] if id(p) not in owned]
        if moved:
            optimizer.add_param_group({"params": moved, "lr": self.reducer_learning_rate, "weight_decay": 0.0})
        return optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        batch = dict(inputs)  # the stock compute_loss pops `labels` from `inputs`
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=None)
        # The reducers' own losses (e.g. MADTP's keep-ratio and alignment terms), read before the teacher pass.
        reducer_losses = pruning_losses(self.accelerator.unwrap_model(model))
        if model.training:
            self._last_inputs = batch
            if self.distillation is not None:
                loss = self._distil(model, batch, loss, outputs)
            for name, value in reducer_losses.items():
                loss = loss + value
                self._record(name, value)
        return (loss, outputs) if return_outputs else loss

    def _distil(self, model, batch, task_loss, outputs) -> torch.Tensor:
        settings = self.distillation
        student = self.accelerator.unwrap_model(model)
        with torch.no_grad():
            if settings.teacher is None:
                student.eval()
                with pruning_disabled(student):
                    teacher_outputs = student(**_forward_inputs(student, batch))
                student.train()
            else:
                teacher = settings.teacher.to(task_loss.device).eval()
                teacher_outputs = teacher(**_forward_inputs(teacher, batch))
        loss = settings.task_weight * task_loss
        self._record("task_loss", task_loss)
        if settings.alpha:
            field = next((f for f in LOGIT_FIELDS if outputs.get(f) is not None), None)
            if field is None:
                raise ValueError(f"SelfDistillation.alpha > 0 needs logits, but {type(outputs).__name__} has none of "
                                 f"{list(LOGIT_FIELDS)}: set alpha=0 and distil hidden states (hidden_weight > 0).")
            student_logits, teacher_logits = outputs[field], teacher_outputs[field]
            kept = outputs.get("kept_tokens")
            if kept is not None:  # LLaVA: the student's logits cover the tokens its language model kept
                teacher_logits = kept.gather(teacher_logits)
                student_logits, teacher_logits = student_logits[kept.valid], teacher_logits[kept.valid]
            kd = distillation_loss(student_logits, teacher_logits, settings.temperature)
            loss = loss + settings.alpha * kd
            self._record("distillation_loss", kd)
        if settings.hidden_weight:
            field = settings.hidden_field
            if outputs.get(field) is None:
                raise ValueError(f"SelfDistillation.hidden_field={field!r}: {type(outputs).__name__} has no such "
                                 "field; name one the model returns (e.g. 'last_hidden_state'), or set "
                                 "hidden_weight=0.")
            hidden = summary_state_loss(outputs[field], teacher_outputs[field])
            loss = loss + settings.hidden_weight * hidden
            self._record("hidden_distillation_loss", hidden)
        return loss

    def _record(self, name: str, value: torch.Tensor) -> None:
        self._parts.setdefault(name, []).append(value.detach().item())

    def log(self, logs: dict, *args, **kwargs) -> None:
        if "loss" in logs:  # a training log: add the loss parts and what pruning realised
            logs.update({k: float(f"{sum(v) / len(v):.4g}") for k, v in self._parts.items()})
            self._parts.clear()
            if self._last_inputs is not None:
                logs.update(self._realised_cost(self._last_inputs))
        super().log(logs, *args, **kwargs)

    def _realised_cost(self, batch: dict) -> dict[str, float]:
        """GFLOPs per sample and, per encoder, the fraction of tokens entering its last layer, on one batch in eval
        mode (what inference would cost on it)."""
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        try:
            cost = measure(model, _forward_inputs(model, batch), latency_repeats=0)
        finally:
            model.train(was_training)
        realised = {"gflops": round(cost.gflops, 4)}
        for encoder, tokens in cost.tokens_per_layer.items():
            realised[f"keep_{encoder}"] = round(tokens[-1] / tokens[0], 4)
        return realised


def _forward_inputs(model, batch: dict) -> dict:
    """The batch without `labels` when `model.forward` does not take them (they were for `compute_loss_func`)."""
    if "labels" in inspect.signature(model.forward).parameters:
        return batch
    return {k: v for k, v in batch.items() if k != "labels"}
