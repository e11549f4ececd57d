"""ONNX Runtime for JavaScript, run by Node: onnxruntime-node (native) and onnxruntime-web (WASM).

Each runner starts `node js/harness.mjs BACKEND MODEL` once, so the model is loaded once, and sends it
one JSON line per run (`base.LineProcess`). The packages come from npm, pinned by `js/package-lock.json`
and installed by `scripts/setup_runtimes.sh` (`npm ci` with ONNXRUNTIME_NODE_INSTALL=skip: the CPU
binary ships inside the package, and its install script would otherwise download from a host this
project cannot reach).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx

from toolkit.errors import InputError, RuntimeFailure
from toolkit.guard import check_threads
from toolkit.process import LineProcess, remove_stale
from toolkit.runtimes.base import (
    MAX_PROTO_BYTES,
    START_TIMEOUT,
    Runner,
    decode_answer,
    encode_feeds,
    model_bytes,
    stream_in_child,
)

JS_DIR = Path(__file__).resolve().parent / "js"
HARNESS = JS_DIR / "harness.mjs"
SETUP_HINT = "run scripts/setup_runtimes.sh"
# The runtime name `verify --runtimes` uses -> the harness backend and the npm package it loads.
BACKENDS = {"onnxruntime-node": ("node", "onnxruntime-node"), "onnxruntime-web": ("wasm", "onnxruntime-web")}
MODEL_PREFIX = "lstm-onnx-model-"  # + the owning process id + "-": the self-contained copy a harness loads


def problem(model: onnx.ModelProto) -> str | None:
    """Why ONNX Runtime for JavaScript (Node, WASM, the Chromium page) cannot take this model: it loads
    one buffer (external data travels inside it), which protobuf caps at 2 GiB."""
    if model.ByteSize() > MAX_PROTO_BYTES:
        return f"onnxruntime-web and -node load the model as one buffer, at most 2 GiB; it has {model.ByteSize()} bytes"
    return None


def self_contained_copy(model: onnx.ModelProto, runtime: str) -> Path:
    """The model with its external data inside, in a private temporary file (the caller removes it;
    a killed run's copy is removed by the next run)."""
    remove_stale((entry, MODEL_PREFIX) for entry in Path(tempfile.gettempdir()).glob(MODEL_PREFIX + "*"))
    handle, name = tempfile.mkstemp(prefix=f"{MODEL_PREFIX}{os.getpid()}-", suffix=".onnx")
    with os.fdopen(handle, "wb") as out:
        out.write(model_bytes(model, runtime))
    return Path(name)


def node_binary() -> str:
    found = shutil.which("node")
    if not found:
        raise InputError(f"Expected Node.js 20 or later on PATH for the JavaScript runtimes. Received: no `node` ({SETUP_HINT})")
    return found


def npm_package(package: str) -> Path:
    """The installed package folder, or a one-line error that says how to install it."""
    folder = JS_DIR / "node_modules" / package
    if not (folder / "package.json").is_file():
        raise InputError(f"Expected the npm package {package} in {JS_DIR / 'node_modules'}. Received: not installed "
                         f"({SETUP_HINT})")
    return folder


class NodeRunner(Runner):
    """One model loaded in onnxruntime-node or onnxruntime-web (WASM) under Node; a run past its deadline
    stops the Node process."""

    def __init__(self, path: Path, model: onnx.ModelProto, runtime: str = "onnxruntime-node", threads: int | None = None):
        if runtime not in BACKENDS:
            raise InputError(f"Expected a JavaScript runtime among {list(BACKENDS)}. Received: {runtime!r}")
        backend, package = BACKENDS[runtime]
        node = node_binary()
        npm_package(package)
        super().__init__(model, runtime)
        self.copy = self_contained_copy(model, runtime)
        try:
            threads_arg = [str(check_threads([threads])[0])] if threads and backend == "node" else []
            self.process = LineProcess([node, str(HARNESS), backend, str(self.copy), *threads_arg], runtime, cwd=JS_DIR)
            ready = self.process.receive(START_TIMEOUT)
            if "error" in ready:
                raise RuntimeFailure(f"Expected {runtime} to load {Path(path).name}. Received its error: {ready['error']}")
        except BaseException:
            self.close()
            raise

    @property
    def pid(self) -> int:
        return self.process.process.pid

    def _run(self, feeds: dict[str, np.ndarray], timeout: float) -> dict[str, np.ndarray]:
        return decode_answer(self.process.ask(encode_feeds(feeds), timeout), self.name, self.output_names)

    def stream(self, input_name: str, chunks: Sequence[np.ndarray], states: Mapping[str, np.ndarray],
               mapping: Mapping[str, str], calls: int, timeout: float | None = None) -> tuple[float, dict[str, np.ndarray]]:
        """A streaming loop in Node (`base.stream_in_child`)."""
        return stream_in_child(self, self.process, input_name, chunks, states, mapping, calls, timeout)

    def _stop(self) -> None:
        if hasattr(self, "process"):
            self.process.stop()
        if hasattr(self, "copy"):
            self.copy.unlink(missing_ok=True)


def open_node(path: Path, model: onnx.ModelProto, threads: int | None = None) -> NodeRunner:
    return NodeRunner(path, model, "onnxruntime-node", threads)


def open_web(path: Path, model: onnx.ModelProto) -> NodeRunner:
    return NodeRunner(path, model, "onnxruntime-web")
