"""Values per sample of an output without a time axis, kept on the comparison results as data.

A forecaster or a classifier returns one value (or one row of class scores) per sample: a max-abs figure
alone cannot show whether a runtime follows Keras over the whole range, or where a softmax's mass goes.
So `compare_arrays` also keeps, for an output of rank 1 or 2 (`(batch,)` or `(batch, units)`), Keras'
values and the runtime's, sample by sample, up to `MAX_VALUES` per output over all cases (whole samples,
the first ones), which the HTML report draws (`toolkit.pages.plots.values_plot`); nothing is re-run to get them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

MAX_VALUES = 4096  # values kept per output over every case: a page stays bounded (a few KB of data per plot)
SOFTMAX_SUM = 1e-3  # rows of non-negative scores summing to 1 within this: drawn as bars per class


@dataclass(frozen=True)
class SampleValues:
    """One output of one comparison (or of several, concatenated): Keras' values and the runtime's, sample
    after sample, `width` values per sample."""

    expected: tuple[float, ...]
    actual: tuple[float, ...]
    width: int  # values per sample: the units (classes) of a (batch, units) output, 1 for (batch,)

    @property
    def samples(self) -> int:
        return len(self.expected) // self.width

    def errors(self) -> np.ndarray:
        """|actual - expected| per value; inf where one is not finite and they differ, 0 where equal."""
        expected, actual = np.asarray(self.expected), np.asarray(self.actual)
        with np.errstate(invalid="ignore", over="ignore"):
            diff = np.abs(actual - expected)
        same = (expected == actual) | (np.isnan(expected) & np.isnan(actual))
        return np.where(same, 0.0, np.where(np.isfinite(diff), diff, np.inf))

    def is_softmax(self) -> bool:
        """Keras' rows are class probabilities: at least 2 per sample, non-negative, each row summing to 1."""
        rows = np.asarray(self.expected).reshape(-1, self.width)
        return self.width >= 2 and rows.size > 0 and bool(np.all(rows >= 0)) and \
            bool(np.all(np.abs(rows.sum(axis=1) - 1.0) <= SOFTMAX_SUM))


def sample_values(expected: np.ndarray, actual: np.ndarray) -> SampleValues | None:
    """For an output of rank 1 or 2 of the same shape in both; None for any other (a sequence, a mismatch)."""
    if expected.ndim not in (1, 2) or expected.shape != actual.shape or expected.size == 0:
        return None
    width = expected.shape[1] if expected.ndim == 2 else 1
    if width == 0 or width > MAX_VALUES:
        return None
    rows = max(1, MAX_VALUES // width)
    keep = (slice(0, rows),)  # whole samples, the first ones

    def values(array: np.ndarray) -> tuple[float, ...]:
        return tuple(float(v) for v in np.asarray(array, dtype=np.float64)[keep].reshape(-1))

    return SampleValues(values(expected), values(actual), width)


def merge_samples(items: Iterable[SampleValues | None]) -> SampleValues | None:
    """Several cases' values one after another (those of the first case's width), up to MAX_VALUES."""
    found = [item for item in items if item is not None]
    if not found:
        return None
    width = found[0].width
    same = [item for item in found if item.width == width]
    limit = (MAX_VALUES // width) * width
    expected = tuple(v for item in same for v in item.expected)[:limit]
    actual = tuple(v for item in same for v in item.actual)[:limit]
    return SampleValues(expected, actual, width)
