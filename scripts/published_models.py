"""Measure lstm-onnx, tf2onnx 1.17 and Keras 3's load_model on recurrent Keras models other people published.

    nice -n 10 python scripts/published_models.py            # every entry of tests/published/manifest.json
    python scripts/published_models.py --only SLUG [--only SLUG2] --out /tmp/x.json
    PYTHONPATH=/work/wt/branch python scripts/published_models.py --tool lstm-onnx \
        --base scripts/results/published_models.json --out /tmp/branch.json   # one tool, on another toolkit
    python scripts/published_models.py --expect-from /tmp/branch.json    # manifest expect: pass where it passes

The files live outside git (see tests/published/README.md): $LSTM_ONNX_CORPUS, else corpus/ in the repo root.
Every measurement runs in its own child process with a time limit, so one file that hangs or crashes
TensorFlow costs one row, not the run. Writes scripts/results/published_models.json and .md.

Per entry:
- lstm-onnx: `lstm-onnx export FILE -o OUT --json`; written? fused (no Loop/Scan, a fused op per recurrent
  layer)? every output named by role? Then, independently of the tool's own check, the written ONNX against
  the original run in tf.keras (tf_keras.models.load_model), Keras 3 (for Keras 3 files) or the SavedModel's
  serving signature, on inputs of the model's own kind (token ids below the vocabulary for Embedding inputs,
  rows padded with the mask value for Masking), at 1e-4 + 1e-4*|ref| (issue 24's bar).
- tf2onnx: the original as a SavedModel (the folder itself, or tf.keras / Keras 3 saving one) through
  `python -m tf2onnx.convert --saved-model`, compared with that SavedModel's signature at the same bar.
- Keras 3: keras.models.load_model(FILE, safe_mode=True, compile=False) opens it or not.
A pair (an entry with `weights`: `model.to_json()` or `model.to_yaml()` beside `model.save_weights`) is exported
with `lstm-onnx export MODEL.json --weights W.h5`, its original is tf.keras' model_from_json + load_weights (the
SavedModel tf2onnx reads is saved from that), and Keras 3 "opens" it when its model_from_json + load_weights do.
tf.keras 2.6+ and Keras 3 read no YAML (model_from_yaml is gone): a YAML's config is read by lstm-onnx's safe
reader (toolkit.models.keras2.architecture: plain data and !!python/tuple, never yaml.load) and given to
model_from_json; Keras 3 is tried with model_from_yaml, which it lacks.
No file whose config holds a Lambda layer is ever loaded by tf.keras or Keras here (its bytecode would run).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "tests" / "published" / "manifest.json"
RESULTS = ROOT / "scripts" / "results"
CHILD_TIMEOUT_S = 180
EXPORT_TIMEOUT_S = CHILD_TIMEOUT_S - 30  # leaves the child time to compare what was written
ATOL = RTOL = 1e-4  # issue 24's bar: |onnx - ref| <= 1e-4 + 1e-4 * |ref|
BATCH, STEPS, SEED = 3, 6, 0
RECURRENT_OPS = ("LSTM", "GRU", "RNN")
LOOP_OPS = ("Loop", "Scan")


def corpus_root() -> Path:
    return Path(os.environ.get("LSTM_ONNX_CORPUS") or ROOT / "corpus")


def load_manifest() -> list[dict]:
    return json.loads(MANIFEST.read_text())["entries"]


def model_path(entry: dict) -> Path:
    folder = corpus_root() / entry["slug"]
    return folder if entry["model"] == "." else folder / entry["model"]


def weights_path(entry: dict) -> Path | None:
    """A pair's weights-only `.h5` (`model.save_weights`) beside its architecture JSON (`model.to_json()`, the
    entry's `model`); None for a whole-model file."""
    return corpus_root() / entry["slug"] / entry["weights"] if entry.get("weights") else None


def pair_config(entry: dict) -> dict:
    """A pair's model config: its architecture JSON, or the config its `to_yaml()` file holds, read by
    lstm-onnx's safe YAML reader (plain data and Keras 2's `!!python/tuple`; nothing in the file runs)."""
    path = model_path(entry)
    if entry["format"] != "yaml-weights-h5":
        return json.loads(path.read_text())
    from toolkit.models.keras2.architecture import read_architecture
    from toolkit.options import ResourceLimits

    return read_architecture(path, ResourceLimits())


def sha_ok(entry: dict) -> bool:
    """Every file of the entry present with its recorded sha256."""
    folder = corpus_root() / entry["slug"]
    for item in entry["files"]:
        path = folder / item["local"]
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != item["sha256"]:
            return False
    return True


# ----------------------------------------------------------------------------------------- model configs


def _h5_attr(path: Path, name: str) -> str | None:
    import h5py

    with h5py.File(path, "r") as handle:
        value = handle.attrs.get(name)
    return value.decode() if isinstance(value, bytes) else value


def read_config(entry: dict) -> dict:
    """The model's Keras config (class_name + config) from the file, without building anything."""
    path = model_path(entry)
    if entry["format"] == "savedmodel":
        from toolkit.models.keras2.savedmodel import read_keras_metadata
        from toolkit.options import ResourceLimits

        nodes = read_keras_metadata(path / "keras_metadata.pb", ResourceLimits())
        root = next(n for n in nodes if n.node_id == 0).metadata
        return {"class_name": root.get("class_name"), "config": root["config"]}
    if entry.get("weights"):  # a pair's architecture JSON or YAML
        return pair_config(entry)
    if path.suffix == ".keras":
        import zipfile

        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read("config.json"))
    return json.loads(_h5_attr(path, "model_config"))


@dataclass
class InputSpec:
    """One model input: its shape (None for free dims), and what values it takes."""

    name: str
    shape: list
    vocab: int | None = None  # token ids below this (the input feeds an Embedding)
    mask_value: float | None = None  # rows padded with this value (the input feeds a Masking layer)
    mask_zero: bool = False  # ids padded with 0 (Embedding(mask_zero=True))
    dtype: str = "float32"


def _layers(config: dict) -> list[dict]:
    return config["config"]["layers"] if isinstance(config["config"], dict) else config["config"]


def _plain(value):
    """A SavedModel's metadata writes tuples as {"class_name": "__tuple__", "items": [...]}."""
    if isinstance(value, dict) and "items" in value:
        return [_plain(v) for v in value["items"]]
    return value


def _input_shape(layer: dict) -> list | None:
    cfg = layer.get("config", {})
    for key in ("batch_input_shape", "batch_shape"):
        if cfg.get(key) is not None:
            return list(_plain(cfg[key]))
    return None


def _consumers(config: dict, name: str) -> list[dict]:
    """Layers whose inbound nodes mention `name` (Keras 2 lists or Keras 3 keras_history)."""
    needle = json.dumps(name)
    return [layer for layer in _layers(config) if needle in json.dumps(layer.get("inbound_nodes", []))]


def _apply_consumer(spec: InputSpec, layer: dict) -> None:
    cfg = layer.get("config", {})
    if layer["class_name"] == "Embedding":
        spec.vocab = min(spec.vocab or cfg["input_dim"], cfg["input_dim"])
        spec.mask_zero = spec.mask_zero or bool(cfg.get("mask_zero"))
    elif layer["class_name"] == "Masking":
        spec.mask_value = float(cfg.get("mask_value", 0.0))


def _sequential_specs(config: dict) -> list[InputSpec]:
    layers = _layers(config)
    first = layers[0]
    shape = _input_shape(first) or list(_plain(config["config"].get("build_input_shape")) or [None, None, None])
    spec = InputSpec(first["config"].get("name", "input"), shape)
    body = layers[1] if first["class_name"] == "InputLayer" and len(layers) > 1 else first
    _apply_consumer(spec, body)
    return [spec]


def _input_names(config: dict) -> list[str]:
    refs = config["config"]["input_layers"]
    if refs and isinstance(refs[0], str):
        refs = [refs]
    return [ref[0] for ref in refs]


def input_specs(config: dict) -> list[InputSpec]:
    """The model's inputs in order, with the value kind each takes."""
    if config["class_name"] == "Sequential":
        return _sequential_specs(config)
    by_name = {layer["config"]["name"]: layer for layer in _layers(config)}
    specs = []
    for name in _input_names(config):
        spec = InputSpec(name, _input_shape(by_name[name]) or [None, None])
        dtype = by_name[name]["config"].get("dtype")
        spec.dtype = dtype if isinstance(dtype, str) else "float32"
        for layer in _consumers(config, name):
            _apply_consumer(spec, layer)
        specs.append(spec)
    return specs


def make_feeds(specs: list[InputSpec]) -> list:
    """Inputs of the model's own kind, from a fixed seed: the same arrays for every converter."""
    import numpy as np

    rng = np.random.default_rng(SEED)
    feeds = []
    for spec in specs:
        batch = int(spec.shape[0]) if spec.shape and spec.shape[0] is not None else BATCH  # stateful: fixed batch
        shape = [batch] + [STEPS if d is None else int(d) for d in spec.shape[1:]]
        if spec.vocab:
            array = rng.integers(1 if spec.mask_zero else 0, spec.vocab, size=shape).astype(np.int64)
            if spec.mask_zero and len(shape) > 1:
                array[0, shape[1] // 2:] = 0  # one row padded at the end
        else:
            array = rng.standard_normal(shape).astype(np.float32)
            if spec.mask_value is not None and len(shape) > 2:
                array[0, shape[1] // 2:, :] = spec.mask_value
        feeds.append(array)
    return feeds


# ------------------------------------------------------------------------------------------ references


def _keras_predict(model, feeds: list) -> list:
    import numpy as np

    cast = [np.asarray(f, dtype=t.dtype.name if hasattr(t.dtype, "name") else str(t.dtype))
            for f, t in zip(feeds, model.inputs)]
    outs = model(cast if len(cast) > 1 else cast[0], training=False)
    outs = outs if isinstance(outs, (list, tuple)) else [outs]
    return [np.asarray(o) for o in outs]


def _signature(folder: Path):
    import tensorflow as tf

    loaded = tf.saved_model.load(str(folder))
    return loaded, loaded.signatures["serving_default"]


def signature_outputs(folder: Path, specs: list[InputSpec], feeds: list) -> dict:
    """The SavedModel's serving signature run on the feeds, matched to its inputs by name, else order."""
    import numpy as np
    import tensorflow as tf

    _, fn = _signature(folder)
    wanted = fn.structured_input_signature[1]
    names = [s.name for s in specs]
    keys = [n for n in names if n in wanted] if all(n in wanted for n in names) else sorted(wanted)
    args = {k: tf.constant(np.asarray(f, dtype=wanted[k].dtype.as_numpy_dtype)) for k, f in zip(keys, feeds)}
    return {k: np.asarray(v) for k, v in fn(**args).items()}


def reference_outputs(entry: dict, specs: list[InputSpec], feeds: list) -> tuple[str, list | dict]:
    """(what ran, outputs): tf.keras for Keras 2 files, Keras 3 for Keras 3 files, else the signature."""
    path = model_path(entry)
    if entry["format"] == "savedmodel":
        return "SavedModel signature", signature_outputs(path, specs, feeds)
    if entry["lambda"]:
        raise RuntimeError("not run: a Lambda layer in the config (its bytecode would run)")
    if entry["format"].startswith("keras3"):
        import keras

        return f"Keras {keras.__version__}", _keras_predict(keras.models.load_model(path, safe_mode=True, compile=False), feeds)
    if entry.get("weights"):
        model, how = tf_keras_pair(entry)
        return how, _keras_predict(model, feeds)
    import tf_keras

    try:
        model, how = tf_keras.models.load_model(path, compile=False), ""
    except Exception as exc:  # noqa: BLE001 - the two file quirks below are repaired on a copy; others re-raise
        model, how = _load_repaired(path, exc)
    return f"tf.keras {tf_keras.__version__}{how}", _keras_predict(model, feeds)


def tf_keras_pair(entry: dict):
    """(model, label): a pair as its tutorials loaded it, tf.keras' model_from_json + load_weights. A Keras 1
    JSON (argument names tf.keras 2.21 no longer reads) or one relying on the defaults of the Keras that wrote
    it is built from a corrected copy of the config (lstm-onnx's reference_config: names and defaults only,
    the weights are the file's), and the label says so."""
    import tf_keras

    weights, config = str(weights_path(entry)), pair_config(entry)
    text = json.dumps(config) if entry["format"] == "yaml-weights-h5" else model_path(entry).read_text()
    label = f"tf.keras {tf_keras.__version__} model_from_json + load_weights"
    if entry["format"] == "yaml-weights-h5":
        label = f"tf.keras {tf_keras.__version__} model_from_json of the YAML's config + load_weights"
    try:
        model = tf_keras.models.model_from_json(text)
        model.load_weights(weights)
        return model, label
    except Exception:  # noqa: BLE001 - retried on the corrected copy below; its own failure is what is measured
        from toolkit.runtimes.keras2 import reference_config

        fixed, filled, corrected = reference_config(config, str(config.get("keras_version") or "1"))
        model = tf_keras.models.model_from_json(json.dumps(fixed))
        model.load_weights(weights)
        return model, f"{label} (config corrected on a copy: {len(corrected)} Keras 1 layers, defaults {filled})"


# Files no tf.keras opens as they are, though their weights are all there. The reference then runs in tf.keras
# on a repaired copy (the same stored weights; the change cannot alter an output), and its label says so.


def _copy_h5(source, target, rename) -> None:
    """Every group, dataset and attribute of `source` into `target`, each path passed through `rename`."""
    import h5py

    target.attrs.update(dict(source.attrs))
    for name, item in source.items():
        if isinstance(item, h5py.Dataset):
            target.create_dataset(rename(name), data=item[()])
            target[rename(name)].attrs.update(dict(item.attrs))
        else:
            _copy_h5(item, target.require_group(rename(name)), rename)


def _int32_embedding_fixed(path: Path, work: Path) -> Path:
    """Keras 2.0's Embedding(dtype='int32'): the rebuild draws its initializer in int32 and fails. float32
    changes nothing computed (Embedding casts its ids to int32 itself)."""
    import h5py

    fixed = work / path.name
    with h5py.File(path, "r") as source, h5py.File(fixed, "w") as target:
        _copy_h5(source, target, lambda name: name)
        config = json.loads(target.attrs["model_config"])
        for layer in _layers(config):
            if layer["class_name"] == "Embedding" and layer["config"].get("dtype") == "int32":
                layer["config"]["dtype"] = "float32"
        target.attrs["model_config"] = json.dumps(config)
    return fixed


def _windows_paths_fixed(path: Path, work: Path) -> Path:
    """A tf.keras 2.13-2.15 .keras saved on Windows names its weight groups 'layers\\lstm\\cell'."""
    import io
    import zipfile

    import h5py

    fixed = work / path.name
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(fixed, "w") as target:
        for name in source.namelist():
            data = source.read(name)
            if name == "model.weights.h5":
                out = io.BytesIO()
                with h5py.File(io.BytesIO(data), "r") as weights, h5py.File(out, "w") as repaired:
                    _copy_h5(weights, repaired, lambda n: n.replace("\\", "/"))
                data = out.getvalue()
            target.writestr(name, data)
    return fixed


def _load_repaired(path: Path, failure: Exception):
    import tempfile

    import tf_keras

    work = Path(tempfile.mkdtemp(prefix="published-repair-"))
    if path.suffix == ".keras":
        repaired, how = _windows_paths_fixed(path, work), " (weight paths' '\\' read as '/' on a copy)"
    elif '"dtype": "int32"' in (_h5_attr(path, "model_config") or ""):
        repaired, how = _int32_embedding_fixed(path, work), " (Embedding dtype int32 set to float32 on a copy)"
    else:
        raise failure
    return tf_keras.models.load_model(repaired, compile=False), how


# ------------------------------------------------------------------------------------------ comparisons


@dataclass
class Parity:
    equal: bool
    max_abs: float | None = None
    max_rel: float | None = None
    note: str = ""


def _graph_order(inputs: list, specs: list[InputSpec]) -> list:
    """The graph's inputs in the model's order: by name where every name matches (tf2onnx sorts them), else
    as they come."""
    by_name = {i.name.split(":")[0]: i for i in inputs}
    if all(s.name in by_name for s in specs):
        return [by_name[s.name] for s in specs]
    return inputs[:len(specs)]


def onnx_outputs(path: Path, specs: list[InputSpec], feeds: list) -> dict:
    """ONNX Runtime on the feeds, each given to its graph input and cast to that input's type."""
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    types = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int64)": np.int64,
             "tensor(int32)": np.int32}
    inputs = _graph_order(session.get_inputs(), specs)
    run = {i.name: np.asarray(f, dtype=types.get(i.type, np.float32)) for i, f in zip(inputs, feeds)}
    # A stateful model's export takes each layer's states as inputs and returns them: the original, fresh from
    # its file, starts from zeros, and its outputs are the model's own, so the states go in as zeros and their
    # outputs are left out of the comparison.
    carried = [i for i in session.get_inputs() if i.name not in run and "_initial_state_" in i.name]
    for state in carried:
        shape = [d if isinstance(d, int) else len(feeds[0]) for d in state.shape]
        run[state.name] = np.zeros(shape, dtype=types.get(state.type, np.float32))
    left_out = {s.name.replace("_initial_state_", "_state_") for s in carried}
    names = [o.name for o in session.get_outputs() if o.name not in left_out]
    return dict(zip(names, session.run(names, run)))


def _match(reference: list | dict, actual: dict) -> list[tuple]:
    """(reference, actual) pairs: by order for a model's list; by name for a signature's dict."""
    if isinstance(reference, list):
        return list(zip(reference, actual.values()))
    pairs = []
    for name, value in actual.items():
        key = name.split(":")[0]
        hits = [k for k in reference if key == k or key.startswith(k + "_")]
        pairs.append((reference[max(hits, key=len)] if hits else None, value))
    if any(r is None for r, _ in pairs) and len(reference) == len(actual):
        pairs = list(zip([reference[k] for k in sorted(reference)], actual.values()))
    return pairs


def compare(reference: list | dict, actual: dict) -> Parity:
    import numpy as np

    if len(reference) != len(actual):
        return Parity(False, note=f"{len(actual)} outputs, the original has {len(reference)}")
    worst_abs = worst_rel = 0.0
    equal = True
    for ref, got in _match(reference, actual):
        if ref is None or np.shape(ref) != np.shape(got):
            return Parity(False, note=f"shape {np.shape(got)} against {np.shape(ref)}")
        ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
        diff = np.abs(ref - got)
        equal = equal and bool(np.all(diff <= ATOL + RTOL * np.abs(ref)))
        worst_abs = max(worst_abs, float(diff.max(initial=0.0)))
        worst_rel = max(worst_rel, float((diff / np.maximum(np.abs(ref), 1e-12)).max(initial=0.0)))
    return Parity(equal, worst_abs, worst_rel)


def recurrent_layer_count(config: dict) -> int:
    """Recurrent layers (a Bidirectional counts once: it is one fused op), nested models included."""
    text = json.dumps(config)
    plain = len(re.findall(r'"class_name": "(?:LSTM|GRU|SimpleRNN|CuDNNLSTM|CuDNNGRU)"', text))
    wrapped = len(re.findall(r'"class_name": "Bidirectional"', text))
    return plain - wrapped


def fusion(path: Path, config: dict | None) -> tuple[bool, dict]:
    """(fused, op counts): no Loop/Scan, and a fused recurrent op for every recurrent layer."""
    import onnx

    from toolkit.onnxfile.model import count_ops

    ops = count_ops(onnx.load(str(path)))
    recurrent = sum(ops[op] for op in RECURRENT_OPS)
    loops = sum(ops[op] for op in LOOP_OPS)
    needed = recurrent_layer_count(config) if config else 1
    return loops == 0 and recurrent >= max(needed, 1), {k: v for k, v in ops.items() if k in RECURRENT_OPS + LOOP_OPS}


GENERIC_NAME = re.compile(r"^(Identity(_\d+)?(:\d+)?|output_\d+|StatefulPartitionedCall.*|.*:\d+)$")


def named_by_role(names: list[str]) -> bool:
    return bool(names) and not any(GENERIC_NAME.match(n) for n in names)


# ---------------------------------------------------------------------------------------------- children


def _error_line(stderr: str) -> str:
    """The tool's one-line `Error:`, else a traceback's exception line, else the last line."""
    lines = stderr.splitlines()
    for pattern in (r"^Error:", r"^[\w.]*(Error|Exception)\b"):
        hits = [line for line in lines if re.match(pattern, line)]
        if hits:
            return hits[-1][:400]
    tail = [line for line in lines if line.strip()]
    return tail[-1][:400] if tail else ""


def _specs_and_feeds(entry: dict) -> tuple[dict | None, list[InputSpec], list]:
    config = read_config(entry)
    specs = input_specs(config)
    return config, specs, make_feeds(specs)


def _reference_parity(entry: dict, onnx_path: Path, specs: list[InputSpec], feeds: list) -> dict:
    try:
        ran, reference = reference_outputs(entry, specs, feeds)
    except Exception as exc:  # noqa: BLE001 - any failure of the original is a measured outcome
        return {"reference": None, "equal": False, "note": f"original not run: {type(exc).__name__}: {str(exc)[:200]}"}
    try:
        parity = compare(reference, onnx_outputs(onnx_path, specs, feeds))
    except Exception as exc:  # noqa: BLE001 - an ONNX that ONNX Runtime cannot run is a measured outcome
        parity = Parity(False, note=f"not compared: {type(exc).__name__}: {str(exc)[:200]}")
    return {"reference": ran, **asdict(parity)}


def _converted(command: list[str], target: Path, tool: str) -> dict:
    """Run a converter (lstm-onnx or tf2onnx) within EXPORT_TIMEOUT_S; the row's `written` and, if not, why."""
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=EXPORT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"written": False, "error": f"{tool} ran past {EXPORT_TIMEOUT_S} s"}
    return {"written": target.exists(), "error": "" if target.exists() else _error_line(proc.stderr)}


def child_lstm_onnx(entry: dict, work: Path) -> dict:
    target = work / "lstm_onnx.onnx"
    tool = Path(sys.executable).parent / "lstm-onnx"
    pair = ["--weights", str(weights_path(entry))] if entry.get("weights") else []
    row = _converted([str(tool), "export", str(model_path(entry)), *pair, "-o", str(target), "--json"], target,
                     "lstm-onnx export")
    if not row["written"]:
        return row
    import onnxruntime as ort

    config, specs, feeds = _specs_and_feeds(entry)
    row["fused"], row["ops"] = fusion(target, config)
    names = [o.name for o in ort.InferenceSession(str(target), providers=["CPUExecutionProvider"]).get_outputs()]
    row["outputs"], row["named"] = names, named_by_role(names)
    row.update(_reference_parity(entry, target, specs, feeds))
    return row


def _saved_model_of(entry: dict, work: Path) -> Path:
    """A SavedModel of the original: the folder itself, or one saved by tf.keras / exported by Keras 3."""
    path = model_path(entry)
    if entry["format"] == "savedmodel":
        return path
    if entry["lambda"]:
        raise RuntimeError("not run: a Lambda layer in the config (its bytecode would run)")
    folder = work / "saved_model"
    if entry.get("weights"):
        tf_keras_pair(entry)[0].save(str(folder), save_format="tf")
    elif entry["format"].startswith("keras3"):
        import keras

        keras.models.load_model(path, safe_mode=True, compile=False).export(str(folder), verbose=False)
    else:
        import tf_keras

        tf_keras.models.load_model(path, compile=False).save(str(folder), save_format="tf")
    return folder


def child_tf2onnx(entry: dict, work: Path) -> dict:
    try:
        folder = _saved_model_of(entry, work)
    except Exception as exc:  # noqa: BLE001 - the original not loading is a measured outcome
        return {"written": False, "error": f"original not loaded: {type(exc).__name__}: {str(exc)[:200]}"}
    target = work / "tf2onnx.onnx"
    row = _converted([sys.executable, "-m", "tf2onnx.convert", "--saved-model", str(folder), "--output", str(target),
                      "--opset", "17"], target, "tf2onnx")
    if not row["written"]:
        return row
    config, specs, feeds = _specs_and_feeds(entry)
    row["fused"], row["ops"] = fusion(target, config)
    try:
        parity = compare(signature_outputs(folder, specs, feeds), onnx_outputs(target, specs, feeds))
    except Exception as exc:  # noqa: BLE001 - an ONNX that does not run, or a signature that does not, is measured
        parity = Parity(False, note=f"not compared: {type(exc).__name__}: {str(exc)[:200]}")
    row.update({"reference": "SavedModel signature", **asdict(parity)})
    return row


def child_keras3(entry: dict, work: Path) -> dict:
    if entry["lambda"]:
        return {"opens": False, "error": "not tried: a Lambda layer in the config"}
    import keras

    try:
        if entry["format"] == "yaml-weights-h5":  # Keras 3 has no model_from_yaml: what it raises is measured
            keras.models.model_from_yaml(model_path(entry).read_text()).load_weights(str(weights_path(entry)))
        elif entry.get("weights"):  # a pair: Keras 3's model_from_json, then its load_weights of the legacy .h5
            keras.models.model_from_json(model_path(entry).read_text()).load_weights(str(weights_path(entry)))
        else:
            keras.models.load_model(model_path(entry), safe_mode=True, compile=False)
    except Exception as exc:  # noqa: BLE001 - which error Keras 3 raises is what is measured
        return {"opens": False, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"}
    return {"opens": True, "error": ""}


CHILDREN = {"lstm-onnx": child_lstm_onnx, "tf2onnx": child_tf2onnx, "keras3": child_keras3}


def toolkit_root() -> str:
    """The checkout whose toolkit is measured: $PYTHONPATH (another branch's worktree), else this one."""
    return os.environ.get("PYTHONPATH") or str(ROOT)


def child_env() -> dict:
    """The child imports the measured toolkit and runs on the CPU, quietly."""
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=toolkit_root(), CUDA_VISIBLE_DEVICES="")


def run_child(kind: str, slug: str) -> dict:
    """One measurement in its own process, bounded by CHILD_TIMEOUT_S; its JSON is the last stdout line."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="published-") as work:
        try:
            proc = subprocess.run([sys.executable, __file__, "--child", kind, "--slug", slug, "--work", work],
                                  capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, env=child_env())
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {CHILD_TIMEOUT_S} s", "written": False, "opens": False}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": f"child crashed (rc {proc.returncode}): {_error_line(proc.stderr)}", "written": False,
                "opens": False}
    row = json.loads(lines[-1])
    row["seconds"] = round(time.monotonic() - started, 1)
    return row


# ---------------------------------------------------------------------------------------------- the run


def measure(entry: dict, tools: list[str]) -> dict:
    row = {k: entry[k] for k in ("slug", "repo", "format", "keras_version", "kind", "recurrent_layers", "expect")}
    row["present"] = sha_ok(entry)
    if row["present"]:
        for kind in tools:
            row[kind] = run_child(kind, entry["slug"])
    return row


def _yes(row: dict, kind: str, key: str) -> bool:
    return bool(row.get(kind, {}).get(key))


def totals(rows: list[dict]) -> dict:
    present = [r for r in rows if r["present"]]
    count = {f"{kind} {key}": sum(_yes(r, kind, key) for r in present)
             for kind in ("lstm-onnx", "tf2onnx") for key in ("written", "equal", "fused")}
    count["lstm-onnx named"] = sum(_yes(r, "lstm-onnx", "named") for r in present)
    count["keras3 opens"] = sum(_yes(r, "keras3", "opens") for r in present)
    return {"files": len(present), "absent": len(rows) - len(present), **count}


def _mark(row: dict, kind: str, key: str) -> str:
    return "yes" if _yes(row, kind, key) else "no"


def _err(a: float | None) -> str:
    return "" if a is None else f"{a:.1e}"


def markdown(rows: list[dict], total: dict, stamp: str) -> str:
    n = total["files"]
    lines = ["# Published recurrent Keras models: lstm-onnx, tf2onnx 1.17, Keras 3 load_model", "", stamp, "",
             "| | lstm-onnx | tf2onnx 1.17 (`--saved-model`) |", "|---|---|---|"]
    for key, label in (("written", "ONNX written"), ("equal", "equal to the original (1e-4 + 1e-4·\\|ref\\|)"),
                       ("fused", "fused (no Loop/Scan)")):
        lines.append(f"| {label} | {total['lstm-onnx ' + key]}/{n} | {total['tf2onnx ' + key]}/{n} |")
    lines += [f"| every output named by role | {total['lstm-onnx named']}/{n} | - |",
              "", f"Keras 3 `load_model(safe_mode=True)` opens {total['keras3 opens']}/{n}.", "",
              "| file | format | keras | lstm-onnx written/equal/fused/named | max abs | tf2onnx written/equal/fused "
              "| max abs | Keras 3 opens | lstm-onnx refusal |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if not r["present"]:
            lines.append(f"| {r['slug']} | {r['format']} | {r['keras_version']} | absent | | | | | |")
            continue
        lo, tf = r.get("lstm-onnx", {}), r.get("tf2onnx", {})
        flags = "/".join(_mark(r, "lstm-onnx", k) for k in ("written", "equal", "fused", "named"))
        tflags = "/".join(_mark(r, "tf2onnx", k) for k in ("written", "equal", "fused"))
        cause = (lo.get("error") or lo.get("note") or "").replace("|", "\\|")[:220]
        lines.append(f"| {r['slug']} | {r['format']} | {r['keras_version']} | {flags} | {_err(lo.get('max_abs'))} "
                     f"| {tflags} | {_err(tf.get('max_abs'))} | {_mark(r, 'keras3', 'opens')} | {cause} |")
    return "\n".join(lines) + "\n"


def _merged(rows: list[dict], base: Path) -> list[dict]:
    """The new measurements replace theirs in the rows of `base`; the other rows and tools stay as they were."""
    old = {r["slug"]: r for r in json.loads(base.read_text())["rows"]} if base.exists() else {}
    for row in rows:
        old[row["slug"]] = {**old.get(row["slug"], {}), **row}
    return [old[e["slug"]] for e in load_manifest() if e["slug"] in old]


def main_run(only: list[str], tools: list[str], out: Path, base: Path | None) -> None:
    entries = [e for e in load_manifest() if not only or e["slug"] in only]
    rows = []
    for entry in entries:
        rows.append(measure(entry, tools))
        print(json.dumps({"slug": entry["slug"], **{k: rows[-1].get(k, {}) for k in CHILDREN}}), flush=True)
    if base:
        rows = _merged(rows, base)
    total = totals(rows)
    stamp = (f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {os.uname().nodename} "
             f"({os.cpu_count()} CPUs), corpus {corpus_root()}, toolkit {toolkit_root()}.")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"stamp": stamp, "totals": total, "rows": rows}, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(rows, total, stamp))
    print(json.dumps(total))


def passes(row: dict) -> bool:
    """What tests/test_published.py asserts: written, fused, named by role and equal to the original."""
    return all(row.get("lstm-onnx", {}).get(k) for k in ("written", "fused", "named", "equal"))


def expect_from(results: Path) -> None:
    """--expect-from: entries that pass in `results` get expect "pass"; the others keep their cause, or get
    the tool's error line when they passed before (a regression to look at)."""
    rows = {r["slug"]: r for r in json.loads(results.read_text())["rows"]}
    manifest = json.loads(MANIFEST.read_text())
    for entry in manifest["entries"]:
        row = rows.get(entry["slug"])
        if row and "lstm-onnx" in row:
            failed = row["lstm-onnx"].get("error") or row["lstm-onnx"].get("note") or "not equal"
            entry["expect"] = "pass" if passes(row) else (failed if entry["expect"] == "pass" else entry["expect"])
    MANIFEST.write_text(json.dumps(manifest, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[], help="measure only this slug (repeatable)")
    parser.add_argument("--out", type=Path, default=RESULTS / "published_models.json")
    parser.add_argument("--tool", action="append", choices=sorted(CHILDREN), default=[],
                        help="measure only this (repeatable; default all three)")
    parser.add_argument("--base", type=Path, help="earlier results: keep their rows and tools not measured now")
    parser.add_argument("--expect-from", type=Path, help="set the manifest's expect fields from these results")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--slug", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        entry = next(e for e in load_manifest() if e["slug"] == args.slug)
        print(json.dumps(CHILDREN[args.child](entry, args.work)))
        return
    if args.expect_from:
        expect_from(args.expect_from)
        return
    if not corpus_root().is_dir():
        sys.exit(f"Expected the corpus folder ($LSTM_ONNX_CORPUS or corpus/). Received: {corpus_root()} is absent")
    main_run(args.only, args.tool or list(CHILDREN), args.out, args.base)


if __name__ == "__main__":
    main()
