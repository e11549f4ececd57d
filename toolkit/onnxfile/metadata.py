"""The `lstm_onnx.*` metadata of an export: its keys, typed writers and typed readers.

Every export records, under `metadata_props`, where it came from (`source`), its recurrent layers,
inputs and outputs, its parity figures, the versions that made it, its opset, the options that shaped
the graph, and (with state inputs) which input each final-state output feeds. Values are compact JSON
with sorted keys, so the bytes of an export are reproducible. This module is the only one that writes
`metadata_props` (an export's record, the state inputs' names the lowering made, `bench --record`'s session
defaults) and library and tests read them through the readers here, never by hand; the tier an export
was made in is read by `read_tier` alone.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import onnx

from toolkit import __version__
from toolkit.errors import InputError
from toolkit.options import DEFAULT_OPSET, ExportOptions
from toolkit.text import safe_text

# Every key lstm-onnx writes into metadata_props starts with this; the state map is read by deploy code.
METADATA_PREFIX = "lstm_onnx."
SOURCE = "source"
LAYERS = "layers"
INPUTS = "inputs"
OUTPUTS = "outputs"
PARITY = "parity"
VERSIONS = "versions"
OPSET = "opset"
OPTIONS = "options"
STATE_MAP = "state_map"  # graph input of an initial state -> the output that carries it to the next call
# Each state input's name, dtype and shape ("batch", units): what deploy code in any language needs to
# make the zeros of a first call (state inputs have no default in the graph).
STATE_INPUTS = "state_inputs"
# The runtime and intra-op thread count that measured fastest for this file (`bench --record`): `run` and
# `open_stream` open it that way. Only that opt-in path writes the key: a default export's bytes are unchanged.
SESSION = "session"


@dataclass(frozen=True)
class ExportRecord:
    """What an export records about itself (step 6 of a Keras export; a tf.Module SavedModel's export too,
    which has no Keras layers to list). JSON-able values; `write_metadata` writes them, sorted by key."""

    source: Mapping[str, Any]
    inputs: Sequence[Mapping[str, Any]]
    outputs: Sequence[Mapping[str, Any]]
    parity: Mapping[str, Any]
    versions: Mapping[str, str]  # `versions()`: what made it
    options: ExportOptions  # recorded as `options` (`ExportOptions.to_json`) and `opset`
    layers: Sequence[Mapping[str, Any]] | None = None  # None: no Keras layers (a tf.Module's signature)
    state_map: Mapping[str, str] = field(default_factory=dict)  # recorded when not empty
    state_inputs: Sequence[Mapping[str, Any]] = ()  # recorded when not empty

    def entries(self) -> dict[str, Any]:
        entries: dict[str, Any] = {SOURCE: dict(self.source), INPUTS: list(self.inputs), OUTPUTS: list(self.outputs),
                                   PARITY: self.parity, VERSIONS: dict(self.versions),
                                   OPSET: str(self.options.opset), OPTIONS: self.options.to_json()}
        if self.layers is not None:
            entries[LAYERS] = list(self.layers)
        if self.state_map:
            entries[STATE_MAP] = dict(self.state_map)
        if self.state_inputs:
            entries[STATE_INPUTS] = list(self.state_inputs)
        return entries


def write_metadata(model: onnx.ModelProto, record: ExportRecord) -> None:
    """Replace the model's metadata with the export's record (every other entry dropped), sorted by key."""
    _write(model, record.entries(), keep=False)


def write_state_inputs(model: onnx.ModelProto, names: Sequence[str]) -> None:
    """Only the state inputs' names, recorded as soon as the lowering made them: this is what tells every
    runner (the parity check's first) which inputs are initial states, fed zeros when a caller has none yet.
    `write_metadata` later records them with their dtypes and shapes."""
    _write(model, {STATE_INPUTS: [{"name": name} for name in names]})


def write_session_defaults(model: onnx.ModelProto, defaults: SessionDefaults) -> None:
    """`bench --record`'s measured defaults, every other entry kept."""
    _write(model, {SESSION: defaults.to_json()})


def write_entries(model: onnx.ModelProto, entries: Mapping[str, Any]) -> None:
    """Entries as given (key without prefix -> str, written as is, or JSON-able value), every other entry
    kept: for files crafted by hand, such as the tests' tampered ones. lstm-onnx's own files are written by
    the typed writers above."""
    _write(model, entries)


def _write(model: onnx.ModelProto, entries: Mapping[str, Any], keep: bool = True) -> None:
    """The one place `metadata_props` is written: `entries` over the kept ones (`keep`), sorted by key,
    values as compact JSON with sorted keys, so an export's bytes are reproducible."""
    texts = {METADATA_PREFIX + key: _text(value) for key, value in entries.items()}
    kept = [(p.key, p.value) for p in model.metadata_props if keep and p.key not in texts]
    model.ClearField("metadata_props")
    for name, text in sorted([*kept, *texts.items()]):
        model.metadata_props.add(key=name, value=text)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, separators=(",", ":"))


def versions() -> dict[str, str]:
    """The versions of everything that made an export (imports TensorFlow: call it only when exporting)."""
    import keras
    import onnxruntime
    import tensorflow as tf

    from toolkit.tf2onnx_lib import tf2onnx_version

    return {
        "lstm_onnx": __version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "tf2onnx": tf2onnx_version(),
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def metadata_value(model: onnx.ModelProto, key: str) -> str | None:
    """One entry lstm-onnx wrote into the metadata (`lstm_onnx.<key>`), or None."""
    return next((p.value for p in model.metadata_props if p.key == METADATA_PREFIX + key), None)


_JSON_KINDS = {dict: "object", list: "array"}  # what the Python types are called in JSON, for errors


def read_json(model: onnx.ModelProto, key: str, default: Any = None, kind: type | None = None) -> Any:
    """The JSON value under `lstm_onnx.<key>`, or `default` when the key is absent (or empty).

    A file may come from anyone: a value that is not JSON, or not of `kind` (dict, list), is one
    `InputError` line naming the key, the same for every reader.
    """
    text = metadata_value(model, key)
    if not text:
        return default
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise InputError(f"Expected JSON in metadata {METADATA_PREFIX + key}. Received: {safe_text(text, limit=80)!r}") from None
    if kind is not None and not isinstance(value, kind):
        raise InputError(f"Expected a JSON {_JSON_KINDS.get(kind, kind.__name__)} in metadata {METADATA_PREFIX + key}. "
                         f"Received: {safe_text(text, limit=80)!r}")
    return value


def _records(model: onnx.ModelProto, key: str) -> list[dict[str, Any]]:
    """A list of JSON objects, each with a string `name` (layers, inputs, outputs, state inputs)."""
    records = read_json(model, key, [], list)
    if not all(isinstance(r, dict) and isinstance(r.get("name"), str) for r in records):
        raise InputError(f"Expected metadata {METADATA_PREFIX + key} as a list of records with a name. "
                         f"Received: {safe_text(json.dumps(records), limit=80)!r}")
    return records


def read_opset(model: onnx.ModelProto) -> int:
    text = metadata_value(model, OPSET)
    if not text:
        return DEFAULT_OPSET
    if not text.isdigit():
        raise InputError(f"Expected an opset number in metadata {METADATA_PREFIX + OPSET}. "
                         f"Received: {safe_text(text, limit=80)!r}")
    return int(text)


def read_options(model: onnx.ModelProto) -> ExportOptions:
    """The options an export was made with (defaults for what it does not record)."""
    return ExportOptions.from_json(read_json(model, OPTIONS, {}, dict), opset=read_opset(model))


def read_tier(model: onnx.ModelProto) -> str:
    """The precision tier an export was made in (float32 where `options` records none): the one reading
    of it, checked as every recorded option is."""
    return read_options(model).tier


def read_state_map(model: onnx.ModelProto) -> dict[str, str]:
    mapping = read_json(model, STATE_MAP, {}, dict)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()):
        raise InputError(f"Expected metadata {METADATA_PREFIX + STATE_MAP} mapping input names to output names. "
                         f"Received: {safe_text(json.dumps(mapping), limit=80)!r}")
    return dict(mapping)


def read_state_inputs(model: onnx.ModelProto) -> list[str]:
    """The names of the state inputs lstm-onnx created (`--state-io`, stateful layers), in graph order."""
    return [record["name"] for record in _records(model, STATE_INPUTS)]


def read_layers(model: onnx.ModelProto) -> list[dict[str, Any]]:
    return _records(model, LAYERS)


def read_outputs(model: onnx.ModelProto) -> list[dict[str, Any]]:
    return _records(model, OUTPUTS)


def read_output_names(model: onnx.ModelProto) -> list[str]:
    return [entry["name"] for entry in read_outputs(model)]


def read_parity(model: onnx.ModelProto) -> dict[str, Any]:
    return dict(read_json(model, PARITY, {}, dict))


def read_source(model: onnx.ModelProto) -> dict[str, Any]:
    return dict(read_json(model, SOURCE, {}, dict))


def read_versions(model: onnx.ModelProto) -> dict[str, str]:
    return dict(read_json(model, VERSIONS, {}, dict))


@dataclass(frozen=True)
class SessionDefaults:
    """What `bench --record` measured fastest for this file, at the batch and steps it timed."""

    runtime: str  # a `run --runtime` name: onnxruntime, openvino
    threads: int  # intra-op threads
    batch: int
    steps: int
    stream: bool  # timed as consecutive calls with the states carried (`bench --stream`)
    us: float  # microseconds per call (per step when streamed)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def read_session_defaults(model: onnx.ModelProto) -> SessionDefaults | None:
    """The recorded session defaults, or None when the file records none."""
    found = read_json(model, SESSION, None, dict)
    if found is None:
        return None
    try:
        defaults = SessionDefaults(**found)
        valid = (isinstance(defaults.runtime, str) and all(type(getattr(defaults, n)) is int and getattr(defaults, n) >= 1
                                                            for n in ("threads", "batch", "steps")))
    except TypeError:
        valid = False
    if not valid:
        raise InputError(f"Expected metadata {METADATA_PREFIX + SESSION} as runtime, threads, batch, steps, stream "
                         f"and us. Received: {safe_text(json.dumps(found), limit=120)!r}")
    return defaults
