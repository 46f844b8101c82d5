"""Loss terms of pruning-aware fine-tuning: distillation from the full-capacity model."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      temperature: float = 1.0) -> torch.Tensor:
    """`T² · KL(softmax(teacher / T) ‖ softmax(student / T))`, averaged over every position before the last axis.

    The `T²` keeps the gradient scale independent of the temperature (Hinton et al., 2015).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student and teacher logits differ in shape: {tuple(student_logits.shape)} vs "
                         f"{tuple(teacher_logits.shape)}.")
    classes = student_logits.shape[-1]
    student = F.log_softmax(student_logits.reshape(-1, classes).float() / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits.reshape(-1, classes).float() / temperature, dim=-1)
    return F.kl_div(student, teacher, log_target=True, reduction="batchmean") * temperature**2


def summary_state_loss(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor) -> torch.Tensor:
    """Mean squared error between the first (summary) token's final states; pruning keeps that token in place."""
    return F.mse_loss(student_hidden[:, 0].float(), teacher_hidden[:, 0].float())


def itm_loss(outputs, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
    """Cross-entropy of a BLIP retrieval head's match scores: `compute_loss_func` for `Trainer`s fine-tuning
    `BlipForImageTextRetrieval` / `BlipPrunedForImageTextRetrieval` (which have no loss of their own)."""
    return F.cross_entropy(outputs.itm_score, labels)
