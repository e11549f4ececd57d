"""Keras 2 weights into a translated Keras 3 model, layer by layer, in Keras 2's order.

Every Keras 2 format lists a layer's weights as `trainable_weights + non_trainable_weights` (the `.h5`'s
`weight_names`, a SavedModel layer's `variables`); Keras 3 keeps that order as `_legacy_weights`. Weights
are matched by layer name, never by position in the model, and each shape is checked before assignment.

CuDNN layers: tf.keras converts their weights when it loads them into `LSTM`/`GRU`
(`tf_keras/src/saving/legacy/hdf5_format.py`, `_convert_rnn_weights`); the same conversion is done here, so
the export computes what tf.keras computes. Per gate, the input kernel goes from cuDNN's Fortran layout to
C layout and the recurrent kernel is transposed. `CuDNNGRU`'s two bias vectors (input, recurrent) become
GRU(reset_after=True)'s `(2, 3*units)` bias, which the lowering writes as the ONNX op's input and recurrent
biases. `CuDNNLSTM`'s two are summed, as tf.keras sums them: the ONNX LSTM adds its two biases before any
gate, so the sum is the same function.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from toolkit.errors import ModelLoadError
from toolkit.text import safe_text

_GATES = {"CuDNNLSTM": 4, "CuDNNGRU": 3}

# Keras 1 kept one (W, U, b) per gate, in its `trainable_weights` order: LSTM i, c, f, o; GRU z, r, h.
# Keras 2 concatenates the gates as LSTM i, f, c, o and GRU z, r, h: the positions below pick Keras 1's
# arrays in that order (`preprocess_weights_for_loading` of Keras 2.x and tf.keras does the same).
_KERAS1_GATES = {"LSTM": (0, 6, 3, 9), "GRU": (0, 3, 6)}


def convert_cudnn(kind: str, values: Sequence[np.ndarray]) -> list[np.ndarray]:
    """A CuDNN layer's (kernel, recurrent kernel, bias) as its CPU layer's, as tf.keras converts them."""
    gates = _GATES[kind]
    kernel, recurrent, bias = (np.asarray(v) for v in values)

    def per_gate(array: np.ndarray, func: Any) -> np.ndarray:
        return np.hstack([func(block) for block in np.hsplit(array, gates)])

    kernel = per_gate(kernel, lambda k: k.T.reshape(k.shape, order="F"))
    recurrent = per_gate(recurrent, lambda k: k.T)
    if kind == "CuDNNLSTM":
        bias = np.sum(np.split(bias, 2, axis=0), axis=0)
    else:
        bias = bias.reshape((2, -1))
    return [kernel, recurrent, bias]


def convert_keras1(layer: Any, values: Sequence[np.ndarray]) -> list[np.ndarray]:
    """A Keras 1 recurrent layer's per-gate arrays as Keras 2's (kernel, recurrent kernel, bias); a
    Bidirectional's forward and backward halves each. Other layers and counts are returned as they are."""
    kind = type(layer).__name__
    if kind == "Bidirectional" and len(values) in (24, 18):
        half = len(values) // 2
        return convert_keras1(layer.forward_layer, values[:half]) + convert_keras1(layer.backward_layer, values[half:])
    gates = _KERAS1_GATES.get(kind)
    if gates is None or len(values) != 3 * len(gates):
        return list(values)
    return [np.concatenate([values[start + part] for start in gates], axis=-1) for part in range(3)]


def assign_weights(model: Any, saved: Mapping[str, Sequence[np.ndarray]], cudnn: Mapping[str, str],
                   source: str) -> int:
    """Set each of `model`'s layers from `saved[layer name]`; return how many arrays were assigned.

    A layer with weights that the file does not hold, a count or a shape that differs, is refused: a
    half-loaded model would export initializer values and pass no check worth the name.
    """
    from keras.src.legacy.saving.legacy_h5_format import _legacy_weights

    assigned = 0
    for layer in model.layers:
        variables = _legacy_weights(layer)
        if not variables:
            continue
        values = list(saved.get(layer.name, ()))
        if layer.name in cudnn and len(values) == 3:
            values = convert_cudnn(cudnn[layer.name], values)
        elif len(values) > len(variables):
            values = convert_keras1(layer, values)
        if len(values) != len(variables):
            raise ModelLoadError(f"Expected {len(variables)} weight arrays for layer {safe_text(layer.name)!r}. "
                                 f"Received: {len(values)} in {safe_text(source)!r}")
        for variable, value in zip(variables, values):
            if tuple(variable.shape) != tuple(np.shape(value)):
                raise ModelLoadError(
                    f"Expected weight {safe_text(variable.path)!r} of shape {tuple(variable.shape)}. Received: "
                    f"{tuple(np.shape(value))} in {safe_text(source)!r}")
            variable.assign(np.asarray(value, dtype=variable.dtype))
            assigned += 1
    return assigned
