"""Parameters and activation sizes a Keras model config declares, counted without Keras.

`toolkit.safety.limits` refuses a `.keras` file whose counts exceed its limits before Keras allocates anything.
Shapes are the ones the file declares (each layer's `build_config`, its first call argument, the `Input`
shapes). For the kinds in `_PARAMS` the counts equal `model.count_params()` (tests/test_limits.py checks
that on real models). Keras' built-in kinds with weights that are not in the table (`UNCOUNTED_KINDS`) are
noted in `Budget.uncounted_at` and refused: Keras would allocate their variables from the config before
it reads a weight, so a file could declare any number of them. Other kinds hold no weights, or are not
Keras built-ins, which safe mode refuses before building them. `toolkit.safety.limits` also counts the arrays
of the weights file, which bounds an honest file whatever its kinds.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

_NESTED_KEYS = ("layer", "backward_layer", "cell")


@dataclass
class Budget:
    """Parameters and activation sizes counted from a config; `where` names the layer that set each maximum."""

    layers: int = 0
    params: int = 0
    largest_activation: int = 0
    activation_at: str = ""
    longest_fixed_time: int | None = None
    time_at: str = ""
    bad_dim_at: str = ""
    uncounted_at: str = ""


def _int(value: Any) -> int | None:
    """A number from the config as an int; None for anything else (a string, a bool, NaN, infinity)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return int(value)


def _shape(value: Any) -> list[int | None] | None:
    if not isinstance(value, list) or not value or len(value) > 64:
        return None
    return [_int(dim) for dim in value]


def _declared_shape(layer: dict) -> list[int | None] | None:
    """The input shape the file declares for a layer: its build_config, else its first call argument."""
    config = layer.get("config") if isinstance(layer.get("config"), dict) else {}
    build = layer.get("build_config")
    if isinstance(build, dict) and _shape(build.get("input_shape")):
        shape = _shape(build.get("input_shape"))
        return shape if all(not isinstance(d, list) for d in shape) else None
    for key in ("batch_shape", "batch_input_shape"):
        if _shape(config.get(key)):
            return _shape(config.get(key))
    for node in layer.get("inbound_nodes") or []:
        args = node.get("args") if isinstance(node, dict) else None
        first = args[0] if isinstance(args, list) and args else None
        if isinstance(first, dict) and isinstance(first.get("config"), dict):
            return _shape(first["config"].get("shape"))
    return None


def walk_layers(config: dict) -> Iterator[tuple[dict, list[int | None] | None]]:
    """Every layer config with its declared input shape, nested models and wrapped layers included.

    An explicit stack, not recursion: a hostile config may nest thousands of levels deep.
    """
    stack: list[tuple[Any, list[int | None] | None]] = [(config, None)]
    while stack:
        layer, inherited = stack.pop()
        if not isinstance(layer, dict):
            continue
        shape = _declared_shape(layer) or inherited
        yield layer, shape
        inner = layer.get("config") if isinstance(layer.get("config"), dict) else {}
        for child in inner.get("layers") or []:
            stack.append((child, None))
        for key in _NESTED_KEYS:
            if isinstance(inner.get(key), dict):
                wrapped = shape[:1] + shape[2:] if shape and layer.get("class_name") == "TimeDistributed" else shape
                stack.append((inner[key], wrapped))
        cells = inner.get("cells")
        for cell in cells if isinstance(cells, list) else []:
            stack.append((cell, shape))


def count_config(config: dict) -> Budget:
    """Parameters and per-sample activation sizes the config declares (see `layer_params`)."""
    budget = Budget()
    for layer, shape in walk_layers(config):
        budget.layers += 1
        inner = layer.get("config") if isinstance(layer.get("config"), dict) else {}
        name = str(layer.get("name") or inner.get("name") or "?")[:80]
        kind = str(layer.get("class_name"))[:40]
        where = f"layer {name!r} ({kind})"
        if shape and any(d is not None and d < 1 for d in shape[1:]):
            budget.bad_dim_at = budget.bad_dim_at or f"{where} input shape {shape}"
        budget.params += layer_params(kind, inner, shape)
        if kind in UNCOUNTED_KINDS or (kind == "Bidirectional" and _wrapped_kind(inner) in UNCOUNTED_KINDS):
            budget.uncounted_at = budget.uncounted_at or where
        _note_activation(budget, kind, shape, _int(inner.get(_UNITS_KEY.get(kind, "units"))), where)
        if kind in RECURRENT_KINDS and shape and len(shape) >= 3 and shape[1] is not None:
            if budget.longest_fixed_time is None or shape[1] > budget.longest_fixed_time:
                budget.longest_fixed_time, budget.time_at = shape[1], where
    return budget


RECURRENT_KINDS = frozenset({"LSTM", "GRU", "SimpleRNN", "RNN", "Bidirectional", "ConvLSTM1D", "ConvLSTM2D",
                             "ConvLSTM3D"})
_UNITS_KEY = {"Embedding": "output_dim", "Conv1D": "filters", "Conv2D": "filters", "Conv3D": "filters",
              "Conv1DTranspose": "filters", "Conv2DTranspose": "filters", "Conv3DTranspose": "filters",
              "SeparableConv1D": "filters", "SeparableConv2D": "filters"}


def _count(config: dict, key: str, default: int = 0) -> int:
    value = _int(config.get(key, default))
    return max(value, 0) if value is not None else 0


def _gates(gates: int, config: dict, in_dim: int) -> int:
    """A recurrent cell: `gates` kernels over input and state, and a bias per gate (two for a GRU's
    `reset_after`)."""
    units = _count(config, "units")
    biases = gates * units * (2 if gates == 3 and config.get("reset_after", True) else 1)
    return gates * units * (in_dim + units) + (biases if config.get("use_bias", True) else 0)


UNCOUNTED_KINDS = frozenset({"GroupQueryAttention", "ReversibleEmbedding", "SpectralNormalization", "MelSpectrogram",
                             "STFTSpectrogram", "JaxLayer", "FlaxLayer", "TorchModuleWrapper"})
"""Keras 3.15 built-in layers that hold weights and whose count is in neither `_PARAMS` nor `_SHAPED`
(read off the `keras.layers` namespace; lookup layers keep their vocabulary in the bounded config)."""


def _wrapped_kind(config: dict) -> str:
    wrapped = config.get("layer") if isinstance(config.get("layer"), dict) else {}
    return str(wrapped.get("class_name"))


def _dims(shape: list[int | None] | None) -> list[int]:
    """The axes after the batch axis, an unknown (None) or odd one as 0: it adds no parameters."""
    return [d if d is not None and d > 0 else 0 for d in (shape or [None])[1:]]


def _einsum(config: dict, shape: list[int | None] | None) -> int:
    """EinsumDense: each kernel axis is an input axis or an output axis (Keras' `_analyze_split_string`);
    both specs line up with their shapes from the right, with or without an ellipsis."""
    equation = str(config.get("equation", ""))
    inputs, _, rest = equation.replace("...", "").partition(",")
    kernel, _, outputs = rest.partition("->")
    given = config.get("output_shape")
    out_shape = [_int(d) or 0 for d in given] if isinstance(given, list) else [_int(given) or 0]
    in_shape = [0] + _dims(shape)

    def size(axis: str) -> int:
        if axis in inputs:
            at = len(in_shape) - (len(inputs) - inputs.index(axis))
            return in_shape[at] if 0 <= at < len(in_shape) else 0
        at = len(out_shape) - (len(outputs) - outputs.index(axis)) if axis in outputs else -1
        return max(out_shape[at], 0) if 0 <= at < len(out_shape) else 0

    bias_axes = config.get("bias_axes")
    bias = math.prod(size(axis) for axis in bias_axes if axis in outputs) if isinstance(bias_axes, str) and bias_axes else 0
    return math.prod(size(axis) for axis in kernel) + bias


def _prelu(config: dict, shape: list[int | None] | None) -> int:
    """PReLU: one alpha per input value, shared (size 1) along `shared_axes` (1 = the first after batch)."""
    shared = config.get("shared_axes")
    axes = {_int(a) for a in shared} if isinstance(shared, list) else {_int(shared)}
    return math.prod(1 if i in axes else d for i, d in enumerate(_dims(shape), start=1))


def _depthwise(config: dict, d: int) -> int:
    kernel = config.get("kernel_size")
    sizes = [_int(k) or 0 for k in kernel] if isinstance(kernel, list) else [_int(kernel) or 0]
    return math.prod(max(k, 0) for k in sizes) * d * _count(config, "depth_multiplier", 1)


def _separable(config: dict, d: int) -> int:
    return _depthwise(config, d) + d * _count(config, "depth_multiplier", 1) * _count(config, "filters") \
        + _count(config, "filters")


def _conv(config: dict, in_dim: int) -> int:
    kernel = config.get("kernel_size")
    sizes = [_int(k) or 0 for k in kernel] if isinstance(kernel, list) else [_int(kernel) or 0]
    groups = max(_count(config, "groups", 1), 1)
    filters = _count(config, "filters")
    return filters * math.prod(max(k, 0) for k in sizes) * in_dim // groups + filters


_PARAMS = {
    "LSTM": lambda c, d: _gates(4, c, d), "LSTMCell": lambda c, d: _gates(4, c, d),
    "GRU": lambda c, d: _gates(3, c, d), "GRUCell": lambda c, d: _gates(3, c, d),
    "SimpleRNN": lambda c, d: _gates(1, c, d), "SimpleRNNCell": lambda c, d: _gates(1, c, d),
    "Dense": lambda c, d: _count(c, "units") * (d + 1),
    "Embedding": lambda c, d: _count(c, "input_dim") * _count(c, "output_dim"),
    "BatchNormalization": lambda c, d: 4 * d, "LayerNormalization": lambda c, d: 2 * d,
    "MultiHeadAttention": lambda c, d: 4 * _count(c, "num_heads") * _count(c, "key_dim") * (d + 1),
    **{kind: lambda c, d: _conv(c, d) for kind in ("Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose",
                                                   "Conv2DTranspose", "Conv3DTranspose", "ConvLSTM1D",
                                                   "ConvLSTM2D", "ConvLSTM3D")},
    "DepthwiseConv1D": lambda c, d: _depthwise(c, d) + d * _count(c, "depth_multiplier", 1),
    "DepthwiseConv2D": lambda c, d: _depthwise(c, d) + d * _count(c, "depth_multiplier", 1),
    "SeparableConv1D": lambda c, d: _separable(c, d), "SeparableConv2D": lambda c, d: _separable(c, d),
    "GroupNormalization": lambda c, d: 2 * d, "RMSNormalization": lambda c, d: d,
    "Normalization": lambda c, d: 2 * d + 1, "AdditiveAttention": lambda c, d: d if c.get("use_scale", True) else 0,
    "Attention": lambda c, d: int(bool(c.get("use_scale"))) + int(c.get("score_mode") == "concat"),
}
_SHAPED = {"EinsumDense": _einsum, "PReLU": _prelu}  # counted from the whole input shape


def layer_params(kind: str, config: dict, shape: list[int | None] | None) -> int:
    """Parameters of one layer (0 for kinds in neither `_PARAMS` nor `_SHAPED`). A Bidirectional layer
    without an explicit `backward_layer` holds a copy of its forward layer, which the walk does not visit:
    it is counted here."""
    if kind == "Bidirectional" and not isinstance(config.get("backward_layer"), dict):
        wrapped = config.get("layer") if isinstance(config.get("layer"), dict) else {}
        inner_config = wrapped.get("config") if isinstance(wrapped.get("config"), dict) else {}
        return layer_params(_wrapped_kind(config), inner_config, shape) if _wrapped_kind(config) != kind else 0
    if kind in _SHAPED:
        return _SHAPED[kind](config, shape)
    width = shape[-1] if shape and shape[-1] is not None and shape[-1] > 0 else 0
    return _PARAMS[kind](config, width) if kind in _PARAMS else 0


def _note_activation(budget: Budget, kind: str, shape: list[int | None] | None, units: int | None,
                     where: str) -> None:
    """The layer's input, and its output when it has units: an Embedding appends an axis of `output_dim`,
    the others replace the last axis. Per sample, or for the whole batch where the file fixes one
    (`batch_shape=(4_000_000, 4, 4)` escaped a per-sample count and cost 8.46 GB)."""
    if not shape:
        return
    inner = [d for d in shape[1:] if d is not None and d > 0]
    batch = shape[0] if shape[0] is not None and shape[0] > 0 else 1  # a fixed batch is computed whole
    sizes = [batch * math.prod(inner)]
    if units is not None and units > 0:
        sizes.append(batch * math.prod(inner if kind == "Embedding" else inner[:-1]) * units)
    for size in sizes:
        if size > budget.largest_activation:
            budget.largest_activation, budget.activation_at = size, where
