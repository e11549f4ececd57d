"""A Triton Inference Server model repository for an export: `NAME/1/model.onnx` and `NAME/config.pbtxt`.

The config names every input and output with its data type and dims, as Triton's onnxruntime backend
expects. When every input and output has the dynamic `batch` axis first, Triton batches: the axis leaves
`dims` and `max_batch_size` is set, with dynamic batching on. Initial-state inputs of a `--state-io`
export are `optional` (zeros when not sent). Text only: writing it needs no Triton package; the tests
parse it with Triton's own protobuf schema (tritonclient's model_config_pb2).
"""

from __future__ import annotations

from pathlib import Path

import onnx

from toolkit.errors import InputError
from toolkit.fileset import write_file_set
from toolkit.runner import TensorInfo, graph_inputs, graph_outputs, optional_inputs

TRITON_TYPES = {
    "float32": "TYPE_FP32",
    "float64": "TYPE_FP64",
    "float16": "TYPE_FP16",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "bool": "TYPE_BOOL",
}
MAX_BATCH_SIZE = 64


def _dims(info: TensorInfo, batched: bool) -> list[int]:
    dims = info.shape[1:] if batched else info.shape
    return [d if isinstance(d, int) else -1 for d in dims]


def _entry(info: TensorInfo, batched: bool, optional: bool = False) -> str:
    if info.dtype not in TRITON_TYPES:
        raise InputError(f"Expected tensor types among {sorted(TRITON_TYPES)} for Triton. Received: {info.name} {info.dtype}")
    lines = [f'    name: "{info.name}"', f"    data_type: {TRITON_TYPES[info.dtype]}",
             f"    dims: [ {', '.join(str(d) for d in _dims(info, batched))} ]"]
    if optional:
        lines.append("    optional: true")
    return "  {\n" + "\n".join(lines) + "\n  }"


def config_text(name: str, model: onnx.ModelProto, max_batch_size: int = MAX_BATCH_SIZE) -> str:
    required, optional = graph_inputs(model), optional_inputs(model)
    outputs = graph_outputs(model)
    tensors = required + optional + outputs
    batched = all(t.shape and t.shape[0] == "batch" for t in tensors)
    parts = [f'name: "{name}"', 'backend: "onnxruntime"', f"max_batch_size: {max_batch_size if batched else 0}"]
    parts.append("input [\n" + ",\n".join([_entry(t, batched) for t in required] +
                                          [_entry(t, batched, optional=True) for t in optional]) + "\n]")
    parts.append("output [\n" + ",\n".join(_entry(t, batched) for t in outputs) + "\n]")
    if batched:
        parts.append("dynamic_batching { }")
    return "\n".join(parts) + "\n"


def write_repository(repo: str | Path, name: str, model: onnx.ModelProto,
                     max_batch_size: int = MAX_BATCH_SIZE) -> list[Path]:
    """Write (atomically) the model and its config under `repo/name/`; return the paths written."""
    config = config_text(name, model, max_batch_size)
    # Both files in one switch: a repository never holds a model beside another model's config.
    files = {f"{name}/1/model.onnx": model.SerializeToString(), f"{name}/config.pbtxt": config.encode()}
    return list(write_file_set(repo, files).files)
