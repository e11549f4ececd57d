"""ONNX Runtime for JavaScript, run by Node: onnxruntime-node (native) and onnxruntime-web (WASM).

Each runner starts `node js/harness.mjs BACKEND MODEL` once, so the model is loaded once, and sends it
one JSON line per run (`base.LineProcess`). The packages come from npm, pinned by `js/package-lock.json`
and installed by `scripts/setup_runtimes.sh` (`npm ci` with ONNXRUNTIME_NODE_INSTALL=skip: the CPU
binary ships inside the package, and its install script would otherwise download from a host this
project cannot reach).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx

from toolkit.errors import InputError
from toolkit.runtimes.base import (
    RUN_TIMEOUT,
    START_TIMEOUT,
    LineProcess,
    ModelRunner,
    RuntimeFailure,
    decode_answer,
    encode_feeds,
)

JS_DIR = Path(__file__).resolve().parent / "js"
HARNESS = JS_DIR / "harness.mjs"
SETUP_HINT = "run scripts/setup_runtimes.sh"
# The runtime name `verify --runtimes` uses -> the harness backend and the npm package it loads.
BACKENDS = {"onnxruntime-node": ("node", "onnxruntime-node"), "onnxruntime-web": ("wasm", "onnxruntime-web")}


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


class NodeRunner(ModelRunner):
    """One model loaded in onnxruntime-node or onnxruntime-web (WASM) under Node."""

    def __init__(self, path: Path, model: onnx.ModelProto, runtime: str = "onnxruntime-node"):
        if runtime not in BACKENDS:
            raise InputError(f"Expected a JavaScript runtime among {list(BACKENDS)}. Received: {runtime!r}")
        backend, package = BACKENDS[runtime]
        node = node_binary()
        npm_package(package)
        super().__init__(model)
        self.name = runtime
        self.process = LineProcess([node, str(HARNESS), backend, str(Path(path).resolve())], runtime, cwd=JS_DIR)
        try:
            ready = self.process.receive(START_TIMEOUT)
            if "error" in ready:
                raise RuntimeFailure(f"Expected {runtime} to load {Path(path).name}. Received its error: {ready['error']}")
        except BaseException:
            self.close()
            raise

    @property
    def pid(self) -> int:
        return self.process.process.pid

    def run(self, feeds: Mapping[str, np.ndarray], timeout: float = RUN_TIMEOUT) -> dict[str, np.ndarray]:
        message = encode_feeds(self.with_states(feeds))
        return decode_answer(self.process.ask(message, timeout), self.name, self.output_names)

    def _stop(self) -> None:
        if hasattr(self, "process"):
            self.process.stop()


def open_node(path: Path, model: onnx.ModelProto) -> NodeRunner:
    return NodeRunner(path, model, "onnxruntime-node")


def open_web(path: Path, model: onnx.ModelProto) -> NodeRunner:
    return NodeRunner(path, model, "onnxruntime-web")
