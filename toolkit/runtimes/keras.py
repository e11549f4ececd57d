"""Keras as the parity reference: its outputs for one set of feeds, each case from zero states, and its own
failures as one line; `KerasRunner` puts them behind the runner contract. TensorFlow and Keras are imported
inside the functions, never at module level, so `run` and `inspect` stay light.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.errors import InputError
from toolkit.models.naming import OutputOrigin, output_origins, unique_names
from toolkit.runtimes.base import Runner
from toolkit.text import first_line, keras_reason, safe_text


def keras_errors() -> tuple[type[BaseException], ...]:
    """What Keras (and the TensorFlow under it) raises when it cannot compute a model's outputs: its own
    checks (ValueError, TypeError), gaps in its layers (AttributeError, NotImplementedError, as in
    `RNN.reset_state` of a stacked cell), and TensorFlow's op errors."""
    import tensorflow as tf

    return (AttributeError, NotImplementedError, TypeError, ValueError, tf.errors.OpError)


def reset_states(model: Any) -> None:
    """Zero every stateful layer's state variables, so each case starts from zero states as the export's
    defaults do. Not `layer.reset_state()`: for an RNN of stacked cells Keras nests the variables in a
    list, and its own reset fails on that list ('ListWrapper' object has no attribute 'assign')."""
    import keras

    for layer in model._flatten_layers(include_self=False):
        if getattr(layer, "stateful", False) and getattr(layer, "states", None) is not None:
            for variable in keras.tree.flatten(layer.states):
                variable.assign(keras.ops.zeros_like(variable.value))


def keras_outputs(model: Any, feeds: Mapping[str, np.ndarray], reset: bool = True) -> list[np.ndarray]:
    """Run Keras in inference mode and flatten its outputs in model order, from zero states (`reset`; else
    from the states its stateful layers kept from the previous call). Keras' own failure is one line
    naming the model, not a traceback: the reference could not be computed, so nothing can be compared."""
    import keras

    args = [feeds[t.name] for t in model.inputs]
    struct = getattr(model, "_inputs_struct", None)
    packed = keras.tree.pack_sequence_as(struct, args) if struct is not None else (args[0] if len(args) == 1 else args)
    try:
        if reset:
            reset_states(model)
        outputs = model(packed, training=False)
        return [np.asarray(keras.ops.convert_to_numpy(o)) for o in keras.tree.flatten(outputs)]
    except keras_errors() as exc:
        raise InputError(f"Expected a model Keras can run for the reference outputs. Received: Keras failed "
                         f"running {safe_text(model.name)!r}: {type(exc).__name__}: {keras_reason(exc)}") from None


class KerasRunner(Runner):
    """A Keras model (or `.keras` file, loaded safely) behind the runner contract; outputs in model order,
    keyed by their default `<layer>_<role>` names. Feeds it has no input for are ignored; Keras checks
    the feeds it takes. It runs in this process, where TensorFlow cannot be stopped: the oracle has no
    deadline (its inputs are the verifier's own small cases)."""

    def __init__(self, model: Any, name: str = "keras"):
        try:
            import keras  # noqa: F401 -- here, not at module level: `run` and `inspect` never import TensorFlow
        except ImportError as exc:
            raise InputError("Expected Keras and TensorFlow to run the Keras model (pip install 'lstm-onnx[export]'). "
                             f"Received: {first_line(exc)}") from None
        if isinstance(model, (str, Path)):
            from toolkit.models.keras3 import load_keras_model

            model = load_keras_model(model)
        super().__init__(None, name)
        self.model = model
        self.origins: list[OutputOrigin] = output_origins(model)
        self.output_names = unique_names([o.name for o in self.origins])

    def _run(self, feeds: dict[str, np.ndarray], timeout: float) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, keras_outputs(self.model, feeds)))


class StatefulKerasRunner(KerasRunner):
    """Keras with its stateful layers' states zeroed once, when opened, then kept from call to call."""

    def __init__(self, model: Any, name: str = "keras"):
        super().__init__(model, name)
        reset_states(self.model)

    def _run(self, feeds: dict[str, np.ndarray], timeout: float) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, keras_outputs(self.model, feeds, reset=False)))
