"""Errors per time step of a sequence output, kept on the comparison results as data.

A max-abs figure over a whole output cannot show whether an error grows along the sequence (an int8
tier's does) or where a stream's chunk boundaries fall. So `compare_arrays` also keeps, for an output with
a time axis (rank 3 or more: `(batch, time, ...)`, as Keras returns sequences), the largest error at each
step over batch and units, the largest |expected| there (with it, the loosest tolerance any value of that
step was held to: `atol + rtol * max|expected|`), and how many values of the step failed. The HTML report
draws these; nothing is re-run to get them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class StepErrors:
    """One sequence output of one comparison (or the stepwise worst of several), step by step."""

    max_abs: tuple[float, ...]  # max |actual - expected| over batch and units; inf where non-finite values differ
    max_expected: tuple[float, ...]  # max |expected| over the finite values of the step
    outside: tuple[int, ...]  # values of the step outside the tolerance

    @property
    def length(self) -> int:
        return len(self.max_abs)

    def to_json(self) -> dict[str, list]:
        return {"max_abs": [_json_float(v) for v in self.max_abs],
                "max_expected": [_json_float(v) for v in self.max_expected], "outside": list(self.outside)}


def step_errors(absdiff: np.ndarray, expected: np.ndarray, close: np.ndarray) -> StepErrors | None:
    """Per step of axis 1, for an output of rank >= 3; None for any other output (a last output, a state)."""
    if absdiff.ndim < 3 or absdiff.shape[1] == 0:
        return None
    axes = tuple(axis for axis in range(absdiff.ndim) if axis != 1)
    magnitude = np.where(np.isfinite(expected), np.abs(expected), 0.0)
    return StepErrors(tuple(float(v) for v in absdiff.max(axis=axes)),
                      tuple(float(v) for v in magnitude.max(axis=axes)),
                      tuple(int(v) for v in (~close).sum(axis=axes)))


def merge_steps(items: Iterable[StepErrors | None]) -> StepErrors | None:
    """The stepwise worst of several cases (values outside: their sum), aligned at step 0; where cases have two
    lengths, the tail is the longer one's."""
    found = [item for item in items if item is not None]
    if not found:
        return None
    length = max(item.length for item in found)

    def worst(field: str, step: int) -> float:
        return max(getattr(item, field)[step] for item in found if item.length > step)

    return StepErrors(tuple(worst("max_abs", t) for t in range(length)),
                      tuple(worst("max_expected", t) for t in range(length)),
                      tuple(sum(item.outside[t] for item in found if item.length > t) for t in range(length)))


def _json_float(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)  # JSON has no inf/nan
