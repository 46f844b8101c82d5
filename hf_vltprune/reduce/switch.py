"""Model-wide views of the reducers: switching them off (to measure or distil from the unpruned model), and
collecting their training losses."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .base import TokenReducer


def reducers_of(model: nn.Module) -> list[TokenReducer]:
    """Every token reducer inside `model`."""
    return [module for module in model.modules() if isinstance(module, TokenReducer)]


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
    reducers = reducers_of(model)
    previous = [reducer.enabled for reducer in reducers]
    for reducer in reducers:
        reducer.enabled = False
    try:
        yield model
    finally:
        for reducer, enabled in zip(reducers, previous):
            reducer.enabled = enabled


def pruning_losses(model: nn.Module) -> dict[str, torch.Tensor]:
    """The reducers' weighted auxiliary losses (e.g. MADTP's keep-ratio and alignment losses) since the last call,
    summed by name; then forgotten. Add them to the task loss of a training step (`PruningTrainer` does)."""
    reducers = reducers_of(model)
    losses: dict[str, torch.Tensor] = {}
    for reducer in reducers:  # read all before clearing any: a loss may read another reducer's records
        for name, value in reducer.losses().items():
            losses[name] = losses[name] + value if name in losses else value
    for reducer in reducers:
        reducer.clear_losses()
    return losses
