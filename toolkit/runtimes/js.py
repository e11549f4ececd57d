"""ONNX Runtime for JavaScript, run by Node: onnxruntime-node (native) and onnxruntime-web (WASM).

Each runner starts `node js/harness.mjs BACKEND MODEL` once, so the model is loaded once, and sends it
one JSON line per run (`toolkit.process.LineProcess`). The packages come from npm, pinned by `js/package-lock.json`
and installed by `lstm-onnx setup` (`toolkit.runtimes.install`) into a per-user cache, never into the installed
package: `$LSTM_ONNX_JS_DIR` if set, else `$XDG_CACHE_HOME/lstm-onnx/js` (default ~/.cache/lstm-onnx/js).
A clone's older `toolkit/runtimes/js/node_modules` is looked in after the cache, so existing clones keep
working. A location counts only where each package's version is the lock's. The harness stays in the
package and is told where the modules are (`LSTM_ONNX_NODE_MODULES`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx

from toolkit.errors import InputError, RuntimeFailure
from toolkit.fileio import remove_stale
from toolkit.process import LineProcess
from toolkit.runtimes.base import (
    MAX_PROTO_BYTES,
    START_TIMEOUT,
    Runner,
    model_bytes,
    stream_in_child,
)
from toolkit.runtimes.threads import check_threads
from toolkit.runtimes.wire import decode_answer, encode_feeds

JS_DIR = Path(__file__).resolve().parent / "js"
HARNESS = JS_DIR / "harness.mjs"
LOCK = JS_DIR / "package-lock.json"
SETUP_HINT = "lstm-onnx setup --runtimes node,web"
SETUP_NAMES = {"onnxruntime-node": "node", "onnxruntime-web": "web"}  # `lstm-onnx setup`'s name of each package
DIR_VARIABLE = "LSTM_ONNX_JS_DIR"  # overrides the cache folder (it then is the only place looked in)
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
        raise InputError(f"Expected Node.js 20 or later on PATH for the JavaScript runtimes. Received: no `node` "
                         f"(install Node.js and npm, e.g. `apt-get install nodejs npm`, then `{SETUP_HINT}`)")
    return found


def cache_dir() -> Path:
    """Where `lstm-onnx setup` installs the npm packages: per user, outside the Python environment."""
    if os.environ.get(DIR_VARIABLE):
        return Path(os.environ[DIR_VARIABLE]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lstm-onnx" / "js"


def module_folders() -> list[Path]:
    """The node_modules folders looked in, in order: the cache's, then a clone's (not with the override)."""
    folders = [cache_dir() / "node_modules"]
    return folders if os.environ.get(DIR_VARIABLE) else [*folders, JS_DIR / "node_modules"]


def locked_versions(lock: Path = LOCK) -> dict[str, str]:
    """Each package the lock file pins (`node_modules/NAME` entries) and its version."""
    packages = json.loads(lock.read_text(encoding="utf-8")).get("packages", {})
    prefix = "node_modules/"
    return {key[len(prefix):]: str(entry.get("version")) for key, entry in packages.items()
            if key.startswith(prefix) and isinstance(entry, dict)}


def installed_version(folder: Path) -> str | None:
    """The version a package folder's package.json declares; None where there is none to read."""
    try:
        return str(json.loads((folder / "package.json").read_text(encoding="utf-8")).get("version"))
    except (OSError, ValueError):
        return None


def _found(package: str) -> tuple[Path | None, str]:
    """The first locked install of `package`, or None and what each location holds instead."""
    want = locked_versions().get(package)
    seen = []
    for modules in module_folders():
        version = installed_version(modules / package)
        if version is not None and version == want:
            return modules / package, ""
        seen.append(f"{modules}: {'none' if version is None else f'{package} {version}, the lock pins {want}'}")
    return None, "; ".join(seen)


def npm_installed(package: str) -> bool:
    """Whether the locked version of `package` is installed where the runtimes look (nothing is run)."""
    return _found(package)[0] is not None


def node_installed(package: str) -> Callable[[], bool]:
    """A runtime's `installed` check: Node on PATH and the locked package where the runtimes look."""
    return lambda: shutil.which("node") is not None and npm_installed(package)


def npm_package(package: str) -> Path:
    """The installed package folder (the lock's version), or a one-line error that says how to install it."""
    folder, seen = _found(package)
    if folder is None:
        raise InputError(f"Expected the npm package {package} at the version package-lock.json pins. Received: "
                         f"{seen} (not installed: `lstm-onnx setup --runtimes {SETUP_NAMES.get(package, 'node,web')}`)")
    return folder


class NodeRunner(Runner):
    """One model loaded in onnxruntime-node or onnxruntime-web (WASM) under Node; a run past its deadline
    stops the Node process."""

    def __init__(self, path: Path, model: onnx.ModelProto, runtime: str = "onnxruntime-node", threads: int | None = None):
        if runtime not in BACKENDS:
            raise InputError(f"Expected a JavaScript runtime among {list(BACKENDS)}. Received: {runtime!r}")
        backend, package = BACKENDS[runtime]
        node = node_binary()
        modules = npm_package(package).parent
        super().__init__(model, runtime)
        self.copy = self_contained_copy(model, runtime)
        try:
            env = {**os.environ, "LSTM_ONNX_NODE_MODULES": str(modules)}  # the harness requires from there
            threads_arg = [str(check_threads([threads])[0])] if threads and backend == "node" else []
            self.process = LineProcess([node, str(HARNESS), backend, str(self.copy), *threads_arg], runtime, cwd=JS_DIR,
                                       env=env)
            ready = self.process.receive(START_TIMEOUT)
            if "error" in ready:
                raise RuntimeFailure(f"Expected {runtime} to load {Path(path).name}. Received its error: {ready['error']}")
        except BaseException:
            self.close()
            raise

    @property
    def pid(self) -> int:
        return self.process.pid

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
