"""What a loaded Keras model computes per sample, from Keras' own shapes: the bound behind the stated
export cost.

`toolkit.limits` bounds what *building* a model costs (parameters, declared shapes) before Keras reads the
file. It cannot see what layers do to shapes: `ZeroPadding1D((0, 3_000_000))` before an LSTM, a
`RepeatVector`, a `Reshape`. Keras can. Loading a functional model calls every layer on symbolic inputs
(`compute_output_spec`), which allocates nothing, so after the load each node's input and output carry
the shapes the model really computes. This module walks them (nested models included) and counts, per
sample: the largest tensor, the longest fixed time axis a recurrent layer runs over, and the
multiply-adds (each layer's parameters times the positions it maps them over). `check_model_budget`
refuses a model above `ResourceLimits` before any input is drawn or any conversion starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from toolkit.budget import RECURRENT_KINDS
from toolkit.errors import ModelLoadError
from toolkit.guard import safe_text


@dataclass
class ComputeBudget:
    """Per-sample figures of a loaded model; each `*_at` names the layer that set the maximum."""

    largest_activation: int = 0
    activation_at: str = ""
    longest_time: int = 0
    time_at: str = ""
    macs: int = 0


def _per_sample(shape: Any) -> tuple[int, ...]:
    """The axes after the batch axis; an unknown (None) axis counts as 1: the checks draw few steps there."""
    return tuple(int(d) if isinstance(d, int) and d > 0 else 1 for d in tuple(shape)[1:])


def _tensors(value: Any) -> list[Any]:
    items = value if isinstance(value, (list, tuple)) else [value]
    return [t for t in items if hasattr(t, "shape") and t.shape is not None and len(t.shape) >= 1]


def compute_budget(model: Any) -> ComputeBudget:
    """Walk every call of every layer (nested models' too) and count what it computes per sample."""
    budget = ComputeBudget()
    for layer in model._flatten_layers(include_self=False, recursive=True):
        kind = type(layer).__name__
        where = f"layer {safe_text(layer.name)[:80]!r} ({kind})"
        params = layer.count_params() if layer.built else 0
        for node in getattr(layer, "_inbound_nodes", []):
            outputs, inputs = _tensors(node.output_tensors), _tensors(node.input_tensors)
            for tensor in outputs + inputs:
                size = math.prod(_per_sample(tensor.shape))
                if size > budget.largest_activation:
                    budget.largest_activation, budget.activation_at = size, where
            if kind in RECURRENT_KINDS and inputs and len(inputs[0].shape) >= 3 and inputs[0].shape[1]:
                if inputs[0].shape[1] > budget.longest_time:
                    budget.longest_time, budget.time_at = int(inputs[0].shape[1]), where
            if params and outputs and not hasattr(layer, "layers"):  # a nested model's layers count themselves
                dims = _per_sample(outputs[0].shape)
                positions = math.prod(dims[:-1]) if len(dims) > 1 else 1
                if kind in RECURRENT_KINDS and inputs and len(inputs[0].shape) >= 3:
                    positions = max(positions, _per_sample(inputs[0].shape)[0])  # every step, returned or not
                budget.macs += params * positions
    return budget


def check_model_budget(model: Any, source: str, limits: Any) -> ComputeBudget:
    """Refuse a loaded model whose per-sample computation exceeds `limits` (a `ResourceLimits`), naming
    the limit and the flag or field that raises it."""
    budget = compute_budget(model)
    prefix = f"Received: {safe_text(source)!r}"
    if budget.longest_time > limits.max_timesteps:
        raise ModelLoadError(f"Expected a fixed time axis of at most {limits.max_timesteps} steps (--max-timesteps). "
                             f"{prefix} computes {budget.longest_time} at {budget.time_at}")
    if budget.largest_activation > limits.max_activation_elements:
        raise ModelLoadError(f"Expected at most {limits.max_activation_elements} values per sample in one layer "
                             f"(--max-activation). {prefix} computes {budget.largest_activation} at "
                             f"{budget.activation_at}")
    if budget.macs > limits.max_macs:
        raise ModelLoadError(f"Expected at most {limits.max_macs} multiply-adds per sample (ResourceLimits.max_macs). "
                             f"{prefix} computes {budget.macs}")
    return budget
