"""What pruning gained: GFLOPs through `torch.utils.flop_counter`, realised tokens per layer, latency."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from .reduce import TokenState


@dataclass
class Measurement:
    """Per-sample cost of one forward pass.

    Attributes:
        gflops: total GFLOPs per sample.
        gflops_by_part: GFLOPs per sample of each top-level sub-module (`vision_model`, `text_encoder`, ...).
        tokens_per_layer: for each encoder, the mean number of real tokens entering each layer.
        latency_ms: median wall time of one forward pass of the whole batch (device-synchronised), if timed.
        batch_size: samples in the measured batch.
        gflops_per_sample: with `measure(..., per_sample=True)`, each sample's GFLOPs run alone (padding trimmed):
            what per-instance methods (MADTP) decided for it.
        keep_per_sample: with `per_sample=True`, per encoder, each sample's tokens entering the last layer over
            those entering the first.
    """

    gflops: float
    gflops_by_part: dict[str, float] = field(default_factory=dict)
    tokens_per_layer: dict[str, list[float]] = field(default_factory=dict)
    latency_ms: float | None = None
    batch_size: int = 1
    gflops_per_sample: list[float] | None = None
    keep_per_sample: dict[str, list[float]] = field(default_factory=dict)

    @property
    def gflops_vision(self) -> float:
        return sum(v for k, v in self.gflops_by_part.items() if k.startswith("vision"))

    @property
    def gflops_text(self) -> float:
        return sum(v for k, v in self.gflops_by_part.items() if k.startswith("text"))

    def to_dict(self) -> dict:
        return {**asdict(self), "gflops_vision": self.gflops_vision, "gflops_text": self.gflops_text}


def batch_size_of(inputs: dict) -> int:
    """The batch size of keyword inputs: the first dimension of the first tensor."""
    for value in inputs.values():
        if isinstance(value, torch.Tensor):
            return value.shape[0]
    raise ValueError("measure() needs at least one tensor input to know the batch size.")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_flops(model: nn.Module, inputs: dict, forward=None) -> tuple[float, dict[str, float]]:
    """Total FLOPs of one call and FLOPs per top-level sub-module.

    Runs SDPA through its math backend so attention is counted on every device (the fused CPU kernel has no
    FLOP formula in `torch.utils.flop_counter`); the FLOPs are those of the computation, whichever kernel runs it.
    """
    forward = model if forward is None else forward
    counter = FlopCounterMode(display=False, depth=None)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        forward(**inputs)
    prefix = type(model).__name__ + "."
    by_part = {}
    for name, counts in counter.get_flop_counts().items():
        if name.startswith(prefix) and "." not in name[len(prefix):]:
            by_part[name[len(prefix):]] = float(sum(counts.values()))
    return float(counter.get_total_flops()), by_part


def count_tokens(model: nn.Module, inputs: dict, forward=None, per_sample: bool = False) -> dict[str, list]:
    """Real tokens entering each layer that receives a `TokenState`, per encoder: the batch mean per layer, or with
    `per_sample` a list per layer of each sample's count."""
    forward = model if forward is None else forward
    tokens: dict[str, list[float]] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.endswith(("encoder.layers", "encoder.layer")):
            # "vision_model.encoder.layers" -> "vision_model"; a bare encoder model reports as "encoder".
            encoder = name.rpartition("encoder.")[0].rstrip(".") or "encoder"
            for layer in module:

                def hook(_, args, kwargs, encoder=encoder):
                    state = kwargs.get("state")
                    if isinstance(state, TokenState):
                        counts = state.counts().float()
                        tokens.setdefault(encoder, []).append(counts.tolist() if per_sample else float(counts.mean()))

                handles.append(layer.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            forward(**inputs)
    finally:
        for handle in handles:
            handle.remove()
    return tokens


def time_forward(model: nn.Module, inputs: dict, repeats: int = 10, warmup: int = 2, forward=None) -> float:
    """Median milliseconds of one call, each run synchronised with the device."""
    forward = model if forward is None else forward
    device = next(model.parameters()).device
    times = []
    with torch.inference_mode():
        for step in range(warmup + repeats):
            _synchronize(device)
            start = time.perf_counter()
            forward(**inputs)
            _synchronize(device)
            if step >= warmup:
                times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def sample_inputs(inputs: dict, index: int) -> dict:
    """Sample `index` of a batch alone, its right padding trimmed (by `attention_mask`)."""
    batch = batch_size_of(inputs)
    length = int(inputs["attention_mask"][index].sum()) if "attention_mask" in inputs else None
    row = {}
    for key, value in inputs.items():
        if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == batch:
            value = value[index:index + 1]
            if length is not None and value.dim() == 2 and value.shape[1] == inputs["attention_mask"].shape[1]:
                value = value[:, :length]
        row[key] = value
    return row


def measure(model: nn.Module, inputs: dict, latency_repeats: int = 10, warmup: int = 2, forward=None,
            per_sample: bool = False) -> Measurement:
    """GFLOPs per sample (total and per sub-module), realised tokens per layer and latency of `model(**inputs)`.

    Args:
        model: any model; pruned encoders also report their tokens per layer.
        inputs: keyword inputs of one batch, already on the model's device.
        latency_repeats: timed runs (0 skips timing).
        warmup: untimed runs first.
        forward: what to call instead of `model` (e.g. `model.generate`).
        per_sample: also count each sample's own GFLOPs and keep ratios (one extra forward per sample).
    """
    if latency_repeats < 0 or warmup < 0:
        raise ValueError(f"latency_repeats and warmup must be >= 0, got {latency_repeats} and {warmup}.")
    batch = batch_size_of(inputs)
    total, by_part = count_flops(model, inputs, forward)
    latency = time_forward(model, inputs, latency_repeats, warmup, forward) if latency_repeats else None
    measured = Measurement(
        gflops=total / batch / 1e9,
        gflops_by_part={k: v / batch / 1e9 for k, v in by_part.items()},
        tokens_per_layer=count_tokens(model, inputs, forward),
        latency_ms=latency,
        batch_size=batch,
    )
    if per_sample:
        measured.gflops_per_sample = [count_flops(model, sample_inputs(inputs, i), forward)[0] / 1e9
                                      for i in range(batch)]
        for encoder, layers in count_tokens(model, inputs, forward, per_sample=True).items():
            measured.keep_per_sample[encoder] = [last / first for first, last in zip(layers[0], layers[-1])]
    return measured
