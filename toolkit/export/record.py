"""The exporter's last steps on a named graph: the precision tier (step 4) and the metadata record with the
full `onnx.checker` pass (step 6). Kept apart from `toolkit.export.exporter`, which orders the steps; these two
only transform a finished graph and say what they did.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import onnx

from toolkit.checking.precision import PrecisionChoice
from toolkit.checking.results import ParityReport
from toolkit.errors import ExportError
from toolkit.export.graph import canonicalize, prune_opset_imports
from toolkit.lowering import LayerLowering
from toolkit.models.keras3 import describe_layers
from toolkit.onnxfile import metadata
from toolkit.onnxfile.model import graph_inputs, optional_inputs
from toolkit.onnxfile.tiers import TierInfo, apply_tier
from toolkit.options import ExportOptions


def tier_graph(proto: onnx.ModelProto, options: ExportOptions,
               output_names: Sequence[str]) -> tuple[onnx.ModelProto, TierInfo]:
    """Step 4: the precision tier. Its transform names new values after ORT's or our own scheme;
    canonicalizing again keeps the bytes reproducible."""
    proto, info = apply_tier(proto, options.tier)
    if options.tier != "float32":
        canonicalize(proto.graph, options.opset, keep={v.name for v in proto.graph.input} | set(output_names))
        prune_opset_imports(proto)
    return proto, info


def tier_notes(tier: TierInfo, lowering: Sequence[LayerLowering]) -> tuple[str, ...]:
    """The tier's line, and which Keras layers it left float32 (ORT has no quantized GRU or RNN)."""
    if tier.tier == "float32":
        return ()
    kept = [f"{e.layer!r} ({e.onnx_op})" for e in lowering if e.onnx_op in tier.kept_float]
    return (tier.describe(),) + ((f"tier {tier.tier}: layers kept float32: {', '.join(kept)}",) if kept else ())


def record_metadata(proto: onnx.ModelProto, model: Any, lowering: Sequence[LayerLowering],
                    outputs: Sequence[Mapping[str, Any]], report: ParityReport, options: ExportOptions,
                    source: Mapping[str, Any] | None, precision: PrecisionChoice,
                    state_map: Mapping[str, str]) -> None:
    """Step 6: the `lstm_onnx.*` metadata (`outputs`: each output's JSON record), then the full
    `onnx.checker` pass over the finished model."""
    metadata.write_metadata(proto, metadata.ExportRecord(
        source=dict(source or {"keras_model": model.name}),
        layers=describe_layers(model, {entry.layer: entry.onnx_op for entry in lowering}),
        inputs=[t.to_json() for t in graph_inputs(proto)], outputs=list(outputs),
        parity=parity_metadata(report, precision), versions=metadata.versions(), options=options,
        state_map=dict(state_map), state_inputs=[t.to_json() for t in optional_inputs(proto)]))
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"The exported model fails onnx.checker: {str(exc).splitlines()[0]}") from exc


def parity_metadata(report: ParityReport, precision: PrecisionChoice | None = None) -> dict:
    """A compact parity record: errors rounded to 3 significant digits so the bytes stay reproducible.
    A model computing in float16/bfloat16 also records that dtype and whether the tolerance came from it."""
    extra = precision.to_json() if precision is not None and precision.compute_dtype != "float32" else {}
    return {
        **extra,
        "passed": report.passed,
        "cases": [c.label for c in report.cases],
        "outputs": {
            s.name: {"max_abs": float(f"{s.max_abs:.3g}"), "max_rel": float(f"{s.max_rel:.3g}"),
                     **s.tolerance.to_json(), "passed": s.passed}
            for s in report.summaries()
        },
    }
