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
from collections.abc import Iterator, Mapping
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


# ------------------------------------------------------------------ where a tier runs: runtime x threads


@dataclass(frozen=True)
class Target:
    """A form to run a model in: a runtime, a precision tier, and a number of intra-op threads."""

    runtime: str  # "onnxruntime" or "openvino"
    tier: str  # a TIERS entry, or "bf16" (OpenVINO's default precision on CPUs with bf16 instructions)
    threads: int = 1

    @property
    def label(self) -> str:
        return f"{self.runtime} {self.tier} x{self.threads}"


# The forms `bench` tries, by name; OpenVINO's join them where it is installed (`available_targets`).
TARGETS: dict[str, Target] = {
    "onnxruntime": Target("onnxruntime", "float32"),
    "onnxruntime-int8": Target("onnxruntime", "int8"),
    "onnxruntime-float16": Target("onnxruntime", "float16"),
}
# OpenVINO's runtimes (toolkit.runtimes.openvino) by tier: f32 pinned, and its CPU default (bf16 here).
OPENVINO_TARGETS: dict[str, Target] = {
    "openvino": Target("openvino", "float32"),
    "openvino-bf16": Target("openvino", "bf16"),
}
OPENVINO_RUNTIMES = {"float32": "openvino", "bf16": "openvino-bf16"}


def openvino_available() -> bool:
    """Whether the OpenVINO runner and the openvino package are both installed (nothing is imported)."""
    import importlib.util

    try:
        return all(importlib.util.find_spec(name) is not None for name in ("openvino", "toolkit.runtimes.openvino"))
    except ImportError:  # toolkit.runtimes itself missing
        return False


def available_targets() -> dict[str, Target]:
    return {**TARGETS, **(OPENVINO_TARGETS if openvino_available() else {})}


def recorded_tier(model: onnx.ModelProto) -> str:
    """The tier an export was made in (from `lstm_onnx.options`; float32 when not recorded)."""
    from toolkit import metadata

    return str(metadata.read_json(model, metadata.OPTIONS, {}, dict).get("tier", "float32"))


def open_target(target: Target, model: onnx.ModelProto, path: Path,
                converted: dict[str, tuple[onnx.ModelProto, TierInfo]] | None = None) -> tuple[Any, str, int]:
    """An open runner of `model` in `target`, or None and why not; and the size of the model it runs.

    `path` is the float32 file (OpenVINO reads files). A tier that would change nothing (int8 of a model
    with no LSTM or MatMul) is not run: it is the float32 form under another name. `converted` caches
    each tier's conversion across calls (`bench` opens one tier at several thread counts).
    """
    from toolkit.errors import ModelLoadError
    from toolkit.runtimes.onnxrt import OnnxRunner

    if target.runtime != "onnxruntime":
        return _open_other(target, model, path)
    cache = {} if converted is None else converted
    if target.tier not in cache:
        cache[target.tier] = apply_tier(model, target.tier)
    tiered, info = cache[target.tier]
    if target.tier != "float32" and not any(info.converted.values()):
        return None, f"nothing to convert to {target.tier} ({_ops(info.kept_float)} stay float32)", info.tier_bytes
    try:
        return OnnxRunner(tiered, name=target.label, threads=target.threads or None), "", info.tier_bytes
    except ModelLoadError as exc:
        return None, str(exc), info.tier_bytes


def _open_other(target: Target, model: onnx.ModelProto, path: Path) -> tuple[Any, str, int]:
    """OpenVINO on the float32 file, at f32 or its default precision, where its `problem` allows."""
    size = model.ByteSize()
    if target.runtime != "openvino" or target.tier not in OPENVINO_RUNTIMES:
        raise InputError(f"Expected a target among {list(available_targets().values())}. Received: {target}")
    if not openvino_available():
        return None, "OpenVINO is not installed (pip install -e \".[runtimes]\")", size
    from toolkit.runtimes import openvino

    problem = openvino.problem(model)
    if problem:
        return None, problem, size
    try:
        return openvino.OpenVinoRunner(path, model, OPENVINO_RUNTIMES[target.tier], threads=target.threads or None), "", size
    except InputError as exc:  # RuntimeFailure: OpenVINO refused to compile it
        return None, str(exc), size


RUN_RUNTIMES = ("onnxruntime", "openvino")
PRECISIONS = ("f32", "bf16")


def open_runner(path: str | Path, runtime: str = "onnxruntime", precision: str = "f32",
                threads: int | None = None) -> Any:
    """A runner of the file at `path` in ONNX Runtime or OpenVINO (`lstm-onnx run --runtime`).

    f32 is exact; bf16 (OpenVINO's CPU default) is a tier of its own, off by 2e-3 to 1.5e-2. OpenVINO
    runs only what its `problem` says it computes correctly, and refuses the rest, saying why.
    """
    from toolkit.runner import load_onnx

    if runtime not in RUN_RUNTIMES:
        raise InputError(f"Expected --runtime among {list(RUN_RUNTIMES)}. Received: {runtime!r}")
    if precision not in PRECISIONS or (runtime == "onnxruntime" and precision != "f32"):
        allowed = list(PRECISIONS) if runtime == "openvino" else ["f32"]
        raise InputError(f"Expected --precision among {allowed} with {runtime}. Received: {precision!r}")
    if threads is not None:
        from toolkit.guard import check_threads

        check_threads([threads])
    model = load_onnx(path)
    tier = "float32" if precision == "f32" else "bf16"
    runner, problem, _ = open_target(Target(runtime, tier, threads or 0), model, Path(path))
    if runner is None:
        raise InputError(f"Expected a model {runtime} computes correctly. Received: {Path(path).name}: {problem}")
    return runner
