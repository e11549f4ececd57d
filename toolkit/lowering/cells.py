"""One Keras recurrent layer in ONNX terms: its weights re-ordered, its activations, the op's attributes.

Keras orders LSTM gates i, f, c, o, ONNX i, o, f, c; GRU gates are z, r, h in both, and Keras'
`reset_after=True` is ONNX's `linear_before_reset=1`. A layer that cannot be planned raises `NotFusable`
with the reason, which the export reports before tf2onnx converts the layer instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

# Keras activation name -> (ONNX RNN activation, alpha, beta). Keras 3 hard_sigmoid is relu6(x + 3) / 6,
# i.e. HardSigmoid(alpha=1/6, beta=0.5), not ONNX's default 0.2 (that was Keras 2's).
ACTIVATIONS: dict[str, tuple[str, float | None, float | None]] = {
    "tanh": ("Tanh", None, None),
    "sigmoid": ("Sigmoid", None, None),
    "relu": ("Relu", None, None),
    "hard_sigmoid": ("HardSigmoid", 1.0 / 6.0, 0.5),
    "linear": ("Affine", 1.0, 0.0),
    "softsign": ("Softsign", None, None),
    "softplus": ("Softplus", None, None),
    "elu": ("Elu", 1.0, None),
}

# Keras recurrent layer class -> the fused ONNX op it becomes.
CELL_OPS = {"LSTM": "LSTM", "GRU": "GRU", "SimpleRNN": "RNN"}

Activation = tuple[str, float | None, float | None]


class NotFusable(Exception):
    """Why one recurrent layer cannot become a fused op (reported, then converted by tf2onnx)."""


@dataclass(frozen=True)
class CellPlan:
    """One direction of a recurrent layer in ONNX terms."""

    op: str
    hidden: int
    W: np.ndarray  # (gates * hidden, features)
    R: np.ndarray  # (gates * hidden, hidden)
    B: np.ndarray  # (2 * gates * hidden,)
    activations: tuple[str, ...]
    alphas: tuple[float | None, ...]
    betas: tuple[float | None, ...]
    linear_before_reset: int | None = None
    state_count: int = 1


@dataclass(frozen=True)
class _Weights:
    """A Keras cell's weights as float32 arrays, in Keras' layout."""

    units: int
    kernel: np.ndarray  # (features, gates * units)
    recurrent: np.ndarray  # (units, gates * units)
    bias: np.ndarray | None


def to_numpy(variable: Any) -> np.ndarray:
    """A Keras variable's value as a float32 array."""
    import keras

    return np.asarray(keras.ops.convert_to_numpy(variable), dtype=np.float32)


def _activation(fn: Any, layer: Any, what: str) -> Activation:
    import keras

    try:
        name = keras.activations.serialize(fn)
    except (TypeError, ValueError, OSError, AttributeError):  # measured: a lambda gives OSError, an object TypeError
        name = getattr(fn, "__name__", repr(fn))
    if isinstance(name, dict):  # a callable object (keras.layers.ReLU(), a custom class) serializes as a dict
        name = name.get("class_name", "?")
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise NotFusable(f"{what} {name!r} has no ONNX {CELL_OPS.get(type(layer).__name__, 'RNN')} equivalent "
                         f"(supported: {sorted(ACTIVATIONS)})")
    return ACTIVATIONS[name]


def _plan(op: str, weights: _Weights, W: np.ndarray, R: np.ndarray, B: np.ndarray, acts: Sequence[Activation],
          **extra: Any) -> CellPlan:
    return CellPlan(op, weights.units, W, R, B, tuple(a[0] for a in acts), tuple(a[1] for a in acts),
                    tuple(a[2] for a in acts), **extra)


def _plan_lstm(layer: Any, weights: _Weights, act: Activation) -> CellPlan:
    rec = _activation(layer.cell.recurrent_activation, layer, "recurrent_activation")
    units = weights.units
    order = [0, 3, 1, 2]  # Keras i, f, c, o -> ONNX i, o, f, c

    def reorder(matrix: np.ndarray) -> np.ndarray:
        blocks = np.split(matrix, 4, axis=-1)
        return np.concatenate([blocks[i] for i in order], axis=-1)

    wb = reorder(weights.bias) if weights.bias is not None else np.zeros(4 * units, np.float32)
    B = np.concatenate([wb, np.zeros(4 * units, np.float32)])
    return _plan("LSTM", weights, reorder(weights.kernel).T, reorder(weights.recurrent).T, B, (rec, act, act),
                 state_count=2)


def _plan_gru(layer: Any, weights: _Weights, act: Activation) -> CellPlan:
    rec = _activation(layer.cell.recurrent_activation, layer, "recurrent_activation")
    units, bias = weights.units, weights.bias
    reset_after = bool(layer.cell.reset_after)
    # Keras and ONNX both order GRU gates z, r, h.
    if bias is None:
        B = np.zeros(6 * units, np.float32)
    elif reset_after:  # bias is (2, 3 * units): input bias, recurrent bias
        B = np.concatenate([bias[0], bias[1]])
    else:
        B = np.concatenate([bias, np.zeros(3 * units, np.float32)])
    return _plan("GRU", weights, weights.kernel.T, weights.recurrent.T, B, (rec, act),
                 linear_before_reset=1 if reset_after else 0)


def _plan_rnn(layer: Any, weights: _Weights, act: Activation) -> CellPlan:
    units, bias = weights.units, weights.bias
    B = np.concatenate([bias if bias is not None else np.zeros(units, np.float32), np.zeros(units, np.float32)])
    return _plan("RNN", weights, weights.kernel.T, weights.recurrent.T, B, (act,))


_PLANNERS: dict[str, Callable[[Any, _Weights, Activation], CellPlan]] = {
    "LSTM": _plan_lstm, "GRU": _plan_gru, "SimpleRNN": _plan_rnn}


def plan_cell(layer: Any) -> CellPlan:
    """Re-order one Keras LSTM/GRU/SimpleRNN layer's weights for the ONNX op."""
    cls = type(layer).__name__
    if cls not in CELL_OPS:
        raise NotFusable(f"{cls} is not one of {sorted(CELL_OPS)}")
    cell = layer.cell
    if getattr(layer, "dtype_policy", None) is not None and layer.dtype_policy.compute_dtype != "float32":
        raise NotFusable(f"compute dtype {layer.dtype_policy.compute_dtype} (only float32 is lowered)")
    bias = to_numpy(cell.bias) if getattr(cell, "bias", None) is not None else None
    weights = _Weights(int(cell.units), to_numpy(cell.kernel), to_numpy(cell.recurrent_kernel), bias)
    return _PLANNERS[cls](layer, weights, _activation(cell.activation, layer, "activation"))


def bidirectional_plans(layer: Any) -> list[CellPlan]:
    """One op with direction=bidirectional needs two directions of the same kind and size."""
    forward, backward = layer.forward_layer, layer.backward_layer
    if type(forward) is not type(backward) or forward.go_backwards or not backward.go_backwards:
        raise NotFusable("a Bidirectional whose backward layer differs from its forward layer")
    plans = [plan_cell(forward), plan_cell(backward)]
    if plans[0].hidden != plans[1].hidden or plans[0].linear_before_reset != plans[1].linear_before_reset:
        raise NotFusable("forward and backward layers of different sizes or GRU variants")
    return plans


def op_attributes(plans: Sequence[CellPlan], direction: str) -> dict[str, Any]:
    """The fused op's attributes for its directions' plans (one, or forward and backward)."""
    first = plans[0]
    attrs: dict[str, Any] = {"hidden_size": first.hidden, "direction": direction,
                             "activations": [a for p in plans for a in p.activations]}
    # ONNX Runtime reads activation_alpha/beta in order, one per activation that takes the parameter.
    alphas = [a for p in plans for a in p.alphas if a is not None]
    betas = [b for p in plans for b in p.betas if b is not None]
    if alphas:
        attrs["activation_alpha"] = alphas
    if betas:
        attrs["activation_beta"] = betas
    if first.linear_before_reset is not None:
        attrs["linear_before_reset"] = first.linear_before_reset
    return attrs


_op_attributes = op_attributes  # the name scripts/benchmark.py imports


def is_bidirectional(layer: Any) -> bool:
    return type(layer).__name__ == "Bidirectional"


def state_roles(layer: Any) -> list[tuple[str, int]]:
    """(role, units) of each state, in Keras' order: forward states then backward ones."""
    from toolkit.naming import state_roles as roles_of

    if is_bidirectional(layer):
        inner = layer.forward_layer
        return [(f"{d}_{r}", int(inner.units)) for d in ("forward", "backward") for r in roles_of(inner)]
    return [(r, int(layer.units)) for r in roles_of(layer)]
