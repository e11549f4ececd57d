"""Precision tiers: an export's weights stored smaller, each tier checked at its own measured tolerance.

- `float32` (the default): the graph as exported, proven at the project's tolerance.
- `int8`: ONNX Runtime's dynamic quantization (`quantize_dynamic`) of LSTM and MatMul weights. An
  `LSTM` becomes `com.microsoft.DynamicQuantizeLSTM`, a `MatMul` becomes `MatMulInteger` between
  dynamically quantized activations; ORT has no quantized GRU or RNN, so those stay float and are listed.
- `float16`: every weight tensor stored as float16 and cast back to float32 where it is read. Inputs,
  outputs and states stay float32, so a `--state-io` export loads and streams as before. ONNX Runtime's
  CPU kernels compute LSTM/GRU/RNN in float32 only (it would insert these Casts itself), so this tier
  halves the file, not the time.

`apply_tier` returns the new graph and a `TierInfo` (what changed, sizes, the tolerance it is checked
at: `toolkit.tolerance.TIER_TOLERANCES`, with the measurements behind each). The exporter runs it after
naming and before parity; `lstm-onnx bench` runs it on a finished file. Nothing here imports TensorFlow;
ONNX Runtime's quantization module is imported only for `int8`.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from toolkit.errors import InputError
from toolkit.options import TIERS
from toolkit.tolerance import TIER_TOLERANCES, Tolerance

QUANTIZED_OP_TYPES = ("LSTM", "MatMul")  # what ORT 1.32's quantize_dynamic quantizes among our ops
FLOAT_ONLY_OPS = ("GRU", "RNN")  # recurrent ops ORT has no quantized kernel for

# Float initializers smaller than this stay float32: they are scalars and shape-like constants (a mask
# value, an epsilon), whose rounding would buy no size and could change a comparison.
MIN_FLOAT16_ELEMENTS = 16


def check_tier(tier: Any) -> str:
    if tier not in TIERS:
        raise InputError(f"Expected a precision tier among {list(TIERS)}. Received: {tier!r}")
    return tier


@dataclass(frozen=True)
class TierInfo:
    """What a tier did to a graph: ops turned into their quantized or float16 form, ops left float32."""

    tier: str
    converted: Mapping[str, int] = field(default_factory=dict)  # op type -> count, before the transform
    kept_float: Mapping[str, int] = field(default_factory=dict)  # ops this tier cannot convert
    float32_bytes: int = 0
    tier_bytes: int = 0
    tolerance: Tolerance | None = None

    @property
    def size_ratio(self) -> float:
        return self.tier_bytes / self.float32_bytes if self.float32_bytes else 1.0

    def describe(self) -> str:
        """One line for the CLI: what changed, the size, the tolerance."""
        if self.tier == "float32":
            return "tier float32"
        text = f"tier {self.tier}: {_ops(self.converted) or 'nothing'} converted"
        if self.kept_float:
            text += f"; {_ops(self.kept_float)} kept float32 (ONNX Runtime has no {self.tier} kernel for them)"
        text += f"; size {self.size_ratio:.2f}x of float32 ({self.tier_bytes} bytes)"
        if self.tolerance is not None:
            text += f"; checked against Keras at {self.tolerance} by default"
        return text

    def to_json(self) -> dict[str, Any]:
        return {"tier": self.tier, "converted": dict(self.converted), "kept_float": dict(self.kept_float),
                "float32_bytes": self.float32_bytes, "tier_bytes": self.tier_bytes,
                "size_ratio": round(self.size_ratio, 4),
                "tolerance": None if self.tolerance is None else self.tolerance.to_json()}


def _ops(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{n} {op}" for op, n in sorted(counts.items()))


def _op_counts(model: onnx.ModelProto) -> Counter[str]:
    return Counter(node.op_type for node in model.graph.node)


def apply_tier(model: onnx.ModelProto, tier: str) -> tuple[onnx.ModelProto, TierInfo]:
    """The model in `tier` (a new proto; `model` is not changed) and what was done."""
    check_tier(tier)
    before = model.ByteSize()
    if tier == "float32":
        return model, TierInfo("float32", float32_bytes=before, tier_bytes=before)
    counts = _op_counts(model)
    if tier == "int8":
        converted_model = quantize_int8(model)
        converted = {op: counts[op] for op in QUANTIZED_OP_TYPES if counts[op]}
        kept = {op: counts[op] for op in FLOAT_ONLY_OPS if counts[op]}
    else:
        converted_model = to_float16(model)
        converted = {"initializer": _float16_count(model)}
        kept = {}
    after = converted_model.ByteSize()
    return converted_model, TierInfo(tier, converted, kept, before, after, TIER_TOLERANCES[tier])


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """ORT's quantizer logs "Please consider to run pre-processing" on the root logger for every call;
    shape pre-processing changes nothing for our graphs (their shapes are already inferred), so hide
    that one message while it runs, and only then."""

    class _Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "pre-processing before quantization" not in record.getMessage()

    root = logging.getLogger()
    dropped = _Drop()
    root.addFilter(dropped)
    try:
        yield
    finally:
        root.removeFilter(dropped)


def quantize_int8(model: onnx.ModelProto) -> onnx.ModelProto:
    """ORT's dynamic quantization of LSTM and MatMul weights to signed int8 (QUInt8 gives the same bytes)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as folder, _quiet_quantizer():
        # quantize_dynamic writes only to a path; the copy keeps the caller's proto untouched.
        target = Path(folder) / "int8.onnx"
        quantize_dynamic(onnx.ModelProto.FromString(model.SerializeToString()), target,
                         op_types_to_quantize=list(QUANTIZED_OP_TYPES), weight_type=QuantType.QInt8)
        quantized = onnx.load(str(target))
    # The quantizer stamps its own producer; the exporter's header says who made the file.
    quantized.producer_name, quantized.producer_version = model.producer_name, model.producer_version
    return quantized


def _float16_candidates(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    """Float weights, but not an initializer that is also a graph input: that is an input's default
    (`--state-io`'s zero states) and must keep the input's float32 type."""
    inputs = {v.name for v in model.graph.input}
    return [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and t.name not in inputs
            and int(np.prod(t.dims)) >= MIN_FLOAT16_ELEMENTS]


def _float16_count(model: onnx.ModelProto) -> int:
    return len(_float16_candidates(model))


def to_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    """Weights stored as float16, each read through a Cast to float32 placed before the first node.

    Only initializers change: graph inputs, outputs and states keep float32, so `--state-io` exports and
    callers feeding float32 work unchanged (onnxconverter-common's `keep_io_types` instead retypes the
    states' initializers and a `--state-io` export then fails to load).
    """
    converted = onnx.ModelProto.FromString(model.SerializeToString())
    graph = converted.graph
    casts = []
    for tensor in _float16_candidates(converted):
        half = numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float16), tensor.name + "_float16")
        tensor.CopyFrom(half)
        casts.append(helper.make_node("Cast", [half.name], [half.name[: -len("_float16")]], to=onnx.TensorProto.FLOAT,
                                      name=f"Cast_{half.name}"))
    nodes = casts + list(graph.node)
    graph.ClearField("node")
    graph.node.extend(nodes)
    return converted


def nothing_to_convert(tier: str) -> Callable[[onnx.ModelProto], str | None]:
    """The `problem` of ONNX Runtime in a tier: a model the tier would not change is not run in it (it is
    the float32 form under another name)."""

    def problem(model: onnx.ModelProto) -> str | None:
        counts = _op_counts(model)
        if tier == "int8" and not any(counts[op] for op in QUANTIZED_OP_TYPES):
            kept = {op: counts[op] for op in FLOAT_ONLY_OPS if counts[op]}
            return f"nothing to convert to int8 ({_ops(kept)} stay float32)"
        if tier == "float16" and not _float16_count(model):
            return "nothing to convert to float16 (no float weight of 16 elements or more)"
        return None

    return problem
