"""`lstm-onnx bench`: one export timed in every available runtime, precision tier and thread count.

Every form (a runtime, a tier, a thread count) is opened on the same model and fed the same inputs
(uniform(-1, 1) floats, or token ids the model's embeddings accept). They are timed in alternation, round
after round, in one process, so drift lands on all of them alike; each is compared output by output
with the reference (ONNX Runtime float32 at one thread, or Keras when `--keras` is given) at the user's
tolerance. The fastest form within that tolerance is recommended; a form a runtime does not compute
correctly says why and is never timed. Nothing here imports TensorFlow unless a Keras model is given.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from toolkit.errors import InputError
from toolkit.progress import Progress
from toolkit.runtimes.threads import check_threads
from toolkit.tolerance import Tolerances

if TYPE_CHECKING:  # `lstm-onnx --help` imports this module for the command: onnx and ORT load on use
    import onnx

    from toolkit.checking.loop import Agreement

Feeds = Mapping[str, np.ndarray]
NOT_INSTALLED = "not installed"  # how `registry.not_installed` starts: a form listed, not run


@dataclass(frozen=True)
class Target:
    """A form to time: a registry runtime (`toolkit.runtimes.registry`) at a number of intra-op threads."""

    runtime: str  # what computes: onnxruntime, openvino
    tier: str  # float32, int8, float16, or bf16 (OpenVINO's default precision on CPUs with bf16 instructions)
    threads: int = 1
    name: str = ""  # the registry's name for it

    @property
    def label(self) -> str:
        return f"{self.runtime} {self.tier} x{self.threads}"


@dataclass(frozen=True)
class FormResult:
    """One form's time and error. `problem` says why it was not run (then it has no time or error)."""

    target: Target
    median_ms: float | None = None
    speed: float | None = None  # the baseline's (ORT float32, 1 thread) ms over this form's ms
    max_abs: float | None = None
    max_rel: float | None = None
    within: bool = False  # every output within the tolerance of the reference
    size_bytes: int = 0
    problem: str = ""

    @property
    def label(self) -> str:
        return self.target.label

    def to_json(self) -> dict[str, Any]:
        return {"runtime": self.target.runtime, "tier": self.target.tier, "threads": self.target.threads,
                "label": self.label, "median_ms": self.median_ms, "speed": self.speed, "max_abs": self.max_abs,
                "max_rel": self.max_rel, "within_tolerance": self.within, "size_bytes": self.size_bytes,
                "problem": self.problem or None}


def recommend(results: Sequence[FormResult]) -> FormResult | None:
    """The fastest form within the tolerance; ties go to the earlier (simpler) form."""
    eligible = [r for r in results if r.within and r.median_ms is not None]
    return min(eligible, key=lambda r: r.median_ms) if eligible else None


@dataclass(frozen=True)
class BenchReport:
    """What `bench` measured: one result per form, the reference and tolerance the errors are against."""

    model: str
    batch: int
    steps: int | None
    reference: str  # "keras" or the baseline form's label
    tolerance: str
    results: tuple[FormResult, ...]
    machine: str = field(default_factory=lambda: f"{os.cpu_count()} CPU cores")

    @property
    def recommended(self) -> FormResult | None:
        return recommend(self.results)

    def to_json(self) -> dict[str, Any]:
        best = self.recommended
        return {"model": self.model, "batch": self.batch, "steps": self.steps, "reference": self.reference,
                "tolerance": self.tolerance, "machine": self.machine,
                "forms": [r.to_json() for r in self.results], "recommended": best.label if best else None}

    def session_defaults(self) -> Any:
        """What `bench --record` writes: the fastest float32 form within the tolerance (a tier is another
        file, so it is not a way to open this one), or None."""
        from toolkit.onnxfile.metadata import SessionDefaults

        best = recommend([r for r in self.results if r.target.tier == "float32"])
        if best is None:
            return None
        return SessionDefaults(best.target.runtime, best.target.threads, self.batch, self.steps or 1, False,
                               round(best.median_ms * 1e3, 2))

    def text(self) -> str:
        from toolkit.checking.report import table

        rows = [[r.target.runtime, r.target.tier, str(r.target.threads), _num(r.median_ms, ".3f"),
                 _num(r.speed, ".2f", "x"), _num(r.max_abs, ".2e"), _num(r.max_rel, ".2e"),
                 ("yes" if r.within else "no") if not r.problem else _why_not(r.problem),
                 f"{r.size_bytes / 1e3:.1f}"] for r in self.results]
        # One line per runtime and tier that did not run, below the table (the reason is long).
        problems = dict.fromkeys(f"{r.target.runtime} {r.target.tier}: {r.problem}" if r.problem.startswith(NOT_INSTALLED)
                                 else f"not valid: {r.target.runtime} {r.target.tier}: {r.problem}"
                                 for r in self.results if r.problem)
        head = (f"{self.model}: batch {self.batch} x {self.steps if self.steps is not None else 'fixed'} steps; "
                f"error against {self.reference}; tolerance {self.tolerance}; {self.machine}")
        best = self.recommended
        verdict = (f"recommended: {best.label} ({best.median_ms:.3f} ms, {best.speed:.2f}x the baseline, "
                   f"max abs {best.max_abs:.2e})" if best else "recommended: none (no form within the tolerance)")
        return "\n".join([head, table(BENCH_HEADERS, rows), *problems, verdict])


BENCH_HEADERS = ["runtime", "tier", "threads", "median ms", "speed", "max abs", "max rel", "within tol", "size kB"]


def _num(value: float | None, spec: str, suffix: str = "") -> str:
    return "" if value is None else f"{value:{spec}}{suffix}"


def call_timer(fn: Callable[[], Any]) -> Callable[[int], float]:
    """A timer for `interleaved_timers`: seconds per call of `fn` over `calls` calls."""
    def timed(calls: int) -> float:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - start) / max(calls, 1)
    return timed


def interleaved_ms(fns: Mapping[str, Callable[[], Any]], budget_s: float = 8.0, rounds: int = 15,
                   block_s: float = 0.02) -> dict[str, float]:
    """Median per-call ms of several callables timed in alternation (see `interleaved_timers`)."""
    return interleaved_timers({name: call_timer(fn) for name, fn in fns.items()}, budget_s, rounds, block_s)


def interleaved_timers(timers: Mapping[str, Callable[[int], float]], budget_s: float = 8.0, rounds: int = 15,
                       block_s: float = 0.02) -> dict[str, float]:
    """Median per-call ms of several timers (`timed(calls)` -> seconds per call) in alternation (as
    scripts/benchmark.py does). A runner's timer is its `time_calls`: a child runtime times its own calls.

    Each round runs every callable for a block of about `block_s` after a 20 ms pause and three untimed
    calls: a session's intra-op threads spin for a while after a call and would take the cores from the
    next one, and alternating puts the same drift on every contender.
    """
    calls: dict[str, int] = {}
    for name, timed in timers.items():
        timed(3)  # first calls allocate and pick kernels
        calls[name] = max(3, int(block_s / max(timed(1), 1e-6)))
    samples: dict[str, list[float]] = {name: [] for name in timers}
    deadline = time.perf_counter() + budget_s
    for round_ in range(rounds):
        if round_ >= min(5, rounds) and time.perf_counter() > deadline:
            break
        for name, timed in timers.items():
            # Each session has its own intra-op threads, which spin for a while after a call: let the
            # previous session's go quiet, or they take the second core from this one (LSTM batch 32:
            # 6.7 ms instead of 3.7). Then wake this session's threads with untimed calls.
            time.sleep(0.02)
            timed(3)
            samples[name].append(timed(calls[name]))
    return {name: statistics.median(values) * 1e3 for name, values in samples.items()}


def bench_inputs(model: onnx.ModelProto, batch: int, steps: int, seed: int = 0) -> tuple[dict[str, np.ndarray], int | None]:
    """Feeds for every required input at this batch and length (`toolkit.checking.inputs.file_cases`), and
    the length used (a fixed one wins)."""
    from toolkit.checking.inputs import input_cases

    feeds = dict(input_cases(model, seed, batch=batch, steps=steps)[0].feeds)
    used = next((value.shape[1] for value in reversed(feeds.values()) if value.ndim > 1), None)
    return feeds, used


def _why_not(problem: str) -> str:
    return NOT_INSTALLED if problem.startswith(NOT_INSTALLED) else "not valid"


def default_threads() -> tuple[int, ...]:
    return tuple(sorted({1, os.cpu_count() or 1}))


def bench(onnx_path: str | Path, batch: int = 1, steps: int = 100, keras_path: str | Path | None = None,
          tolerances: Tolerances = Tolerances(), threads: Sequence[int] | None = None,
          runtimes: Sequence[str] | None = None, budget_s: float = 8.0, rounds: int = 15,
          progress: Progress = Progress(), timeout: float = 120.0) -> BenchReport:
    """Time `onnx_path` in every form and compare each with the reference; see the module's docstring.
    Every run, timed or not, stops at `timeout` seconds (`--timeout`)."""
    from toolkit.checking.loop import decided_tolerances
    from toolkit.onnxfile.metadata import read_tier
    from toolkit.onnxfile.model import graph_outputs, load_onnx

    if batch < 1 or steps < 1:
        raise InputError(f"Expected --batch and --steps >= 1. Received: batch={batch}, steps={steps}")
    proto = load_onnx(onnx_path)
    made_in = read_tier(proto)
    if made_in != "float32":
        raise InputError(f"Expected a float32 export (bench derives every tier from it). Received: a {made_in} export")
    feeds, used_steps = bench_inputs(proto, batch, steps)
    names = [t.name for t in graph_outputs(proto)]
    tolerances.check_names(names)
    tolerances = decided_tolerances(tolerances, proto, tier="float32")  # every form against float32's own tolerance
    forms = _forms(runtimes, threads)
    results = {}
    progress.begin(len(forms) + 2, "bench")
    with contextlib.ExitStack() as stack:
        opened = {}
        for form in forms:
            runner, problem = _open(form, proto, Path(onnx_path))
            size = (runner.model if runner is not None else proto).ByteSize()
            results[form] = FormResult(form, size_bytes=size, problem=problem)
            if runner is not None:
                opened[form] = stack.enter_context(runner)
            progress.advance(f"opened {form.label}")
        if not opened:
            raise InputError(f"Expected at least one runtime that runs {Path(onnx_path).name}. Received: none did")
        reference, reference_label = _reference(keras_path, opened)
        progress.advance(f"reference: {reference_label}; timing for about {budget_s:g} s")
        timings = interleaved_timers({f.label: (lambda calls, r=r: r.time_calls(feeds, calls, timeout))
                                      for f, r in opened.items()}, budget_s, rounds)
        progress.advance("timed")
        base = next((timings[f.label] for f in opened if (f.runtime, f.tier) == ("onnxruntime", "float32")),
                    min(timings.values()))
        agreements = _agreements(reference, opened, feeds, names, tolerances, timeout)
        for form, found in agreements.items():
            ms = timings[form.label]
            results[form] = FormResult(form, ms, base / ms, found.max_abs, found.max_rel, found.within,
                                       results[form].size_bytes)
    progress.end()
    return BenchReport(Path(onnx_path).name, batch, used_steps, reference_label, str(tolerances.base),
                       tuple(results[f] for f in forms))


def _forms(runtimes: Sequence[str] | None, threads: Sequence[int] | None) -> list[Target]:
    """Every named (default: every) runtime the registry marks as timed, at every thread count. One not
    installed is refused where named, and otherwise listed once (its `_open` says so) and not run."""
    from toolkit.runtimes.registry import RUNTIMES, not_installed

    timed = {name: r for name, r in RUNTIMES.items() if r.timed}
    unknown = [name for name in runtimes or [] if name not in timed]
    if unknown or runtimes == []:
        raise InputError(f"Expected runtimes among {list(timed)}. Received: {list(runtimes or [])}")
    chosen = [timed[name] for name in (runtimes or list(timed))]
    missing = [f"{r.name}: {not_installed(r)}" for r in chosen if not r.installed()]
    if runtimes and missing:
        raise InputError(f"Expected the runtimes named installed. Received: {'; '.join(missing)}")
    counts = threads or default_threads()
    return [Target(r.engine, r.precision, n, r.name) for r in chosen for n in (counts if r.installed() else counts[:1])]


def _open(form: Target, proto: onnx.ModelProto, path: Path) -> tuple[Any, str]:
    """An open runner of the form, or None and why not (its `problem`, or the runtime's refusal)."""
    from toolkit.errors import ModelLoadError, RuntimeFailure
    from toolkit.runtimes.registry import RUNTIMES, not_installed

    runtime = RUNTIMES[form.name]
    if not runtime.installed():
        return None, not_installed(runtime)
    problem = runtime.problem(proto)
    if problem:
        return None, problem
    try:
        return runtime.open(path, proto, threads=form.threads), ""
    except (ModelLoadError, RuntimeFailure) as exc:
        return None, str(exc)


def _reference(keras_path: str | Path | None, opened: Mapping[Target, Any]) -> tuple[Any, str]:
    """The runner every form is compared with, and its label: Keras (its outputs matched to the graph's by
    position), or the first ORT float32 form."""
    if keras_path is not None:
        from toolkit.runtimes.keras import KerasRunner

        return KerasRunner(keras_path), "keras"
    form = next((f for f in opened if (f.runtime, f.tier) == ("onnxruntime", "float32")), next(iter(opened)))
    return opened[form], form.label


def _agreements(reference: Any, opened: Mapping[Target, Any], feeds: Feeds, names: Sequence[str],
                tolerances: Tolerances, timeout: float) -> dict[Target, Agreement]:
    """Every form against the reference on the timed feeds, through the one run-and-compare loop."""
    from toolkit.checking.inputs import InputCase
    from toolkit.checking.loop import Agreement, compare_runners

    case = InputCase("bench", feeds)
    reports = compare_runners(reference, {form.label: runner for form, runner in opened.items()}, [case],
                              tolerances, names, timeout=timeout)
    return {form: Agreement.of(reports[form.label]) for form in opened}


def record(onnx_path: str | Path, defaults: Any) -> str:
    """Write `defaults` (a `metadata.SessionDefaults`) into the file's `lstm_onnx.session`, atomically; the
    line that says what was recorded. A file with external data is refused: rewriting it is not ours to do."""
    import onnx

    from toolkit.fileio import atomic_write_bytes
    from toolkit.onnxfile import metadata
    from toolkit.onnxfile.model import load_onnx

    if defaults is None:
        raise InputError("Expected a form within the tolerance to record. Received: none")
    load_onnx(onnx_path)  # the same checks as every read of a model
    proto = onnx.load(str(onnx_path), load_external_data=False)
    if any(onnx.external_data_helper.uses_external_data(t) for t in proto.graph.initializer):
        raise InputError(f"Expected a self-contained .onnx to record the session defaults in. Received: "
                         f"{Path(onnx_path).name} keeps its weights in external data")
    metadata.write_session_defaults(proto, defaults)
    atomic_write_bytes(onnx_path, proto.SerializeToString())
    return (f"recorded in {Path(onnx_path).name}: {defaults.runtime} with {defaults.threads} thread(s) "
            f"({defaults.us:.1f} us per call at batch {defaults.batch} x {defaults.steps})")


# ------------------------------------------------------------------------------------ the command


def _thread_list(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        values = ()
    if not values:
        raise InputError(f"Expected --threads as counts >= 1 separated by commas, e.g. 1,2. Received: {text!r}")
    return check_threads(tuple(dict.fromkeys(values)))
