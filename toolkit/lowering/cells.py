"""One Keras recurrent layer in ONNX terms: its weights re-ordered, its activations, the op's attributes.

Keras orders LSTM gates i, f, c, o, ONNX i, o, f, c; GRU gates are z, r, h in both, and Keras'
`reset_after=True` is ONNX's `linear_before_reset=1`. A layer that cannot be planned raises `NotFusable`
with the reason, which the export reports before tf2onnx converts the layer instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

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
# Keras cell class -> the fused ONNX op a `keras.layers.RNN` over it becomes (by class identity in
# `cell_op`: a subclass may change `call`, which the op would not follow).
CELL_CLASS_OPS = {"LSTMCell": "LSTM", "GRUCell": "GRU", "SimpleRNNCell": "RNN"}

# What a user can do about a layer that is not fused, appended to the reasons below.
FUSED_HINT = ("for a fused op use keras.layers.LSTM, GRU or SimpleRNN, or keras.layers.RNN over LSTMCell, "
              "GRUCell, SimpleRNNCell or a StackedRNNCells of them")

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


def _activation(fn: Any, op: str, what: str) -> Activation:
    import keras

    from toolkit.models.keras2.activations import KERAS2_HARD_SIGMOID_ONNX, keras2_hard_sigmoid

    if fn is keras2_hard_sigmoid:  # a Keras 2 file's hard_sigmoid, clip(0.2x + 0.5, 0, 1): ONNX's default
        return KERAS2_HARD_SIGMOID_ONNX
    try:
        name = keras.activations.serialize(fn)
    except (TypeError, ValueError, OSError, AttributeError):  # measured: a lambda gives OSError, an object TypeError
        name = getattr(fn, "__name__", repr(fn))
    if isinstance(name, dict):  # a callable object (keras.layers.ReLU(), a custom class) serializes as a dict
        name = name.get("class_name", "?")
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise NotFusable(f"{what} {name!r} has no ONNX {op} equivalent (supported: {sorted(ACTIVATIONS)})")
    return ACTIVATIONS[name]


def _plan(op: str, weights: _Weights, W: np.ndarray, R: np.ndarray, B: np.ndarray, acts: Sequence[Activation],
          **extra: Any) -> CellPlan:
    return CellPlan(op, weights.units, W, R, B, tuple(a[0] for a in acts), tuple(a[1] for a in acts),
                    tuple(a[2] for a in acts), **extra)


def _plan_lstm(cell: Any, weights: _Weights, act: Activation) -> CellPlan:
    rec = _activation(cell.recurrent_activation, "LSTM", "recurrent_activation")
    units = weights.units
    order = [0, 3, 1, 2]  # Keras i, f, c, o -> ONNX i, o, f, c

    def reorder(matrix: np.ndarray) -> np.ndarray:
        blocks = np.split(matrix, 4, axis=-1)
        return np.concatenate([blocks[i] for i in order], axis=-1)

    wb = reorder(weights.bias) if weights.bias is not None else np.zeros(4 * units, np.float32)
    B = np.concatenate([wb, np.zeros(4 * units, np.float32)])
    return _plan("LSTM", weights, reorder(weights.kernel).T, reorder(weights.recurrent).T, B, (rec, act, act),
                 state_count=2)


def _plan_gru(cell: Any, weights: _Weights, act: Activation) -> CellPlan:
    rec = _activation(cell.recurrent_activation, "GRU", "recurrent_activation")
    units, bias = weights.units, weights.bias
    reset_after = bool(cell.reset_after)
    # Keras and ONNX both order GRU gates z, r, h.
    if bias is None:
        B = np.zeros(6 * units, np.float32)
    elif reset_after:  # bias is (2, 3 * units): input bias, recurrent bias
        B = np.concatenate([bias[0], bias[1]])
    else:
        B = np.concatenate([bias, np.zeros(3 * units, np.float32)])
    return _plan("GRU", weights, weights.kernel.T, weights.recurrent.T, B, (rec, act),
                 linear_before_reset=1 if reset_after else 0)


def _plan_rnn(cell: Any, weights: _Weights, act: Activation) -> CellPlan:
    units, bias = weights.units, weights.bias
    B = np.concatenate([bias if bias is not None else np.zeros(units, np.float32), np.zeros(units, np.float32)])
    return _plan("RNN", weights, weights.kernel.T, weights.recurrent.T, B, (act,))


_PLANNERS: dict[str, Callable[[Any, _Weights, Activation], CellPlan]] = {
    "LSTM": _plan_lstm, "GRU": _plan_gru, "RNN": _plan_rnn}

# Compute dtypes lowered to float32 ops: a mixed-precision layer keeps float32 variables, and a float32
# run of them is closer to the model's real-number meaning than Keras' float16/bfloat16 one. A float64
# layer runs as a float32 op between Casts: ONNX Runtime's CPU LSTM/GRU/RNN kernels run float only.
LOWERED_COMPUTE_DTYPES = ("float32", "float16", "bfloat16", "float64")
_LOWERED_VARIABLE_DTYPES = ("float32", "float64")


def cell_op(cell: Any) -> str:
    """The fused op of one standard Keras cell; NotFusable for any other cell."""
    import keras

    for name, op in CELL_CLASS_OPS.items():
        if type(cell) is getattr(keras.layers, name):
            return op
    raise NotFusable(f"a custom cell {type(cell).__name__} has no fused ONNX op; {FUSED_HINT}")


def layer_cells(layer: Any) -> list[Any]:
    """The cells of a recurrent layer lstm-onnx can fuse, in stack order; NotFusable for any other layer."""
    cls = type(layer).__name__
    if cls in CELL_OPS:
        return [layer.cell]
    if cls.startswith("ConvLSTM"):
        raise NotFusable(f"{cls} is not one of {sorted(CELL_OPS)}: ONNX has no convolutional recurrent op, "
                         "so it runs as a Loop")
    if cls != "RNN":
        raise NotFusable(f"{cls} is not one of {sorted(CELL_OPS)} or RNN; {FUSED_HINT}")
    cell = layer.cell
    cells = list(cell.cells) if type(cell).__name__ == "StackedRNNCells" else [cell]
    for inner in cells:
        cell_op(inner)  # refuses a custom (or nested stacked) cell
    return cells


def _check_dtypes(layer: Any) -> None:
    policy = getattr(layer, "dtype_policy", None)
    if policy is None:
        return
    if policy.compute_dtype not in LOWERED_COMPUTE_DTYPES or policy.variable_dtype not in _LOWERED_VARIABLE_DTYPES:
        raise NotFusable(f"dtype policy {policy.name!r} (lowered: float32 variables computed in "
                         f"{', '.join(LOWERED_COMPUTE_DTYPES)}, or float64); use 'float32', 'float64' or "
                         "'mixed_float16'/'mixed_bfloat16'")


def plan_one_cell(cell: Any) -> CellPlan:
    """Re-order one standard Keras cell's weights for its ONNX op."""
    op = cell_op(cell)
    bias = to_numpy(cell.bias) if getattr(cell, "bias", None) is not None else None
    weights = _Weights(int(cell.units), to_numpy(cell.kernel), to_numpy(cell.recurrent_kernel), bias)
    return _PLANNERS[op](cell, weights, _activation(cell.activation, op, "activation"))


def plan_cells(layer: Any) -> list[CellPlan]:
    """One plan per cell of a layer (several for an RNN over StackedRNNCells), in stack order."""
    cells = layer_cells(layer)
    _check_dtypes(layer)
    return [plan_one_cell(cell) for cell in cells]


def plan_cell(layer: Any) -> CellPlan:
    """Re-order one Keras LSTM/GRU/SimpleRNN layer's (or RNN over one standard cell's) weights for the ONNX op."""
    plans = plan_cells(layer)
    if len(plans) != 1:
        raise NotFusable(f"an RNN over a StackedRNNCells of {len(plans)} cells here; wrap each cell in its own "
                         "RNN (or LSTM/GRU/SimpleRNN layer) to fuse it")
    return plans[0]


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


def state_roles(layer: Any) -> list[tuple[str, int]]:
    """(role, units) of each state, in Keras' order: forward states then backward ones; a stack's cells
    in stack order."""
    from toolkit.models.naming import is_bidirectional, state_units
    from toolkit.models.naming import state_roles as roles_of

    if is_bidirectional(layer):
        inner = layer.forward_layer
        pairs = list(zip(roles_of(inner), state_units(inner)))
        return [(f"{d}_{r}", u) for d in ("forward", "backward") for r, u in pairs]
    return list(zip(roles_of(layer), state_units(layer)))
