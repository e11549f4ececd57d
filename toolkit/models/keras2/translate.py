"""Keras 2 layer configs into the form Keras 3 builds: pure dict work, no Keras, no TensorFlow.

Keras 2 (standalone 2.x and tf.keras 2.0-2.15, `tf-keras` after) wrote configs Keras 3 refuses: recurrent
layers carry `time_major` and `implementation`, `Embedding` carries `input_length`, initializers and
regularizers come as `{"class_name", "config"}` (with `dtype` in their config in Keras 2.2), SavedModel
metadata writes tuples as `{"class_name": "__tuple__", "items": [...]}`, models are `Model`, and GPU-trained
models hold `CuDNNLSTM` / `CuDNNGRU` layers that Keras 3 does not have. `translate_model_config` rewrites a
whole model config (nested models, wrappers and cells included) and lists what it changed; a `Lambda`
layer (marshalled Python bytecode in Keras 2 files) is refused before anything is built.

CuDNN layers become the layers they compute: `CuDNNLSTM` is `LSTM(activation="tanh",
recurrent_activation="sigmoid")` and `CuDNNGRU` is `GRU(reset_after=True, recurrent_activation="sigmoid")`.
Their weights need a conversion (`toolkit.models.keras2.weights`), so each one is listed in `Translation.cudnn`.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from toolkit.errors import UnsupportedModelError
from toolkit.models.keras2.activations import keras2_defaults, thresholded_relu, translate_activations
from toolkit.models.keras2.legacy import legacy_layer
from toolkit.models.keras2.nodes import state_nodes
from toolkit.text import safe_text

# Arguments Keras 2 layers take and Keras 3's refuse (they change nothing at inference). `time_major`
# is dropped only when False: True changes the layout of the inputs and outputs (refused, `_time_major`).
DROPPED_ARGS: dict[str, tuple[str, ...]] = {
    "LSTM": ("time_major", "implementation"),
    "GRU": ("time_major", "implementation"),
    "SimpleRNN": ("time_major", "implementation"),
    "RNN": ("time_major",),
    "LSTMCell": ("implementation",),
    "GRUCell": ("implementation",),
    "Bidirectional": ("time_major",),
    "Embedding": ("input_length",),
}
# Convolutional recurrent layers: Keras 3 has some of them, lstm-onnx fuses none.
_UNSUPPORTED_RECURRENT = ("ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D", "ConvRNN1D", "ConvRNN2D", "ConvRNN3D")

CUDNN_CLASSES = {"CuDNNLSTM": "LSTM", "CuDNNGRU": "GRU"}
MODEL_CLASSES = {"Model": "Functional", "Functional": "Functional", "Sequential": "Sequential"}
_MODEL_MODULES = {"Functional": "keras.src.models.functional", "Sequential": "keras"}
# Keys whose value is a serialized initializer, regularizer or constraint (`*_initializer` etc. besides).
_OBJECT_SUFFIXES = ("_initializer", "_regularizer", "_constraint")
# Keras 2 class names of those objects that Keras 3 spells differently (the function alias of L1L2).
_RENAMED_OBJECTS = {"l1_l2": "L1L2"}
_CODE_CLASSES = ("Lambda",)
_KERAS_MODULE = re.compile(r"(keras|tf_keras)(\.[A-Za-z_][A-Za-z0-9_]*)*")


@dataclass
class Translation:
    """A translated model config and what was changed to get it (for the export's notes)."""

    config: dict
    changes: list[str] = field(default_factory=list)
    cudnn: dict[str, str] = field(default_factory=dict)  # layer name -> its Keras 2 class (CuDNNLSTM, CuDNNGRU)
    keras_version: str = ""  # the Keras that wrote the file: its defaults fill what a config leaves out

    def note(self, text: str) -> None:
        if text not in self.changes:
            self.changes.append(text)


def translate_model_config(config: dict, source: str, keras_version: str = "") -> Translation:
    """The Keras 3 form of a Keras 2 model config (`{"class_name": ..., "config": {...}}`) written by Keras
    `keras_version` (its defaults fill in what the config leaves out)."""
    if isinstance(config, dict) and config.get("class_name") == "Sequential" and isinstance(config.get("config"), list):
        config = dict(config, config={"name": "sequential", "layers": config["config"]})  # Keras <= 2.1's form
    if not isinstance(config, dict) or not isinstance(config.get("config"), dict):
        raise UnsupportedModelError(f"Expected a Keras model config (a JSON object with 'class_name' and 'config'). "
                                    f"Received: {safe_text(source)!r} with {type(config).__name__}")
    if config.get("class_name") not in MODEL_CLASSES:
        raise UnsupportedModelError(f"Expected a Keras Model, Functional or Sequential config. Received: "
                                    f"{safe_text(source)!r} holding a {safe_text(str(config.get('class_name')))!r}")
    translation = Translation(config={}, keras_version=keras_version)
    translation.config = _layer(untuple(copy.deepcopy(config)), translation, source)  # a Lambda is refused here
    check_modules(config, source)
    return translation


def check_modules(value: Any, source: str) -> None:
    """Every `module` a config names must be Keras' own (keras..., tf_keras...): tf.keras' loader imports
    whatever module a `.keras` config names (it predates Keras' CVE-2025-1550 fix), and the reference is
    built by tf.keras from this very config."""
    for item in config_dicts(value):
        module = item.get("module")
        if isinstance(module, str) and not _KERAS_MODULE.fullmatch(module):
            raise UnsupportedModelError(f"Expected Keras' own classes (modules keras.* or tf_keras.*). Received: "
                                        f"{safe_text(source)!r} naming module {safe_text(module)!r}")


def config_dicts(value: Any) -> Iterator[dict]:
    """Every dict in a JSON config, depth first. A dict's values are walked after the caller's loop body has
    seen it, so the body may change it (fill in keys, rename its class) and the walk sees what it left."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def untuple(value: Any) -> Any:
    """SavedModel metadata's `{"class_name": "__tuple__", "items": [...]}` as plain lists, all the way down."""
    if isinstance(value, dict):
        if value.get("class_name") == "__tuple__" and isinstance(value.get("items"), list):
            return [untuple(item) for item in value["items"]]
        return {key: untuple(item) for key, item in value.items()}
    if isinstance(value, list):
        return [untuple(item) for item in value]
    return value


def _layer(entry: dict, translation: Translation, source: str) -> dict:
    """One serialized layer (or model), translated in place and returned."""
    if not isinstance(entry, dict) or not isinstance(entry.get("config"), dict):
        return entry
    kind = entry.get("class_name")
    config = entry["config"]
    name = str(config.get("name", entry.get("name", "?")))
    if kind in _CODE_CLASSES:
        raise UnsupportedModelError(
            f"Expected a model without Python code. Received: {safe_text(source)!r} with a {kind} layer "
            f"{safe_text(name)!r} (Keras 2 stores its function as marshalled bytecode; lstm-onnx never runs it)")
    if kind in MODEL_CLASSES:
        entry["class_name"] = MODEL_CLASSES[kind]
        if "module" in entry:  # tf.keras .keras: the model's module names tf_keras, which Keras 3 cannot import
            entry["module"] = _MODEL_MODULES[entry["class_name"]]
            entry["registered_name"] = None
        if not isinstance(config.get("layers", []), list) or isinstance(config.get("output_layers"), dict):
            what = "dict outputs" if isinstance(config.get("output_layers"), dict) else "layers that are not a list"
            raise UnsupportedModelError(f"Expected a model with a list of layers and of outputs. Received: "
                                        f"{safe_text(source)!r} with {what}")
        for layer in config.get("layers", []):
            _layer(layer, translation, source)
        _input_shapes(config, sequential=entry["class_name"] == "Sequential")
        _embedding_inputs(config, entry["class_name"] == "Sequential", translation)
        _nested_model_nodes(config, translation)
        for layer_name in state_nodes(config.get("layers", []), source):
            translation.note(f"layer {layer_name!r}: Keras 2's call with initial states read as initial_state=")
        return entry
    _refuse_unsupported(kind, config, name, source)
    if kind in CUDNN_CLASSES:
        _cudnn(entry, translation)
        kind = entry["class_name"]
    kind = _keras2_meaning(entry, translation, source)
    for arg in DROPPED_ARGS.get(kind, ()):
        if arg in config:
            value = config.pop(arg)
            translation.note(f"{kind}: dropped Keras 2's {arg}={value!r} (no effect at inference)")
    if kind == "InputLayer" and "batch_input_shape" in config:
        config["batch_shape"] = config.pop("batch_input_shape")
    if kind == "BatchNormalization" and isinstance(config.get("axis"), list) and len(config["axis"]) == 1:
        config["axis"] = config["axis"][0]  # tf.keras wrote [2]; Keras 3's BatchNormalization takes one int
    _objects(config, translation)
    _dtype(config, translation)
    for key in ("layer", "backward_layer", "cell"):
        if isinstance(config.get(key), dict):
            _wrapped_input_shape(config, config[key])
            _layer(_builtin_module(config[key]), translation, source)
    if isinstance(config.get("cells"), list):
        for cell in config["cells"]:
            _layer(_builtin_module(cell), translation, source)
    if isinstance(config.get("cell"), list):  # RNN(cell=[...]): Keras 2 allowed a list of cells
        config["cell"] = {"class_name": "StackedRNNCells", "config": {"cells": config["cell"]}}
        translation.note(f"{kind} {name!r}: a list of cells read as StackedRNNCells")
        _layer(config["cell"], translation, source)
    return entry


def _refuse_unsupported(kind: Any, config: dict, name: str, source: str) -> None:
    """Layers and arguments whose Keras 2 meaning lstm-onnx does not export: one line naming the layer."""
    if kind in _UNSUPPORTED_RECURRENT:
        raise UnsupportedModelError(
            f"Expected recurrent layers lstm-onnx exports (LSTM, GRU, SimpleRNN, RNN, Bidirectional). Received: "
            f"{safe_text(source)!r} with a {kind} layer {safe_text(name)!r} (convolutional recurrent layers are "
            "not supported; export the model with tf2onnx)")
    if config.get("time_major") is True:
        raise UnsupportedModelError(
            f"Expected batch-major recurrent layers (time_major=False). Received: {safe_text(source)!r} with "
            f"{kind} {safe_text(name)!r} time_major=True (its inputs and outputs are (time, batch, ...), which "
            "lstm-onnx does not export; rebuild the layer with time_major=False, load the weights, and re-save)")


def _keras2_meaning(entry: dict, translation: Translation, source: str) -> str:
    """A layer's Keras 2 meaning in Keras 3 terms: renamed layers and arguments, Keras 2's activations,
    the defaults of the Keras that wrote it. Returns the (possibly new) class name."""
    name = str(entry["config"].get("name"))
    for note in filter(None, (thresholded_relu(entry), legacy_layer(entry, source))):
        translation.note(note)
    kind = str(entry["class_name"])
    filled = keras2_defaults(kind, entry["config"], translation.keras_version)
    if filled:
        translation.note(f"{kind} {name!r}: Keras {translation.keras_version}'s defaults {', '.join(filled)}")
    for note in translate_activations(kind, entry["config"]):
        translation.note(f"{kind} {name!r}: {note}")
    return kind


def _embedding_inputs(config: dict, sequential: bool, translation: Translation) -> None:
    """An input that only feeds Embedding layers holds token ids. Keras 2 let it default to float32 (the
    classic `Sequential([Embedding(..., input_length=n), LSTM(...)])`) and cast inside the layer; the
    export declares it int32, so deploy code and the parity cases feed ids, not floats."""
    layers = [layer for layer in config.get("layers", []) if isinstance(layer, dict)]
    inputs = {str(layer.get("config", {}).get("name", layer.get("name"))): layer for layer in layers
              if layer.get("class_name") == "InputLayer"}
    consumers: dict[str, set[str]] = {name: set() for name in inputs}
    if sequential and inputs and len(layers) > 1:
        consumers[next(iter(inputs))].add(str(layers[1].get("class_name")))
    for layer in layers if not sequential else []:
        for node in layer.get("inbound_nodes", []):
            for reference in node if isinstance(node, list) else []:
                if isinstance(reference, list) and reference and reference[0] in consumers:
                    consumers[reference[0]].add(str(layer.get("class_name")))
    for name, kinds in consumers.items():
        inner = inputs[name].setdefault("config", {})
        if kinds == {"Embedding"} and str(inner.get("dtype", "float32")).startswith("float"):
            inner["dtype"] = "int32"
            translation.note(f"input {name!r} feeds only Embedding layers: declared int32 (token ids)")


def _nested_model_nodes(config: dict, translation: Translation) -> None:
    """Keras 2 gave a nested model a node of its own (node 0) before its first call, so its calls are
    nodes 1, 2, ...; Keras 3 does not, so references to them shift down by one."""
    nested = {str((layer.get("config") or {}).get("name", layer.get("name"))) for layer in config.get("layers", [])
              if isinstance(layer, dict) and layer.get("class_name") in MODEL_CLASSES}
    if not nested:
        return

    def shift(reference: Any) -> None:
        if isinstance(reference, list) and len(reference) >= 3 and reference[0] in nested and isinstance(reference[1], int):
            reference[1] = max(reference[1] - 1, 0)

    for layer in config.get("layers", []):
        for node in layer.get("inbound_nodes", []) if isinstance(layer, dict) else []:
            for reference in node if isinstance(node, list) else []:
                shift(reference)
    for key in ("input_layers", "output_layers"):
        for reference in config.get(key, []) if isinstance(config.get(key), list) else []:
            shift(reference)
    translation.note(f"nested models {sorted(nested)}: call nodes renumbered for Keras 3")


def _builtin_module(entry: dict) -> dict:
    """A wrapped layer or cell as Keras 3's wrappers deserialize it: with a module. SavedModel metadata and
    Keras 2.2 files leave it out; `keras.layers` makes Keras 3 look the class up among its own layers only
    (a custom class is still refused by safe mode)."""
    if isinstance(entry, dict) and "module" not in entry:
        entry["module"] = "keras.layers"
        entry.setdefault("registered_name", None)
    return entry


def _input_shapes(config: dict, sequential: bool) -> None:
    """Keras 2 repeats an input shape as `batch_input_shape` on the first layer after an input, which Keras
    3's layers refuse. Dropped there; a Sequential without an InputLayer gets one from it, as Keras 3 expects."""
    layers = [layer for layer in config.get("layers", []) if isinstance(layer, dict)]
    if not layers:
        return
    has_input = not sequential or layers[0].get("class_name") == "InputLayer"
    for layer in layers:
        inner = layer.get("config") if isinstance(layer.get("config"), dict) else {}
        if layer.get("class_name") == "InputLayer" or "batch_input_shape" not in inner:
            continue
        shape = inner.pop("batch_input_shape")
        if not has_input and layer is layers[0]:
            config["layers"].insert(0, {"class_name": "InputLayer", "config": {
                "batch_shape": shape, "dtype": inner.get("dtype", "float32"), "name": f"{inner.get('name', 'input')}_input"}})
            has_input = True


def _wrapped_input_shape(config: dict, wrapped: dict) -> None:
    """tf.keras writes `Bidirectional(LSTM(..., input_shape=s))` as a first layer with the shape on the wrapped
    layer only (`batch_input_shape` inside `layer`), which Keras 3's LSTM refuses: it is the wrapper's input
    shape, so it moves to the wrapper, where `_input_shapes` reads it as any first layer's."""
    inner = wrapped.get("config")
    if isinstance(inner, dict) and "batch_input_shape" in inner:
        shape = inner.pop("batch_input_shape")
        config.setdefault("batch_input_shape", shape)


def _cudnn(entry: dict, translation: Translation) -> None:
    """CuDNNLSTM/CuDNNGRU as the Keras 3 layer computing the same function."""
    kind = entry["class_name"]
    config = entry["config"]
    target = CUDNN_CLASSES[kind]
    config.update(activation="tanh", recurrent_activation="sigmoid", use_bias=True, dropout=0.0,
                  recurrent_dropout=0.0, unroll=False)
    if target == "GRU":
        config["reset_after"] = True  # cuDNN's GRU applies the reset gate after the recurrent matmul
    config.setdefault("unit_forget_bias", True) if target == "LSTM" else None
    entry["class_name"] = target
    if "module" in entry:
        entry["module"] = "keras.layers"
    translation.cudnn[str(config.get("name"))] = kind
    translation.note(f"{kind} {config.get('name')!r}: read as {target}"
                     + ("(reset_after=True)" if target == "GRU" else "") + " with its weights converted")


def _objects(config: dict, translation: Translation) -> None:
    """Initializers, regularizers and constraints in any Keras 2 form, as Keras 3 reads them.

    None of them changes a loaded model's outputs (the saved weights replace the initial values), so one
    Keras 3 cannot read is dropped with a note rather than failing the export.
    """
    for key in list(config):
        if not key.endswith(_OBJECT_SUFFIXES) and key != "activity_regularizer":
            continue
        value = config[key]
        if value is None or isinstance(value, str):
            continue
        if not isinstance(value, dict) or not isinstance(value.get("class_name"), str):
            config.pop(key)
            translation.note(f"dropped {key} in a form Keras 3 does not read")
            continue
        inner = dict(value.get("config") or {})
        inner.pop("dtype", None)  # Keras 2.2 wrote the dtype into initializer configs
        if inner.get("distribution") == "normal":  # Keras 2.0-2.2's name, which tf.keras and Keras 3 call so
            inner["distribution"] = "truncated_normal"
        class_name = _RENAMED_OBJECTS.get(value["class_name"], value["class_name"])
        config[key] = {"class_name": class_name, "config": inner}
        if "module" in value:
            config[key].update(module=value["module"], registered_name=value.get("registered_name"))


def _dtype(config: dict, translation: Translation) -> None:
    """tf.keras' mixed-precision policy object as Keras 3's policy name."""
    dtype = config.get("dtype")
    if isinstance(dtype, dict) and dtype.get("class_name") == "Policy":
        config["dtype"] = str((dtype.get("config") or {}).get("name", "float32"))
        translation.note(f"dtype policy {config['dtype']!r} read from tf.keras' Policy object")
