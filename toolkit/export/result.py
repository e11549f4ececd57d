"""One export's result in memory (`ExportResult`: the graph, its outputs, parity, and each runtime's proof)
and the ONNX Runtime session every export's parity check runs in. Shared by the exporter and the Keras 2
tf.Module path (`keras2/module_export.py`), which builds results of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from toolkit.checking.precision import failure_message
from toolkit.checking.results import ParityReport, RuntimeReport
from toolkit.errors import ExportError, ModelLoadError, ParityError
from toolkit.fileio import atomic_write_bytes, sha256_hex
from toolkit.lowering import LayerLowering
from toolkit.onnxfile.model import FUSED_RECURRENT_OPS, LOOP_OPS, TensorInfo
from toolkit.onnxfile.tiers import TierInfo
from toolkit.runtimes.onnxrt import OnnxRunner

# Quantized forms of the fused ops (the int8 tier): still one fused op per layer.
QUANTIZED_RECURRENT_OPS = ("DynamicQuantizeLSTM",)


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
    tier: TierInfo | None = None
    data: bytes = field(default=b"", repr=False)
    proven: tuple[RuntimeReport, ...] = ()  # `export --runtimes`: the written bytes in each runtime, vs Keras

    @property
    def passed(self) -> bool:
        return bool(self.parity) and all(self.proven)

    def items(self, label: str) -> list[tuple[str, ParityReport]]:
        """The parity report and each runtime's, labelled for the tables."""
        return [(label, self.parity)] + [(f"{label} [{r.runtime}]", r.report) for r in self.proven if r.report is not None]

    def __post_init__(self) -> None:
        if not self.data:
            self.data = self.model.SerializeToString()

    @property
    def sha256(self) -> str:
        return sha256_hex(self.data)

    @property
    def fused_ops(self) -> dict[str, int]:
        return {op: self.op_counts[op] for op in FUSED_RECURRENT_OPS + QUANTIZED_RECURRENT_OPS if self.op_counts.get(op)}

    @property
    def fused(self) -> bool:
        return not any(self.op_counts.get(op) for op in LOOP_OPS) and bool(self.fused_ops)

    def save(self, path: str | Path, keep_failed: bool = False) -> Path:
        """Write the model atomically. A model that failed parity is refused unless `keep_failed`."""
        if not self.passed and not keep_failed:
            raise ParityError(f"Parity failed, nothing written to {str(path)!r}: "
                              + failure_message(self.items(Path(path).name)))
        return atomic_write_bytes(path, self.data)

    def to_json(self) -> dict[str, Any]:
        """What a report says about this export (the CLI's `--json`)."""
        payload = {"sha256": self.sha256, "fused_ops": self.fused_ops, "warnings": list(self.warnings),
                   "notes": list(self.notes), "parity": self.parity.to_json()}
        if self.tier is not None and self.tier.tier != "float32":  # float32 reports stay as they were
            payload["tier"] = self.tier.to_json()
        if self.proven:
            payload["runtimes"] = {r.runtime: r.to_json() for r in self.proven}
        return payload


def load_runner(proto: onnx.ModelProto, model_name: str) -> OnnxRunner:
    """Step 4b's runtime. A graph ONNX Runtime refuses (an op tf2onnx wrote but it lacks, e.g.) is an
    export failure, not a bad input: `OnnxRunner` says why in its `ModelLoadError`."""
    try:
        return OnnxRunner(proto)
    except ModelLoadError as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ExportError(f"ONNX Runtime cannot load the export of {model_name!r}: {first_line[:300]}") from exc
