"""The one loop every check goes through: runners over one set of input cases, each compared with a
reference, output by output (after Polygraphy's `comparator/`).

A runner (`toolkit.runtimes.base.Runner`) is one open session of one runtime on one model; the runtimes
are named in `toolkit.runtimes.registry`. `compare_runners` serves the export's parity check (a Keras
model's and a SavedModel signature's), `verify`, `verify --runtimes`, `--stream` and `bench`; its runs
(`run_reference`, `run_each`) are `run_case`'s too (`explain` reads the values), `agreement` its comparison of
outputs already computed (`bench --stream`). `compare_with_keras` adds the post's invariants and the
float32 rounding probe. The tolerance is decided once per command, by `decided_tolerances`, and travels
with the run. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from toolkit.checking.inputs import InputCase
from toolkit.checking.results import (
    CaseResult,
    InvariantCheck,
    ParityReport,
    check_equal,
    compare_arrays,
    compare_case,
    failed_case,
)
from toolkit.checking.rounding import CarriedRoundingProbe, RoundingProbe
from toolkit.errors import RuntimeFailure
from toolkit.models.naming import OutputOrigin
from toolkit.onnxfile.metadata import read_tier
from toolkit.onnxfile.model import count_ops, graph_outputs
from toolkit.progress import Progress
from toolkit.runtimes.base import Runner
from toolkit.runtimes.keras import KerasRunner
from toolkit.tolerance import Tolerances, compute_dtype, decide, widened

# ---------------------------------------------------------------------------- the tolerance, decided once


def decided_tolerances(user: Tolerances, proto: onnx.ModelProto, keras_model: Any = None,
                       tier: str | None = None) -> Tolerances:
    """The one place a check's tolerances are decided (`toolkit.tolerance.decide`): the user's flags, the
    graph's ops, the reference Keras model's compute dtype (float32 without one) and the precision tier
    (`tier`, the export's; by default the one the file records). Each command decides once, before its
    first comparison, and passes the result down with the run (export: to the parity check, the carried
    calls and `--runtimes`; verify: to every runtime and `--stream`). Tolerances already decided (here, or
    a user's default, which `decide` keeps as it is) are returned as they are, so nothing is decided twice."""
    if user.decided:
        return user
    dtype = compute_dtype(keras_model) if keras_model is not None else "float32"
    return decide(user, count_ops(proto), tier if tier is not None else read_tier(proto), dtype)


# ---------------------------------------------------------------------------- run over cases, compare

Invariants = Callable[[Mapping[str, np.ndarray]], Sequence[InvariantCheck]]
# Runners to compare: a sequence (results keyed by each runner's name), or a mapping from the label its
# results are keyed by to the runner (`bench`: one runtime at several thread counts shares one name).
Runners = Sequence[Runner] | Mapping[str, Runner]


@dataclass(frozen=True)
class CaseRun:
    """One case through the reference and every runner: the reference's outputs in its own order, and
    each runner's outputs by name, or its runtime's one-line error."""

    case: InputCase
    expected: list[np.ndarray]
    actual: dict[str, Mapping[str, np.ndarray] | str]


def run_reference(reference: Runner, case: InputCase, timeout: float | None = None) -> list[np.ndarray]:
    """The reference's outputs on one case, in its own order (matched to the graph's by position)."""
    return list(reference.run(case.feeds, **_deadline(timeout)).values())


def run_each(runners: Mapping[str, Runner], case: InputCase,
             timeout: float | None = None) -> Iterator[tuple[str, Mapping[str, np.ndarray] | str]]:
    """Each runner's outputs on one case, or its runtime's one-line error (that runtime fails, saying why;
    the rest go on). One runner at a time: `compare_runners` compares and drops each runner's outputs
    before the next one runs, so a large case's outputs are held for one runtime only."""
    for label, runner in runners.items():
        try:
            yield label, runner.run(case.feeds, **_deadline(timeout))
        except RuntimeFailure as exc:
            yield label, str(exc)


def run_case(reference: Runner, runners: Mapping[str, Runner], case: InputCase,
             timeout: float | None = None) -> CaseRun:
    """The reference and every runner on one case, every output kept (`explain` shows both sides' values)."""
    return CaseRun(case, run_reference(reference, case, timeout), dict(run_each(runners, case, timeout)))


def _deadline(timeout: float | None) -> dict[str, float]:
    """`run`'s keyword for an explicit deadline; none given, each runner keeps its own (and a stateful
    Keras reference, whose `run` takes no deadline, is called as it expects)."""
    return {} if timeout is None else {"timeout": timeout}


def compare_runners(reference: Runner, runners: Runners, cases: Sequence[InputCase], tolerances: Tolerances,
                    names: Sequence[str], expected_names: Sequence[str] | None = None,
                    invariants: Invariants | None = None, progress: Progress = Progress(),
                    rounding: RoundingProbe | None = None, timeout: float | None = None) -> dict[str, ParityReport]:
    """Run the reference and every runner over the same cases, and compare each runner with the reference
    at `tolerances`, decided once by the caller (`decided_tolerances`).

    The reference's outputs are matched by position with `names` (the graph's outputs; an export may have
    more outputs than Keras, e.g. --state-io's states, which are then not compared). Results are keyed by
    runner name (or by the labels of a mapping); `expected_names` (default `names`) is what the names must
    equal for the report to pass. `rounding`: where an output fails a policy tolerance, its float32
    rounding on that case is measured and the output compared again at the tolerance that rounding allows
    (`toolkit.tolerance.widened`).
    """
    named = dict(runners) if isinstance(runners, Mapping) else {runner.name: runner for runner in runners}
    rows: dict[str, list[CaseResult]] = {label: [] for label in named}
    for case in cases:
        expected = run_reference(reference, case, timeout)
        noise = _LazyNoise(rounding if tolerances.policy else None, case.feeds)
        for label, actual in run_each(named, case, timeout):
            if isinstance(actual, str):
                rows[label].append(failed_case(case.label, expected, names, tolerances, actual))
                continue
            checks = invariants(actual) if invariants is not None else ()
            result = compare_case(case.label, expected, actual, names, tolerances, checks)
            rows[label].append(noise.recompare(result, expected, actual, names, tolerances))
        progress.advance(case.label)
    wanted = tuple(expected_names if expected_names is not None else names)
    return {label: ParityReport(wanted, tuple(names), tuple(results)) for label, results in rows.items()}


@dataclass(frozen=True)
class Agreement:
    """One runner's worst error over every output and case, and whether every output was within its
    tolerance: what `bench` and `bench --stream` show for each form."""

    max_abs: float
    max_rel: float
    within: bool

    @classmethod
    def of(cls, report: ParityReport) -> Agreement:
        found = [c for case in report.cases for c in case.comparisons]
        return cls(max(c.max_abs for c in found), max(c.max_rel for c in found), bool(report))


def agreement(expected: Mapping[str, np.ndarray], actual: Mapping[str, np.ndarray], tolerances: Tolerances,
              label: str = "") -> Agreement:
    """Outputs already computed (`bench --stream`'s forms run their own loops), compared output by output as
    `compare_runners` compares: `expected`'s outputs, by name, at `tolerances`."""
    names = list(expected)
    case = compare_case(label, list(expected.values()), actual, names, tolerances)
    return Agreement.of(ParityReport(tuple(names), tuple(names), (case,)))


class _LazyNoise:
    """One case's measured float32 rounding per output, measured at most once and only when a comparison
    of that case failed (a passing case needs no wider tolerance, and measuring costs a float64 run)."""

    def __init__(self, probe: RoundingProbe | None, feeds: Mapping[str, np.ndarray]):
        self.probe, self.feeds = probe, feeds
        self._noise: dict[str, float] | None = None
        self._measured = False
        if probe is not None and probe.carries:  # its states must follow every call, in order: measured now
            self._measured, self._noise = True, probe.measure(feeds)

    def recompare(self, result: CaseResult, expected: Sequence[np.ndarray], actual: Mapping[str, np.ndarray],
                  names: Sequence[str], tolerances: Tolerances) -> CaseResult:
        """`result`, with each failing output of a policy tolerance compared again at its widened one."""
        failing = [c.name for c in result.comparisons if not c and c.name not in tolerances.per_output]
        if self.probe is None or not failing:
            return result
        if not self._measured:
            self._measured, self._noise = True, self.probe.measure(self.feeds)
        if not self._noise:
            return result
        by_name = dict(zip(names, expected))
        redone = []
        for c in result.comparisons:
            if c.name in failing and c.name in self._noise and c.name in actual:
                wide = widened(tolerances.for_output(c.name), self._noise[c.name], c.scale, self.probe.dtype)
                c = compare_arrays(c.name, by_name[c.name], actual[c.name], wide) if wide is not c.tolerance else c
            redone.append(c)
        return CaseResult(result.label, tuple(redone), result.invariants)


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


def compare_with_keras(keras: KerasRunner, runners: Sequence[Runner], proto: onnx.ModelProto,
                       expected_names: Sequence[str], tolerances: Tolerances,
                       cases: Sequence[InputCase], progress: Progress = Progress(),
                       carried: bool = False) -> dict[str, ParityReport]:
    """The parity check: every runner against Keras on every case, values and the post's invariants.
    `carried`: the cases are consecutive calls whose states the reference carries (`toolkit.checking.carry`),
    so their rounding is measured by models that carry states too."""
    names = [t.name for t in graph_outputs(proto)]
    tolerances.check_names(names)
    # Decided by the command (export, verify) and passed here; a library caller's undecided ones here.
    tolerances = decided_tolerances(tolerances, proto, keras.model)
    origins = keras.origins
    zeroed = frozenset(layer.name for layer in keras.model._flatten_layers(include_self=False)
                       if getattr(layer, "zero_output_for_mask", False))

    def invariants(actual: Mapping[str, np.ndarray]) -> list[InvariantCheck]:
        return invariant_checks(origins, names, actual, tolerances, zeroed)

    dtype = compute_dtype(keras.model)
    kind = CarriedRoundingProbe if carried else RoundingProbe
    probe = kind(keras.model, names, dtype) if tolerances.policy else None
    reports = compare_runners(keras, runners, cases, tolerances, names, expected_names, invariants, progress, probe)
    return {name: dataclasses.replace(report, compute_dtype=dtype) for name, report in reports.items()}
