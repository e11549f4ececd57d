"""The export of a `tf.Module` SavedModel (its signature read by `toolkit.export.tf_module`): tf2onnx's
conversion, then the same naming, canonical form, fusion report, parity check and metadata as a Keras
export, with the serving signature in the place of the Keras model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx

from toolkit import __version__
from toolkit.errors import LstmOnnxError, UnsupportedModelError
from toolkit.export.graph import canonicalize, name_axes, name_outputs, prune_opset_imports
from toolkit.export.record import parity_metadata
from toolkit.onnxfile import metadata
from toolkit.onnxfile.model import FUSED_RECURRENT_OPS, LOOP_OPS, count_ops, graph_inputs, graph_outputs
from toolkit.options import ExportOptions
from toolkit.runtimes.signature import SignatureRunner, SignatureSpec, signature_spec
from toolkit.text import safe_text
from toolkit.tf2onnx_lib import InputSignature


def _check_options(folder: Path, options: ExportOptions) -> None:
    """What a signature converted by tf2onnx cannot honour is refused, not ignored: lstm-onnx's lowering
    (which writes state inputs and tiers) needs layer configs this SavedModel does not have."""
    asked = [name for name, on in (("--state-io", options.state_io), (f"--{options.tier} tier", options.tier != "float32"))
             if on]
    if asked:
        raise UnsupportedModelError(f"Expected a Keras model for {', '.join(asked)}. Received: {safe_text(str(folder))!r}, "
                                    "a SavedModel without Keras metadata (a tf.Module), which tf2onnx converts as it is")


def export_module_savedmodel(folder: Path, options: ExportOptions, seed: int = 0) -> Any:
    """Convert a tf.Module SavedModel's serving signature with tf2onnx, named and checked."""
    from toolkit.safety.private import PrivateCopy

    _check_options(folder, options)
    copy = PrivateCopy(folder, options.limits)  # regular files only, read by every step below instead of the path
    try:
        return _export_copy(copy.path, folder, options, seed)
    except LstmOnnxError as exc:
        # The checks name the folder they read, the private copy, deleted below: the user knows the one they gave.
        raise type(exc)(str(exc).replace(str(copy.path), str(folder))) from None
    finally:
        copy.close()


def _export_copy(private: Path, folder: Path, options: ExportOptions, seed: int) -> Any:
    from toolkit.models.keras2.savedmodel import check_graph_ops, open_checkpoint
    from toolkit.runtimes.keras2_child import SignatureChild

    check_graph_ops(private, options.limits)
    if (private / "variables" / "variables.index").is_file():
        open_checkpoint(private, options.limits)  # declared variable sizes within the limits before TF loads them
    child = SignatureChild(private)  # loads, converts and runs the graph, bounded in time and memory
    try:
        spec = signature_spec(child.spec, folder)
        return finish_module_export(folder, child, spec, options, seed)
    finally:
        child.close()


def finish_module_export(folder: Path, child: Any, spec: SignatureSpec, options: ExportOptions, seed: int) -> Any:
    from toolkit.checking.inputs import input_cases
    from toolkit.checking.loop import compare_runners, decided_tolerances
    from toolkit.export.result import ExportResult, OutputInfo, load_runner

    signature = [InputSignature(name, dtype, shape) for name, shape, dtype in spec.inputs]
    keys = [name for name, _, _ in spec.inputs]
    proto = onnx.load_from_string(child.convert(options.opset))
    _name_inputs(proto, keys)
    name_outputs(proto, spec.outputs)
    shapes = [spec.output_shapes.get(key, ()) for key in spec.outputs]
    name_axes(proto, signature, shapes)
    canonicalize(proto.graph, options.opset, keep=set(keys) | set(spec.outputs))
    prune_opset_imports(proto)
    proto.graph.name, proto.producer_name, proto.producer_version, proto.doc_string = folder.name, "lstm-onnx", __version__, ""
    ops = count_ops(proto)
    warnings = _fusion_warnings(ops)
    if warnings and options.require_fused:
        raise UnsupportedModelError("Expected every recurrent layer as a fused ONNX op (--require-fused). Received: "
                                    + warnings[0])
    runner = load_runner(proto, folder.name)
    child.share_deadline(runner)  # the converted Loop spins as long as the signature: one deadline for both
    reference = SignatureRunner(child, spec)
    # No Keras model (its compute dtype is float32's) and no tier (refused above): the ops' tolerance.
    tolerances = decided_tolerances(options.tolerances, proto, tier="float32")
    report = compare_runners(reference, [runner], input_cases(spec.inputs, seed), tolerances,
                             [v.name for v in proto.graph.output])[runner.name]
    outputs = tuple(OutputInfo(info.name, "serving_default", info.name, info.dtype, info.shape) for info in graph_outputs(proto))
    metadata.write_metadata(proto, metadata.ExportRecord(
        source={"keras_file": folder.name, "format": "SavedModel (tf.Module)", "signature": "serving_default",
                "reference": "the SavedModel's serving signature, run by TensorFlow"},
        inputs=[t.to_json() for t in graph_inputs(proto)], outputs=[o.to_json() for o in outputs],
        parity=parity_metadata(report, None), versions=metadata.versions(), options=options))
    onnx.checker.check_model(proto, full_check=True)
    return ExportResult(model=proto, inputs=graph_inputs(proto), outputs=outputs, parity=report,
                        op_counts=dict(sorted(ops.items())), recurrent_layers=(), warnings=tuple(warnings),
                        notes=("parity reference: the SavedModel's serving signature, run by TensorFlow; no Keras "
                               "metadata, so tf2onnx converted the signature (lstm-onnx's lowering needs layer configs)",))


def _name_inputs(proto: onnx.ModelProto, names: list[str]) -> None:
    """tf2onnx names inputs `<name>:0`; the signature's keys are what deploy code feeds."""
    renames = {value.name: name for value, name in zip(proto.graph.input, names)}
    for value in proto.graph.input:
        value.name = renames[value.name]
    for node in proto.graph.node:
        node.input[:] = [renames.get(i, i) for i in node.input]


def _fusion_warnings(ops: dict[str, int]) -> list[str]:
    loops = {op: ops[op] for op in LOOP_OPS if ops.get(op)}
    if loops or not any(ops.get(op) for op in FUSED_RECURRENT_OPS):
        return [f"not fused: tf2onnx wrote {loops or 'no fused op'} for the signature's recurrence (no Keras "
                "metadata to lower from; save the model with tf.keras to get fused ops)"]
    return []
