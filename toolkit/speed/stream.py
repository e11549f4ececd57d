"""`lstm-onnx bench --stream`: consecutive calls of one step (or one chunk), the states carried, per form.

A streaming model is called thousands of times a second at batch 1, so what counts is the cost of one
call with its states carried, not the time of a long sequence. Each form runs the same chunks in turn:

- `session.run`: ONNX Runtime's plain Python API, each call's state outputs fed back as numpy arrays
  (what deploy code writes first);
- `open_stream`: `toolkit.open_stream`, I/O binding with the states kept in ONNX Runtime's buffers;
- `stream loop` in onnxruntime-node and OpenVINO: the same loop run in Node (`await session.run`) or in
  OpenVINO's child (one infer request), timed there, so the transfer to the child is not counted;

at each thread count, timed in alternation round after round (`bench.interleaved_timers`), so drift
lands on all of them alike. Each form is also run over 8 chunks from zero states and its last outputs
compared with ONNX Runtime's unchunked run of the same 8 chunks: the fastest form within the tolerance is
recommended. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.errors import InputError, RuntimeFailure
from toolkit.progress import Progress
from toolkit.tolerance import Tolerances

CHECK_CHUNKS = 8  # chunks each form runs from zero states for its error


@dataclass(frozen=True)
class StreamForm:
    runtime: str  # onnxruntime, onnxruntime-node, openvino
    binding: str  # session.run, open_stream, stream loop
    threads: int

    @property
    def label(self) -> str:
        return f"{self.runtime} {self.binding} x{self.threads}"


@dataclass(frozen=True)
class StreamResult:
    form: StreamForm
    step_us: float | None = None  # per call (one step, or one chunk of `steps`)
    max_abs: float | None = None
    within: bool = False
    problem: str = ""  # why it was not timed

    def to_json(self) -> dict[str, Any]:
        return {"label": self.form.label, "runtime": self.form.runtime, "binding": self.form.binding,
                "threads": self.form.threads, "step_us": self.step_us, "max_abs": self.max_abs,
                "within_tolerance": self.within, "problem": self.problem or None}


@dataclass(frozen=True)
class StreamBenchReport:
    model: str
    batch: int
    steps: int  # per call
    tolerance: str
    results: tuple[StreamResult, ...]
    machine: str = field(default_factory=lambda: f"{os.cpu_count()} CPU cores")

    @property
    def recommended(self) -> StreamResult | None:
        eligible = [r for r in self.results if r.within and r.step_us is not None]
        return min(eligible, key=lambda r: r.step_us) if eligible else None

    def to_json(self) -> dict[str, Any]:
        best = self.recommended
        return {"model": self.model, "stream": True, "batch": self.batch, "steps": self.steps,
                "tolerance": self.tolerance, "machine": self.machine, "forms": [r.to_json() for r in self.results],
                "step_us": {r.form.label: r.step_us for r in self.results if r.step_us is not None},
                "recommended": best.form.label if best else None, "recommended_step_us": best.step_us if best else None}

    def text(self) -> str:
        from toolkit.checking.report import table

        rows = [[r.form.runtime, r.form.binding, str(r.form.threads), "" if r.step_us is None else f"{r.step_us:.1f}",
                 "" if r.max_abs is None else f"{r.max_abs:.2e}", "not valid" if r.problem else ("yes" if r.within else "no")]
                for r in self.results]
        problems = dict.fromkeys(f"not valid: {r.form.runtime} x{r.form.threads}: {r.problem}"
                                 for r in self.results if r.problem)
        head = (f"{self.model}: streamed, batch {self.batch} x {self.steps} step(s) per call, states carried; "
                f"error against onnxruntime unchunked; tolerance {self.tolerance}; {self.machine}")
        best = self.recommended
        verdict = (f"recommended: {best.form.label} ({best.step_us:.1f} us per call)" if best
                   else "recommended: none (no form within the tolerance)")
        return "\n".join([head, table(["runtime", "binding", "threads", "us per call", "max abs", "within tol"], rows),
                          *problems, verdict])

    def session_defaults(self) -> Any:
        """What `bench --stream --record` writes: the recommended form's runtime and threads."""
        from toolkit.onnxfile.metadata import SessionDefaults

        best = self.recommended
        if best is None:
            return None
        return SessionDefaults(best.form.runtime, best.form.threads, self.batch, self.steps, True,
                               round(best.step_us, 2))


@dataclass
class _Stream:
    """What every form runs: the chunks in turn, from zero states, through the state map."""

    input_name: str
    chunks: list[np.ndarray]
    zeros: dict[str, np.ndarray]
    mapping: dict[str, str]


def _run_form(session: Any, stream: _Stream, names: Sequence[str]) -> tuple[Callable[[int], float], Callable[[], dict]]:
    """ONNX Runtime's `session.run`, the state outputs fed back as the next call's state inputs."""
    index = {state_in: names.index(state_out) for state_in, state_out in stream.mapping.items()}
    feeds = dict(stream.zeros)
    chunks = stream.chunks

    def timed(calls: int) -> float:
        start = time.perf_counter()
        for call in range(calls):
            feeds[stream.input_name] = chunks[call % len(chunks)]
            outputs = session.run(None, feeds)
            for name, at in index.items():
                feeds[name] = outputs[at]
        return (time.perf_counter() - start) / max(calls, 1)

    def last() -> dict:
        feeds.update(stream.zeros)
        outputs = None
        for chunk in chunks:
            feeds[stream.input_name] = chunk
            outputs = session.run(None, feeds)
            feeds.update({name: outputs[at] for name, at in index.items()})
        return dict(zip(names, outputs))

    return timed, last


def _session_form(session: Any, stream: _Stream) -> tuple[Callable[[int], float], Callable[[], dict]]:
    def timed(calls: int) -> float:
        chunks, step = stream.chunks, session.step
        start = time.perf_counter()
        for call in range(calls):
            step(chunks[call % len(chunks)])
        return (time.perf_counter() - start) / max(calls, 1)

    def last() -> dict:  # the step's outputs and the carried states (a step returns the former only)
        session.reset()
        outputs = [session.step(chunk) for chunk in stream.chunks][-1]
        outputs.update({stream.mapping[name]: value for name, value in session.states.items()})
        session.reset()
        return outputs

    return timed, last


def _child_form(runner: Any, stream: _Stream) -> tuple[Callable[[int], float], Callable[[], dict]]:
    def timed(calls: int) -> float:
        return runner.stream(stream.input_name, stream.chunks, stream.zeros, stream.mapping, calls)[0]

    def last() -> dict:
        return runner.stream(stream.input_name, stream.chunks, stream.zeros, stream.mapping, len(stream.chunks))[1]

    return timed, last


def _open(form: StreamForm, proto: Any, path: Path, stream: _Stream, stack: contextlib.ExitStack) -> Any:
    """The form's (timer, last outputs) pair, or the reason it cannot run here."""
    from toolkit.deploy.stream_session import open_stream
    from toolkit.runtimes.registry import RUNTIMES

    if form.binding == "session.run":
        from toolkit.onnxfile.model import graph_outputs
        from toolkit.runtimes.onnxrt import open_session, session_options

        names = [t.name for t in graph_outputs(proto)]
        return _run_form(open_session(proto, session_options(form.threads)), stream, names)
    if form.binding == "open_stream":
        batch, steps = stream.chunks[0].shape[:2]
        return _session_form(stack.enter_context(open_stream(proto, batch, steps, threads=form.threads)), stream)
    runtime = RUNTIMES[form.runtime]
    problem = runtime.problem(proto) if runtime.installed() else f"{form.runtime} is not installed"
    if problem:
        return problem
    try:
        return _child_form(stack.enter_context(runtime.open(path, proto, threads=form.threads)), stream)
    except (InputError, RuntimeFailure) as exc:
        return str(exc)


def stream_forms(threads: Sequence[int] | None = None) -> list[StreamForm]:
    from toolkit.speed.bench import default_threads

    counts = list(threads or default_threads())
    return [StreamForm(runtime, binding, n) for runtime, binding in
            (("onnxruntime", "session.run"), ("onnxruntime", "open_stream"), ("onnxruntime-node", "stream loop"),
             ("openvino", "stream loop")) for n in counts]


def stream_bench(onnx_path: str | Path, batch: int = 1, steps: int = 1, tolerances: Tolerances = Tolerances(),
                 threads: Sequence[int] | None = None, budget_s: float = 8.0, rounds: int = 15,
                 progress: Progress = Progress()) -> StreamBenchReport:
    """Time consecutive carried calls of `steps` steps at `batch` in every form; see the module docstring."""
    from toolkit.checking.inputs import input_cases
    from toolkit.checking.loop import agreement, decided_tolerances
    from toolkit.checking.streaming import check_streamable, sequence_input, state_map, time_outputs
    from toolkit.onnxfile.model import load_onnx
    from toolkit.runtimes.onnxrt import OnnxRunner
    from toolkit.speed.bench import interleaved_timers

    if batch < 1 or steps < 1:
        raise InputError(f"Expected --batch and --steps >= 1. Received: batch={batch}, steps={steps}")
    proto = load_onnx(onnx_path)
    mapping = state_map(proto)
    check_streamable(proto)
    reference = OnnxRunner(proto, threads=1)
    input_name = sequence_input(reference.inputs)
    feeds = input_cases(proto, batch=batch, steps=steps * CHECK_CHUNKS)[0].feeds
    whole = reference.run({input_name: feeds[input_name]})
    zeros = {name: np.zeros_like(whole[out]) for name, out in mapping.items()}
    stream = _Stream(input_name, [np.ascontiguousarray(feeds[input_name][:, i * steps:(i + 1) * steps])
                                  for i in range(CHECK_CHUNKS)],
                     zeros, mapping)
    timed_names = time_outputs(reference)
    expected = {name: (value[:, -steps:] if name in timed_names else value) for name, value in whole.items()}
    tolerances = decided_tolerances(tolerances, proto, tier="float32")
    forms = stream_forms(threads)
    progress.begin(len(forms) + 1, "bench --stream")
    results: dict[StreamForm, StreamResult] = {}
    with contextlib.ExitStack() as stack:
        opened = {}
        for form in forms:
            found = _open(form, proto, Path(onnx_path), stream, stack)
            if isinstance(found, str):
                results[form] = StreamResult(form, problem=found)
            else:
                opened[form] = found
                found_error = agreement(expected, found[1](), tolerances)
                results[form] = StreamResult(form, max_abs=found_error.max_abs, within=found_error.within)
            progress.advance(f"opened {form.label}")
        timings = interleaved_timers({f.label: timer for f, (timer, _) in opened.items()}, budget_s, rounds)
        progress.advance("timed")
    progress.end()
    done = tuple(StreamResult(f, timings[f.label] * 1e3, r.max_abs, r.within) if f in opened else r
                 for f, r in results.items())
    return StreamBenchReport(Path(onnx_path).name, batch, steps, str(tolerances.base), done)
