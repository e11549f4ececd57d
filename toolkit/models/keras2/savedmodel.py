"""tf.keras SavedModel folders: the layer configs from `keras_metadata.pb`, the weights from the variables
checkpoint, and the graph's ops checked against an allowlist before anything of it runs.

`keras_metadata.pb` is a small protobuf (`SavedMetadata`: one record per Keras object, with its node id in
the SavedModel's object graph, its path such as `root.layer_with_weights-0`, and its Keras metadata as
JSON); it is parsed here from the wire format, so reading it needs neither tf-keras nor Keras 2. The
checkpoint's object graph shares its node ids with the SavedModel's, so a layer's node lists its
`variables` in Keras 2's order, each with the checkpoint key that holds its value. TensorFlow's
checkpoint reader gives every variable's shape and dtype before a value is read, so the resource
limits apply to declared sizes first.

Nothing here runs the graph. `check_graph_ops` reads `saved_model.pb` and refuses any op outside
`ALLOWED_OPS` (file, print, system, network and queue ops among them), so that the reference run of the
serving signature (`toolkit.runtimes.keras2`) can only compute.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.errors import ModelLoadError, UnsupportedModelError
from toolkit.models.keras2.formats import KERAS_METADATA_PB, SAVED_MODEL_PB
from toolkit.models.keras2.h5 import Keras2File
from toolkit.models.keras2.object_graph import child_id, object_node
from toolkit.models.keras2.ops import ALLOWED_OPS, SAVER_OPS
from toolkit.options import ResourceLimits
from toolkit.safety.files import open_regular_file
from toolkit.safety.limits import check_declared_arrays
from toolkit.safety.weights_scan import DeclaredArray
from toolkit.text import safe_text

_OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"


@dataclass(frozen=True)
class MetadataNode:
    node_id: int
    node_path: str
    identifier: str
    metadata: dict


def read_keras_savedmodel(folder: Path, limits: ResourceLimits) -> Keras2File:
    """The model config and per-layer weights of a tf.keras SavedModel folder, within `limits`. Each Lambda
    layer becomes a placeholder lowered from its traced graph (`toolkit.models.keras2.traced_lambda`)."""
    nodes = read_keras_metadata(folder / KERAS_METADATA_PB, limits)
    lambdas = {str(node.metadata.get("name")): node.node_path for node in nodes if node.metadata.get("class_name") == "Lambda"}
    proto = check_graph_ops(folder, limits, lambdas)
    root = next((node for node in nodes if node.node_path == "root"), None)
    if root is None or "config" not in root.metadata or "class_name" not in root.metadata:
        raise ModelLoadError(f"Expected {KERAS_METADATA_PB} describing a Keras model. Received: "
                             f"{safe_text(str(folder))!r} without its root model's config")
    config = {"class_name": root.metadata["class_name"], "config": root.metadata["config"]}
    if lambdas:
        from toolkit.models.keras2.traced_lambda import layer_class, replace_lambdas

        layer_class()  # registered with Keras before the rebuild deserializes the placeholders
        replace_lambdas(config, lambdas, proto.meta_graphs[0], str(folder))
    layers = {str(node.metadata.get("name")): node.node_id for node in nodes
              if node.node_path.count(".") == 1 and node.node_path.startswith("root.") and "name" in node.metadata}
    weights = read_layer_variables(folder, layers, limits)
    return Keras2File(config, weights, str(root.metadata.get("keras_version", "2")), "tensorflow")


# ------------------------------------------------------------------------------------- keras_metadata.pb


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def _fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) pairs of one protobuf message: varints as ints, length-delimited as bytes."""
    fields: list[tuple[int, int | bytes]] = []
    at = 0
    while at < len(data):
        key, at = _varint(data, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = _varint(data, at)
            fields.append((number, value))
        elif wire == 2:
            length, at = _varint(data, at)
            if at + length > len(data):
                raise ValueError("truncated field")
            fields.append((number, data[at:at + length]))
            at += length
        elif wire in (1, 5):
            at += 8 if wire == 1 else 4
        else:
            raise ValueError(f"wire type {wire}")
    return fields


def read_keras_metadata(path: Path, limits: ResourceLimits) -> list[MetadataNode]:
    """`SavedMetadata.nodes`: node_id (2), node_path (3), identifier (4), metadata JSON (5)."""
    with open_regular_file(path, f"a SavedModel's {KERAS_METADATA_PB}") as handle:
        data = handle.read(limits.max_config_bytes + 1)
    if len(data) > limits.max_config_bytes:
        raise ModelLoadError(f"Expected a {KERAS_METADATA_PB} of at most {limits.max_config_bytes} bytes. Received: "
                             f"{safe_text(str(path))!r} holding more")
    nodes = []
    try:
        for number, value in _fields(data):
            if number != 1 or not isinstance(value, bytes):
                continue
            record = dict(_fields(value))
            if not isinstance(record.get(2, 0), int) or any(not isinstance(record.get(k, b""), bytes) for k in (3, 4, 5)):
                raise ValueError("a field of the wrong wire type")  # bytes(<varint>) would allocate that many
            text = record.get(5, b"{}")
            nodes.append(MetadataNode(record.get(2, 0), record.get(3, b"").decode(), record.get(4, b"").decode(),
                                      json.loads(text) if text else {}))
    except (ValueError, UnicodeDecodeError, RecursionError, TypeError) as exc:
        raise ModelLoadError(f"Expected a readable {KERAS_METADATA_PB}. Received: {safe_text(str(path))!r} "
                             f"({type(exc).__name__}: {str(exc)[:120]})") from None
    return [node for node in nodes if isinstance(node.metadata, dict)]


# ------------------------------------------------------------------------------------------- graph ops


def read_saved_model(folder: Path, limits: ResourceLimits) -> Any:
    """`saved_model.pb` as TensorFlow's proto, its size bounded first."""
    from tensorflow.core.protobuf import saved_model_pb2

    path = folder / SAVED_MODEL_PB
    with open_regular_file(path, f"a SavedModel's {SAVED_MODEL_PB}") as handle:
        data = handle.read(limits.max_member_bytes + 1)
    if len(data) > limits.max_member_bytes:
        raise ModelLoadError(f"Expected a {SAVED_MODEL_PB} of at most {limits.max_member_bytes} bytes "
                             f"(--max-member-bytes). Received: {safe_text(str(path))!r} holding more")
    proto = saved_model_pb2.SavedModel()
    try:
        proto.ParseFromString(data)
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends
        raise ModelLoadError(f"Expected a readable {SAVED_MODEL_PB}. Received: {safe_text(str(path))!r} "
                             f"({type(exc).__name__})") from None
    if not proto.meta_graphs:
        raise ModelLoadError(f"Expected a SavedModel with a graph. Received: {safe_text(str(folder))!r} with none")
    return proto


def _called(node: Any) -> set[str]:
    """Names of the functions a node calls (StatefulPartitionedCall's `f`, While's body, If's branches...)."""
    names = set()
    for value in node.attr.values():
        if value.HasField("func"):
            names.add(value.func.name)
        names.update(func.name for func in value.list.func)
    return names


def _roots(meta: Any) -> set[str]:
    """The functions TensorFlow's TF2 loader may run: every concrete function the object graph names
    (signatures, methods, saveable objects' save/restore functions, resource initializers)."""
    graph = meta.object_graph_def
    roots = set(graph.concrete_functions)
    for node in graph.nodes:
        kind = node.WhichOneof("kind")
        if kind == "function":
            roots.update(node.function.concrete_functions)
        elif kind == "bare_concrete_function":
            roots.add(node.bare_concrete_function.concrete_function_name)
    return roots


def _reachable(functions: dict[str, Any], roots: set[str]) -> set[str]:
    seen: set[str] = set()
    stack = [name for name in roots if name in functions]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        for node in functions[name].node_def:
            stack.extend(callee for callee in _called(node) if callee in functions and callee not in seen)
    return seen


def refused_ops(proto: Any) -> dict[str, str]:
    """Ops outside the allowlist -> where. Decided by reachability, never by a function's name: every
    function the object graph can run, and everything it calls, must hold `ALLOWED_OPS` only. The
    checkpoint ops `SAVER_OPS` are allowed only in functions nothing in the object graph reaches
    (TensorFlow's saver, called by top-level nodes the TF2 loader never runs). A SavedModel without an
    object graph (TF1's format, whose loader runs the top-level graph) is refused."""
    refused: dict[str, str] = {}
    for meta in proto.meta_graphs:
        if not meta.object_graph_def.nodes:
            refused.setdefault("no object graph (a TF1 SavedModel)", "the meta graph")
            continue
        functions = {f.signature.name: f for f in meta.graph_def.library.function}
        reachable = _reachable(functions, _roots(meta))
        for node in meta.graph_def.node:
            if node.op not in ALLOWED_OPS:
                refused.setdefault(node.op, f"node {node.name!r}")
        for name, function in functions.items():
            allowed = ALLOWED_OPS if name in reachable else ALLOWED_OPS | SAVER_OPS
            for node in function.node_def:
                if node.op not in allowed:
                    refused.setdefault(node.op, f"function {name!r}")
    return refused


def lambda_refusals(proto: Any, lambdas: dict[str, str]) -> list[tuple[str, str]]:
    """(layer, op) for each Lambda layer (name -> Keras metadata path) whose traced functions, or anything
    they call, hold an op outside `ALLOWED_OPS`."""
    found = []
    for meta in proto.meta_graphs:
        graph = meta.object_graph_def
        functions = {f.signature.name: f for f in meta.graph_def.library.function}
        for name, path in sorted(lambdas.items()):
            node = object_node(graph, path)
            if node is None:
                continue
            roots = {fn for c in node.children if c.node_id < len(graph.nodes)
                     and graph.nodes[c.node_id].WhichOneof("kind") == "function"
                     for fn in graph.nodes[c.node_id].function.concrete_functions}
            ops = {n.op for fn in _reachable(functions, roots) for n in functions[fn].node_def} - ALLOWED_OPS
            found.extend((name, op) for op in sorted(ops))
    return found


def check_graph_ops(folder: Path, limits: ResourceLimits, lambdas: dict[str, str] | None = None) -> Any:
    """Refuse a SavedModel whose graph holds an op outside `ALLOWED_OPS`, before any of it runs; one in a
    Lambda layer's traced graph (`lambdas`: name -> Keras metadata path) is named by its layer."""
    proto = read_saved_model(folder, limits)
    for layer, op in lambda_refusals(proto, lambdas or {})[:1]:
        raise UnsupportedModelError(
            f"Expected Lambda layers whose traced graph only computes (lstm-onnx's allowlist of TensorFlow ops). "
            f"Received: {safe_text(str(folder))!r}, Lambda layer {safe_text(layer)!r} using op {safe_text(op)!r}; "
            "rewrite the Lambda without it (or as built-in Keras layers) and save the model again")
    refused = refused_ops(proto)
    if refused:
        op, where = sorted(refused.items())[0]
        raise UnsupportedModelError(
            f"Expected a SavedModel whose graph only computes (lstm-onnx's allowlist of TensorFlow ops). Received: "
            f"{safe_text(str(folder))!r} with op {safe_text(op)!r} in {safe_text(where)}"
            + (f" and {len(refused) - 1} more: {sorted(refused)[:6]}" if len(refused) > 1 else ""))
    return proto


# ------------------------------------------------------------------------------------------- variables


def open_checkpoint(folder: Path, limits: ResourceLimits) -> Any:
    """The variables checkpoint's reader, after every variable's declared size (shape and dtype from the
    index, no value read) has passed `limits`."""
    import tensorflow as tf

    prefix = folder / "variables" / "variables"
    try:
        reader = tf.train.load_checkpoint(str(prefix))
        shapes, dtypes = reader.get_variable_to_shape_map(), reader.get_variable_to_dtype_map()
    except (tf.errors.OpError, ValueError) as exc:
        raise ModelLoadError(f"Expected a SavedModel's variables checkpoint. Received: {safe_text(str(folder))!r} "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0][:150] if str(exc) else ''})") from None
    declared = []
    for key, shape in shapes.items():
        if key == _OBJECT_GRAPH_KEY:
            continue
        elements = int(np.prod(shape, dtype=np.int64))
        size = elements * max(dtypes[key].size, 1)
        declared.append(DeclaredArray(key, size, elements, size, True))
    check_declared_arrays(declared, str(folder), limits)
    return reader


def read_layer_variables(folder: Path, layers: dict[str, int], limits: ResourceLimits) -> dict[str, list[np.ndarray]]:
    """Each layer's variables in Keras 2's order, read from the checkpoint after their sizes are checked."""
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    reader = open_checkpoint(folder, limits)
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor(_OBJECT_GRAPH_KEY))
    weights = {}
    seen: set[str] = set()
    for name, node_id in layers.items():
        keys = _variable_keys(graph, node_id)
        repeated = [key for key in keys if key in seen]
        if repeated:  # each variable is read once at most: the declared sizes above bound what is read
            raise ModelLoadError(f"Expected each variable in one layer. Received: {safe_text(str(folder))!r} "
                                 f"listing {safe_text(repeated[0])!r} again (layer {safe_text(name)!r})")
        seen.update(keys)
        weights[name] = [np.asarray(reader.get_tensor(key)) for key in keys]
    return weights


def _variable_keys(graph: Any, node_id: int) -> list[str]:
    """The checkpoint keys of a layer's variables in Keras 2's order: its `trainable_variables`, then its
    `keras_api.non_trainable_variables` (a nested model's `variables` list is in creation order instead);
    the `variables` list where those are missing."""
    if node_id >= len(graph.nodes):
        return []
    node = graph.nodes[node_id]
    every = _listed_keys(graph, child_id(node, "variables"))
    api = child_id(node, "keras_api")
    legacy = _listed_keys(graph, child_id(node, "trainable_variables"))
    legacy += _listed_keys(graph, child_id(graph.nodes[api], "non_trainable_variables") if api is not None else None)
    return legacy if sorted(legacy) == sorted(every) else every


def _listed_keys(graph: Any, listing: int | None) -> list[str]:
    """The VARIABLE_VALUE checkpoint keys of a list node's children "0", "1", ..., in list order."""
    if listing is None or listing >= len(graph.nodes):
        return []
    children = sorted(graph.nodes[listing].children, key=lambda c: int(c.local_name) if c.local_name.isdigit() else 1 << 30)
    keys = []
    for child in children:
        attributes = graph.nodes[child.node_id].attributes if child.node_id < len(graph.nodes) else []
        key = next((a.checkpoint_key for a in attributes if a.name == "VARIABLE_VALUE"), None)
        if key is not None:
            keys.append(key)
    return keys
