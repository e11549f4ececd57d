"""ONNX Runtime in Python: one session at one graph optimization level, stopped at its deadline.

`OnnxRunner` is what `run`, `inspect`, the export's parity check and `verify` run; each optimization
level is a runtime of its own in the registry (a wrong rewrite shows as a difference between levels).
The deadline is ONNX Runtime's own terminate flag, which its kernels and loops check.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

from toolkit.errors import InputError, ModelLoadError, RuntimeFailure, overrun
from toolkit.onnxfile.model import load_onnx
from toolkit.runtimes.base import Runner
from toolkit.runtimes.threads import check_threads
from toolkit.text import first_line

# What ONNX Runtime raises for a model or feed it rejects: its own pybind11 types (plain Exception
# subclasses, so nothing narrower catches them) and what its Python layer raises.
ORT_ERRORS: tuple[type[Exception], ...] = tuple(
    getattr(_ort_state, name) for name in ("Fail", "InvalidArgument", "InvalidGraph", "InvalidProtobuf", "NoModel",
                                           "NoSuchFile", "NotFound", "NotImplemented", "RuntimeException", "EPFail",
                                           "EngineError") if hasattr(_ort_state, name)
) + (RuntimeError, TypeError, ValueError)

# ONNX Runtime at each graph optimization level, by runtime name.
ORT_LEVELS = {
    "onnxruntime": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    "onnxruntime-extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "onnxruntime-basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "onnxruntime-disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
}


def as_proto(model: onnx.ModelProto | str | Path) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    if not isinstance(model, (str, Path)):
        raise InputError(f"Expected an ONNX model: a file path or an onnx.ModelProto. Received: {type(model).__name__}")
    return load_onnx(model)


class _Watchdog:
    """One daemon thread that sets each registered run's `terminate` flag at its deadline. A thread per run
    (`threading.Timer`) cost 0.3-0.4 ms per call, 20x a one-step LSTM's whole run, and every run has a
    deadline since the runner contract; registering here is a dict entry under a lock."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active: dict[int, tuple[float, Any]] = {}
        self._thread: threading.Thread | None = None

    def add(self, at: float, run_options: Any) -> None:
        with self._cond:
            self._active[id(run_options)] = (at, run_options)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="lstm-onnx-ort-deadlines", daemon=True)
                self._thread.start()
            self._cond.notify()

    def remove(self, run_options: Any) -> None:
        with self._cond:
            self._active.pop(id(run_options), None)

    def _loop(self) -> None:
        with self._cond:
            while True:
                if not self._active:
                    self._cond.wait()
                    continue
                now = time.monotonic()
                for key, (at, run_options) in list(self._active.items()):
                    if at <= now:
                        run_options.terminate = True
                        del self._active[key]
                if self._active:  # bounded: waiting out an infinite timeout raised OverflowError here
                    self._cond.wait(min(min(at for at, _ in self._active.values()) - now, 60.0))


_WATCHDOG = _Watchdog()


@contextmanager
def deadline(run_options: Any, timeout: float | None) -> Iterator[None]:
    """Set ONNX Runtime's `run_options.terminate` after `timeout` seconds (its kernels and loops check it):
    a crafted Loop of 2**62 steps otherwise never returns."""
    timed = bool(timeout) and math.isfinite(timeout)  # NaN and infinity: no deadline, as None
    if timed:
        _WATCHDOG.add(time.monotonic() + timeout, run_options)
    try:
        yield
    finally:
        if timed:
            _WATCHDOG.remove(run_options)


def session_options(threads: int | None = None,
                    optimization_level: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                    spinning: bool | None = None) -> ort.SessionOptions:
    """ONNX Runtime's session options as lstm-onnx opens every session: `threads` intra-op threads (None:
    one per core), ORT's log off (our exceptions say what failed; its log lines carry ANSI colors).
    `spinning` False stops the intra-op threads from spinning after a call (None: ORT's default, on)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = optimization_level
    options.log_severity_level = 4
    options.intra_op_num_threads = check_threads([threads])[0] if threads else 0  # 0: one thread per core
    if spinning is not None:
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return options


def open_session(model: onnx.ModelProto, options: ort.SessionOptions,
                 providers: Sequence[str] = ("CPUExecutionProvider",)) -> ort.InferenceSession:
    """A session of `model`, or a one-line `ModelLoadError` when ONNX Runtime refuses it."""
    available = ort.get_available_providers()
    missing = [p for p in providers if p not in available]
    if missing:
        raise InputError(f"Expected execution providers among {available}. Received: {list(missing)}")
    try:
        return ort.InferenceSession(model.SerializeToString(), options, providers=list(providers))
    except ORT_ERRORS as exc:  # an op or type this ONNX Runtime lacks, a graph it rejects
        raise ModelLoadError(f"Expected a model ONNX Runtime {ort.__version__} can load. Received: "
                             f"{first_line(exc)}") from None


class OnnxRunner(Runner):
    """An ONNX Runtime session at one graph optimization level; outputs in graph order."""

    def __init__(self, model: onnx.ModelProto | str | Path, providers: Sequence[str] = ("CPUExecutionProvider",),
                 optimization_level: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                 name: str = "onnxruntime", threads: int | None = None):
        super().__init__(as_proto(model), name)
        self.session = open_session(self.model, session_options(threads, optimization_level), providers)

    def _run(self, feeds: dict[str, np.ndarray], timeout: float) -> dict[str, np.ndarray]:
        options = ort.RunOptions()
        options.log_severity_level = 4
        try:
            with deadline(options, timeout):
                values = self.session.run(None, feeds, options)
        except ORT_ERRORS as exc:  # e.g. a dim the graph fixes internally that the declared shape did not
            if options.terminate:
                raise overrun(timeout) from None
            raise RuntimeFailure(f"Expected inputs ONNX Runtime can run. Received an error: {first_line(exc)}") from None
        return dict(zip(self.output_names, values))


def open_level(name: str) -> Any:
    """The registry's `open` of ONNX Runtime at the level `name` stands for."""
    return lambda path, model, threads=None: OnnxRunner(model, optimization_level=ORT_LEVELS[name], name=name,
                                                        threads=threads)


def open_tier(name: str, tier: str) -> Any:
    """The registry's `open` of ONNX Runtime on the model converted to a precision tier (int8, float16)."""
    from toolkit.onnxfile.tiers import apply_tier

    return lambda path, model, threads=None: OnnxRunner(apply_tier(model, tier)[0], name=name, threads=threads)
