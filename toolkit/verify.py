"""Verification from symmetric runners: Keras, ONNX Runtime and onnx.reference behind one small interface,
run over one set of input cases and compared output by output (after Polygraphy's `comparator/`).

A `Runner` is one open session of one runtime on one model: `run(feeds)` returns `{output name: array}`.
A `Runtime` is a kind of runner as `verify --runtimes` names it: why a model is not valid in it (or None),
and how to open one. Adding a runtime is one `register(Runtime(...))` line. `compare_runners` is the one
loop every check goes through: the export's parity check, `verify`, `verify --runtimes` and `--stream`.

Nothing here imports TensorFlow at module level: `KerasRunner` imports Keras in its constructor, so
`run` and `inspect` (which use `OnnxRunner`) stay light.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

from toolkit.compare import (
    CaseResult,
    InvariantCheck,
    ParityReport,
    Tolerances,
    check_equal,
    compare_case,
    failed_case,
)
from toolkit.errors import InputError, ModelLoadError
from toolkit.inputs import InputCase
from toolkit.keras_runner import keras_outputs  # noqa: F401 -- also re-exported: callers import it from here
from toolkit.naming import OutputOrigin, output_origins, unique_names
from toolkit.precision import choose as choose_tolerance
from toolkit.progress import Progress
from toolkit.runner import (
    check_feeds,
    check_tensor_io,
    count_ops,
    deadline,
    first_line,
    graph_inputs,
    graph_outputs,
    load_onnx,
    optional_inputs,
)
from toolkit.runtimes.base import RunnerBase, RuntimeFailure, valid_everywhere
from toolkit.runtimes.registry import DEPLOY_RUNTIMES, TIERS

# What ONNX Runtime raises for a model or feed it rejects: its own pybind11 types (plain Exception
# subclasses, so nothing narrower catches them) and what its Python layer raises.
ORT_ERRORS: tuple[type[Exception], ...] = tuple(
    getattr(_ort_state, name) for name in ("Fail", "InvalidArgument", "InvalidGraph", "InvalidProtobuf", "NoModel",
                                           "NoSuchFile", "NotFound", "NotImplemented", "RuntimeException", "EPFail",
                                           "EngineError") if hasattr(_ort_state, name)
) + (RuntimeError, TypeError, ValueError)
# What onnx.reference's numpy kernels raise for a graph or feed they cannot evaluate.
REFERENCE_ERRORS = (ArithmeticError, LookupError, RuntimeError, TypeError, ValueError)


class Runner(Protocol):
    """One open session of one runtime on one model."""

    name: str  # "keras", "onnxruntime", "onnxruntime-basic", "reference", ...

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...  # keyed by graph output name

    def close(self) -> None: ...  # stop what it started; idempotent

    def __enter__(self) -> Runner: ...

    def __exit__(self, *exc: object) -> None: ...


@dataclass(frozen=True)
class Runtime:
    """A kind of runner, as `verify --runtimes` names it."""

    name: str
    problem: Callable[[onnx.ModelProto], str | None]  # why the model is NOT valid in this runtime; None = valid
    open: Callable[[Path, onnx.ModelProto], Runner]  # the .onnx file on disk and its parsed proto


def _proto(model: onnx.ModelProto | str | Path) -> onnx.ModelProto:
    return model if isinstance(model, onnx.ModelProto) else load_onnx(model)


class GraphRunner(RunnerBase):
    """What every runner of an ONNX graph knows: the proto, its inputs, optional inputs and outputs."""

    def __init__(self, model: onnx.ModelProto | str | Path, name: str):
        self.name = name
        self.model = _proto(model)
        self.inputs = graph_inputs(self.model)
        self.optional = optional_inputs(self.model)
        self.outputs = graph_outputs(self.model)
        check_tensor_io(self.inputs + self.optional + self.outputs)

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def check_feeds(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return check_feeds(self.inputs, self.optional, feeds)


class OnnxRunner(GraphRunner):
    """An ONNX Runtime session at one graph optimization level; checks its feeds, returns outputs in graph order."""

    def __init__(self, model: onnx.ModelProto | str | Path, providers: Sequence[str] = ("CPUExecutionProvider",),
                 optimization_level: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                 name: str = "onnxruntime", threads: int | None = None):
        super().__init__(model, name)
        available = ort.get_available_providers()
        missing = [p for p in providers if p not in available]
        if missing:
            raise InputError(f"Expected execution providers among {available}. Received: {list(missing)}")
        options = ort.SessionOptions()
        options.graph_optimization_level = optimization_level
        options.log_severity_level = 4  # our exceptions say what failed; ORT's own log lines carry ANSI colors
        options.intra_op_num_threads = threads or 0  # 0: ORT's default, one thread per core
        try:
            self.session = ort.InferenceSession(self.model.SerializeToString(), options, providers=list(providers))
        except ORT_ERRORS as exc:  # an op or type this ONNX Runtime lacks, a graph it rejects
            raise ModelLoadError(f"Expected a model ONNX Runtime {ort.__version__} can load. Received: "
                                 f"{first_line(exc)}") from None

    def run(self, feeds: Mapping[str, np.ndarray], timeout: float | None = None) -> dict[str, np.ndarray]:
        """Run on checked feeds; a run still going after `timeout` seconds is stopped and refused."""
        checked = self.check_feeds(feeds)
        options = ort.RunOptions()
        options.log_severity_level = 4
        try:
            with deadline(options, timeout):
                values = self.session.run(None, checked, options)
        except ORT_ERRORS as exc:  # e.g. a dim the graph fixes internally that the declared shape did not
            if options.terminate:
                raise InputError(f"Expected a run that ends within {timeout:g} s (--timeout). Received: a run "
                                 "still going, stopped") from None
            raise InputError(f"Expected inputs ONNX Runtime can run. Received an error: {first_line(exc)}") from None
        return dict(zip(self.output_names, values))


# Defaults of the activations attribute; onnx's ReferenceEvaluator implements only these.
_DEFAULT_ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}


def reference_oracle_problem(model: onnx.ModelProto) -> str | None:
    """Why onnx.reference is no oracle for this model, or None when it is.

    Its LSTM/GRU/RNN ignore the `activations` and `sequence_lens` inputs (onnx 1.23 marks them unused):
    comparing against it there would blame the export for the evaluator's gap. It has no kernels for
    ONNX Runtime's own ops either (an int8 tier's `com.microsoft` DynamicQuantizeLSTM).
    """
    foreign = sorted({f"{n.domain}.{n.op_type}" for n in model.graph.node if n.domain not in ("", "ai.onnx")})
    if foreign:
        return f"onnx.reference has no kernel for {', '.join(foreign)}"
    for node in model.graph.node:
        if node.op_type not in _DEFAULT_ACTIVATIONS:
            continue
        attrs = {a.name: a for a in node.attribute}
        if "activations" in attrs:
            acts = [s.decode() for s in attrs["activations"].strings]
            per_direction = _DEFAULT_ACTIVATIONS[node.op_type]
            if acts != per_direction * (len(acts) // len(per_direction)):
                return f"onnx.reference ignores the activations attribute ({node.op_type} with {acts})"
        if len(node.input) > 4 and node.input[4]:
            return f"onnx.reference ignores sequence_lens ({node.op_type} of a masked layer)"
    return None


class ReferenceRunner(GraphRunner):
    """onnx.reference.ReferenceEvaluator: a second, independent runtime, refused where it is no oracle."""

    def __init__(self, model: onnx.ModelProto | str | Path, name: str = "reference"):
        from onnx.reference import ReferenceEvaluator

        super().__init__(model, name)
        problem = reference_oracle_problem(self.model)
        if problem:
            raise InputError(f"Expected a model onnx.reference can evaluate faithfully. Received: {problem}")
        self.evaluator = ReferenceEvaluator(self.model)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            values = self.evaluator.run(None, self.check_feeds(feeds))
        except REFERENCE_ERRORS as exc:
            raise InputError(f"Expected a model onnx.reference can run. Received an error: {first_line(exc)}") from None
        return dict(zip(self.output_names, values))


class KerasRunner(RunnerBase):
    """A Keras model (or `.keras` file, loaded safely) behind the Runner interface; outputs in model order,
    keyed by their default `<layer>_<role>` names. Feeds it has no input for are ignored."""

    def __init__(self, model: Any, name: str = "keras"):
        try:
            import keras  # noqa: F401 -- here, not at module level: `run` and `inspect` never import TensorFlow
        except ImportError as exc:
            raise InputError("Expected Keras and TensorFlow to run the Keras model (pip install 'lstm-onnx[export]'). "
                             f"Received: {first_line(exc)}") from None
        if isinstance(model, (str, Path)):
            from toolkit.exporter import load_keras_model

            model = load_keras_model(model)
        self.name = name
        self.model = model
        self.origins: list[OutputOrigin] = output_origins(model)
        self.output_names = unique_names([o.name for o in self.origins])

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, keras_outputs(self.model, feeds)))


# ------------------------------------------------------------------------------------ the registry

# ONNX Runtime at each graph optimization level: a wrong rewrite shows up as a difference between levels.
ORT_LEVELS = {
    "onnxruntime": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    "onnxruntime-extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "onnxruntime-basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "onnxruntime-disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
}
RUNTIMES: dict[str, Runtime] = {}


def register(runtime: Runtime) -> Runtime:
    """Make a runtime available to `verify --runtimes` under its name."""
    RUNTIMES[runtime.name] = runtime
    return runtime


def _ort_runtime(name: str, level: ort.GraphOptimizationLevel) -> Runtime:
    return Runtime(name, valid_everywhere, lambda path, model: OnnxRunner(model, optimization_level=level, name=name))


for _name, _level in ORT_LEVELS.items():
    register(_ort_runtime(_name, _level))
register(Runtime("reference", reference_oracle_problem, lambda path, model: ReferenceRunner(model)))


# The runtimes an export deploys to besides ONNX Runtime in Python (toolkit/runtimes): Node, WASM,
# headless Chromium, OpenVINO (f32, and its default precision as a tier `all` leaves out).
for _name, _problem, _open in DEPLOY_RUNTIMES:
    register(Runtime(_name, _problem, _open))


def runtimes_named(names: Sequence[str]) -> list[Runtime]:
    """The registered runtimes of these names (`all`: every one but the tiers); one unknown name refuses
    them all, listing the valid ones."""
    if list(names) == ["all"]:
        names = [n for n in RUNTIMES if n not in TIERS]
    unknown = [n for n in names if n not in RUNTIMES]
    if unknown or not names:
        raise InputError(f"Expected runtimes among {list(RUNTIMES)} or all. Received: {list(names)}")
    return [RUNTIMES[n] for n in names]


# ---------------------------------------------------------------------------- run over cases, compare

Invariants = Callable[[Mapping[str, np.ndarray]], Sequence[InvariantCheck]]


def compare_runners(reference: Runner, runners: Sequence[Runner], cases: Sequence[InputCase], tolerances: Tolerances,
                    names: Sequence[str], expected_names: Sequence[str] | None = None,
                    invariants: Invariants | None = None, progress: Progress = Progress()) -> dict[str, ParityReport]:
    """Run the reference and every runner over the same cases, and compare each runner with the reference.

    The reference's outputs are matched by position with `names` (the graph's outputs; an export may have
    more outputs than Keras, e.g. --state-io's states, which are then not compared). Results are keyed by
    runner name; `expected_names` (default `names`) is what the names must equal for the report to pass.
    """
    rows: dict[str, list[CaseResult]] = {runner.name: [] for runner in runners}
    for case in cases:
        expected = list(reference.run(case.feeds).values())
        for runner in runners:
            try:
                actual = runner.run(case.feeds)
            except RuntimeFailure as exc:  # a runtime's own error: that runtime fails, saying why; the rest go on
                rows[runner.name].append(failed_case(case.label, expected, names, tolerances, str(exc)))
                continue
            checks = invariants(actual) if invariants is not None else ()
            rows[runner.name].append(compare_case(case.label, expected, actual, names, tolerances, checks))
        progress.advance(case.label)
    wanted = tuple(expected_names if expected_names is not None else names)
    return {name: ParityReport(wanted, tuple(names), tuple(results)) for name, results in rows.items()}


def invariant_checks(origins: Sequence[OutputOrigin], names: Sequence[str], actual: Mapping[str, np.ndarray],
                     tolerances: Tolerances, zeroed: frozenset[str] = frozenset()) -> list[InvariantCheck]:
    """The post's equalities, on a runtime's outputs, for every layer whose output and state_h are both outputs.
    `zeroed`: layers with zero_output_for_mask, whose last output is 0 where that step is masked, not state_h."""
    checks = []
    by_layer: dict[tuple[str, int], dict[str, str]] = {}
    for origin, name in zip(origins, names):
        by_layer.setdefault((origin.layer, origin.call), {})[origin.role] = name
    for (layer, _), roles in by_layer.items():
        state_h = roles.get("state_h")
        if state_h is None or state_h not in actual:
            continue
        if "last" in roles and roles["last"] in actual and layer not in zeroed:
            checks.append(check_equal(f"{roles['last']} == {state_h}", actual[roles["last"]], actual[state_h],
                                      tolerances.base))
        if "sequence" in roles and roles["sequence"] in actual and layer not in zeroed:
            checks.append(check_equal(f"{roles['sequence']}[:, -1] == {state_h}", actual[roles["sequence"]][:, -1],
                                      actual[state_h], tolerances.base))
    return checks


def compare_with_keras(keras: KerasRunner, runners: Sequence[GraphRunner | Runner], proto: onnx.ModelProto,
                       expected_names: Sequence[str], tolerances: Tolerances,
                       cases: Sequence[InputCase], progress: Progress = Progress()) -> dict[str, ParityReport]:
    """The parity check: every runner against Keras on every case, values and the post's invariants."""
    names = [t.name for t in graph_outputs(proto)]
    tolerances.check_names(names)
    # A float16/bfloat16-computing model's tolerance when the user set none (`precision.choose`).
    tolerances = choose_tolerance(tolerances, keras.model).tolerances.resolve(count_ops(proto))
    origins = keras.origins
    zeroed = frozenset(layer.name for layer in keras.model._flatten_layers(include_self=False)
                       if getattr(layer, "zero_output_for_mask", False))

    def invariants(actual: Mapping[str, np.ndarray]) -> list[InvariantCheck]:
        return invariant_checks(origins, names, actual, tolerances, zeroed)

    return compare_runners(keras, runners, cases, tolerances, names, expected_names, invariants, progress)


# verify_files/verify_runtimes live in toolkit.verification (which imports this module); these names stay
# importable from here, resolved on first use so that neither module imports the other at load time.
_MOVED = ("verify_files", "verify_runtimes", "expected_output_names")


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        from toolkit import verification

        return getattr(verification, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
