"""Metrics of the embedded task as plain functions; `evaluate` modules for them live in the sub-folders.

    import evaluate, hf_vltprune.metrics as m
    itm = evaluate.load(m.metric_path("itm_accuracy"))   # offline: loaded from the package, not the Hub
"""

from __future__ import annotations

import os
import re

import torch

METRICS = ("itm_accuracy", "retrieval_recall", "vqa_exact_match")


def metric_path(name: str) -> str:
    """Folder of the `evaluate` module for `name`, for `evaluate.load(...)`."""
    if name not in METRICS:
        raise ValueError(f"metric {name!r} is unknown: allowed {METRICS}.")
    return os.path.join(os.path.dirname(__file__), name)


def itm_accuracy(predictions, references) -> float:
    """Share of image-text pairs whose match / no-match prediction (0 or 1) equals the label."""
    predictions, references = torch.as_tensor(predictions), torch.as_tensor(references)
    if predictions.shape != references.shape or predictions.numel() == 0:
        raise ValueError(f"itm_accuracy needs equally many predictions and references (> 0), got "
                         f"{tuple(predictions.shape)} and {tuple(references.shape)}.")
    return float((predictions == references).float().mean())


def paired_accuracy_difference(correct, reference_correct, z: float = 1.96) -> tuple[float, float]:
    """`(difference, half_width)`: accuracy of `correct` minus that of `reference_correct` (per-example 0/1, the
    same examples in the same order) and the half-width of its normal-approximation confidence interval (`z` 1.96:
    95%). Pairing removes the examples both get right or both get wrong from the noise, so two models scored on
    the same split are compared far more tightly than their two separate accuracies' error bars suggest."""
    correct = torch.as_tensor(correct, dtype=torch.float64)
    reference_correct = torch.as_tensor(reference_correct, dtype=torch.float64)
    if correct.shape != reference_correct.shape or correct.dim() != 1 or correct.numel() < 2:
        raise ValueError(f"paired_accuracy_difference needs two equally long 1-D 0/1 sequences (>= 2 examples), "
                         f"got {tuple(correct.shape)} and {tuple(reference_correct.shape)}.")
    difference = correct - reference_correct
    return float(difference.mean()), float(z * difference.std() / difference.numel() ** 0.5)


def retrieval_recall(similarity, ks=(1, 5)) -> dict[str, float]:
    """Recall@k in both directions from an `[images, texts]` similarity where text i belongs to image i."""
    similarity = torch.as_tensor(similarity, dtype=torch.float32)
    if similarity.dim() != 2 or similarity.shape[0] != similarity.shape[1]:
        raise ValueError(f"retrieval_recall needs a square [images, texts] matrix, got {tuple(similarity.shape)}.")
    truth = torch.arange(similarity.shape[0])
    result = {}
    for direction, scores in (("image_to_text", similarity), ("text_to_image", similarity.t())):
        # Rank of the true item: how many candidates score strictly higher.
        rank = (scores > scores[truth, truth][:, None]).sum(dim=1)
        for k in ks:
            result[f"{direction}_recall@{k}"] = float((rank < k).float().mean())
    return result


def normalize_answer(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", "", text.lower())).strip()


def vqa_exact_match(predictions: list[str], references: list[str]) -> float:
    """Share of answers equal to the reference after lower-casing and removing punctuation."""
    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"vqa_exact_match needs equally many predictions and references (> 0), got "
                         f"{len(predictions)} and {len(references)}.")
    return sum(normalize_answer(p) == normalize_answer(r) for p, r in zip(predictions, references)) / len(predictions)
