"""A deploy-time streaming session over a `--state-io` export: one step (or one short chunk) per call, the
states carried inside ONNX Runtime from call to call (`toolkit.checking.streaming` proves a chunked run equal
to Keras). It is the call a speech, sensor or keyboard model makes thousands of times a second at batch 1,
so every cost a call can shed moves to `open_stream` (measured in docs/speed.md):

- I/O binding over numpy buffers allocated once: the step is copied into its bound buffer, every output is
  written by ONNX Runtime into its own. Each state has two buffers and the session two bindings, which
  differ only in which one is read and which written: carrying the states is using the other binding next
  time, no copy (`states` copies them out on request; a step returns the other outputs).
- At one step per call, a one-layer export runs its recurrent op alone (`toolkit.deploy.step_graph`), an
  LSTM's with its bias folded into W, after it gave the file's outputs at open. `graph` says which runs, why.
- The binding's C-level run: ONNX Runtime 1.32's Python `run_with_iobinding` looks up a WebGPU run option
  that is not set, through a C++ exception, on every call (about 30 us, three times a one-step LSTM(128)).
- `step` is a closure made at each binding over its buffers (locals, not a dozen attribute reads: 0.3 us
  a call); anything off its fast path goes to the method.
- Feeds are checked in full once, at open, by the runner contract's `check_feeds` on a feed of the step's
  shape. A step compares the array's type, shape and dtype with that one; anything else takes the slow
  path, checked in full and, for a new chunk length, bound again. A step written into the bound buffer
  itself (`session.input`) skips the compares and the copy.
- The deadline costs a step two attribute writes: one guard thread polls the open sessions and sets the
  session's terminate flag when a step has run past its `timeout`.
- Threads: what `bench --record` measured fastest for this file, else 1 intra-op thread (2 were slower at
  every shape measured on 2 cores); with more threads they do not spin between steps.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from toolkit.checking.streaming import check_chunks_carry, check_streamable, sequence_input, state_map
from toolkit.deploy.step_graph import StepGraph, bind, fold_bound, same_outputs, step_graph
from toolkit.deploy.step_guard import GUARD, STEP_TIMEOUT, Turn, release
from toolkit.deploy.stream_runtime import c_run, step_options, stream_threads
from toolkit.errors import InputError, ModelLoadError, RuntimeFailure, overrun
from toolkit.onnxfile.model import graph_inputs, graph_outputs, optional_inputs
from toolkit.runtimes.feeds import check_feeds
from toolkit.runtimes.onnxrt import ORT_ERRORS, as_proto, deadline, open_session, session_options
from toolkit.text import first_line, safe_text

BUSY = ("Expected one step at a time on a stream session (open one session per stream or thread). "
        "Received: a step while another step of this session was running")


def _read_only(array: np.ndarray) -> np.ndarray:
    """A view of a session buffer that the caller cannot write (`copy=False`: a carried state's buffer among
    them, which the next step reads)."""
    view = array.view()
    view.flags.writeable = False
    return view


def _session(owner: weakref.ref) -> StreamSession:
    session = owner()
    if session is None:
        raise InputError("Expected an open stream session. Received: step() on a released session")
    return session


class StreamSession:
    """One `--state-io` export open for streaming; see the module docstring. `step(x)` runs one step or
    chunk of shape (batch, steps, ...) and returns the outputs that are not carried states (`states` has
    those), or the `outputs` named at open (copies,
    unless opened with copy=False: then the session's own buffers, in a dict the session reuses, both
    overwritten by the next step but one)."""

    closed = True

    def __init__(self, model: onnx.ModelProto | str | Path, batch: int = 1, steps: int = 1, threads: int | None = None,
                 timeout: float = STEP_TIMEOUT, copy: bool = True, spinning: bool | None = None,
                 outputs: Sequence[str] | None = None):
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
        # By default the layer's outputs, not the states it carries: they stay in ONNX Runtime's buffers,
        # copied out only on request (`states`, or `outputs` naming them); TFLite's call copies one output too.
        carried = set(self.mapping.values())
        default = [name for name in self.output_names if name not in carried] or list(self.output_names)
        self.returned = list(outputs) if outputs is not None else default
        unknown = [name for name in self.returned if name not in self.output_names]
        if unknown or not self.returned:
            raise InputError(f"Expected outputs among {self.output_names}. Received: {list(outputs or [])}")
        self.threads, self.threads_from = stream_threads(self.model, threads)
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
        self._turn = Turn(self.timeout, self._options)
        weakref.finalize(self, release, self._turn)  # a `step` kept past the session's life is refused
        self._bind(self._check_shape(self._step_zeros(batch, steps)), carry=False)
        check_chunks_carry(lambda feeds: dict(zip(self.output_names, self._plain_run(self.session, feeds))),
                           self._zero_feeds(self._step_zeros(1, 1)), self.input_name, self.mapping, self.model)
        self.closed = False
        GUARD.watch(self._turn)

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
        self._run, self._c_level = c_run(session)
        read = self._x = np.zeros_like(x)
        if plan is not None and plan.folded:  # the op reads the step with a constant-1 feature after it
            read = np.ones((*x.shape[:-1], x.shape[-1] + 1), x.dtype)
            self._x = read[..., :-1]
            self._x[...] = 0
        self._pair = {name: [np.zeros(self._state_shape(name, batch), info.dtype) for _ in range(2)]
                      for name, info in self._state_info.items()}
        carried = set(self.mapping.values())
        single = {name: np.empty_like(probe[name]) for name in self.output_names if name not in carried}
        self._keep = [read, self._pair, single]  # the OrtValues bound below point into these arrays
        self._bindings, self._results, self._views = [], [], []
        for side in (0, 1):
            binding = session.io_binding()
            reads = {self.input_name: read, **{name: pair[side] for name, pair in self._pair.items()}}
            written = {out: self._pair[name][1 - side] for name, out in self.mapping.items()}
            written.update({name: single[name] for name in self.output_names if name not in written})
            bind(binding, plan, reads, written, carried, self._keep)
            self._bindings.append(binding._iobinding if self._c_level else binding)
            self._keep.append(binding)
            self._results.append([(name, written[name]) for name in self.returned])
            self._views.append({name: _read_only(array) for name, array in self._results[-1]})  # copy=False's
        self._turn.side = 0
        self._one = [results[0] for results in self._results] if self.copy and len(self.returned) == 1 else None
        self.step_shape, self.batch = x.shape, batch
        self._turn.binding = object()  # a closure made for an earlier binding now takes the method's path
        self.step = self._bound_step()  # type: ignore[method-assign]
        if old:
            self.reset(old)

    def _plan(self, x: np.ndarray) -> StepGraph | None:
        """The op alone where `step_graph` finds it and it gives the file's outputs on a random step (bit for
        bit; a folded bias within `fold_bound`); else None, the file's graph. `graph` says which, and why."""
        units = {t.name: t.shape[-1] for t in self._inputs + self._optional}
        found = step_graph(self.model, x.shape[0], x.shape[1], units)
        if isinstance(found, str):
            self.graph = f"the file's graph ({found})"
            return None
        try:
            options, arena = step_options(self.threads, self._spin, x.shape[0])
            self._step_session = open_session(found.model, options)
        except (InputError, ModelLoadError) as exc:
            self.graph = f"the file's graph (the op alone did not load: {exc})"
            return None
        rng = np.random.default_rng(0)
        feeds = {name: rng.uniform(-1, 1, value.shape).astype(value.dtype) for name, value in self._zero_feeds(x).items()}
        expected = dict(zip(self.output_names, self._plain_run(self.session, feeds)))
        ops = found.op_feeds(feeds)
        names = [o.name for o in self._step_session.get_outputs()]
        bound = fold_bound(found, ops)
        if not same_outputs(found, expected, dict(zip(names, self._plain_run(self._step_session, ops))), bound):
            self.graph = "the file's graph (the op alone differed from it on a random step)"
            return None
        folded = f", its bias folded into W (within {bound:.1e} of the file's graph)" if found.folded else ""
        self.graph = (f"the {found.model.graph.node[0].op_type} op alone{folded} (the layout nodes around it move "
                      f"no memory here{arena})")
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
        neither checked again nor copied (0.3-0.6 us of a one-step call). With a folded bias at batch > 1 it
        is a strided view (the constant-1 column follows each row): numpy writes into it, `readinto` cannot."""
        self._check_open("input")
        return self._x

    def step(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Run one step (or chunk) of shape (batch, steps, ...), carrying the states to the next call.
        One step at a time: a step from another thread while one runs is refused."""
        # Reached off the fast path of the instance's own `step` (`_bound_step`): checked in full (refused
        # once closed), rebound for a new chunk length, then run by the binding's closure from its buffer.
        busy = self._turn.busy
        if not busy.acquire(False):  # a rebinding now would swap the buffers under the running step
            raise InputError(BUSY)
        try:
            self._x[...] = self._new_shape(x)
        finally:
            busy.release()
        return self.__dict__["step"](self._x)

    def _bound_step(self) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
        """`step` for the current binding, a closure over its buffers (locals for a dozen attribute reads: 0.3
        us of an 8.5 us one-step LSTM(128) call), set by `_bind` as the instance's `step`; anything off its
        fast path (another type, shape or dtype; a closed session) goes to the method."""
        buf, shape, dtype, run, options = self._x, self.step_shape, self.input_dtype, self._run, self._options
        bindings, one, results, views, copy = self._bindings, self._one, self._results, self._views, self.copy
        turn, owner, ndarray, monotonic = self._turn, weakref.ref(self), np.ndarray, time.monotonic  # no cycle
        busy, token = turn.busy, turn.binding

        def step(x: np.ndarray) -> dict[str, np.ndarray]:
            # Off the fast path (another type, shape or dtype; kept from an earlier binding or past close()):
            # the method, not this closure. `is not` on the dtype: numpy's builtin dtypes are singletons.
            if turn.binding is not token or x is not buf and (type(x) is not ndarray or x.shape != shape
                                                               or x.dtype is not dtype):
                return StreamSession.step(_session(owner), x)
            if not busy.acquire(False):
                raise InputError(BUSY)
            try:
                if x is not buf:
                    buf[...] = x
                side = turn.side
                turn.started = started = monotonic()
                try:
                    run(bindings[side], options)
                except ORT_ERRORS as exc:
                    _session(owner)._failed(exc, side, started)
                finally:
                    turn.started = 0.0
                turn.side = 1 - side
            finally:
                busy.release()
            if one:
                name, array = one[side]
                return {name: array.copy()}
            if copy:
                return {name: array.copy() for name, array in results[side]}
            return views[side]

        step.__doc__ = StreamSession.step.__doc__
        step.keep = self._keep  # type: ignore[attr-defined]  # its buffers live as long as it does
        return step

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
        self._check_open("states")
        return {name: pair[self._turn.side].copy() for name, pair in self._pair.items()}

    def _check_open(self, what: str) -> None:
        if self.closed:
            raise InputError(f"Expected an open stream session. Received: {what} after close()")

    def reset(self, states: Mapping[str, np.ndarray] | None = None) -> None:
        """Start over: zero states, or these (by state input name; the others zeros). Every given state is
        checked before any is written: a refused reset leaves the states as they were."""
        self._check_open("reset()")
        given = self._checked_states(states)
        for name, pair in self._pair.items():
            pair[self._turn.side][...] = given.get(name, 0)

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
        # A step kept from the session takes the method's path (the turn's token is gone), which refuses it.
        self.closed, self.step_shape = True, None
        release(self._turn)
        self.__dict__.pop("step", None)  # the method again, whose slow path refuses a closed session
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
    may run; `copy=False`: return the session's buffers; `outputs`: the names `step` returns (default: every output
    but the carried states, which `states` gives)."""
    return StreamSession(model, batch, steps, threads, timeout, copy, spinning, outputs)
