"""The one runner contract every runtime fulfils, and the wire form of tensors for the child runtimes.

A runner is one open session of one runtime on one model (after Polygraphy's `BaseRunner`): its public
`run(feeds, timeout)` always checks the feeds against the model (names, dtypes, ranks, fixed dims, zero-size
axes, batch agreement, bounded bytes: `toolkit.runtimes.feeds.check_feeds`), fills zero states, then calls the
runtime's own `_run` under a deadline that runtime honours (ONNX Runtime's terminate flag; a child process
stopped). It returns `{graph output name: array}` in graph order; `close()` stops whatever it started and
may be called twice; it is a context manager. ONNX Runtime, onnx.reference, Keras, tf.keras, a SavedModel's
signature, Node, WASM, Chromium and OpenVINO runners all subclass `Runner`; each writes only `_run` and
cannot skip the checks (tests/test_verify.py checks that none overrides `run`).

The child runtimes (Node, OpenVINO, the Chromium page, a SavedModel's signature) take tensors in the one wire
form of `toolkit.runtimes.wire`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from toolkit.errors import InputError, RuntimeFailure
from toolkit.onnxfile.model import check_tensor_io, graph_inputs, graph_outputs, optional_inputs
from toolkit.options import RUN_TIMEOUT
from toolkit.runtimes.feeds import check_feeds
from toolkit.runtimes.wire import decode_answer, encode_tensor

# How long a runtime may take to load a model or run one batch before we call it stuck (seconds). A cold
# Chromium start with the WASM binary takes about 3 s on this machine's 2 shared cores.
START_TIMEOUT = 120.0


def stream_in_child(runner: Runner, process: Any, input_name: str, chunks: Sequence[np.ndarray],
                    states: Mapping[str, np.ndarray], mapping: Mapping[str, str], calls: int,
                    timeout: float | None = None) -> tuple[float, dict[str, np.ndarray]]:
    """A streaming loop run by a child runtime (Node's `protocol.mjs` `stream`, OpenVINO's child): `calls`
    consecutive runs, each fed the next of `chunks` in turn and the states the run before returned (the
    first: `states`; `mapping`: state input -> output). Returns the seconds per call, timed in the child (the
    transfer is not the runtime's time), and the last run's outputs. Chunks and states are checked here,
    once, as `run` checks its feeds."""
    for chunk in chunks:
        runner.check({input_name: chunk, **states})
    request = {"stream": {"input": input_name, "map": dict(mapping), "calls": int(calls),
                          "chunks": [encode_tensor(input_name, c) for c in chunks],
                          "states": [encode_tensor(name, v) for name, v in states.items()]}}
    answer = process.ask(request, runner.timeout if timeout is None else timeout)
    return float(answer.get("seconds", 0.0)), decode_answer(answer, runner.name, runner.output_names)


class Runner:
    """One open session of one runtime on one model: `run` checks, `_run` runs (see the module docstring).

    `model` is the ONNX proto the runner runs, or None for a runner whose feeds another runner checks
    (Keras checks its own inputs; a streaming or carrying runner wraps a runner that checks them). A
    forgotten `close()` happens on garbage collection: no process is left behind.
    """

    name: str = "runtime"
    closed: bool = False
    model: Any = None  # the ONNX proto (KerasRunner: the Keras model)
    timeout: float = RUN_TIMEOUT  # the deadline when `run` is given none

    def __init__(self, model: onnx.ModelProto | None = None, name: str | None = None):
        if name is not None:
            self.name = name
        self.model = model
        self.checks_feeds = model is not None
        if model is None:
            self.inputs, self.optional, self.outputs = (), (), ()
            return
        self.inputs = graph_inputs(model)  # what a caller must feed
        self.optional = optional_inputs(model)  # initial-state inputs: zeros unless fed
        self.outputs = graph_outputs(model)
        check_tensor_io(self.inputs + self.optional + self.outputs)
        self.output_names = [t.name for t in self.outputs]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    def check(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The feeds checked against the model, with zeros for each state input not given."""
        if self.closed:
            raise InputError(f"Expected an open {self.name} runner. Received: run() after close()")
        return check_feeds(self.inputs, self.optional, feeds) if self.checks_feeds else dict(feeds)

    def run(self, feeds: Mapping[str, np.ndarray], timeout: float | None = None) -> dict[str, np.ndarray]:
        """The outputs of one run on checked feeds; a run still going after `timeout` seconds is stopped
        and refused (`toolkit.errors.overrun`)."""
        return self._run(self.check(feeds), self.timeout if timeout is None else timeout)

    def time_calls(self, feeds: Mapping[str, np.ndarray], calls: int, timeout: float | None = None) -> float:
        """Seconds per call of `calls` runs on these feeds (checked once), each under the deadline: what
        `bench` times. A child runtime times the calls where it runs them, leaving out the transfer."""
        checked = self.check(feeds)
        start = time.perf_counter()
        for _ in range(calls):
            self._run(checked, self.timeout if timeout is None else timeout)
        return (time.perf_counter() - start) / max(calls, 1)

    def _run(self, feeds: dict[str, np.ndarray], timeout: float) -> dict[str, np.ndarray]:
        """The runtime's own run of checked feeds, stopped at `timeout` seconds."""
        raise NotImplementedError

    def _stop(self) -> None:
        """Stop what this runner started (called once)."""

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._stop()

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not self.closed:
            self.close()


MAX_PROTO_BYTES = (2 << 30) - 1  # protobuf's limit: a model past it cannot travel as one message


def model_bytes(model: onnx.ModelProto, runtime: str) -> bytes:
    """The model as one self-contained file's bytes, external data inside (`load_onnx` read it): what a
    runtime given bytes (Node, WASM, the Chromium page) loads, so external data works there too."""
    if model.ByteSize() > MAX_PROTO_BYTES:
        raise RuntimeFailure(f"Expected a model under 2 GiB for {runtime}, which takes it as one buffer. Received: "
                             f"{model.ByteSize()} bytes with its external data")
    return model.SerializeToString()


class FailedRunner(Runner):
    """A runtime that could not load a model it is valid for: every run fails with its error, so `verify`
    reports that runtime as failing, saying why, and still compares the others."""

    def __init__(self, name: str, model: onnx.ModelProto, error: RuntimeFailure):
        super().__init__(model, name)
        self.error = error

    def _run(self, feeds: dict[str, np.ndarray], timeout: float) -> dict[str, np.ndarray]:
        raise self.error


def open_or_failed(name: str, opener: Callable, path: Path, model: onnx.ModelProto) -> Runner:
    """`opener(path, model)`, or a `FailedRunner` when the runtime refuses the model. A runtime that is
    not installed still raises its one-line `InputError`: that is the user's to fix, not a result."""
    try:
        return opener(path, model)
    except RuntimeFailure as exc:
        return FailedRunner(name, model, exc)


