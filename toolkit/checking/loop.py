"""The one loop every check goes through: runners over one set of input cases, each compared with a
reference, output by output (after Polygraphy's `comparator/`).

A runner (`toolkit.runtimes.base.Runner`) is one open session of one runtime on one model; the runtimes
are named in `toolkit.runtimes.registry`. `compare_runners` serves the export's parity check, `verify`,
`verify --runtimes` and `--stream`; `compare_with_keras` adds the tolerance policy and the post's
invariants. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

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
from toolkit.onnxfile.metadata import read_options
from toolkit.onnxfile.model import count_ops, graph_outputs
from toolkit.progress import Progress
from toolkit.runtimes.base import Runner
from toolkit.runtimes.keras import KerasRunner
from toolkit.tolerance import Tolerances, compute_dtype, decide, widened

# ---------------------------------------------------------------------------- run over cases, compare

Invariants = Callable[[Mapping[str, np.ndarray]], Sequence[InvariantCheck]]


def compare_runners(reference: Runner, runners: Sequence[Runner], cases: Sequence[InputCase], tolerances: Tolerances,
                    names: Sequence[str], expected_names: Sequence[str] | None = None,
                    invariants: Invariants | None = None, progress: Progress = Progress(),
                    rounding: RoundingProbe | None = None) -> dict[str, ParityReport]:
    """Run the reference and every runner over the same cases, and compare each runner with the reference.

    The reference's outputs are matched by position with `names` (the graph's outputs; an export may have
    more outputs than Keras, e.g. --state-io's states, which are then not compared). Results are keyed by
    runner name; `expected_names` (default `names`) is what the names must equal for the report to pass.
    `rounding`: where an output fails a policy tolerance, its float32 rounding on that case is measured and
    the output compared again at the tolerance that rounding allows (`toolkit.tolerance.widened`).
    """
    rows: dict[str, list[CaseResult]] = {runner.name: [] for runner in runners}
    for case in cases:
        expected = list(reference.run(case.feeds).values())
        noise = _LazyNoise(rounding if tolerances.policy else None, case.feeds)
        for runner in runners:
            try:
                actual = runner.run(case.feeds)
            except RuntimeFailure as exc:  # a runtime's own error: that runtime fails, saying why; the rest go on
                rows[runner.name].append(failed_case(case.label, expected, names, tolerances, str(exc)))
                continue
            checks = invariants(actual) if invariants is not None else ()
            result = compare_case(case.label, expected, actual, names, tolerances, checks)
            rows[runner.name].append(noise.recompare(result, expected, actual, names, tolerances))
        progress.advance(case.label)
    wanted = tuple(expected_names if expected_names is not None else names)
    return {name: ParityReport(wanted, tuple(names), tuple(results)) for name, results in rows.items()}


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
    # Decided by the command (export, verify); a library caller's undecided ones here, the same way.
    tolerances = decide(tolerances, count_ops(proto), read_options(proto).tier, compute_dtype(keras.model))
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
