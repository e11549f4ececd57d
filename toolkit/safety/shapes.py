"""What a loaded Keras model computes per sample, from Keras' own shapes: the bound behind the stated
export cost.

`toolkit.safety.limits` bounds what *building* a model costs (parameters, declared shapes) before Keras reads the
file. It cannot see what layers do to shapes: `ZeroPadding1D((0, 3_000_000))` before an LSTM, a
`RepeatVector`, a `Reshape`. Keras can. Loading a functional model calls every layer on symbolic inputs
(`compute_output_spec`), which allocates nothing, so after the load each node's input and output carry
the shapes the model really computes. This module walks them (nested models included) and counts, per
call: the largest tensor, the longest time axis a recurrent layer runs over, and the multiply-adds (each
layer's parameters times the positions it maps them over). A call is one sample, or the whole fixed
batch of a model built for one (`batch_shape`). Where an input's time axis is dynamic, Keras' shapes say
`None` after a padding layer; so the graph is also evaluated, layer by layer with `compute_output_spec`,
at the lengths the checks draw (`DRAWN_LENGTHS`), and the larger figures count. `check_model_budget`
refuses a model above `ResourceLimits` before any input is drawn or any conversion starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from toolkit.errors import ModelLoadError
from toolkit.safety.budget import RECURRENT_KINDS
from toolkit.text import safe_text

DRAWN_LENGTHS = (5, 11)
"""The steps the checks draw on a dynamic time axis (axis 1; `toolkit.checking.inputs` draws its cases from these):
two lengths that differ from each other and from the post's 3."""

DRAWN_OTHER = 3
"""What the checks draw on any other dynamic axis."""


@dataclass
class ComputeBudget:
    """Per-call figures of a loaded model (one sample, or the model's fixed batch); each `*_at` names the
    layer that set the maximum. `time_drawn` is the drawn length when the longest time axis depends on it."""

    largest_activation: int = 0
    activation_at: str = ""
    longest_time: int = 0
    time_at: str = ""
    macs: int = 0
    time_drawn: int | None = None
    batch: int = 1


def _dims(shape: Any) -> tuple[int, ...]:
    """Every axis, the batch axis included: a fixed batch is computed whole (a `batch_shape` of 4,000,000
    escaped the per-sample counts and cost 8.46 GB); an unknown batch axis is one sample. An axis still
    unknown (the walk by nodes, when the drawn lengths cannot be evaluated) counts as 1."""
    return tuple(int(d) if isinstance(d, int) and d > 0 else 1 for d in tuple(shape))


def _tensors(value: Any) -> list[Any]:
    from keras import tree

    return [t for t in tree.flatten(value) if hasattr(t, "shape") and t.shape is not None and len(t.shape) >= 1]


def _where(layer: Any) -> str:
    return f"layer {safe_text(str(getattr(layer, 'name', '?')))[:80]!r} ({type(layer).__name__})"


def _count(budget: ComputeBudget, layer: Any, inputs: list[Any], outputs: list[Any]) -> None:
    """One call of one layer: its tensors' sizes, the steps a recurrent layer runs, its multiply-adds."""
    kind, where = type(layer).__name__, _where(layer)
    for tensor in outputs + inputs:
        size = math.prod(_dims(tensor.shape))
        if size > budget.largest_activation:
            budget.largest_activation, budget.activation_at = size, where
    sequence = inputs and len(inputs[0].shape) >= 3
    if kind in RECURRENT_KINDS and sequence and isinstance(inputs[0].shape[1], int):
        if inputs[0].shape[1] > budget.longest_time:
            budget.longest_time, budget.time_at = int(inputs[0].shape[1]), where
    params = layer.count_params() if getattr(layer, "built", False) and hasattr(layer, "count_params") else 0
    if params and outputs and not hasattr(layer, "layers"):  # a nested model's layers count themselves
        dims = _dims(outputs[0].shape)
        positions = math.prod(dims[:-1]) if len(dims) > 2 else dims[0]
        if kind in RECURRENT_KINDS and sequence:
            positions = max(positions, math.prod(_dims(inputs[0].shape)[:2]))  # every step, returned or not
        budget.macs += params * positions


def _by_nodes(model: Any) -> ComputeBudget:
    """Every call of every layer (nested models' too) as Keras' symbolic build recorded it."""
    budget = ComputeBudget()
    for layer in model._flatten_layers(include_self=False, recursive=True):
        for node in getattr(layer, "_inbound_nodes", []):
            _count(budget, layer, _tensors(node.input_tensors), _tensors(node.output_tensors))
    return budget


def _graph(model: Any) -> Any:
    graph = getattr(model, "_functional", None) or model  # a Sequential runs its own Functional
    if not hasattr(graph, "_run_through_graph"):
        raise TypeError(f"{type(model).__name__} has no graph")
    return graph


def _evaluate(model: Any, inputs: list[Any], budget: ComputeBudget) -> Any:
    """Run the model's graph on symbolic inputs of concrete shapes, each layer by its own
    `compute_output_spec` (no node is added, nothing allocated), counting every call; nested models are
    entered, so their layers see the concrete shapes too."""
    def operation(op: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            if hasattr(op, "_run_through_graph") or getattr(op, "_functional", None) is not None:
                outputs = _evaluate(op, _tensors(args[0] if args else kwargs.get("inputs")), budget)
            else:
                outputs = op.compute_output_spec(*args, **kwargs)
            _count(budget, op, _tensors(args[:1]) if args else [], _tensors(outputs))
            return outputs
        return run

    return _graph(model)._run_through_graph(inputs, operation_fn=operation)


def _drawn_inputs(model: Any, length: int) -> list[Any]:
    """The model's inputs as the checks draw them: a dynamic axis 1 of `length` steps, other dynamic axes
    of `DRAWN_OTHER`, a dynamic batch of one sample."""
    import keras

    specs = []
    for tensor in model.inputs:
        shape = tuple(tensor.shape)
        drawn = [shape[0] if isinstance(shape[0], int) else 1]
        drawn += [d if isinstance(d, int) else (length if axis == 1 else DRAWN_OTHER)
                  for axis, d in enumerate(shape[1:], start=1)]
        specs.append(keras.KerasTensor(tuple(drawn), dtype=tensor.dtype))
    return specs


def compute_budget(model: Any) -> ComputeBudget:
    """What one call computes (a sample, or the fixed batch), at the lengths the checks draw: a dynamic
    time axis counted as 1 let `Input((None, 1)) -> ZeroPadding1D((0, 3_000_000)) -> LSTM` through, to
    run for minutes. Where Keras cannot evaluate the graph at those lengths, the symbolic shapes count."""
    budget = _by_nodes(model)
    dynamic = any(None in tuple(t.shape)[1:] for t in getattr(model, "inputs", None) or [])
    if dynamic:
        length = max(DRAWN_LENGTHS)
        drawn = ComputeBudget()
        try:
            _evaluate(model, _drawn_inputs(model, length), drawn)
        except Exception:  # noqa: BLE001 - a layer Keras cannot evaluate at these lengths fails the check itself
            drawn = budget
        budget = _merged(budget, drawn, length)
    budget.batch = _fixed_batch(model)
    return budget


def _merged(node: ComputeBudget, drawn: ComputeBudget, length: int) -> ComputeBudget:
    """The larger of each figure, with the layer that set it; `time_drawn` where the drawn length set it."""
    merged = ComputeBudget(macs=max(node.macs, drawn.macs))
    merged.largest_activation, merged.activation_at = max((node.largest_activation, node.activation_at),
                                                          (drawn.largest_activation, drawn.activation_at))
    merged.longest_time, merged.time_at = max((node.longest_time, node.time_at), (drawn.longest_time, drawn.time_at))
    merged.time_drawn = length if drawn.longest_time > node.longest_time else None
    return merged


def _fixed_batch(model: Any) -> int:
    inputs = getattr(model, "inputs", None) or []
    batch = tuple(inputs[0].shape)[0] if inputs and len(inputs[0].shape) else None
    return batch if isinstance(batch, int) and batch > 0 else 1


def check_model_budget(model: Any, source: str, limits: Any) -> ComputeBudget:
    """Refuse a loaded model whose per-sample computation exceeds `limits` (a `ResourceLimits`), naming
    the limit and the flag or field that raises it."""
    budget = compute_budget(model)
    prefix = f"Received: {safe_text(source)!r}"
    batch = f" with its fixed batch of {budget.batch}" if budget.batch > 1 else ""
    if budget.longest_time > limits.max_timesteps:
        drawn = f" when its input has the {budget.time_drawn} steps the checks draw" if budget.time_drawn else ""
        raise ModelLoadError(f"Expected a{'' if drawn else ' fixed'} time axis of at most {limits.max_timesteps} steps "
                             f"(--max-timesteps). {prefix} computes {budget.longest_time} at {budget.time_at}{drawn}")
    if budget.largest_activation > limits.max_activation_elements:
        raise ModelLoadError(f"Expected at most {limits.max_activation_elements} values per sample in one layer "
                             f"(--max-activation), a fixed batch counted whole. {prefix} computes "
                             f"{budget.largest_activation} at {budget.activation_at}{batch}")
    if budget.macs > limits.max_macs:
        raise ModelLoadError(f"Expected at most {limits.max_macs} multiply-adds per sample (ResourceLimits.max_macs), "
                             f"a fixed batch counted whole. {prefix} computes {budget.macs}{batch}")
    return budget
