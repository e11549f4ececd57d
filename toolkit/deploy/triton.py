"""A Triton Inference Server model repository for an export: `NAME/1/model.onnx` and `NAME/config.pbtxt`.

The config is the one Triton's onnxruntime backend loads; `tests/test_triton.py` checks it against that
backend's validation rules (`src/onnxruntime.cc`), each test citing the code it comes from:

- Every input and output appears with its data type and dims; when every tensor has the dynamic `batch`
  axis first, Triton batches: the axis leaves `dims` and `max_batch_size` is set.
- Names are written as escaped text-format strings, so the config parses back to exactly the ONNX names;
  a name Triton cannot carry (empty, or holding a control character: Triton hands names to backends as
  NUL-terminated C strings and prints them in line-oriented logs) is refused with a one-line error.
- The model name is a folder of the repository: one path component, never `.` or `..`.
- A `--state-io` export streams the Triton way: a `sequence_batching` section with implicit state (one
  `state` per entry of the `lstm_onnx.state_map` metadata, zero initial state), and the state inputs are
  not request inputs. The backend counts the states among the session's required inputs, so the
  repository's copy of the model has no default (initializer) for them: Triton always feeds them.
  A Bidirectional or `go_backwards` export cannot stream (toolkit.checking.streaming): its states stay required
  request inputs, with dynamic batching.

Text only: writing it needs no Triton package (the tests parse it with tritonclient's model_config_pb2).
`toolkit.deploy.serve` reuses `Signature` and the text helpers for the Python-backend model it serves.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from toolkit.errors import InputError, LstmOnnxError
from toolkit.export.fileset import write_file_set
from toolkit.onnxfile.metadata import read_state_map
from toolkit.onnxfile.model import TensorInfo, graph_inputs, graph_outputs, optional_inputs

TRITON_TYPES = {
    "float32": "TYPE_FP32",
    "float64": "TYPE_FP64",
    "float16": "TYPE_FP16",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "bool": "TYPE_BOOL",
}
MAX_BATCH_SIZE = 64
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_tensor_name(name: str) -> str:
    if not name or _CONTROL.search(name):
        raise InputError("Expected tensor names Triton can carry (not empty, no control characters such as "
                         f"newlines or NUL). Received: {name!r}")
    return name


def check_model_name(name: str) -> str:
    """A Triton model name is the model's folder in the repository: it must stay inside it."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or _CONTROL.search(name):
        raise InputError("Expected a Triton model name that is one folder name (not empty, not '.' or '..', "
                         f"no '/' or '\\', no control characters). Received: {name!r}")
    return name


def quote(text: str) -> str:
    """A protobuf text-format string literal that parses back to exactly `text`."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def check_max_batch_size(value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InputError(f"Expected a maximum batch size >= 1. Received: {value!r}")
    return value


@dataclass(frozen=True)
class StateSpec:
    """One implicit state: Triton feeds `input` from the previous request's `output` of the sequence."""

    input: TensorInfo
    output: str


@dataclass(frozen=True)
class Signature:
    """What a Triton config declares: request inputs, outputs, implicit states, and whether it batches."""

    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    states: tuple[StateSpec, ...]
    batched: bool


def _streamable(model: onnx.ModelProto) -> bool:
    """Whether Triton's sequence batching can carry the states: forward layers only, and a run in chunks
    equal to the run on the whole sequence (a Conv1D under the LSTM was carried 3e-2 off, silently)."""
    from toolkit.checking.streaming import check_streamable, chunks_carry

    try:
        check_streamable(model)
        chunks_carry(model)
    except InputError:
        return False
    return True


def signature(model: onnx.ModelProto, implicit_states: bool) -> Signature:
    """The tensors of `model` for Triton; with `implicit_states`, the mapped states leave the inputs."""
    order = [v.name for v in model.graph.input]
    inputs = sorted(graph_inputs(model) + optional_inputs(model), key=lambda t: order.index(t.name))
    outputs = graph_outputs(model)
    # From the metadata, not from initializers: whether a state input has a default is an export detail.
    mapping = read_state_map(model) if implicit_states and _streamable(model) else {}
    states = tuple(StateSpec(t, mapping[t.name]) for t in inputs if t.name in mapping)
    requested = tuple(t for t in inputs if t.name not in mapping)
    for tensor in (*inputs, *outputs):
        check_tensor_name(tensor.name)
        if tensor.dtype not in TRITON_TYPES:
            raise InputError(f"Expected tensor types among {sorted(TRITON_TYPES)} for Triton. "
                             f"Received: {tensor.name!r} {tensor.dtype}")
    batched = all(t.shape and t.shape[0] == "batch" for t in (*inputs, *outputs))
    return Signature(requested, outputs, states, batched)


def dims(info: TensorInfo, batched: bool) -> list[int]:
    shape = info.shape[1:] if batched else info.shape
    return [d if isinstance(d, int) else -1 for d in shape]


def _dims_text(values: list[int]) -> str:
    return f"dims: [ {', '.join(str(d) for d in values)} ]"


def tensor_entry(info: TensorInfo, batched: bool) -> str:
    return (f"  {{\n    name: {quote(info.name)}\n    data_type: {TRITON_TYPES[info.dtype]}\n"
            f"    {_dims_text(dims(info, batched))}\n  }}")


def tensor_section(key: str, tensors: tuple[TensorInfo, ...], batched: bool) -> str:
    return f"{key} [\n" + ",\n".join(tensor_entry(t, batched) for t in tensors) + "\n]"


def _state_entry(state: StateSpec, batched: bool) -> str:
    shape = dims(state.input, batched)
    if any(d < 0 for d in shape):
        # Triton allocates the zero initial state before the first request: its dims must be known.
        raise InputError(f"Expected state inputs with fixed dims besides the batch axis. "
                         f"Received: {state.input.name!r} with shape {list(state.input.shape)}")
    kind = TRITON_TYPES[state.input.dtype]
    return (f"    {{\n      input_name: {quote(state.input.name)}\n      output_name: {quote(state.output)}\n"
            f"      data_type: {kind}\n      {_dims_text(shape)}\n"
            f"      initial_state {{ data_type: {kind} {_dims_text(shape)} zero_data: true name: \"zeros\" }}\n    }}")


def sequence_section(sig: Signature, max_batch_size: int) -> str:
    """Implicit state: Triton keeps each sequence's states between its requests; `oldest` batches the
    oldest request of up to `max_batch_size` sequences together (a dynamic batcher across streams)."""
    states = ",\n".join(_state_entry(s, sig.batched) for s in sig.states)
    oldest = f"  oldest {{ max_candidate_sequences: {max_batch_size} }}\n" if sig.batched else ""
    return f"sequence_batching {{\n{oldest}  state [\n{states}\n  ]\n}}"


def config_text(name: str, model: onnx.ModelProto, max_batch_size: int = MAX_BATCH_SIZE) -> str:
    """The onnxruntime backend's config.pbtxt for `model` served as `name`."""
    check_model_name(name)
    check_max_batch_size(max_batch_size)
    sig = signature(model, implicit_states=True)
    parts = [f"name: {quote(name)}", 'backend: "onnxruntime"', f"max_batch_size: {max_batch_size if sig.batched else 0}",
             tensor_section("input", sig.inputs, sig.batched), tensor_section("output", sig.outputs, sig.batched)]
    if sig.states:
        parts.append(sequence_section(sig, max_batch_size))
    elif sig.batched:
        parts.append("dynamic_batching { }")
    return "\n".join(parts) + "\n"


def repository_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with its state inputs plain required inputs (no same-name initializer), as the backend's
    input count expects them (`expected_input_cnt` adds one per state); the model itself when it has none."""
    states = set(read_state_map(model))
    if not any(t.name in states for t in model.graph.initializer):
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    kept = [t for t in copy.graph.initializer if t.name not in states]
    copy.graph.ClearField("initializer")
    copy.graph.initializer.extend(kept)
    return copy


def write_repository(repo: str | Path, name: str, model: onnx.ModelProto,
                     max_batch_size: int = MAX_BATCH_SIZE) -> list[Path]:
    """Write the model and its config under `repo/name/` as one file set; return the paths written.

    Everything is checked before the first byte is written."""
    config = config_text(name, model, max_batch_size)
    # Both files in one switch: a repository never holds a model beside another model's config.
    files = {f"{name}/1/model.onnx": repository_model(model).SerializeToString(),
             f"{name}/config.pbtxt": config.encode()}
    return list(write_file_set(repo, files).files)


def write_with_repository(outcome: Any, repo: Path, model_name: str | None = None) -> list[Path]:
    """`export --triton`: the exports' Triton repository entries, then the exports' files (`outcome.write()`),
    as one outcome: a repository that cannot be written leaves no .onnx
    behind, and models that cannot be written take the new repository entries back (the old ones return)."""
    names = [model_name or name for name, _ in outcome.exported]
    before = _repository_files(repo, names)
    repository = [p for name, (_, result) in zip(names, outcome.exported) for p in write_repository(repo, name, result.model)]
    try:
        outcome.write()
    except (LstmOnnxError, OSError):
        # The model's write error is what the user needs to see; a failed rollback must not replace it.
        with contextlib.suppress(LstmOnnxError, OSError):
            _restore_repository(repo, before, repository)
        raise
    return repository


def _repository_files(repo: Path, names: Sequence[str]) -> dict[str, bytes]:
    """The repository files an export under these names replaces, as they are now (relative name -> bytes)."""
    found = {}
    for name in names:
        for relative in (f"{name}/1/model.onnx", f"{name}/config.pbtxt"):
            if (repo / relative).is_file():
                found[relative] = (repo / relative).read_bytes()
    return found


def _restore_repository(repo: Path, before: dict[str, bytes], written: Sequence[Path]) -> None:
    """Put the repository back as `_repository_files` found it: new files go, replaced ones return."""
    new = [str(path.relative_to(repo)) for path in written if str(path.relative_to(repo)) not in before]
    if before:
        write_file_set(repo, before, remove=new)
        return
    for path in written:
        path.unlink(missing_ok=True)
    for folder in sorted({p for path in written for p in path.parents if p != repo and p.is_relative_to(repo)},
                         key=lambda p: len(p.parts), reverse=True):
        try:
            folder.rmdir()  # only when empty: a folder the user had keeps what it held
        except OSError:
            pass
