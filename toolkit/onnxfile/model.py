"""Loading, checking and describing ONNX models, and checking feeds against their inputs.

This is what a deploy machine runs, so it never imports TensorFlow or Keras. A model is checked before a
session is made from it (it parses, passes `onnx.checker`, keeps its external data inside its folder),
and feeds are checked against the session's inputs before ONNX Runtime sees them, so a user's mistake
gets a message naming the input rather than an ONNX Runtime stack trace.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from toolkit.errors import InputError, ModelLoadError
from toolkit.onnxfile.metadata import read_state_inputs, read_state_map
from toolkit.safety.files import open_regular_file
from toolkit.text import first_line, safe_text

# The ops that carry a recurrence: the fused ones we want, and the loops a converter falls back to.
FUSED_RECURRENT_OPS = ("LSTM", "GRU", "RNN")
LOOP_OPS = ("Loop", "Scan")

Dim = int | str | None
BATCH_AXIS = "batch"  # the name every export gives its dynamic batch axis
_NOT_TENSORS = ("sequence_type", "map_type", "optional_type", "sparse_tensor_type", "unknown")


@dataclass(frozen=True)
class TensorInfo:
    """A graph input or output: its name, element type and shape (ints, or axis names where dynamic)."""

    name: str
    dtype: str
    shape: tuple[Dim, ...]

    def shape_text(self) -> str:
        return "(" + ", ".join("?" if d is None else str(d) for d in self.shape) + ")"

    def to_json(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class ModelDescription:
    """What `lstm-onnx inspect` shows."""

    path: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    op_counts: Mapping[str, int]
    opset: int
    ir_version: int
    producer: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    optional_inputs: tuple[TensorInfo, ...] = ()  # inputs with a default, e.g. --state-io's states

    @property
    def recurrent_ops(self) -> dict[str, int]:
        return {op: self.op_counts[op] for op in FUSED_RECURRENT_OPS + LOOP_OPS if self.op_counts.get(op)}

    def to_json(self) -> dict:
        return {
            "path": self.path,
            "opset": self.opset,
            "ir_version": self.ir_version,
            "producer": self.producer,
            "inputs": [t.to_json() for t in self.inputs],
            "optional_inputs": [t.to_json() for t in self.optional_inputs],
            "outputs": [t.to_json() for t in self.outputs],
            "recurrent_ops": self.recurrent_ops,
            "op_counts": dict(self.op_counts),
            "metadata": {k: _maybe_json(v) for k, v in self.metadata.items()},
        }


def _maybe_json(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return text


def load_onnx(path: str | Path, external_data: bool = True) -> onnx.ModelProto:
    """Load and fully check an ONNX file, refusing anything that is not a well-formed, self-contained model.
    `external_data=False` (inspect) checks where external data points but never reads it."""
    source = Path(path)
    with open_regular_file(source, "an ONNX model file") as handle:  # a FIFO or /dev/zero: refused, not read
        data = handle.read()
    try:
        model = onnx.load_model_from_string(data)  # external data is read only after its locations are checked
    except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError, RuntimeWarning-ish and others for garbage
        raise ModelLoadError(f"Expected an ONNX model file. Received: {safe_text(source)!r}, which does not parse as "
                             f"ONNX ({type(exc).__name__})") from None
    if not model.graph.node and not model.graph.output:
        # An empty or non-ONNX file can parse as an empty ModelProto; it is not a model.
        raise ModelLoadError(f"Expected an ONNX model file. Received: {safe_text(source)!r}, which holds no graph")
    _check_external_data(model, source)
    try:
        onnx.checker.check_model(str(source), full_check=True)
    except Exception as exc:  # noqa: BLE001 - the checker's own errors and protobuf's
        raise ModelLoadError(f"Expected a valid ONNX model. Received: {safe_text(source)!r}, which fails "
                             f"onnx.checker: {safe_text(first_line(exc))}") from None
    if external_data and any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        onnx.load_external_data_for_model(model, str(source.parent))
    return model


def _check_external_data(model: onnx.ModelProto, source: Path) -> None:
    """Refuse external data outside the model's folder: a crafted model could otherwise read any file."""
    base = source.parent.resolve()
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (base / location).resolve()
        if Path(location).is_absolute() or not target.is_relative_to(base):
            raise ModelLoadError(
                f"Expected external data inside the model's folder {str(base)!r}. "
                f"Received: tensor {tensor.name!r} pointing at {location!r}"
            )


def _dims(value_info: onnx.ValueInfoProto) -> tuple[Dim, ...]:
    dims: list[Dim] = []
    for d in value_info.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return tuple(dims)


def _dtype_name(value_info: onnx.ValueInfoProto) -> str:
    if not value_info.type.HasField("tensor_type"):
        return value_info.type.WhichOneof("value") or "unknown"  # a sequence or optional: no numpy dtype
    elem = value_info.type.tensor_type.elem_type
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem)).name


def state_input_names(model: onnx.ModelProto) -> set[str]:
    """The initial-state inputs that default to zeros: exactly those the metadata names. That is those
    lstm-onnx created for `--state-io` or stateful layers (`lstm_onnx.state_inputs`), and, in files written
    before state inputs were plain graph inputs, the state map's inputs that carry a same-name initializer
    as their default. (A Keras input used as an initial state is in the state map too, but it is the
    model's own input with no default: the caller feeds it.) Any other initializer listed as a graph
    input is a weight with its default: never replaced by zeros."""
    initialized = {t.name for t in model.graph.initializer}
    return _recorded(read_state_inputs, model) | (_recorded(read_state_map, model) & initialized)


def _recorded(reader: Callable[[onnx.ModelProto], Iterable[str]], model: onnx.ModelProto) -> set[str]:
    """The names a metadata reader finds; none where the entry is unreadable (then every input must be fed,
    and what needs the entry, e.g. `verify --stream`, refuses it with its own message)."""
    try:
        return set(reader(model))
    except (TypeError, ValueError):  # InputError (bad JSON) is a ValueError; a list where a map belongs
        return set()


def _defaulted_names(model: onnx.ModelProto) -> set[str]:
    """Graph inputs a caller need not feed: the states, and inputs with an initializer as their default."""
    return state_input_names(model) | {t.name for t in model.graph.initializer}


def graph_inputs(model: onnx.ModelProto) -> tuple[TensorInfo, ...]:
    """The inputs a caller must feed (initial states and initializer-backed inputs are not among them)."""
    skip = _defaulted_names(model)
    return tuple(TensorInfo(v.name, _dtype_name(v), _dims(v)) for v in model.graph.input if v.name not in skip)


def optional_inputs(model: onnx.ModelProto) -> tuple[TensorInfo, ...]:
    """Initial-state inputs: zeros when not fed (the library's runners feed the zeros, `with_zero_states`)."""
    states = state_input_names(model)
    return tuple(TensorInfo(v.name, _dtype_name(v), _dims(v)) for v in model.graph.input if v.name in states)


def with_zero_states(optional: Sequence[TensorInfo], feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`feeds` plus zeros for every state input not given, of shape (batch, units): the batch is the fed
    inputs' first axis, the other axes are the input's declared ones. A graph's state inputs have no
    default of their own (a runtime other than Python's ONNX Runtime would ignore or refuse it)."""
    batches = {np.shape(v)[0] for v in feeds.values() if np.ndim(v) > 0}
    batch = batches.pop() if len(batches) == 1 else None
    filled = dict(feeds)
    for info in optional:
        if info.name in filled:
            continue
        dims = [d if isinstance(d, int) else batch for d in info.shape]
        if None in dims:
            raise InputError(f"Expected the inputs to share one batch size, to make zeros for {info.name!r} "
                             f"{info.shape_text()}. Received batch sizes {sorted(batches)}")
        filled[info.name] = np.zeros(dims, np.dtype(info.dtype))
    return filled


def graph_outputs(model: onnx.ModelProto) -> tuple[TensorInfo, ...]:
    return tuple(TensorInfo(v.name, _dtype_name(v), _dims(v)) for v in model.graph.output)


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs a node carries as attributes (a Loop's body, an If's branches)."""
    found: list[onnx.GraphProto] = []
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            found.append(attr.g)
        found.extend(attr.graphs)
    return found


def all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of the graph, those inside its subgraphs (a Loop's body, an If's branches) included."""
    for node in graph.node:
        yield node
        for sub in subgraphs(node):
            yield from all_nodes(sub)


def main_opset(model: onnx.ModelProto) -> int:
    """The model's ONNX (default domain) opset; 0 where it imports none."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def count_ops(model: onnx.ModelProto) -> Counter[str]:
    """Count node types, including those inside subgraphs (a Loop's body is where a fallback hides)."""
    return Counter(node.op_type for node in all_nodes(model.graph))


def describe(model: onnx.ModelProto, path: str = "") -> ModelDescription:
    opset = main_opset(model)
    return ModelDescription(
        path=path,
        inputs=graph_inputs(model),
        outputs=graph_outputs(model),
        op_counts=dict(sorted(count_ops(model).items())),
        opset=opset,
        ir_version=model.ir_version,
        producer=f"{model.producer_name} {model.producer_version}".strip(),
        metadata={p.key: p.value for p in model.metadata_props},
        optional_inputs=optional_inputs(model),
    )


def inspect_model(path: str | Path) -> ModelDescription:
    """Describe a model without reading its external data: `inspect` shows none of it."""
    return describe(load_onnx(path, external_data=False), str(path))


def check_tensor_io(infos: Sequence[TensorInfo]) -> None:
    """Runners take and give tensors; a sequence, map or optional would come back as something no caller takes."""
    odd = [t for t in infos if t.dtype in _NOT_TENSORS]
    if odd:
        raise ModelLoadError(f"Expected a model whose inputs and outputs are tensors. Received: "
                             f"{safe_text(odd[0].name)!r} of type {odd[0].dtype}")
