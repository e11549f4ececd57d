"""A SavedModel's graph runs in a child process, bounded in time and memory, never in lstm-onnx itself.

The op allowlist (`toolkit.models.keras2.ops`) keeps a SavedModel from touching files, but pure computation can
still loop forever (a `While` whose condition never fails) or allocate without end (`Fill` of a huge
shape), and `tf.saved_model.load` already runs the file's restore and initializer functions. So whatever
executes the file's graph, loading it, running its serving signature as the parity reference, and
tf2onnx's conversion of a `tf.Module` signature (which folds constants), happens in a child that
is killed past `CALL_SECONDS` per request, `TOTAL_SECONDS` from its start (every request together) or
`EXPORT_SECONDS` from the export's start, or `MAX_RSS_BYTES` of resident memory, with a one-line error.

Messages are one JSON header line, then (for arrays) an `.npz` payload of the length the header gives:
no pickle crosses the boundary.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from toolkit.errors import InputError
from toolkit.text import safe_text

CALL_SECONDS = 120.0
"""A load, conversion or run that takes longer is stopped (the export's stated bound is 120 s)."""

TOTAL_SECONDS = 90.0
"""The child's whole life: load, conversion and every case together. A bound per call alone let a 0.7 MB
SavedModel whose signature spins an allowlisted `While` for 80-90 s a call export in 162-230 s (and
pass)."""

EXPORT_SECONDS = 100.0
"""The child's deadline counted from the export's first step (its private copy, `copy_started`), where
that is known: what lstm-onnx does before the child starts (importing TensorFlow, checking the graph)
took 7 s on an idle machine and 50 s at load 13 on 2 cores, so a child bound alone could not keep the
stated 120 s. The 20 s left cover lstm-onnx's start before the copy, and stopping the child and saying so."""

MAX_RSS_BYTES = 2 << 30
"""Resident memory of the child beyond which it is stopped (the export's stated bound is 2 GB)."""


def _send(stream: BinaryIO, header: dict, arrays: Mapping[str, np.ndarray] | None = None, blob: bytes = b"") -> None:
    payload = blob
    if arrays is not None:
        buffer = io.BytesIO()
        np.savez(buffer, **{key: np.asarray(value) for key, value in arrays.items()})
        payload = buffer.getvalue()
    stream.write(json.dumps({**header, "bytes": len(payload)}).encode() + b"\n" + payload)
    stream.flush()


def _receive(stream: BinaryIO) -> tuple[dict, bytes]:
    line = stream.readline(1 << 20)
    if not line:
        raise EOFError("closed")
    header = json.loads(line)
    return header, stream.read(int(header["bytes"])) if header["bytes"] else b""


def _arrays(payload: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(payload), allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


class SignatureChild:
    """A child process holding one SavedModel's `serving_default` signature."""

    def __init__(self, folder: Path):
        self.folder = folder
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
        from toolkit.process import die_with_parent

        self.process = subprocess.Popen([sys.executable, "-m", "toolkit.runtimes.keras2_child", str(folder)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
                                        preexec_fn=die_with_parent)  # never outlives lstm-onnx
        self.deadline, self.bound = _deadline(folder)  # the load and every later request, together
        self._sharing: list[Any] = []
        self.spec, _ = self._call({"op": "load"})

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        _, payload = self._call({"op": "run"}, arrays=feeds)
        return _arrays(payload)

    def convert(self, opset: int) -> bytes:
        """tf2onnx's conversion of the signature, made in the child (it folds the graph's constants)."""
        _, payload = self._call({"op": "convert", "opset": opset})
        return payload

    def share_deadline(self, runner: Any) -> None:
        """Hold `runner`'s runs, made between this child's calls (the export's ONNX Runtime check of the
        converted graph, which spins as long as the signature does), to the same deadline: before each of
        them, its per-run timeout is the time left."""
        self._sharing.append(runner)
        runner.timeout = max(self.deadline - time.monotonic(), 0.001)

    def convert_lambda(self, node_path: str, opset: int) -> bytes:
        """tf2onnx's conversion of a Lambda layer's traced graph (`toolkit.models.keras2.traced_lambda`)."""
        _, payload = self._call({"op": "convert_lambda", "path": node_path, "opset": opset})
        return payload

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()

    def _call(self, header: dict, arrays: Mapping[str, np.ndarray] | None = None) -> tuple[dict, bytes]:
        try:
            _send(self.process.stdin, header, arrays)
        except (BrokenPipeError, OSError):
            self._fail("it exited")
        deadline = min(time.monotonic() + CALL_SECONDS, self.deadline)
        past = f"{CALL_SECONDS:g} s" if deadline < self.deadline else self.bound
        os.set_blocking(self.process.stdout.fileno(), True)
        import select

        while True:
            ready, _, _ = select.select([self.process.stdout], [], [], 0.1)
            if ready:
                break
            if self.process.poll() is not None:
                self._fail(f"it exited with {self.process.returncode}")
            if time.monotonic() > deadline:
                self._fail(f"it ran past {past}")
            if _rss(self.process.pid) > MAX_RSS_BYTES:
                self._fail(f"it grew past {MAX_RSS_BYTES >> 20} MiB of memory")
        try:
            reply, payload = _receive(self.process.stdout)
        except (EOFError, ValueError, KeyError):
            self._fail("it exited mid-answer")
        for runner in self._sharing:  # the reference runs first in each case, then the runtimes
            runner.timeout = max(self.deadline - time.monotonic(), 0.001)
        if reply.get("error"):
            self.close()
            raise InputError(f"Expected the SavedModel's graph to {header['op']} in TensorFlow. Received: "
                             f"{safe_text(str(self.folder.name))!r}: {safe_text(reply['error'], limit=250)}")
        return reply, payload

    def _fail(self, why: str) -> None:
        self.close()
        raise InputError(f"Expected the SavedModel's graph to finish within {CALL_SECONDS:g} s a call, "
                         f"{TOTAL_SECONDS:g} s in all ({EXPORT_SECONDS:g} s from the export's start) and "
                         f"{MAX_RSS_BYTES >> 20} MiB. Received: "
                         f"{safe_text(str(self.folder.name))!r}: stopped, {why}")


def _deadline(folder: Path) -> tuple[float, str]:
    """When the child must have answered everything, and how to name that bound in a refusal."""
    from toolkit.safety.private import copy_started

    own = time.monotonic() + TOTAL_SECONDS
    started = copy_started(folder)
    if started is not None and started + EXPORT_SECONDS < own:
        return started + EXPORT_SECONDS, f"{EXPORT_SECONDS:g} s from the export's start"
    return own, f"{TOTAL_SECONDS:g} s in all (load and every call)"


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


# ------------------------------------------------------------------------------------------- the child


def _spec(function: Any) -> dict:
    _, keyword = function.structured_input_signature
    outputs = function.structured_outputs if isinstance(function.structured_outputs, dict) else {}
    inputs = [[name, spec.shape.as_list(), spec.dtype.as_numpy_dtype.__name__] for name, spec in sorted(keyword.items())]
    return {"inputs": inputs, "outputs": sorted(outputs), "output_shapes": {k: v.shape.as_list() for k, v in outputs.items()}}


def _serve(folder: str) -> None:
    """The child's loop: load, then answer run/convert requests on stdin/stdout until stdin closes."""
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # anything TensorFlow prints must not corrupt the replies
    import tensorflow as tf

    function, states, dtypes = None, [], {}
    while True:
        try:
            header, payload = _receive(stdin)
        except EOFError:
            return
        try:
            if header["op"] == "load":
                loaded = tf.saved_model.load(folder)
                function = loaded.signatures["serving_default"]
                states = _state_variables(loaded, Path(folder))
                dtypes = {name: spec.dtype for name, spec in function.structured_input_signature[1].items()}
                _send(stdout, _spec(function))
            elif header["op"] == "run":
                for variable in states:  # each case from zero states, as the export's defaults
                    variable.assign(tf.zeros_like(variable))
                feeds = _arrays(payload)
                result = function(**{k: tf.constant(v, dtype=dtypes.get(k)) for k, v in feeds.items() if k in dtypes})
                _send(stdout, {}, arrays={k: v.numpy() for k, v in result.items()})
            elif header["op"] == "convert_lambda":
                from toolkit.models.keras2.traced_lambda import convert_traced

                _send(stdout, {}, blob=convert_traced(loaded, str(header["path"]), int(header["opset"])))
            else:
                _send(stdout, {}, blob=_convert(function, int(header["opset"])))
        except Exception as exc:  # noqa: BLE001 - every failure goes back as one line
            _send(stdout, {"error": f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]}"})


def _state_variables(loaded: Any, folder: Path) -> list[Any]:
    """Stateful layers' state variables (`<layer>/keras_api/states/<i>` in a tf.keras checkpoint)."""
    import tensorflow as tf

    if not (folder / "variables" / "variables.index").is_file():
        return []
    keys = tf.train.load_checkpoint(str(folder / "variables" / "variables")).get_variable_to_shape_map()
    found = []
    for key in keys:
        path = key.split("/.ATTRIBUTES")[0].split("/")
        if "states" not in path:
            continue
        node = loaded
        for part in path:
            node = node[int(part)] if part.isdigit() and hasattr(node, "__getitem__") else getattr(node, part, None)
            if node is None:
                break
        if node is not None and hasattr(node, "assign"):
            found.append(node)
    return found


def _convert(function: Any, opset: int) -> bytes:
    from toolkit.tf2onnx_lib import InputSignature, convert_call

    spec = _spec(function)
    signature = [InputSignature(name, dtype, tuple(shape)) for name, shape, dtype in spec["inputs"]]
    keys = [name for name, _, _ in spec["inputs"]]

    def call(*args: Any) -> list[Any]:
        result = function(**dict(zip(keys, args)))
        return [result[key] for key in spec["outputs"]]

    return convert_call(call, signature, opset, "SavedModel signature").SerializeToString()


if __name__ == "__main__":
    _serve(sys.argv[1])
