"""Exporting a Keras model to ONNX: lowered to fused ops, named, made reproducible and proven.

The steps, in order:
1. `lower_model` (in `lowering`) writes the graph: recurrent layers as fused ONNX ops from their
   weights, every other layer through tf2onnx; inputs are named and the batch axis is dynamic.
   (`converter="tf2onnx"` converts the whole model with tf2onnx instead, as a user would without us.)
2. `name_outputs` gives every graph output its `<layer>_<role>` name (see `toolkit.naming`), in the
   Keras model's output order; `name_axes` names dynamic axes `batch` and `time` instead of `unk__N`.
3. `canonicalize` renames every node, intermediate value and initializer by graph position, so that two
   exports of one model in two processes are the same bytes (tf2onnx numbers names with a process-wide
   counter).
4. The parity check runs ONNX Runtime against Keras; its result, the build flags and the versions that
   made the file go into `metadata_props`, and `onnx.checker` checks the model in full.
5. `ExportResult.save` writes the file atomically, and refuses to write a model that failed parity
   unless asked to keep it.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import onnx

from toolkit import __version__
from toolkit.compare import ParityReport, Tolerances
from toolkit.errors import ExportError, InputError, ModelLoadError, ParityError, UnsupportedModelError
from toolkit.fileio import atomic_write_bytes, sha256_hex
from toolkit.naming import OutputOrigin, apply_overrides, is_recurrent, output_origins, recurrent_roles, unique_names
from toolkit.parity import PADDING_SIDES, check_parity
from toolkit.runner import (
    FUSED_RECURRENT_OPS,
    LOOP_OPS,
    METADATA_PREFIX,
    OnnxRunner,
    TensorInfo,
    count_ops,
    graph_inputs,
    graph_outputs,
    metadata_value,
    subgraphs,
)
from toolkit.lowering import LayerLowering, StateIO, lower_model, outer_reads, rename_values
from toolkit.tf2onnx_lib import MAX_OPSET, MIN_OPSET, InputSignature, convert, tf2onnx_version

# Opset 17 is the newest that ONNX Runtime has run since 1.13 (Oct 2022), and its LSTM is unchanged since 14.
DEFAULT_OPSET = 17
BATCH_AXIS = "batch"
TIME_AXIS = "time"
CONVERTERS = ("lstm-onnx", "tf2onnx")


@dataclass(frozen=True)
class OutputInfo:
    """A graph output and where in the Keras model it comes from."""

    name: str
    layer: str
    role: str
    dtype: str
    shape: tuple[int | str | None, ...]

    def to_json(self) -> dict:
        return {"name": self.name, "layer": self.layer, "role": self.role, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass
class ExportResult:
    """One exported model, in memory, with its parity report; `save` writes it."""

    model: onnx.ModelProto
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[OutputInfo, ...]
    parity: ParityReport
    op_counts: Mapping[str, int]
    recurrent_layers: tuple[str, ...]
    warnings: tuple[str, ...] = ()
    lowering: tuple[LayerLowering, ...] = ()
    notes: tuple[str, ...] = ()
    data: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        if not self.data:
            self.data = self.model.SerializeToString()

    @property
    def sha256(self) -> str:
        return sha256_hex(self.data)

    @property
    def fused_ops(self) -> dict[str, int]:
        return {op: self.op_counts[op] for op in FUSED_RECURRENT_OPS if self.op_counts.get(op)}

    @property
    def fused(self) -> bool:
        return not any(self.op_counts.get(op) for op in LOOP_OPS) and bool(self.fused_ops)

    def save(self, path: str | Path, keep_failed: bool = False) -> Path:
        """Write the model atomically. A model that failed parity is refused unless `keep_failed`."""
        if not self.parity and not keep_failed:
            raise ParityError(
                f"Parity failed, nothing written to {str(path)!r}: " + "; ".join(self.parity.failures()[:3])
            )
        return atomic_write_bytes(path, self.data)


# ---------------------------------------------------------------------------------------------- loading


def load_keras_model(path: str | Path) -> Any:
    """Load a user's `.keras` file in Keras' safe mode (no deserialized Python code runs)."""
    source = Path(path)
    if not source.exists():
        raise ModelLoadError(f"Expected a Keras model file (.keras). Received: {str(source)!r} (no such file)")
    if source.is_dir():
        raise ModelLoadError(
            f"Expected a Keras model file (.keras). Received: folder {str(source)!r}; SavedModel folders are not "
            "loaded (Keras 3 cannot load them as models): load it yourself and model.save('model.keras')"
        )
    if source.suffix != ".keras":
        raise ModelLoadError(
            f"Expected a Keras model file ending in .keras. Received: {str(source)!r}; for a legacy .h5 file you "
            "trust, load it in Keras and model.save('model.keras')"
        )
    import keras

    check_keras_version(keras.__version__)
    try:
        model = keras.saving.load_model(source, compile=False, safe_mode=True)
    except Exception as exc:  # zipfile, ValueError from safe mode, TypeError for unknown objects...
        raise ModelLoadError(f"Expected a loadable Keras model. Received: {str(source)!r}: {_load_failure(exc)}") from None
    if not isinstance(model, keras.Model):
        raise ModelLoadError(f"Expected a Keras model. Received: {str(source)!r} holding a {type(model).__name__}")
    return model


# Keras releases whose safe mode has the published fixes: 3.9 (CVE-2025-1550), 3.11 (CVE-2025-8747,
# CVE-2025-9906), 3.11.3 (CVE-2025-9905, .h5), 3.13.2 (CVE-2026-1462), 3.14 (archive path traversal).
MIN_KERAS = (3, 14)


def check_keras_version(version: str) -> None:
    """Refuse to load untrusted files with a Keras whose safe mode is known to be bypassable."""
    parts = []
    for piece in version.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    if tuple(parts) < MIN_KERAS:
        raise ModelLoadError(
            f"Expected Keras >= {'.'.join(map(str, MIN_KERAS))} to load model files (earlier safe modes have "
            f"published bypasses). Received: Keras {version}"
        )


def _load_failure(exc: Exception) -> str:
    """Say why Keras refused a file, and what the user can do if they trust it."""
    text = str(exc)
    unknown = re.search(r"Could not locate (?:class|function) '([^']+)'", text)
    if unknown:
        return (f"unknown custom object {unknown.group(1)!r}; lstm-onnx never imports code named by a model file. "
                "If you trust it, import that class, load the model yourself and call "
                "toolkit.exporter.export_model(model)")
    if "safe_mode" in text or "Lambda" in text:
        return ("refused by Keras safe mode: the file holds Python code (a Lambda layer or function). If you "
                "trust it, load it with keras.saving.load_model(path, safe_mode=False) and call "
                "toolkit.exporter.export_model(model)")
    return f"{type(exc).__name__}: {(text.strip().splitlines() or [''])[0][:200]}"


def recurrent_layer_names(model: Any) -> list[str]:
    return [layer.name for layer in model._flatten_layers(include_self=False) if is_recurrent(layer)]


def _signature(model: Any) -> list[InputSignature]:
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


def _describe_layers(model: Any, lowering: Sequence[LayerLowering] = ()) -> list[dict]:
    ops = {entry.layer: entry.onnx_op for entry in lowering}
    layers = []
    for layer in model._flatten_layers(include_self=False):
        if not is_recurrent(layer):
            continue
        inner = layer.forward_layer if type(layer).__name__ == "Bidirectional" else layer
        layers.append(
            {
                "name": layer.name,
                "class": type(layer).__name__,
                "units": getattr(inner, "units", None),
                "return_sequences": bool(inner.return_sequences),
                "return_state": bool(layer.return_state),
                "go_backwards": bool(getattr(inner, "go_backwards", False)),
                "outputs": recurrent_roles(layer),
                "onnx_op": ops.get(layer.name, "tf2onnx"),
            }
        )
    return layers


# ------------------------------------------------------------------------------------- graph rewriting


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


def _set_shape(value: onnx.ValueInfoProto, dims: Sequence[int | str | None]) -> None:
    shape = value.type.tensor_type.shape
    shape.ClearField("dim")
    for dim in dims:
        entry = shape.dim.add()
        if isinstance(dim, int):
            entry.dim_value = dim
        elif dim is not None:
            entry.dim_param = dim


def name_axes(model: onnx.ModelProto, signature: Sequence[InputSignature],
              output_shapes: Sequence[Sequence[int | None]]) -> None:
    """Name dynamic axes `batch` and `time` on inputs and outputs; drop tf2onnx's `unk__N` value_info.

    With one variable-length input its time axis is `time` everywhere; with several, each is
    `<input>_time` and an output's is `<output>_time` (which input it follows is not known here).
    """
    variable_time = [s.name for s in signature if len(s.shape) >= 2 and s.shape[1] is None]
    shared_time = TIME_AXIS if len(variable_time) == 1 else None
    shapes = {s.name: s.shape for s in signature}
    for value in model.graph.input:
        if value.name in shapes:
            _set_shape(value, _named_dims(value.name, shapes[value.name], shared_time))
    for value, keras_shape in zip(model.graph.output, output_shapes):
        _set_shape(value, _named_dims(value.name, keras_shape, shared_time))
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
    except Exception:  # an op outside the ONNX standard: fall back to positional slot names
        return None


def canonicalize(graph: onnx.GraphProto, opset: int, keep: set[str], prefix: str = "") -> None:
    """Name nodes `<Op>_<n>`, values `<node>_<slot>` and initializers after their first consumer.

    Names then depend only on the graph's structure, which is the same in every process, so the bytes
    are too. Graph inputs and outputs (`keep`) keep their names. Subgraphs are renamed with their parent
    node's name as prefix.
    """
    mapping: dict[str, str] = {}
    taken = set(keep)
    counts: Counter[str] = Counter()

    def claim(old: str, new: str) -> None:
        candidate, n = new, 0
        while candidate in taken:
            n += 1
            candidate = f"{new}_{n}"
        taken.add(candidate)
        mapping[old] = candidate

    initializer_names = {t.name for t in graph.initializer}
    for node in graph.node:
        node.name = f"{prefix}{node.op_type}_{counts[node.op_type]}"
        counts[node.op_type] += 1
        node.doc_string = ""
        schema = _schema(node, opset)
        for j, name in enumerate(node.input):
            if name in initializer_names and name not in mapping and name not in keep:
                claim(name, f"{node.name}_{_formal_name(schema.inputs if schema else [], j)}")
        for k, name in enumerate(node.output):
            if name and name not in keep and name not in mapping:
                claim(name, f"{node.name}_{_formal_name(schema.outputs if schema else [], k)}")
        for sub in subgraphs(node):  # an initializer a Loop body reads from outside is used too
            for j, name in enumerate(sorted(outer_reads(sub) & initializer_names - set(mapping) - keep)):
                claim(name, f"{node.name}_captured{j}")
    # Initializers no node reads are dropped; the rest are ordered by first use.
    used = [t for t in graph.initializer if t.name in mapping or t.name in keep]
    order = {old: i for i, old in enumerate(mapping)}
    used.sort(key=lambda t: order.get(t.name, -1))
    graph.ClearField("initializer")
    graph.initializer.extend(used)
    rename_values(graph, mapping)  # one pass: a new name can never be taken for an old one
    for node in graph.node:
        for index, sub in enumerate(subgraphs(node)):
            # A body's formal inputs are local to it: name them by position too (tf2onnx numbers them).
            sub_prefix = f"{node.name}/{index}/"
            rename_values(sub, {v.name: f"{sub_prefix}in{i}" for i, v in enumerate(sub.input)})
            canonicalize(sub, opset, {v.name for v in sub.input} | set(taken), prefix=sub_prefix)
            sub.name = sub_prefix.rstrip("/")
            sub.ClearField("value_info")
            for value in list(sub.input) + list(sub.output):  # tf2onnx's counter-numbered unknown axes
                for dim in value.type.tensor_type.shape.dim:
                    if dim.dim_param.startswith("unk__"):
                        dim.ClearField("dim_param")
    graph.doc_string = ""


def _prune_opset_imports(model: onnx.ModelProto) -> None:
    used = {""}

    def walk(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            used.add(node.domain)
            for sub in subgraphs(node):
                walk(sub)

    walk(model.graph)
    kept = [o for o in model.opset_import if o.domain in used or (o.domain == "ai.onnx")]
    model.ClearField("opset_import")
    model.opset_import.extend(kept)


def versions() -> dict[str, str]:
    import keras
    import onnxruntime
    import tensorflow as tf

    return {
        "lstm_onnx": __version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "tf2onnx": tf2onnx_version(),
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def _set_metadata(model: onnx.ModelProto, entries: Mapping[str, Any]) -> None:
    model.ClearField("metadata_props")
    for key in sorted(entries):
        value = entries[key]
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, separators=(",", ":"))
        model.metadata_props.add(key=METADATA_PREFIX + key, value=text)


def parity_metadata(report: ParityReport) -> dict:
    """A compact parity record: errors rounded to 3 significant digits so the bytes stay reproducible."""
    return {
        "passed": report.passed,
        "cases": [c.label for c in report.cases],
        "outputs": {
            s.name: {"max_abs": float(f"{s.max_abs:.3g}"), "max_rel": float(f"{s.max_rel:.3g}"),
                     "atol": s.tolerance.atol, "rtol": s.tolerance.rtol, "passed": s.passed}
            for s in report.summaries()
        },
    }


# ------------------------------------------------------------------------------------------ the export


def check_opset(opset: int) -> int:
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise InputError(f"Expected --opset between {MIN_OPSET} and {MAX_OPSET}. Received: {opset!r}")
    return opset


def export_model(
    model: Any,
    *,
    opset: int = DEFAULT_OPSET,
    output_names: Mapping[str, str] | Sequence[str] | None = None,
    tolerances: Tolerances = Tolerances(),
    source: Mapping[str, Any] | None = None,
    seed: int = 0,
    require_fused: bool = False,
    converter: str = "lstm-onnx",
    propagate_nan: bool = False,
    state_io: bool = False,
    padding: str = "right",
) -> ExportResult:
    """Export a built Keras model with named outputs, check parity, and return it in memory.

    `output_names` renames outputs (default name -> new name, or a full list); `tolerances` may name
    outputs by their final names; `source` is recorded in the metadata (e.g. the builder's flags).
    """
    check_opset(opset)
    if padding not in PADDING_SIDES:
        raise InputError(f"Expected padding in {list(PADDING_SIDES)}. Received: {padding!r}")
    recurrent = recurrent_layer_names(model)
    if not recurrent:
        classes = sorted({type(layer).__name__ for layer in model._flatten_layers(include_self=False)})
        raise UnsupportedModelError(
            f"Expected a model with at least one recurrent layer (LSTM, GRU, SimpleRNN, Bidirectional). "
            f"Received: {model.name!r} with layers {classes}"
        )
    signature = _signature(model)
    origins = output_origins(model)
    names = apply_overrides(unique_names([o.name for o in origins]), output_names)

    if converter not in CONVERTERS:
        raise InputError(f"Expected converter in {list(CONVERTERS)}. Received: {converter!r}")
    states: list[StateIO] = []
    if converter == "tf2onnx":
        if state_io:
            raise InputError("Expected --converter lstm-onnx with --state-io. Received: --converter tf2onnx")
        proto, lowering = convert(model, signature, opset), ()
    else:
        proto, report = lower_model(model, signature, opset, propagate_nan=propagate_nan, state_io=state_io,
                                    padding=padding)
        lowering, states = tuple(report.layers), report.states
    output_shapes = [tuple(t.shape) for t in model.outputs]
    state_map, extra = _state_outputs(proto, states, names)
    names = names + [st.name for st in extra]
    origins = origins + [OutputOrigin(st.layer, "state", st.role) for st in extra]
    output_shapes += [(None, st.units) for st in extra]
    if len(set(names)) != len(names):
        raise InputError(f"Expected unique output names with --state-io. Received: {names}")
    tolerances.check_names(names)  # after the state outputs: they may carry tolerances too
    name_outputs(proto, names)
    name_axes(proto, signature, output_shapes)
    canonicalize(proto.graph, opset, keep={v.name for v in proto.graph.input} | set(names))
    _prune_opset_imports(proto)
    proto.graph.name = model.name
    proto.producer_name = "lstm-onnx"
    proto.producer_version = __version__
    proto.doc_string = ""

    op_counts = dict(sorted(count_ops(proto).items()))
    warnings = [f"not fused: layer {entry.layer!r} ({entry.layer_class}) converted by tf2onnx: {entry.reason}"
                for entry in lowering if not entry.fused]
    warnings = warnings or _fusion_warnings(op_counts, recurrent)
    if warnings and require_fused:
        raise UnsupportedModelError("Expected every recurrent layer as a fused ONNX op (--require-fused). Received: " + warnings[0])

    try:
        runner = OnnxRunner(proto)
    except Exception as exc:  # an op tf2onnx wrote but ONNX Runtime lacks, e.g.
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ExportError(f"ONNX Runtime cannot load the export of {model.name!r}: {first_line[:300]}") from exc
    report = check_parity(model, runner, names, tolerances, seed=seed, padding_side=padding)
    outputs = tuple(
        OutputInfo(info.name, origin.layer, origin.role, info.dtype, info.shape)
        for info, origin in zip(graph_outputs(proto), origins)
    )
    options = {"converter": converter, "propagate_nan": propagate_nan, "state_io": state_io, "padding": padding}
    _set_metadata(
        proto,
        {
            "source": dict(source or {"keras_model": model.name}),
            "layers": _describe_layers(model, lowering),
            "inputs": [t.to_json() for t in graph_inputs(proto)],
            "outputs": [o.to_json() for o in outputs],
            "parity": parity_metadata(report),
            "versions": versions(),
            "opset": str(opset),
            "options": options,
            **({"state_map": state_map} if state_map else {}),
        },
    )
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise ExportError(f"The exported model fails onnx.checker: {str(exc).splitlines()[0]}") from exc
    return ExportResult(
        model=proto,
        inputs=graph_inputs(proto),
        outputs=outputs,
        parity=report,
        op_counts=op_counts,
        recurrent_layers=tuple(recurrent),
        warnings=tuple(warnings),
        lowering=lowering,
        notes=tuple(f"layer {e.layer!r}: {e.note}" for e in lowering if e.note),
    )


def _state_outputs(proto: onnx.ModelProto, states: Sequence[StateIO],
                   names: Sequence[str]) -> tuple[dict[str, str], list[StateIO]]:
    """The state map (graph input -> output name) and the states that need outputs of their own.

    The lowering appended one graph output per state. A state the model already returns under its own
    name (`lstm_2_state_h`) keeps that output; every other gets the appended one, even when it holds the
    same value as another output (`lstm_2_last` is `lstm_2_state_h`): deploy code looks states up by name.
    """
    appended = list(proto.graph.output[len(names):])
    extra = [(st, out) for st, out in zip(states, appended) if st.name not in names]
    kept = list(proto.graph.output[: len(names)]) + [out for _, out in extra]
    proto.graph.ClearField("output")
    proto.graph.output.extend(kept)
    graph_inputs = {v.name for v in proto.graph.input}
    # A state fed from inside the model (a decoder fed by its encoder) has nothing to carry.
    state_map = {st.input: st.name for st in states if st.input in graph_inputs}
    return state_map, [st for st, _ in extra]


def _fusion_warnings(op_counts: Mapping[str, int], recurrent: Sequence[str]) -> list[str]:
    """Say when the fast path was not taken: a Loop/Scan where a fused LSTM/GRU/RNN op should be."""
    loops = {op: op_counts[op] for op in LOOP_OPS if op_counts.get(op)}
    fused = sum(op_counts.get(op, 0) for op in FUSED_RECURRENT_OPS)
    if loops:
        return [
            f"not fused: the graph holds {loops} instead of fused {'/'.join(FUSED_RECURRENT_OPS)} ops for recurrent "
            f"layers {list(recurrent)} (tf2onnx's rewriter did not match them; expect it to run several times slower)"
        ]
    if fused == 0:
        return [f"not fused: no {'/'.join(FUSED_RECURRENT_OPS)} op in the graph for recurrent layers {list(recurrent)}"]
    return []


def export_keras_file(src: str | Path, dst: str | Path, *, keep_failed: bool = False, **options: Any) -> ExportResult:
    """Export a user's `.keras` file to `dst`, checking parity first; writes nothing when anything fails
    (a failed parity raises ParityError unless `keep_failed`)."""
    result = export_keras_model(src, dst, **options)
    result.save(dst, keep_failed=keep_failed)
    return result


def export_keras_model(
    src: str | Path,
    dst: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    output_names: Mapping[str, str] | Sequence[str] | None = None,
    tolerances: Tolerances = Tolerances(),
    require_fused: bool = False,
    converter: str = "lstm-onnx",
    propagate_nan: bool = False,
    state_io: bool = False,
    padding: str = "right",
) -> ExportResult:
    """Load and export a user's `.keras` file for `dst`, in memory (`ExportResult.save` writes it)."""
    target = Path(dst)
    if target.suffix != ".onnx":
        raise InputError(f"Expected an output path ending in .onnx. Received: {str(target)!r}")
    model = load_keras_model(src)
    result = export_model(
        model,
        opset=opset,
        output_names=output_names,
        tolerances=tolerances,
        source={"keras_file": Path(src).name, "keras_model": model.name},
        require_fused=require_fused,
        converter=converter,
        propagate_nan=propagate_nan,
        state_io=state_io,
        padding=padding,
    )
    return result


# Verification moved to toolkit.verify; these names stay importable from here for existing callers.
from toolkit.verify import (  # noqa: E402,F401
    RuntimeReport,
    expected_output_names,
    recorded_options,
    verify_files,
    verify_runtimes,
)


__all__ = [
    "DEFAULT_OPSET",
    "ExportResult",
    "OutputInfo",
    "export_keras_file",
    "export_model",
    "load_keras_model",
    "verify_files",
]

