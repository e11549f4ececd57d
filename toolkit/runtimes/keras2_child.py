"""A SavedModel's graph runs in a child process, bounded in time and memory, never in lstm-onnx itself.

The op allowlist (`toolkit.models.keras2.ops`) keeps a SavedModel from touching files, but pure computation can
still loop forever (a `While` whose condition never fails) or allocate without end (`Fill` of a huge
shape), and `tf.saved_model.load` already runs the file's restore and initializer functions. So whatever
executes the file's graph, loading it, running its serving signature as the parity reference, and
tf2onnx's conversion of a `tf.Module` signature (which folds constants), happens in a child that
is killed past `CALL_SECONDS` per request, `TOTAL_SECONDS` from its start (every request together) or
`EXPORT_SECONDS` from the export's start, or `MAX_RSS_BYTES` of resident memory, with a one-line error.

The child is `toolkit.process`'s `LineProcess` (its own process group, a parent-death signal, the
deadlines and the memory limit watched while each answer is awaited, the group stopped past them). Messages
are its frames: one JSON header line, with tensors in the wire form of `toolkit.runtimes.wire` inside it and
a converted graph's bytes after it: no pickle crosses the boundary.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.errors import InputError
from toolkit.process import ChildStopped, Deadline, Frame, LineProcess, read_frame, write_frame
from toolkit.runtimes.wire import decode_outputs, decode_tensor, encode_feeds, encode_tensor
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


class SignatureChild:
    """A child process holding one SavedModel's `serving_default` signature."""

    def __init__(self, folder: Path):
        self.folder = folder
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
        at, label = _deadline(folder)  # the load and every later request, together
        self.process = LineProcess([sys.executable, "-m", "toolkit.runtimes.keras2_child", str(folder)],
                                   "the SavedModel's graph", env=env, life=Deadline(at, label), max_rss=MAX_RSS_BYTES)
        self._sharing: list[Any] = []
        self.spec = self._call({"op": "load"}).header

    @property
    def deadline(self) -> float:
        """When the child must have answered everything (`time.monotonic()`)."""
        assert self.process.life is not None
        return self.process.life.at

    @deadline.setter
    def deadline(self, at: float) -> None:
        assert self.process.life is not None
        self.process.life = Deadline(at, self.process.life.label)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return decode_outputs(self._call({"op": "run", **encode_feeds(feeds)}).header)

    def convert(self, opset: int) -> bytes:
        """tf2onnx's conversion of the signature, made in the child (it folds the graph's constants)."""
        return self._call({"op": "convert", "opset": opset}).payload

    def share_deadline(self, runner: Any) -> None:
        """Hold `runner`'s runs, made between this child's calls (the export's ONNX Runtime check of the
        converted graph, which spins as long as the signature does), to the same deadline: before each of
        them, its per-run timeout is the time left."""
        self._sharing.append(runner)
        runner.timeout = max(self.deadline - time.monotonic(), 0.001)

    def convert_lambda(self, node_path: str, opset: int) -> bytes:
        """tf2onnx's conversion of a Lambda layer's traced graph (`toolkit.models.keras2.traced_lambda`)."""
        return self._call({"op": "convert_lambda", "path": node_path, "opset": opset}).payload

    def close(self) -> None:
        self.process.stop(grace=0)  # nothing of the graph's work is worth waiting for

    def _call(self, header: dict) -> Frame:
        try:
            reply = self.process.exchange(header, CALL_SECONDS)
        except ChildStopped as exc:
            self.close()
            raise InputError(f"Expected the SavedModel's graph to finish within {CALL_SECONDS:g} s a call, "
                             f"{TOTAL_SECONDS:g} s in all ({EXPORT_SECONDS:g} s from the export's start) and "
                             f"{MAX_RSS_BYTES >> 20} MiB. Received: "
                             f"{safe_text(str(self.folder.name))!r}: stopped, {exc.why}") from None
        for runner in self._sharing:  # the reference runs first in each case, then the runtimes
            runner.timeout = max(self.deadline - time.monotonic(), 0.001)
        error = (reply.header or {}).get("error")
        if error:
            self.close()
            raise InputError(f"Expected the SavedModel's graph to {header['op']} in TensorFlow. Received: "
                             f"{safe_text(str(self.folder.name))!r}: {safe_text(error, limit=250)}")
        return reply


def _deadline(folder: Path) -> tuple[float, str]:
    """When the child must have answered everything, and how to name that bound in a refusal."""
    from toolkit.safety.private import copy_started

    own = time.monotonic() + TOTAL_SECONDS
    started = copy_started(folder)
    if started is not None and started + EXPORT_SECONDS < own:
        return started + EXPORT_SECONDS, f"{EXPORT_SECONDS:g} s from the export's start"
    return own, f"{TOTAL_SECONDS:g} s in all (load and every call)"


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
    while (frame := read_frame(stdin)) is not None:
        header = frame.header or {}
        try:
            if header["op"] == "load":
                loaded = tf.saved_model.load(folder)
                function = loaded.signatures["serving_default"]
                states = _state_variables(loaded, Path(folder))
                dtypes = {name: spec.dtype for name, spec in function.structured_input_signature[1].items()}
                write_frame(stdout, _spec(function))
            elif header["op"] == "run":
                for variable in states:  # each case from zero states, as the export's defaults
                    variable.assign(tf.zeros_like(variable))
                feeds = {spec["name"]: decode_tensor(spec) for spec in header["feeds"]}
                result = function(**{k: tf.constant(v, dtype=dtypes.get(k)) for k, v in feeds.items() if k in dtypes})
                write_frame(stdout, {"outputs": [encode_tensor(k, v.numpy()) for k, v in result.items()]})
            elif header["op"] == "convert_lambda":
                from toolkit.models.keras2.traced_lambda import convert_traced

                write_frame(stdout, {}, convert_traced(loaded, str(header["path"]), int(header["opset"])))
            else:
                write_frame(stdout, {}, _convert(function, int(header["opset"])))
        except Exception as exc:  # noqa: BLE001 - every failure goes back as one line
            write_frame(stdout, {"error": f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]}"})


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
