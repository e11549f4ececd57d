"""Graph surgery on an exported model: output names, named axes, canonical names, opset imports.

`canonicalize` is what makes exports reproducible: tf2onnx numbers its generated names with one
process-wide counter, so two exports of one model in two processes would differ in bytes; renaming every
node, value and initializer by its position in the graph gives the same names in every process.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import onnx

from toolkit.errors import ExportError
from toolkit.lowering import outer_reads, rename_values
from toolkit.onnxfile.model import all_nodes, subgraphs
from toolkit.tf2onnx_lib import InputSignature

BATCH_AXIS = "batch"
TIME_AXIS = "time"

Dims = Sequence[int | str | None]


def name_outputs(model: onnx.ModelProto, names: Sequence[str]) -> None:
    """Give graph outputs their names, position by position (the graph's order is the Keras model's)."""
    graph = model.graph
    if len(graph.output) != len(names):
        raise ExportError(f"Expected {len(names)} graph outputs from the converter. Received: {len(graph.output)}")
    input_names = {v.name for v in graph.input}
    old_names = [v.name for v in graph.output]
    for position, (value, new) in enumerate(zip(graph.output, names)):
        old = old_names[position]
        if old == new:
            continue
        shared = old_names.count(old) > 1 or old in input_names
        if shared:
            # One tensor serves two outputs (or is an input): an Identity gives this output its own name.
            graph.node.append(onnx.helper.make_node("Identity", [old], [new], name=f"output_identity_{position}"))
            value.name = new
        else:
            rename_values(graph, {old: new})
            value.name = new


def _named_dims(owner: str, shape: Sequence[int | None], shared_time: str | None) -> list[int | str | None]:
    """Axis 0 is `batch`; a dynamic axis 1 is `time` (or `<owner>_time`); other dynamic axes `<owner>_dim<i>`."""
    dims: list[int | str | None] = []
    for axis, dim in enumerate(shape):
        if axis == 0:
            dims.append(BATCH_AXIS)
        elif dim is None:
            dims.append((shared_time or f"{owner}_time") if axis == 1 else f"{owner}_dim{axis}")
        else:
            dims.append(int(dim))
    return dims


def set_shape(value: onnx.ValueInfoProto, dims: Dims) -> None:
    """Write `dims` (ints, axis names, or None for an unnamed dynamic axis) as the value's shape."""
    shape = value.type.tensor_type.shape
    shape.ClearField("dim")
    for dim in dims:
        entry = shape.dim.add()
        if isinstance(dim, int):
            entry.dim_value = dim
        elif dim is not None:
            entry.dim_param = dim


def name_axes(model: onnx.ModelProto, signature: Sequence[InputSignature],
              output_shapes: Sequence[Sequence[int | None]],
              time_sources: Sequence[str | None] | None = None) -> None:
    """Name dynamic axes `batch` and `time` on inputs and outputs; drop tf2onnx's `unk__N` value_info.

    With one variable-length input its time axis is `time` everywhere; with several, each is
    `<input>_time`, and an output's is the time axis of the input it follows (`time_sources`, from
    `keras_io.time_axis_sources`), or `<output>_time` when that is not known.
    """
    variable_time = [s.name for s in signature if len(s.shape) >= 2 and s.shape[1] is None]
    shared_time = TIME_AXIS if len(variable_time) == 1 else None
    shapes = {s.name: s.shape for s in signature}
    for value in model.graph.input:
        if value.name in shapes:
            set_shape(value, _named_dims(value.name, shapes[value.name], shared_time))
    sources = list(time_sources or [])
    for position, (value, keras_shape) in enumerate(zip(model.graph.output, output_shapes)):
        source = sources[position] if position < len(sources) else None
        follows = shared_time or (f"{source}_time" if source in variable_time else None)
        set_shape(value, _named_dims(value.name, keras_shape, follows))
    # Intermediate shapes are optional; tf2onnx's carry counter-numbered axis names. ORT infers its own.
    model.graph.ClearField("value_info")


def _formal_name(formals: Sequence[Any], index: int) -> str:
    if not formals:
        return f"io{index}"
    if index < len(formals):
        formal = formals[index]
        variadic = formal.option == onnx.defs.OpSchema.FormalParameterOption.Variadic
        return f"{formal.name}{index}" if variadic else formal.name
    return f"{formals[-1].name}{index}"


def _schema(node: onnx.NodeProto, opset: int) -> Any:
    try:
        return onnx.defs.get_schema(node.op_type, max_inclusive_version=opset, domain=node.domain)
    except onnx.defs.SchemaError:  # an op outside the ONNX standard: fall back to positional slot names
        return None


class _Names:
    """New names for one graph's values, never taking a name already taken."""

    def __init__(self, keep: set[str]):
        self.mapping: dict[str, str] = {}
        self.taken = set(keep)

    def claim(self, old: str, new: str) -> None:
        candidate, n = new, 0
        while candidate in self.taken:
            n += 1
            candidate = f"{new}_{n}"
        self.taken.add(candidate)
        self.mapping[old] = candidate


def _name_nodes(graph: onnx.GraphProto, opset: int, keep: set[str], prefix: str, names: _Names) -> None:
    """Name nodes `<Op>_<n>` and claim names for their outputs and the initializers they read first."""
    counts: Counter[str] = Counter()
    initializer_names = {t.name for t in graph.initializer}
    for node in graph.node:
        node.name = f"{prefix}{node.op_type}_{counts[node.op_type]}"
        counts[node.op_type] += 1
        node.doc_string = ""
        schema = _schema(node, opset)
        for j, name in enumerate(node.input):
            if name in initializer_names and name not in names.mapping and name not in keep:
                names.claim(name, f"{node.name}_{_formal_name(schema.inputs if schema else [], j)}")
        for k, name in enumerate(node.output):
            if name and name not in keep and name not in names.mapping:
                names.claim(name, f"{node.name}_{_formal_name(schema.outputs if schema else [], k)}")
        for sub in subgraphs(node):  # an initializer a Loop body reads from outside is used too
            for j, name in enumerate(sorted(outer_reads(sub) & initializer_names - set(names.mapping) - keep)):
                names.claim(name, f"{node.name}_captured{j}")


def canonicalize(graph: onnx.GraphProto, opset: int, keep: set[str], prefix: str = "") -> None:
    """Name nodes `<Op>_<n>`, values `<node>_<slot>` and initializers after their first consumer.

    Names then depend only on the graph's structure, which is the same in every process, so the bytes
    are too. Graph inputs and outputs (`keep`) keep their names. Subgraphs are renamed with their parent
    node's name as prefix.
    """
    names = _Names(keep)
    _name_nodes(graph, opset, keep, prefix, names)
    # Initializers no node reads are dropped; the rest are ordered by first use.
    used = [t for t in graph.initializer if t.name in names.mapping or t.name in keep]
    order = {old: i for i, old in enumerate(names.mapping)}
    used.sort(key=lambda t: order.get(t.name, -1))
    graph.ClearField("initializer")
    graph.initializer.extend(used)
    rename_values(graph, names.mapping)  # one pass: a new name can never be taken for an old one
    for node in graph.node:
        for index, sub in enumerate(subgraphs(node)):
            _canonicalize_body(sub, f"{node.name}/{index}/", opset, names.taken)
    graph.doc_string = ""


def _canonicalize_body(sub: onnx.GraphProto, sub_prefix: str, opset: int, taken: set[str]) -> None:
    # A body's formal inputs are local to it: name them by position too (tf2onnx numbers them).
    rename_values(sub, {v.name: f"{sub_prefix}in{i}" for i, v in enumerate(sub.input)})
    canonicalize(sub, opset, {v.name for v in sub.input} | set(taken), prefix=sub_prefix)
    sub.name = sub_prefix.rstrip("/")
    sub.ClearField("value_info")
    for value in list(sub.input) + list(sub.output):  # tf2onnx's counter-numbered unknown axes
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param.startswith("unk__"):
                dim.ClearField("dim_param")


def prune_opset_imports(model: onnx.ModelProto) -> None:
    """Drop opset imports of domains no node uses (tf2onnx declares some it did not need)."""
    used = {"", *(node.domain for node in all_nodes(model.graph))}
    kept = [o for o in model.opset_import if o.domain in used or (o.domain == "ai.onnx")]
    model.ClearField("opset_import")
    model.opset_import.extend(kept)
