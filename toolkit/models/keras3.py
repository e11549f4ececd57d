"""What lstm-onnx reads from Keras: a user's file (loaded safely), a model's input signature, and its
recurrent layers. Keras is imported inside the functions that need it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from toolkit.errors import ModelLoadError, UnsupportedModelError
from toolkit.models.loading import check_keras_version, keras_load_failure
from toolkit.models.naming import is_bidirectional, is_recurrent, layer_cells, main_count, recurrent_roles
from toolkit.options import DEFAULT_LIMITS, ResourceLimits
from toolkit.safety.files import open_regular_file
from toolkit.safety.limits import inspect_keras_handle
from toolkit.safety.shapes import check_model_budget
from toolkit.text import safe_text
from toolkit.tf2onnx_lib import InputSignature


def load_keras_model(path: str | Path, limits: ResourceLimits = DEFAULT_LIMITS) -> Any:
    """Load a user's `.keras` file in Keras' safe mode (no deserialized Python code runs), after checking
    the archive against `limits` (`toolkit.safety.limits`): Keras then reads the very file that was checked.
    A Keras 2 model (`.h5`, a tf.keras SavedModel folder or `.keras`) is read and translated by
    `toolkit.models.keras2`; that returns the Keras 3 translation (the exporter checks against the original)."""
    source = Path(path)
    from toolkit.models.keras2.formats import keras2_format

    fmt = keras2_format(source)
    if fmt is not None and fmt.kind != "module":
        from toolkit.models.keras2.loader import load_keras2_model

        loaded = load_keras2_model(source, fmt, limits)
        loaded.close()
        return loaded.model  # translated; `export` and `verify` check against the original
    if source.is_dir():
        raise ModelLoadError(
            f"Expected a Keras model: a .keras or .h5 file, or a SavedModel folder with keras_metadata.pb. Received: "
            f"folder {safe_text(source)!r}" + (" (a tf.Module SavedModel: export it with lstm-onnx export)"
                                               if fmt is not None else " without saved_model.pb")
        )
    if source.suffix != ".keras":
        raise ModelLoadError(
            f"Expected a Keras model file ending in .keras or .h5, or a SavedModel folder. Received: {safe_text(source)!r}"
        )
    with open_regular_file(source) as handle:
        inspect_keras_handle(handle, str(source), limits)
        import keras

        check_keras_version(keras.__version__)
        # saving_lib, not keras.saving.load_model: only it takes an open file, so Keras reads the very bytes
        # inspected above (keras.saving dispatches .keras paths to the same function, same safe mode).
        from keras.src.saving import saving_lib

        try:
            model = saving_lib.load_model(handle, compile=False, safe_mode=True)
        except Exception as exc:  # noqa: BLE001 - zipfile, ValueError from safe mode, TypeError for unknown objects...
            raise ModelLoadError(f"Expected a loadable Keras model. Received: {safe_text(source)!r}: "
                                 f"{keras_load_failure(exc)}") from None
    if not isinstance(model, keras.Model):
        raise ModelLoadError(f"Expected a Keras model. Received: {safe_text(source)!r} holding a {type(model).__name__}")
    # Keras' own shapes, now that building is bounded: padding, repeats and reshapes count as well.
    check_model_budget(model, str(source), limits)
    return model


def recurrent_layer_names(model: Any) -> list[str]:
    return [layer.name for layer in model._flatten_layers(include_self=False) if is_recurrent(layer)]


def require_recurrent(model: Any) -> list[str]:
    """The model's recurrent layer names; a model without any is refused (there is nothing to fuse)."""
    recurrent = recurrent_layer_names(model)
    if not recurrent:
        classes = sorted({type(layer).__name__ for layer in model._flatten_layers(include_self=False)})
        raise UnsupportedModelError(
            f"Expected a model with at least one recurrent layer (LSTM, GRU, SimpleRNN, Bidirectional). "
            f"Received: {model.name!r} with layers {classes}"
        )
    return recurrent


def model_signature(model: Any) -> list[InputSignature]:
    """The model's inputs, named as in Keras, with a dynamic batch axis."""
    if not getattr(model, "inputs", None) or not getattr(model, "outputs", None):
        raise UnsupportedModelError(
            f"Expected a built Keras model with known inputs. Received: {model.name!r}, not built "
            "(call it once on data or give it a keras.Input)"
        )
    signature = []
    for tensor in model.inputs:
        # The batch axis is always dynamic: a model built with a fixed batch size still serves any batch.
        shape = (None,) + tuple(tensor.shape[1:])
        signature.append(InputSignature(name=tensor.name, dtype=str(tensor.dtype), shape=shape))
    return signature


def output_shapes(model: Any) -> list[tuple[int | None, ...]]:
    return [tuple(t.shape) for t in model.outputs]


def describe_layers(model: Any, fused_ops: dict[str, str] | None = None) -> list[dict]:
    """One record per recurrent layer (the metadata's `layers`); `fused_ops` maps layer -> ONNX op. A
    Bidirectional's inner layers are listed too, with the op their wrapper became (they are its directions)."""
    ops = dict(fused_ops or {})
    flat = list(model._flatten_layers(include_self=False))
    for layer in flat:
        if is_bidirectional(layer) and layer.name in ops:
            for inner in (layer.forward_layer, layer.backward_layer):
                ops.setdefault(inner.name, ops[layer.name])
    layers = []
    for layer in flat:
        if not is_recurrent(layer):
            continue
        inner = layer.forward_layer if is_bidirectional(layer) else layer
        layers.append(
            {
                "name": layer.name,
                "class": type(layer).__name__,
                "units": _units(inner),
                "return_sequences": bool(inner.return_sequences),
                "return_state": bool(layer.return_state),
                "go_backwards": bool(getattr(inner, "go_backwards", False)),
                "outputs": recurrent_roles(layer),
                "onnx_op": ops.get(layer.name, "tf2onnx"),
            }
        )
    return layers


def _units(layer: Any) -> Any:
    """The layer's units; for an RNN over cells, its cell's (a list for a stack)."""
    if hasattr(layer, "units"):
        return layer.units
    units = [getattr(cell, "units", None) for cell in layer_cells(layer)]
    return units[0] if len(units) == 1 else units


# Layers whose output keeps axis 1 (time) of their first input: an output's time axis is that input's.
# Attention layers take the query first, whose steps they keep; merges of sequences need equal lengths.
_KEEPS_TIME = frozenset({
    "Dense", "EinsumDense", "TimeDistributed", "Dropout", "SpatialDropout1D", "GaussianNoise", "GaussianDropout",
    "AlphaDropout", "ActivityRegularization", "LayerNormalization", "BatchNormalization", "UnitNormalization",
    "Activation", "ReLU", "LeakyReLU", "PReLU", "ELU", "Softmax", "Masking", "Embedding", "Attention",
    "AdditiveAttention", "MultiHeadAttention", "GroupQueryAttention", "Add", "Subtract", "Multiply", "Average",
    "Maximum", "Minimum",
})


def time_axis_sources(model: Any) -> list[str | None]:
    """For each model output, the model input whose time axis (axis 1) it has, or None when that is not
    known (the output has no dynamic time axis, or a layer on the way may change its length)."""
    inputs = {id(t): t.name for t in model.inputs}
    return [_time_source(tensor, inputs) if len(tensor.shape) >= 2 and tensor.shape[1] is None else None
            for tensor in model.outputs]


def _time_source(tensor: Any, inputs: dict[int, str]) -> str | None:
    for _ in range(10_000):  # a walk up the first inputs; the bound only guards against a cyclic history
        if id(tensor) in inputs:
            return inputs[id(tensor)]
        history = getattr(tensor, "_keras_history", None)
        if history is None:
            return None
        layer, node_index, tensor_index = history
        node = layer._inbound_nodes[node_index]
        if not node.input_tensors or not _keeps_time(layer, tensor_index):
            return None
        tensor = node.input_tensors[0]
    return None


def _keeps_time(layer: Any, tensor_index: int) -> bool:
    cls = type(layer).__name__
    if cls == "Concatenate":
        return layer.axis not in (1, -2)  # -2 is the time axis of a (batch, time, features) sequence
    if is_recurrent(layer):
        inner = layer.forward_layer if is_bidirectional(layer) else layer
        sequences = main_count(layer)
        return bool(inner.return_sequences) and tensor_index < sequences
    return cls in _KEEPS_TIME
