"""What a model's compute dtype (mixed precision) means for its export, as notes and metadata, and the
failure message that says which tolerance failed, by how much, and how to set another. The tolerances
themselves are decided once per check, by `toolkit.checking.loop.decided_tolerances`.

A layer under `keras.mixed_precision.set_global_policy("mixed_float16")` (or `"mixed_bfloat16"`) keeps
float32 variables but computes in float16 (bfloat16). lstm-onnx exports such layers as float32 ops
(`lowering/layers.py`): closer to the model's real-number meaning than Keras' own run, and so away from
it by Keras' rounding error, which the default tolerance (1e-6) cannot hold. No TensorFlow import here:
a model is only read through its layers' `dtype_policy`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from toolkit.checking.results import CARRIED, NOTHING_CARRIED, SHAPE_MISMATCH, OutputSummary, ParityReport
from toolkit.tolerance import LOW_PRECISION_TOLERANCES, Tolerances, compute_dtype, looks_like_rounding, rounding_cap


@dataclass(frozen=True)
class PrecisionChoice:
    """The tolerances a parity check uses for one model, and why (for the metadata and the notes)."""

    tolerances: Tolerances
    compute_dtype: str
    chosen: bool  # the tolerance was chosen from the compute dtype (the user set no default)

    def note(self) -> str:
        if not self.chosen:
            return ""
        tolerance = self.tolerances.base
        return (f"the model computes in {self.compute_dtype} (mixed precision): parity tolerance {tolerance} "
                f"for Keras' {self.compute_dtype} rounding (the export computes in float32); "
                "set --atol/--rtol (Tolerances in Python) for another")

    def to_json(self) -> dict[str, Any]:
        return {"compute_dtype": self.compute_dtype, "tolerance_from_compute_dtype": self.chosen}


def choose(user: Tolerances, model: Any, decided: Tolerances) -> PrecisionChoice:
    """What the model's compute dtype meant for the tolerances `decided` once for its check
    (`toolkit.checking.loop.decided_tolerances`, which weighs the dtype with the ops and the tier): chosen
    from the dtype when the user set no default and the model computes in float16/bfloat16. Nothing is
    decided here: the note names the tolerance the check used."""
    dtype = compute_dtype(model)
    return PrecisionChoice(decided, dtype, user.default is None and dtype in LOW_PRECISION_TOLERANCES)


def failure_message(items: Sequence[tuple[str, ParityReport]], limit: int = 3) -> str:
    """One line for failed parity checks: each failing output's tolerance, by how much it failed, and how
    to set another (the atol that would pass it, on the CLI and in Python)."""
    parts: list[str] = []
    for label, report in items:
        if not report.names_match:
            parts.append(f"{label}: output names {list(report.actual_names)}, expected {list(report.expected_names)}")
        if carried_only(report):
            parts.append(carried_message(label, report))
            continue
        parts += [_output_failure(s, report.compute_dtype) for s in report.summaries() if not s.passed]
        if not report.cases:
            parts.append(f"{label}: no input case was compared")
    failed_invariants = [inv.description for _, r in items for inv in r.invariants() if not inv]
    parts += [f"invariant failed: {d}" for d in failed_invariants]
    shown = parts[:limit] + ([f"and {len(parts) - limit} more"] if len(parts) > limit else [])
    return "; ".join(shown) if shown else "parity failed"


def _output_failure(s: OutputSummary, dtype: str) -> str:
    """One failing output, said as what it is: a shape mismatch, a non-finite value, a tier's damage, a
    defect (an error that is a visible fraction of the output's scale: no tolerance should pass it), or an
    error small enough to be rounding, with the atol that would accept it."""
    shape = next((r for r in s.reasons if r.startswith(SHAPE_MISMATCH)), "")
    if shape:
        return f"{s.name}: {shape}"
    if not math.isfinite(s.max_abs):  # NaN or infinity on one side: no tolerance passes it
        return f"{s.name}: a non-finite value (NaN or infinity) where the other side differs ({s.tolerance})"
    needed = _round_up(s.max_abs)
    damage = next((r for r in s.reasons if "of the output's scale" in r), "")
    if damage:  # a tier's relative damage: an absolute atol says nothing about it
        return (f"{s.name}: {damage} ({s.tolerance}); the precision tier damages this output: export "
                f"it without the tier (or accept it: --atol {s.name}:{needed:g})")
    if not looks_like_rounding(s.max_abs, s.scale, dtype):
        share = f"{s.max_abs / s.scale:.2g} of" if s.scale > 0 else "against"
        return (f"{s.name}: max abs error {s.max_abs:.3g} is {share} the output's scale {s.scale:.3g}: far past "
                f"{dtype} rounding (at most {rounding_cap(dtype):g} of the scale), so the export computes something else; "
                f"no tolerance is the fix (--keep-failed writes the file to diagnose it)")
    times = f", {s.max_abs / s.tolerance.atol:.3g}x its atol" if s.tolerance.atol > 0 else ""
    return (f"{s.name}: max abs error {s.max_abs:.3g} over {s.tolerance} (|d| <= atol + rtol*|keras|)"
            f"{times}; to accept it: --atol {s.name}:{needed:g} (Python: Tolerances.parse(atol="
            f"['{s.name}:{needed:g}']))")


def carried_only(report: ParityReport) -> bool:
    """Whether only a stateful export's consecutive calls failed: no tolerance is the fix then."""
    carried = report.carried_calls()
    return bool(carried) and not all(carried) and all(case for case in report.cases if CARRIED not in case.label)


def carried_message(label: str, report: ParityReport) -> str:
    carried = report.carried_calls()
    failed = [case.label.split(",")[0] for case in carried if not case]
    why = ("the file has no lstm_onnx.state_map, so nothing carries its stateful layers' states (frozen states)"
           if any(NOTHING_CARRIED in case.label for case in carried) else
           "the states its lstm_onnx.state_map carries from one call to the next are not the ones Keras keeps")
    return f"{label}: each call from zero states matches Keras, {', '.join(failed)} do not: {why}"


def _round_up(value: float) -> float:
    """`value` rounded up to two significant digits: an atol that passes an error of `value`."""
    if value <= 0:
        return 0.0
    if not math.isfinite(value):  # a NaN or infinite error (NaN weights, say): no tolerance passes it
        return value
    text = f"{value:.1e}"
    mantissa, exponent = text.split("e")
    rounded = float(f"{mantissa}e{exponent}")
    return rounded if rounded >= value else float(f"{float(mantissa) + 0.1:.1f}e{exponent}")
