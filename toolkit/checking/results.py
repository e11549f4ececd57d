"""Comparing a runtime's outputs with Keras', output by output, and the result objects of a verification.

Results are objects that test true when they pass (after Polygraphy's `OutputCompareResult`): a
`ParityReport` is true only when the output names match, every output's shape matches in every case and
every value is within its tolerance; a `RuntimeReport` is one runtime's pass, fail or "not valid"; a
`VerifyReport` is everything `verify` found. Nothing here imports TensorFlow: `verify` results can be read and
printed on a deploy machine. Tolerances live in `toolkit.tolerance`, per-step errors in `toolkit.checking.steps`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from toolkit.checking.samples import SampleValues, merge_samples, sample_values
from toolkit.checking.steps import StepErrors, merge_steps, step_errors
from toolkit.tolerance import Tolerance, Tolerances


@dataclass(frozen=True)
class OutputComparison:
    """How one output of one input case compares."""

    name: str
    expected_shape: tuple[int, ...]
    actual_shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    tolerance: Tolerance
    passed: bool
    reason: str = ""
    steps: StepErrors | None = None  # per time step, for an output with a time axis (toolkit.checking.steps)
    scale: float = 0.0  # the output's largest finite |expected| value: what its errors are measured against
    samples: SampleValues | None = None  # both sides' values, for an output without one (toolkit.checking.samples)

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        status = "PASS" if self.passed else "FAIL"
        text = (
            f"{self.name} {self.actual_shape}: max_abs={self.max_abs:.3g} max_rel={self.max_rel:.3g} "
            f"({self.tolerance}) {status}"
        )
        return f"{text}: {self.reason}" if self.reason else text


@dataclass(frozen=True)
class InvariantCheck:
    """An equality the Keras LSTM contract promises, e.g. the last output equals state_h."""

    description: str
    max_abs: float
    passed: bool

    def __bool__(self) -> bool:
        return self.passed


SHAPE_MISMATCH = "shape mismatch"  # a comparison's reason when the two sides' shapes differ
CARRIED = ", states carried: "  # in the label of each consecutive call of a stateful export (`toolkit.checking.carry`)
NOTHING_CARRIED = "none, the file has no lstm_onnx.state_map; "  # after CARRIED, for a file without one


@dataclass(frozen=True)
class CaseResult:
    """All outputs of one input case (one batch of inputs)."""

    label: str
    comparisons: tuple[OutputComparison, ...]
    invariants: tuple[InvariantCheck, ...] = ()

    def __bool__(self) -> bool:
        return all(self.comparisons) and all(self.invariants)


@dataclass(frozen=True)
class OutputSummary:
    """One output over every case: the worst errors and the shapes seen."""

    name: str
    shapes: tuple[tuple[int, ...], ...]
    max_abs: float
    max_rel: float
    tolerance: Tolerance
    passed: bool
    reasons: tuple[str, ...]
    steps: StepErrors | None = None  # the stepwise worst over cases
    scale: float = 0.0  # the largest finite |expected| value over cases
    samples: SampleValues | None = None  # every case's values, one after another

    def __bool__(self) -> bool:
        return self.passed


@dataclass(frozen=True)
class ParityReport:
    """The parity of one ONNX model against its Keras model, over several input cases."""

    expected_names: tuple[str, ...]
    actual_names: tuple[str, ...]
    cases: tuple[CaseResult, ...]
    compute_dtype: str = "float32"  # the reference model's: how much of an error rounding can explain

    @property
    def names_match(self) -> bool:
        return self.expected_names == self.actual_names

    @property
    def passed(self) -> bool:
        return self.names_match and bool(self.cases) and all(self.cases)

    def __bool__(self) -> bool:
        return self.passed

    def summaries(self) -> list[OutputSummary]:
        """Per output, the maximum over cases, in output order."""
        rows: list[OutputSummary] = []
        for name in self.actual_names:
            found = [c for case in self.cases for c in case.comparisons if c.name == name]
            if not found:
                continue
            rows.append(
                OutputSummary(
                    name=name,
                    shapes=tuple(dict.fromkeys(c.actual_shape for c in found)),
                    max_abs=_nanmax(c.max_abs for c in found),
                    max_rel=_nanmax(c.max_rel for c in found),
                    # The loosest tolerance any case used (a case's may be widened to its measured rounding).
                    tolerance=max((c.tolerance for c in found), key=lambda t: t.atol),
                    passed=all(found),
                    reasons=tuple(dict.fromkeys(c.reason for c in found if c.reason)),
                    steps=merge_steps(c.steps for c in found),
                    scale=max(c.scale for c in found),
                    samples=merge_samples(c.samples for c in found),
                )
            )
        return rows

    def invariants(self) -> list[InvariantCheck]:
        return [inv for case in self.cases for inv in case.invariants]

    def carried_calls(self) -> list[CaseResult]:
        """The consecutive calls of a stateful export, its states carried (`toolkit.checking.carry`)."""
        return [case for case in self.cases if CARRIED in case.label]

    def failures(self) -> list[str]:
        """One line per problem, each naming the output it concerns (Optimum's collect-then-raise)."""
        problems: list[str] = []
        if not self.names_match:
            problems.append(f"output names: expected {list(self.expected_names)}, got {list(self.actual_names)}")
        for case in self.cases:
            problems += [f"[{case.label}] {c}" for c in case.comparisons if not c]
            problems += [
                f"[{case.label}] invariant failed: {inv.description} (max_abs={inv.max_abs:.3g})"
                for inv in case.invariants
                if not inv
            ]
        if not self.cases:
            problems.append("no input case was compared")
        return problems

    def to_json(self) -> dict:
        carried = self.carried_calls()
        return {
            "passed": self.passed,
            "names_match": self.names_match,
            "expected_names": list(self.expected_names),
            "actual_names": list(self.actual_names),
            "outputs": [
                {
                    "name": s.name,
                    "shapes": [list(shape) for shape in s.shapes],
                    "max_abs": _json_float(s.max_abs),
                    "max_rel": _json_float(s.max_rel),
                    **s.tolerance.to_json(),
                    "passed": s.passed,
                    "reasons": list(s.reasons),
                    **({"steps": s.steps.to_json()} if s.steps is not None else {}),
                }
                for s in self.summaries()
            ],
            **({"carried_calls": {"calls": len(carried), "passed": all(carried)}} if carried else {}),
            "invariants": [
                {"description": i.description, "max_abs": _json_float(i.max_abs), "passed": i.passed}
                for i in self.invariants()
            ],
            "cases": [case.label for case in self.cases],
            "failures": self.failures(),
        }


@dataclass(frozen=True)
class RuntimeReport:
    """The parity of one runtime against Keras: pass or fail with its report, or not valid with the reason."""

    runtime: str
    report: ParityReport | None
    not_valid: str = ""  # the runtime's `problem` with this model

    @property
    def status(self) -> str:
        if self.report is None:
            return "not valid"
        return "pass" if self.report else "fail"

    def __bool__(self) -> bool:
        return self.report is not None and bool(self.report)

    def to_json(self) -> dict:
        if self.report is None:
            return {"runtime": self.runtime, "status": self.status, "reason": self.not_valid, "skipped": self.not_valid}
        data = {**self.report.to_json(), "runtime": self.runtime, "status": self.status}
        for output in data["outputs"]:
            output["status"] = "pass" if output["passed"] else "fail"
        return data


@dataclass(frozen=True)
class StreamReport:
    """Chunked ONNX Runtime vs Keras on the whole sequence (the model's outputs), and vs ONNX Runtime on
    the whole sequence (every output, the extra state outputs included)."""

    chunks: tuple[int, ...]
    against_keras: ParityReport
    against_whole: ParityReport
    length: int = 0  # steps of the streamed sequence (the chunk boundaries are `split_steps(length, chunks)`)
    reference: str = "keras"  # what computed the whole sequence: Keras, or a Keras 2 file's original (tf.keras)

    @property
    def boundaries(self) -> list[int]:
        """The steps at which a new chunk starts (after the first), for plots."""
        return [start for start, _ in split_steps(self.length, self.chunks)][1:]

    def __bool__(self) -> bool:
        return bool(self.against_keras) and bool(self.against_whole)

    def to_json(self) -> dict:
        return {"chunks": list(self.chunks), "length": self.length, "passed": bool(self),
                "against_keras": self.against_keras.to_json(),
                "against_unchunked": self.against_whole.to_json(),
                **({"reference": self.reference} if self.reference != "keras" else {})}


def split_steps(length: int, sizes: Sequence[int]) -> list[tuple[int, int]]:
    spans, start, i = [], 0, 0
    while start < length:
        end = min(length, start + sizes[i % len(sizes)])
        spans.append((start, end))
        start, i = end, i + 1
    return spans


@dataclass(frozen=True)
class VerifyReport:
    """What `lstm-onnx verify` found: one report per runtime asked for, and the streamed run if asked for."""

    model: str  # the .onnx file's name, for labels
    runtimes: tuple[RuntimeReport, ...]
    stream: StreamReport | None = None

    @property
    def ran(self) -> list[RuntimeReport]:
        return [r for r in self.runtimes if r.report is not None]

    def __bool__(self) -> bool:
        ran = self.ran
        return bool(ran) and all(ran) and (self.stream is None or bool(self.stream))

    def failures(self) -> list[str]:
        if not self.ran:
            return ["every requested runtime was skipped: nothing was compared"]
        found = [f for r in self.ran for f in r.report.failures()]
        if self.stream is not None:
            found += self.stream.against_keras.failures() + self.stream.against_whole.failures()
        return found

    def to_json(self) -> dict:
        payload: dict[str, Any] = {"passed": bool(self), "runtimes": {r.runtime: r.to_json() for r in self.runtimes}}
        if self.stream is not None:
            payload["stream"] = self.stream.to_json()
        ran = self.ran
        # One runtime: its report at the top level, as before, for CI scripts that read it directly.
        return {**ran[0].report.to_json(), **payload} if len(self.runtimes) == 1 and ran else payload


def _nanmax(values: Iterable[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return max(vals) if vals else math.nan


def _json_float(value: float) -> float | str:
    # JSON has no inf/nan; keep them readable rather than invalid.
    return value if math.isfinite(value) else str(value)


def compare_arrays(name: str, expected: np.ndarray, actual: np.ndarray, tolerance: Tolerance) -> OutputComparison:
    """Compare one output. NaN and Inf must appear at the same places in both to pass."""
    expected = np.asarray(expected)
    actual = np.asarray(actual)
    if expected.shape != actual.shape:
        return OutputComparison(
            name, expected.shape, actual.shape, math.inf, math.inf, tolerance, False,
            f"{SHAPE_MISMATCH}: expected {expected.shape}, got {actual.shape}",
        )
    if expected.size == 0:
        return OutputComparison(name, expected.shape, actual.shape, 0.0, 0.0, tolerance, True)
    exp64 = expected.astype(np.float64)
    act64 = actual.astype(np.float64)
    close = np.isclose(act64, exp64, rtol=tolerance.rtol, atol=tolerance.atol, equal_nan=True)
    both_finite = np.isfinite(exp64) & np.isfinite(act64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        absdiff = np.where(both_finite, np.abs(act64 - exp64), 0.0)
        # Non-finite values count as infinitely far apart unless they are the same value at the same place.
        absdiff = np.where(~both_finite & ~close, np.inf, absdiff)
        reldiff = np.where(absdiff == 0, 0.0, absdiff / np.abs(np.where(both_finite, exp64, 1.0)))
    passed = bool(close.all())
    reasons = [] if passed else [f"{int((~close).sum())} of {close.size} values outside tolerance"]
    damage = relative_damage(exp64, act64, absdiff, tolerance.scale)
    if damage:
        passed, reasons = False, [*reasons, damage]
    reason = "; ".join(reasons)
    finite = np.isfinite(exp64)
    scale = float(np.abs(exp64[finite]).max()) if finite.any() else 0.0
    return OutputComparison(name, expected.shape, actual.shape, float(absdiff.max()), float(reldiff.max()), tolerance,
                            passed, reason, step_errors(absdiff, exp64, close), scale, sample_values(exp64, act64))


def relative_damage(expected: np.ndarray, actual: np.ndarray, absdiff: np.ndarray, bound: float | None) -> str:
    """Why `actual` damages `expected` relative to its own scale (its largest finite |value|), or "": the
    worst error over `bound` times that scale, or a sign flipped on a value above `bound` times it."""
    finite = np.isfinite(expected)
    if bound is None or not finite.any():
        return ""
    scale = float(np.abs(expected[finite]).max())
    if scale == 0:
        return ""
    worst = float(absdiff[finite].max()) / scale
    above = finite & (np.abs(expected) > bound * scale)
    flips = int((np.sign(expected[above]) * np.sign(actual[above]) < 0).sum())
    if worst <= bound and not flips:
        return ""
    return (f"max error {worst:.3g}x of the output's scale {scale:.3g} (bound {bound:g}x); {flips} signs flipped "
            f"of {int(above.sum())} values above {bound:g}x of it")


def compare_case(
    label: str,
    expected: Sequence[np.ndarray],
    actual: Mapping[str, np.ndarray],
    names: Sequence[str],
    tolerances: Tolerances,
    invariants: Sequence[InvariantCheck] = (),
) -> CaseResult:
    """Compare Keras' outputs (in model order) with ONNX Runtime's (by name), position by position."""
    comparisons = []
    for name, exp in zip(names, expected):
        if name not in actual:
            comparisons.append(OutputComparison(name, np.shape(exp), (), math.inf, math.inf, tolerances.for_output(name),
                                                False, "missing from the ONNX outputs"))
            continue
        comparisons.append(compare_arrays(name, exp, actual[name], tolerances.for_output(name)))
    return CaseResult(label=label, comparisons=tuple(comparisons), invariants=tuple(invariants))


def failed_case(label: str, expected: Sequence[np.ndarray], names: Sequence[str], tolerances: Tolerances,
                error: str) -> CaseResult:
    """A case a runtime could not run (its own error on a model it is valid for): every output fails, saying why."""
    return CaseResult(label, tuple(OutputComparison(name, np.shape(exp), (), math.inf, math.inf,
                                                    tolerances.for_output(name), False, error)
                                   for name, exp in zip(names, expected)))


def check_equal(description: str, a: np.ndarray, b: np.ndarray, tolerance: Tolerance) -> InvariantCheck:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return InvariantCheck(f"{description} (shapes {a.shape} vs {b.shape})", math.inf, False)
    max_abs = float(np.abs(a - b).max()) if a.size else 0.0
    passed = bool(np.allclose(a, b, rtol=tolerance.rtol, atol=tolerance.atol, equal_nan=True))
    return InvariantCheck(description, max_abs, passed)
