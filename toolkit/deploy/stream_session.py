"""A deploy-time streaming session over a `--state-io` export: one step (or one short chunk) per call, the
states carried inside ONNX Runtime from call to call.

`toolkit.checking.streaming` proves a chunked run equal to Keras, every chunk a full runner call. `StreamSession` is
the call a speech, sensor or keyboard model makes thousands of times a second at batch 1, so every cost a
call can shed moves to `open_stream`:

- I/O binding over numpy buffers allocated once: the step input is copied into its bound buffer, every
  output is written by ONNX Runtime into its own. Each state has two buffers and the session two bindings,
  which differ only in which one is read and which written; carrying the states is using the other binding
  next time, with no copy and no numpy round trip (`states` copies them out on request).
- At one step per call, a one-layer export runs its recurrent op alone (`toolkit.deploy.step_graph`): the layout
  nodes around it move no memory at that shape, so the same buffers are bound, viewed in the op's shapes,
  after both graphs gave the same outputs bit for bit at open. `graph` says which graph runs, and why.
- The binding's C-level run: ONNX Runtime 1.32's Python `run_with_iobinding` looks up a WebGPU run option
  that is not set, through a C++ exception, on every call (about 30 us, three times a one-step LSTM(128)).
- Feeds are checked in full once, at open, by the runner contract's `check_feeds` on a feed of the step's
  shape. A step compares the array's type, shape and dtype with that one (three compares); anything else
  takes the slow path, which checks it in full and, for a new chunk length, binds buffers of that length.
  A step written into the bound buffer itself (`session.input`) skips the compares and the copy.
- The deadline costs a step two attribute writes: one guard thread polls the open sessions and sets the
  session's terminate flag when a step has run past its `timeout` (a dict entry and a lock per call, as
  `toolkit.runtimes.onnxrt` does for each run, costs more than that).
- Threads: what `bench --record` measured fastest for this file, else 1 intra-op thread: on this 2-core
  machine 2 threads were slower at every shape measured, one step at batch 1 up to 32 x 100 (docs/speed.md).
  Execution is sequential (ONNX Runtime's default); with more threads they do not spin between steps.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from toolkit.checking.streaming import check_chunks_carry, check_streamable, sequence_input, state_map
from toolkit.deploy.step_graph import StepGraph, bind, same_outputs, step_graph
from toolkit.errors import InputError, ModelLoadError, RuntimeFailure, overrun
from toolkit.onnxfile import metadata
from toolkit.onnxfile.model import graph_inputs, graph_outputs, optional_inputs
from toolkit.runtimes.feeds import check_feeds
from toolkit.runtimes.onnxrt import ORT_ERRORS, as_proto, deadline, open_session, session_options
from toolkit.runtimes.threads import check_threads, max_threads
from toolkit.text import first_line, safe_text

_monotonic = time.monotonic  # a global lookup, not a module attribute's, on every step
_CLOSED = object()  # a closed session's `_x`: what no caller can pass to `step`
STEP_TIMEOUT = 10.0  # seconds one step may run before it is stopped (a crafted graph can loop for ever)
MAX_WAIT = 60.0  # the longest the deadline thread sleeps between polls (an infinite timeout: no deadline)


class _Guard:
    """One daemon thread that stops a session's step once it has run past the session's timeout. A step
    only writes its start time and clears it (no lock, no allocation); the thread polls every open session
    at a quarter of the smallest timeout, so a step is stopped between 1x and 1.25x its timeout."""

    def __init__(self) -> None:
        self._sessions: weakref.WeakSet[StreamSession] = weakref.WeakSet()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def watch(self, session: StreamSession) -> None:
        with self._lock:
            self._sessions.add(session)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="lstm-onnx-stream-deadlines", daemon=True)
                self._thread.start()
        self._wake.set()

    def _loop(self) -> None:
        while True:
            sessions = [s for s in list(self._sessions) if not s.closed]
            if not sessions:
                self._wake.wait()
                self._wake.clear()
                continue
            now = time.monotonic()
            for session in sessions:
                started = session._started
                if started and now - started > session.timeout:
                    session._options.terminate = True
            # Bounded: a wait of an infinite (or 1e300 s) timeout's quarter raised OverflowError in this
            # thread, and no session of the process had a deadline any more.
            self._wake.wait(min(max(0.005, min(s.timeout for s in sessions) / 4), MAX_WAIT))
            self._wake.clear()


_GUARD = _Guard()


def _c_run(session: ort.InferenceSession) -> tuple[Any, bool]:
    """The binding run without the Python wrapper (see the module docstring), and whether it takes the
    C-level binding; the wrapper where a future ONNX Runtime renames its internals."""
    inner = getattr(session, "_sess", None)
    if inner is not None and hasattr(inner, "run_with_iobinding"):
        return inner.run_with_iobinding, True
    return session.run_with_iobinding, False


def _threads(model: onnx.ModelProto, threads: int | None) -> tuple[int, str]:
    """The intra-op thread count and where it came from."""
    if threads is not None:
        return check_threads([threads])[0], "given"
    recorded = metadata.read_session_defaults(model)
    if recorded is None:
        return 1, "default (no bench --record in the file)"
    if recorded.runtime != "onnxruntime":
        return 1, f"default: the file records {safe_text(recorded.runtime)} as fastest, a stream session runs ONNX Runtime"
    return min(recorded.threads, max_threads()), (f"recorded by bench ({recorded.us:.1f} us at batch {recorded.batch} "
                                                  f"x {recorded.steps} steps)")


def _step_options(threads: int, spinning: bool | None, batch: int) -> tuple[ort.SessionOptions, str]:
    """The op alone's session options, and what `graph` adds about them. At batch 1 without ONNX Runtime's
    CPU memory arena: the op's only allocations are its kernel's scratch, a few KB a step, and the arena's
    bookkeeping costs more than malloc's fast path (0.4-0.7 us of a one-step LSTM or GRU(128) call; SimpleRNN
    equal). From batch 2 to 256 the two measured equal, so larger batches keep the arena, as the file's
    graph does (docs/speed.md)."""
    options = session_options(threads, spinning=spinning)
    if batch != 1:
        return options, ""
    options.enable_cpu_mem_arena = False
    return options, "; ONNX Runtime's CPU arena off at batch 1"


class StreamSession:
    """One `--state-io` export open for streaming; see the module docstring. `step(x)` runs one step or
    chunk of shape (batch, steps, ...) and returns every output, or the `outputs` named at open (copies,
    unless opened with copy=False: then the session's own buffers, in a dict the session reuses, both
    overwritten by the next step but one)."""

    closed = True
    _started = 0.0

    def __init__(self, model: onnx.ModelProto | str | Path, batch: int = 1, steps: int = 1, threads: int | None = None,
                 timeout: float = STEP_TIMEOUT, copy: bool = True, spinning: bool | None = None,
                 outputs: Sequence[str] | None = None):
        # Held by a running step. Two threads stepping one session at once read the same side of the state
        # buffers and both flip it: a step was lost without a word (20,000 + 20,000 counted 39,987). A
        # non-blocking acquire refuses the second (a blocking one would mix two callers' steps into one stream).
        self._busy = threading.Lock()
        self.model = as_proto(model)
        check_streamable(self.model)
        self.mapping = state_map(self.model)
        self._inputs, self._optional = graph_inputs(self.model), optional_inputs(self.model)
        self.input_name = sequence_input(self._inputs)
        others = [t.name for t in self._inputs if t.name != self.input_name and t.name not in self.mapping]
        if others:
            raise InputError(f"Expected one step input besides the states to stream. Received also: {others}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise InputError(f"Expected a step timeout > 0 seconds. Received: {timeout!r}")
        self.timeout, self.copy = float(timeout), copy
        self.output_names = [t.name for t in graph_outputs(self.model)]
        self.returned = list(outputs) if outputs is not None else list(self.output_names)
        unknown = [name for name in self.returned if name not in self.output_names]
        if unknown or not self.returned:
            raise InputError(f"Expected outputs among {self.output_names}. Received: {list(outputs or [])}")
        self.threads, self.threads_from = _threads(self.model, threads)
        # A second intra-op thread spinning between steps holds a core the caller's next frame may need:
        # off unless asked (measured: equal or faster, docs/speed.md).
        spin = spinning if spinning is not None else (False if self.threads > 1 else None)
        self._spin = spin
        self._session_options = session_options(self.threads, spinning=spin)
        self.session = open_session(self.model, self._session_options)
        self._options = ort.RunOptions()
        self._options.log_severity_level = 4
        infos = {t.name: t for t in self._inputs + self._optional}
        self._state_info = {name: infos[name] for name in self.mapping}
        self.input_dtype = np.dtype(infos[self.input_name].dtype)
        self._bind(self._check_shape(self._step_zeros(batch, steps)), carry=False)
        check_chunks_carry(lambda feeds: dict(zip(self.output_names, self._plain_run(self.session, feeds))),
                           self._zero_feeds(self._step_zeros(1, 1)), self.input_name, self.mapping, self.model)
        self.closed = False
        _GUARD.watch(self)

    # ------------------------------------------------------------------ open: checks and bindings

    def _step_zeros(self, batch: int, steps: int) -> np.ndarray:
        if not (isinstance(batch, int) and isinstance(steps, int) and batch >= 1 and steps >= 1):
            raise InputError(f"Expected batch and steps >= 1. Received: batch={batch!r}, steps={steps!r}")
        info = next(t for t in self._inputs if t.name == self.input_name)
        fixed = [d for d in info.shape[2:]]
        if not all(isinstance(d, int) for d in fixed):
            raise InputError(f"Expected fixed feature axes on {info.name}. Received: {info.shape_text()}")
        from toolkit.runtimes.feeds import check_feed_bytes

        check_feed_bytes(info.name, (batch, steps, *fixed), self.input_dtype)
        return np.zeros((batch, steps, *fixed), self.input_dtype)

    def _check_shape(self, x: np.ndarray) -> np.ndarray:
        """The runner contract's full check of a step of this shape, states included (zeros)."""
        states = {name: np.zeros(self._state_shape(name, x.shape[0]), info.dtype)
                  for name, info in self._state_info.items()}
        return check_feeds(self._inputs, self._optional, {self.input_name: x, **states})[self.input_name]

    def _state_shape(self, name: str, batch: int) -> tuple[int, ...]:
        info = self._state_info[name]
        if info.shape[:1] != ("batch",) or not all(isinstance(d, int) for d in info.shape[1:]):
            raise InputError(f"Expected state input {name} of shape (batch, units). Received: {info.shape_text()}")
        return (batch, *info.shape[1:])

    def _bind(self, x: np.ndarray, carry: bool) -> None:
        """Buffers and the two bindings for steps of `x`'s shape; the states kept when `carry`."""
        batch = x.shape[0]
        old = self.states if carry else {}
        # What one run at this shape returns says each output's shape (it depends only on the input's).
        probe = dict(zip(self.output_names, self._plain_run(self.session, self._zero_feeds(x))))
        plan = self._plan(x)
        session = self._step_session if plan is not None else self.session
        self._run, self._c_level = _c_run(session)
        self._x = np.zeros_like(x)
        self._pair = {name: [np.zeros(self._state_shape(name, batch), info.dtype) for _ in range(2)]
                      for name, info in self._state_info.items()}
        carried = set(self.mapping.values())
        single = {name: np.empty_like(probe[name]) for name in self.output_names if name not in carried}
        self._keep = [self._x, self._pair, single]  # the OrtValues bound below point into these arrays
        self._bindings, self._results, self._views = [], [], []
        for side in (0, 1):
            binding = session.io_binding()
            reads = {self.input_name: self._x, **{name: pair[side] for name, pair in self._pair.items()}}
            written = {out: self._pair[name][1 - side] for name, out in self.mapping.items()}
            written.update({name: single[name] for name in self.output_names if name not in written})
            bind(binding, plan, reads, written, carried, self._keep)
            self._bindings.append(binding._iobinding if self._c_level else binding)
            self._keep.append(binding)
            self._results.append([(name, written[name]) for name in self.returned])
            self._views.append(dict(self._results[-1]))  # copy=False returns this dict of the buffers
        self._side = 0
        self.step_shape, self.batch = x.shape, batch
        if old:
            self.reset(old)

    def _plan(self, x: np.ndarray) -> StepGraph | None:
        """The op alone where `step_graph` finds it and it gives the file's outputs bit for bit on a random
        step; else None, the file's graph. `self.graph` says which runs, and why."""
        units = {t.name: t.shape[-1] for t in self._inputs + self._optional}
        found = step_graph(self.model, x.shape[0], x.shape[1], units)
        if isinstance(found, str):
            self.graph = f"the file's graph ({found})"
            return None
        try:
            options, arena = _step_options(self.threads, self._spin, x.shape[0])
            self._step_session = open_session(found.model, options)
        except (InputError, ModelLoadError) as exc:
            self.graph = f"the file's graph (the op alone did not load: {exc})"
            return None
        rng = np.random.default_rng(0)
        feeds = {name: rng.uniform(-1, 1, value.shape).astype(value.dtype) for name, value in self._zero_feeds(x).items()}
        expected = dict(zip(self.output_names, self._plain_run(self.session, feeds)))
        ops = {op_in: feeds[graph_in].reshape(found.shapes[op_in]) for op_in, graph_in in found.inputs.items()}
        names = [o.name for o in self._step_session.get_outputs()]
        if not same_outputs(found, expected, dict(zip(names, self._plain_run(self._step_session, ops)))):
            self.graph = "the file's graph (the op alone differed from it on a random step)"
            return None
        self.graph = f"the {found.model.graph.node[0].op_type} op alone (the layout nodes around it move no memory here{arena})"
        return found

    def _zero_feeds(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return {self.input_name: x, **{name: np.zeros(self._state_shape(name, x.shape[0]), info.dtype)
                                       for name, info in self._state_info.items()}}

    def _plain_run(self, session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """One `session.run` (at open: it also warms the session up), under the same deadline."""
        options = ort.RunOptions()
        options.log_severity_level = 4
        try:
            with deadline(options, self.timeout):
                return session.run(None, feeds, options)
        except ORT_ERRORS as exc:
            if options.terminate:
                raise overrun(self.timeout) from None
            raise RuntimeFailure(f"Expected a step ONNX Runtime can run. Received an error: {first_line(exc)}") from None

    # ------------------------------------------------------------------ the per-call path

    @property
    def input(self) -> np.ndarray:
        """The bound input buffer, of shape `step_shape`: a step written into it and passed to `step` is
        neither checked again nor copied (0.3-0.5 us of a one-step call)."""
        if self.closed:
            raise InputError("Expected an open stream session. Received: input after close()")
        return self._x

    def step(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Run one step (or chunk) of shape (batch, steps, ...), carrying the states to the next call.
        One step at a time: a step from another thread while one runs is refused (see `_busy`)."""
        if not self._busy.acquire(False):
            raise InputError("Expected one step at a time on a stream session (open one session per stream or "
                             "thread). Received: a step while another step of this session was running")
        try:
            if x is not self._x:  # the bound buffer itself (`input`) is in place, of its own shape and dtype
                # `is not` on the dtype: numpy's builtin dtypes are singletons; an equal one that is not takes the slow path
                if type(x) is not np.ndarray or x.shape != self.step_shape or x.dtype is not self.input_dtype:
                    x = self._new_shape(x)
                self._x[...] = x
            side = self._side
            self._started = started = _monotonic()
            try:
                self._run(self._bindings[side], self._options)
            except ORT_ERRORS as exc:
                self._failed(exc, side, started)
            finally:
                self._started = 0.0
            self._side = 1 - side
            if self.copy:
                return {name: array.copy() for name, array in self._results[side]}
            return self._views[side]
        finally:
            self._busy.release()

    def _failed(self, exc: Exception, side: int, started: float) -> None:
        """A step stopped at its deadline or failed: the states are reset to zeros (they may be half written).
        A stop that came before the deadline was meant for the step before (the guard read its start time
        just as it ended): that step is run again, once."""
        stopped, self._options.terminate = self._options.terminate, False
        if stopped and time.monotonic() - started < self.timeout:
            try:
                return self._run(self._bindings[side], self._options)
            except ORT_ERRORS as again:
                return self._failed(again, side, time.monotonic() - 2 * self.timeout)
        self.reset()
        if stopped:
            raise overrun(self.timeout) from None
        raise RuntimeFailure(f"Expected a step ONNX Runtime can run. Received an error: {first_line(exc)}") from None

    def _new_shape(self, x: Any) -> np.ndarray:
        """The slow path: a step of another type, dtype or shape, checked in full; a new chunk length is bound."""
        if self.closed:
            raise InputError("Expected an open stream session. Received: step() after close()")
        checked = self._check_shape(np.asarray(x)) if isinstance(x, np.ndarray) else None
        if checked is None:
            raise InputError(f"Expected a numpy array for {self.input_name}. Received: {type(x).__name__}")
        if checked.shape[0] != self.batch:
            raise InputError(f"Expected a step of batch {self.batch} (the carried states'; open another session "
                             f"for another batch). Received: shape {checked.shape}")
        if checked.shape != self.step_shape:
            self._bind(checked, carry=True)
        return checked

    # ------------------------------------------------------------------ states

    @property
    def states(self) -> dict[str, np.ndarray]:
        """A copy of the states the next step reads, by state input name."""
        return {name: pair[self._side].copy() for name, pair in self._pair.items()}

    def reset(self, states: Mapping[str, np.ndarray] | None = None) -> None:
        """Start over: zero states, or these (by state input name; the others zeros). Every given state is
        checked before any is written: a refused reset leaves the states as they were."""
        given = self._checked_states(states)
        for name, pair in self._pair.items():
            pair[self._side][...] = given.get(name, 0)

    def _checked_states(self, states: Mapping[str, np.ndarray] | None) -> dict[str, np.ndarray]:
        if states is None:
            return {}
        if not isinstance(states, Mapping):
            raise InputError(f"Expected states as a mapping of state input name to array. Received: {type(states).__name__}")
        unknown = [safe_text(str(name)) for name in states if name not in self._pair]
        if unknown:
            raise InputError(f"Expected states among {list(self._pair)}. Received: {unknown}")
        checked = {}
        for name, value in states.items():
            like = self._pair[name][0]
            try:
                checked[name] = np.asarray(value, dtype=like.dtype)
            except (TypeError, ValueError) as exc:
                raise InputError(f"Expected state {name} as numbers ({like.dtype}). Received: {first_line(exc)}") from None
            if checked[name].shape != like.shape:
                raise InputError(f"Expected state {name} of shape {like.shape}. Received: {checked[name].shape}")
        return checked

    def close(self) -> None:
        # The next step takes the slow path, which refuses it: no array a caller holds is `_x` any more.
        self.closed, self.step_shape, self._x = True, None, _CLOSED
        self.__dict__.pop("session", None)
        self.__dict__.pop("_bindings", None)

    def __enter__(self) -> StreamSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_stream(model: onnx.ModelProto | str | Path, batch: int = 1, steps: int = 1, threads: int | None = None,
                timeout: float = STEP_TIMEOUT, copy: bool = True, spinning: bool | None = None,
                outputs: Sequence[str] | None = None) -> StreamSession:
    """A `StreamSession` on a `--state-io` export (path or proto), bound for steps of (batch, steps, ...);
    `threads`: intra-op threads (default: recorded by `bench --record`, else 1); `timeout`: seconds a step
    may run; `copy=False`: return the session's buffers; `outputs`: the names `step` returns (all)."""
    return StreamSession(model, batch, steps, threads, timeout, copy, spinning, outputs)
