"""Switching a model's token reduction off and on again, e.g. to measure or distil from the unpruned model."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from .base import TokenReducer


@contextmanager
def pruning_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block, `model` computes what the unpruned model computes: every reducer is skipped.

    The reducers' parameters stay in place (nothing is copied), so this is how one model serves as its own
    full-capacity teacher or "before" measurement.

    Example:
        ```python
        with pruning_disabled(model):
            reference = model(**batch)
        ```
    """
    reducers = [module for module in model.modules() if isinstance(module, TokenReducer)]
    previous = [reducer.enabled for reducer in reducers]
    for reducer in reducers:
        reducer.enabled = False
    try:
        yield model
    finally:
        for reducer, enabled in zip(reducers, previous):
            reducer.enabled = enabled
