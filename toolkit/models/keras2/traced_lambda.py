"""A `Lambda` layer of a tf.keras SavedModel, converted from the TensorFlow graph tf.keras traced for it.

In `.h5` files and in `keras_metadata.pb` a Lambda's function is marshalled Python bytecode, which
lstm-onnx never runs. A SavedModel also holds what that bytecode computed, traced: the layer's object
graph node has a `__call__` function whose concrete functions (one per `training` value) are graphs of
TensorFlow ops, checked against the op allowlist (`toolkit.models.keras2.ops`) with the rest of the file.

So the rebuild gets a `TracedLambda` in the Lambda's place: a Keras 3 layer whose output shape and dtype
are the traced function's saved signature and which never computes in Keras. Its lowering (`toolkit.lowering.traced_lambda`)
asks the SavedModel's bounded child process (`toolkit.runtimes.keras2_child`, the one running the serving signature as
the parity reference) to convert the inference trace with tf2onnx, and splices the ONNX nodes in; the
recurrent layers around it are lowered as usual. Keras 2's Lambda hands no mask on (its `mask` argument
would be Python too, and is refused), so neither does this one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from toolkit.errors import UnsupportedModelError
from toolkit.models.keras2.object_graph import child_id, object_node
from toolkit.text import safe_text

CLASS_NAME = "lstm_onnx>TracedLambda"
"""The placeholder's registered Keras name (the package prefix keeps it apart from Keras' own classes)."""

CALL_FUNCTION = "__call__"


@dataclass(frozen=True)
class TensorSpecJson:
    shape: list[int | None]
    dtype: str


def inference_index(signatures: list[Any]) -> int | None:
    """Of a Lambda's `__call__` concrete functions (their structured input signatures, `((inputs, mask,
    training), {})`), the one traced with `training=False`, else the only one; None when neither exists."""
    for index, (args, kwargs) in enumerate(signatures):
        flags = [value for value in list(args[1:]) + list(kwargs.values()) if isinstance(value, bool)]
        if flags == [False]:
            return index
    return 0 if len(signatures) == 1 else None


def mask_specs(mask: Any, count: int) -> list[Any]:
    """The traced `mask` argument aligned with the flat inputs: a spec where tf.keras passed that input's
    mask (a Lambda after Embedding(mask_zero=True) or Masking), else None."""
    if mask is None:
        return [None] * count
    return list(mask) if isinstance(mask, (list, tuple)) else [mask]


# ------------------------------------------------------------------------ the parent: proto to config


def _specs(value: Any, layer: str) -> list[TensorSpecJson]:
    import tensorflow as tf

    flat = tf.nest.flatten(value)
    if not flat or not all(isinstance(spec, tf.TensorSpec) for spec in flat):
        raise UnsupportedModelError(f"Expected a Lambda layer traced on tensors. Received: layer {safe_text(layer)!r} "
                                    f"traced on {safe_text(str(value)[:120])}")
    return [TensorSpecJson(spec.shape.as_list(), spec.dtype.name) for spec in flat]


def traced_lambda_entry(entry: dict, path: str, meta: Any, folder: str) -> dict:
    """The placeholder config for one Lambda layer entry of the model config, from its traced `__call__`
    in the SavedModel's object graph (`meta`): same name and inbound nodes, its function dropped."""
    from tensorflow.python.saved_model import nested_structure_coder

    config = entry.get("config") or {}
    name = str(config.get("name", "?"))
    if config.get("mask") is not None:
        raise UnsupportedModelError(f"Expected a Lambda layer without a mask function. Received: {safe_text(folder)!r}, "
                                    f"layer {safe_text(name)!r} with one (Python bytecode, which lstm-onnx never runs)")
    graph = meta.object_graph_def
    node = object_node(graph, path)
    call = child_id(node, CALL_FUNCTION) if node is not None else None
    names = list(graph.nodes[call].function.concrete_functions) if call is not None else []
    saved = [graph.concrete_functions[n] for n in names if n in graph.concrete_functions]
    signatures = [nested_structure_coder.decode_proto(f.canonicalized_input_signature) for f in saved]
    index = inference_index(signatures)
    if index is None:
        raise UnsupportedModelError(f"Expected a Lambda layer with its traced graph in the SavedModel. Received: "
                                    f"{safe_text(folder)!r}, layer {safe_text(name)!r} without an inference trace "
                                    "(save the model with tf.keras' model.save(..., save_format='tf'))")
    inputs = _specs(signatures[index][0][0], name)
    args = signatures[index][0]
    masked = [spec is not None for spec in mask_specs(args[1] if len(args) > 1 else None, len(inputs))]
    outputs = _specs(nested_structure_coder.decode_proto(saved[index].output_signature), name)
    if len(outputs) != 1:
        raise UnsupportedModelError(f"Expected a Lambda layer with one output. Received: {safe_text(folder)!r}, layer "
                                    f"{safe_text(name)!r} with {len(outputs)}")
    placeholder = {"name": name, "node_path": path, "trainable": False,
                   "input_specs": [[s.shape, s.dtype, m] for s, m in zip(inputs, masked)],
                   "output_shape": outputs[0].shape, "output_dtype": outputs[0].dtype}
    return {key: value for key, value in entry.items() if key not in ("module", "registered_name")} | {
        "class_name": CLASS_NAME, "config": placeholder}


def replace_lambdas(config: dict, paths: dict[str, str], meta: Any, folder: str) -> list[str]:
    """Every Lambda layer of a model config (nested models included) replaced by its placeholder, in place;
    `paths` maps layer names to their Keras metadata paths. Returns the names replaced."""
    replaced: list[str] = []
    stack: list[Any] = [config]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
            continue
        if not isinstance(item, dict):
            continue
        layers = (item.get("config") or {}).get("layers") if isinstance(item.get("config"), dict) else None
        for index, layer in enumerate(layers if isinstance(layers, list) else []):
            if isinstance(layer, dict) and layer.get("class_name") == "Lambda":
                name = str((layer.get("config") or {}).get("name", "?"))
                if name not in paths:
                    raise UnsupportedModelError(f"Expected each Lambda layer in the SavedModel's metadata. Received: "
                                                f"{safe_text(folder)!r} without layer {safe_text(name)!r}")
                layers[index] = traced_lambda_entry(layer, paths[name], meta, folder)
                replaced.append(name)
            else:
                stack.append(layer)
    return replaced


# ------------------------------------------------------------------------ the rebuild: a placeholder layer


_LAYER_CLASS: list[type] = []


def layer_class() -> type:
    """`TracedLambda`, registered with Keras under `CLASS_NAME` on first use (Keras is imported here only)."""
    if _LAYER_CLASS:
        return _LAYER_CLASS[0]
    import keras

    @keras.saving.register_keras_serializable(package="lstm_onnx")
    class TracedLambda(keras.layers.Layer):
        """A Lambda's place in the rebuild: the traced function's output spec, computed only in ONNX."""

        def __init__(self, node_path: str, input_specs: list, output_shape: list, output_dtype: str, **kwargs: Any):
            super().__init__(**kwargs)
            self.node_path, self.input_specs = node_path, [list(spec) for spec in input_specs]
            self.output_shape_, self.output_dtype = list(output_shape), output_dtype
            self.autocast = False  # the handler casts to the traced inputs' dtypes itself
            self.supports_masking = True  # takes a mask (its trace may read it) and, as Keras 2's Lambda, hands none on
            self.source: Any = None  # the SavedModel's child process, attached by the reference

        def compute_output_spec(self, *args: Any, **kwargs: Any) -> Any:
            return keras.KerasTensor(tuple(self.output_shape_), dtype=self.output_dtype)

        def compute_output_shape(self, *args: Any, **kwargs: Any) -> tuple:
            return tuple(self.output_shape_)

        def compute_mask(self, inputs: Any, mask: Any = None) -> Any:
            return None

        def call(self, *args: Any, **kwargs: Any) -> Any:
            raise NotImplementedError(f"Lambda layer {self.name!r} runs only as its traced graph, converted to ONNX "
                                      "(lstm-onnx never runs its Python bytecode)")

        def get_config(self) -> dict:
            return {**super().get_config(), "node_path": self.node_path, "input_specs": self.input_specs,
                    "output_shape": self.output_shape_, "output_dtype": self.output_dtype}

    _LAYER_CLASS.append(TracedLambda)
    return TracedLambda


def attach_source(model: Any, child: Any) -> None:
    """Give every placeholder of `model` the child process that converts its traced graph."""
    for layer in model._flatten_layers(include_self=False):
        if type(layer).__name__ == "TracedLambda":
            layer.source = child


# ------------------------------------------------------------------------ the child: convert the trace


def convert_traced(loaded: Any, node_path: str, opset: int) -> bytes:
    """In the SavedModel's child process: tf2onnx's conversion of the Lambda's inference trace (a restored
    concrete function: a TensorFlow graph, no Python of the layer). Raises on anything it cannot convert."""
    import tensorflow as tf

    from toolkit.tf2onnx_lib import InputSignature, convert_call

    node = loaded
    for part in node_path.split(".")[1:]:
        node = getattr(node, part)
    concretes = list(getattr(node, CALL_FUNCTION).concrete_functions)
    index = inference_index([c.structured_input_signature for c in concretes])
    if index is None:
        raise ValueError(f"no inference trace of {node_path}")
    function = concretes[index]
    args = function.structured_input_signature[0]
    structure, mask = args[0], (args[1] if len(args) > 1 else None)
    flat = tf.nest.flatten(structure)
    masks = mask_specs(mask, len(flat))
    signature = [InputSignature(f"in{i}", spec.dtype.name, tuple(spec.shape.as_list())) for i, spec in enumerate(flat)]
    signature += [InputSignature(f"mask{i}", spec.dtype.name, tuple(spec.shape.as_list()))
                  for i, spec in enumerate(masks) if spec is not None]

    def call(*values: Any) -> Any:
        inputs = tf.nest.pack_sequence_as(structure, list(values[: len(flat)]))
        given = iter(values[len(flat):])
        flat_masks = [next(given) if spec is not None else None for spec in masks]
        given_mask = flat_masks if isinstance(mask, (list, tuple)) else flat_masks[0]
        return function(inputs, given_mask, *args[2:])  # the trace's own constants after it (training=False)

    return convert_call(call, signature, opset, node_path).SerializeToString()
