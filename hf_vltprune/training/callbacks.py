"""`Trainer` callbacks: keep-ratio warm-up and self-distillation settings."""

from __future__ import annotations

import math

from torch import nn
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from ..reduce import reducers_of

SCHEDULE_SHAPES = ("linear", "cosine", "step")


def set_pruning_progress(model: nn.Module, progress: float) -> None:
    """Put every reducer of `model` at `progress` along the way from keep 1.0 (0.0) to its targets (1.0)."""
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f"progress={progress} is invalid: allowed [0, 1].")
    for reducer in reducers_of(model):
        reducer.progress = progress


class KeepRatioScheduler(TrainerCallback, ExportableState):
    """Warms pruning up during training: every reducer goes from keep 1.0 to its configured targets.

    The keep ratio of each reducing layer is interpolated between 1.0 and its target by the progress
    `p(step)` of the optimizer step about to run: 0 until `start_step`, then rising to 1 over `warmup_steps`
    steps (`linear`, `cosine`, or `step`: `num_stages` equal jumps), then 1. Because `p` depends on the global step
    only, resuming from a checkpoint continues the schedule exactly; the arguments are saved in the checkpoint's
    `trainer_state.json` (restored with `restore_callback_states_from_checkpoint=True`).

    Args:
        warmup_steps: optimizer steps from keep 1.0 to the targets (>= 0; 0 = the targets from `start_step` on).
        shape: `"linear"`, `"cosine"` or `"step"`.
        num_stages: jumps of the `"step"` shape (>= 1).
        start_step: optimizer steps at keep 1.0 before the warm-up (>= 0).
    """

    def __init__(self, warmup_steps: int, shape: str = "linear", num_stages: int = 4, start_step: int = 0):
        if not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(f"KeepRatioScheduler.warmup_steps={warmup_steps!r} is invalid: allowed integers >= 0.")
        if shape not in SCHEDULE_SHAPES:
            raise ValueError(f"KeepRatioScheduler.shape={shape!r} is invalid: allowed {list(SCHEDULE_SHAPES)}.")
        if not isinstance(num_stages, int) or num_stages < 1:
            raise ValueError(f"KeepRatioScheduler.num_stages={num_stages!r} is invalid: allowed integers >= 1.")
        if not isinstance(start_step, int) or start_step < 0:
            raise ValueError(f"KeepRatioScheduler.start_step={start_step!r} is invalid: allowed integers >= 0.")
        self.warmup_steps, self.shape, self.num_stages, self.start_step = warmup_steps, shape, num_stages, start_step

    def progress(self, step: int) -> float:
        """Progress towards the targets before optimizer step `step + 1` (after `step` completed steps)."""
        if step < self.start_step:
            return 0.0
        if self.warmup_steps == 0:
            return 1.0
        done = min(1.0, (step - self.start_step) / self.warmup_steps)
        if self.shape == "cosine":
            return 0.5 * (1.0 - math.cos(math.pi * done))
        if self.shape == "step":
            return math.floor(done * self.num_stages) / self.num_stages
        return done

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.max_steps > 0 and self.start_step + self.warmup_steps > state.max_steps:
            raise ValueError(
                f"KeepRatioScheduler: start_step + warmup_steps = {self.start_step + self.warmup_steps} exceeds the "
                f"{state.max_steps} training steps; the model would stop short of its keep targets (allowed: <= "
                "max_steps)."
            )
        set_pruning_progress(model, self.progress(state.global_step))

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        set_pruning_progress(model, self.progress(state.global_step))

    def on_train_end(self, args, state, control, model=None, **kwargs):
        set_pruning_progress(model, 1.0)  # what a saved and reloaded model does

    def state(self) -> dict:
        return {"args": {"warmup_steps": self.warmup_steps, "shape": self.shape, "num_stages": self.num_stages,
                         "start_step": self.start_step}, "attributes": {}}


class SelfDistillation(TrainerCallback):
    """Distil the pruned model from its full-capacity self while it trains (SmartTrim's self-distillation).

    The teacher is, by default, the same model with pruning switched off (`pruning_disabled`, no copy), run in
    eval mode without gradients on the same batch; or `teacher`, any model taking the same inputs. The loss becomes
    `task_weight · task + alpha · T² · KL(teacher ‖ student)` on the output logits (`logits`, `itm_score` or
    `logits_per_image`, whichever the model returns) `+ hidden_weight · MSE` of the first token's final states
    (`hidden_field` of the output: the vision encoder's `last_hidden_state` by default; for BLIP retrieval,
    `question_embeds` is the multimodal [CLS] state that the ITM head reads).

    The stock `Trainer` has no hook to change the loss, so this needs `hf_vltprune.PruningTrainer`; with any other
    trainer it stops at the start of training with a `ValueError` instead of silently doing nothing.

    Args:
        alpha: weight of the logit distillation (>= 0).
        temperature: softmax temperature T (> 0).
        teacher: a separate teacher model (default: the student with pruning off).
        hidden_weight: weight of the summary-token state distillation (>= 0).
        task_weight: weight of the model's own loss (>= 0; 0 trains on the teacher alone).
        hidden_field: the output field whose first token `hidden_weight` distils.
    """

    def __init__(self, alpha: float = 1.0, temperature: float = 1.0, teacher: nn.Module | None = None,
                 hidden_weight: float = 0.0, task_weight: float = 1.0, hidden_field: str = "last_hidden_state"):
        for name, value in (("alpha", alpha), ("hidden_weight", hidden_weight), ("task_weight", task_weight)):
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"SelfDistillation.{name}={value!r} is invalid: allowed finite numbers >= 0.")
        if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature <= 0:
            raise ValueError(f"SelfDistillation.temperature={temperature!r} is invalid: allowed numbers > 0.")
        if alpha == 0 and hidden_weight == 0:
            raise ValueError("SelfDistillation: alpha and hidden_weight are both 0, so nothing would be distilled.")
        self.alpha, self.temperature, self.teacher = float(alpha), float(temperature), teacher
        if not isinstance(hidden_field, str) or not hidden_field:
            raise ValueError(f"SelfDistillation.hidden_field={hidden_field!r} is invalid: allowed the name of an "
                             "output field holding hidden states, such as 'last_hidden_state'.")
        self.hidden_weight, self.task_weight = float(hidden_weight), float(task_weight)
        self.hidden_field = hidden_field
        self.attached = False  # set by PruningTrainer

    def on_train_begin(self, args, state, control, **kwargs):
        if not self.attached:
            raise ValueError("SelfDistillation changes the training loss, which the stock Trainer cannot do from a "
                             "callback: train with hf_vltprune.PruningTrainer (a Trainer subclass) instead.")
