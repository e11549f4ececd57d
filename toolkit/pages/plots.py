"""The report's plots, drawn by matplotlib as inline SVG: for a sequence output, the error per time step, one
series per runtime or tier; for an output with one value (or row of scores) per sample, each runtime's
values against Keras' and the distribution of its errors, with the tolerance.

matplotlib is imported here only, and this module only by `toolkit.pages.report`: `run`, `inspect` and
`--help` never load it. Its object API (`Figure`, no pyplot) keeps no global state between plots. The SVG is
deterministic (a fixed hash salt, no date) and small: text stays text (`svg.fonttype: none`) and a series
longer than `MAX_POINTS` steps is drawn as the maximum over bins of steps, which keeps every peak.
Text from model files never reaches the SVG: the page titles each plot in HTML, escaped there.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.ticker import FuncFormatter, NullFormatter

from toolkit.checking.samples import SampleValues
from toolkit.checking.steps import StepErrors
from toolkit.tolerance import Tolerance

MAX_POINTS = 400  # per series; a longer sequence is drawn as its maximum over bins of steps
FLOOR = 1e-12  # an exact 0 is drawn here: a log axis has no 0
# Runtimes often agree to the bit (ONNX Runtime at each optimization level): distinct markers and dashes
# keep a series drawn under another one visible.
MARKERS = ("o", "s", "^", "D", "v", "x", "P", "*")
DASHES = ("-", "--", "-.", ":")
STYLE = {"svg.fonttype": "none", "svg.hashsalt": "lstm-onnx", "text.parse_math": False, "font.size": 9}


@dataclass(frozen=True)
class Series:
    """One runtime's (or tier's) errors on one output."""

    label: str  # "onnxruntime", "onnxruntime [int8]", "stream 1,3,2" (our own names, never a file's text)
    steps: StepErrors
    tolerance: Tolerance


def binned(values: Sequence[float], points: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) with at most `points` points: the maximum of each bin of steps, at the bin's first step."""
    y = np.asarray(values, dtype=np.float64)
    x = np.arange(len(y), dtype=np.float64)
    if len(y) <= points:
        return x, y
    edges = np.linspace(0, len(y), points + 1).astype(int)
    return x[edges[:-1]], np.maximum.reduceat(y, edges[:-1])


def _drawn(values: np.ndarray) -> np.ndarray:
    # 0 on the floor; inf (a non-finite value where the other runtime had a number) and NaN leave a gap.
    return np.where(np.isfinite(values), np.maximum(values, FLOOR), np.nan)


def step_plot(series: Sequence[Series], boundaries: Sequence[int] = (), plot_id: str = "plot") -> str:
    """An SVG of max abs error per time step (log scale), one line per series, with each distinct
    tolerance drawn (atol, and atol + rtol * max|expected| of the step) and chunk boundaries, if any.
    Each series line is an SVG group `<plot_id>-series-<i>` (the page tests count them)."""
    from matplotlib import rc_context
    from matplotlib.figure import Figure
    with rc_context({**STYLE, "svg.hashsalt": f"lstm-onnx-{plot_id}"}):  # unique clip and marker ids per plot
        figure = Figure(figsize=(8.5, 3.0), dpi=72, layout="constrained")
        axes = figure.add_subplot()
        for index, item in enumerate(series):
            x, y = binned(item.steps.max_abs)
            (line,) = axes.plot(x, _drawn(y), marker=MARKERS[index % len(MARKERS)] if len(x) <= 60 else None,
                                markersize=max(3.0, 7.0 - index), markerfacecolor="none",
                                linestyle=DASHES[index % len(DASHES)], linewidth=1.3, label=item.label)
            line.set_gid(f"{plot_id}-series-{index}")
        _tolerances(axes, series, plot_id)
        for number, step in enumerate(boundaries):
            axes.axvline(step - 0.5, color="0.45", linewidth=0.9, linestyle=(0, (4, 3)),
                         label="chunk boundary" if number == 0 else None).set_gid(f"{plot_id}-boundary-{number}")
        axes.set_yscale("log")
        axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.0e}"))  # plain text, no mathtext
        axes.yaxis.set_minor_formatter(NullFormatter())
        axes.set_xlabel("time step")
        axes.set_ylabel("max abs error")
        axes.grid(True, which="major", linewidth=0.4, color="0.85")
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
        buffer = io.StringIO()
        figure.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    text = buffer.getvalue()
    return text[text.index("<svg"):]  # no XML prolog or doctype inside an HTML page


def _tolerances(axes: object, series: Sequence[Series], plot_id: str) -> None:
    """Each distinct tolerance once: atol as a line; where rtol adds to it, the step's loosest bound dotted."""
    seen: list[Tolerance] = []
    for item in series:
        if item.tolerance in seen:
            continue
        seen.append(item.tolerance)
        number = len(seen) - 1
        tol = item.tolerance
        axes.axhline(max(tol.atol, FLOOR), color="crimson", linewidth=1.0,
                     label=f"atol {tol.atol:g}").set_gid(f"{plot_id}-atol-{number}")
        if tol.rtol > 0 and math.isfinite(tol.rtol):
            x, scale = binned(item.steps.max_expected)
            (bound,) = axes.step(x, tol.atol + tol.rtol * scale, where="post", color="crimson", linewidth=0.8,
                                 linestyle=":", label=f"atol + rtol·max|keras| (rtol {tol.rtol:g})")
            bound.set_gid(f"{plot_id}-bound-{number}")


@dataclass(frozen=True)
class ValueSeries:
    """One runtime's (or tier's, or stream's) values of one output without a time axis, with Keras'."""

    label: str
    samples: SampleValues
    tolerance: Tolerance


MAX_BAR_SAMPLES = 3  # a softmax output: bars per class for the first samples (every value is in the scatter data)
MAX_BAR_CLASSES = 24  # more classes than this: a scatter, as for any other output


def values_plot(series: Sequence[ValueSeries], plot_id: str = "plot") -> str:
    """An SVG of two panels for an output with one value (or one row of scores) per sample: left, each
    runtime's values against Keras' (a scatter on the identity line; a softmax output: Keras' bars per
    class with each runtime's value marked on them); right, each runtime's |error| over every value of
    every case (a log histogram) with the tolerance drawn. Groups `<plot_id>-series-<i>` (the scatter or
    markers of series i), `<plot_id>-errors-<i>` (its histogram), `<plot_id>-atol-0` (the tests count them)."""
    from matplotlib import rc_context
    from matplotlib.figure import Figure

    with rc_context({**STYLE, "svg.hashsalt": f"lstm-onnx-{plot_id}"}):
        figure = Figure(figsize=(10.0, 3.3), dpi=72, layout="constrained")
        left, right = figure.subplots(1, 2, width_ratios=(1.15, 1.0))
        first = series[0].samples
        if first.is_softmax() and first.width <= MAX_BAR_CLASSES:
            _bars(left, series, plot_id)
        else:
            _scatter(left, series, plot_id)
        _error_histogram(right, series, plot_id)
        # One legend for both panels: a runtime has one colour (its marker left, its histogram right).
        handles, labels = left.get_legend_handles_labels()
        extra = right.get_legend_handles_labels()
        figure.legend(handles + extra[0], labels + extra[1], loc="outside right upper", fontsize=7, frameon=False)
        buffer = io.StringIO()
        figure.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def _scatter(axes: Any, series: Sequence[ValueSeries], plot_id: str) -> None:
    expected = np.asarray(series[0].samples.expected)
    finite = expected[np.isfinite(expected)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    pad = (high - low) * 0.05 or 0.5
    (identity,) = axes.plot([low - pad, high + pad], [low - pad, high + pad], color="0.6", linewidth=0.9,
                            label="identity (= keras)")
    identity.set_gid(f"{plot_id}-identity")
    for index, item in enumerate(series):
        axes.scatter(item.samples.expected, item.samples.actual, s=max(9.0, 30.0 - 5 * index), facecolors="none",
                     marker=MARKERS[index % len(MARKERS)], linewidths=0.9, label=item.label,
                     color=f"C{index}").set_gid(f"{plot_id}-series-{index}")
    axes.set_xlabel("keras")
    axes.set_ylabel("runtime")
    axes.grid(True, linewidth=0.4, color="0.88")


def _bars(axes: Any, series: Sequence[ValueSeries], plot_id: str) -> None:
    """Keras' probabilities per class for the first samples, each runtime's value a tick on its bar."""
    width = series[0].samples.width
    count = min(MAX_BAR_SAMPLES, series[0].samples.samples)
    x = np.concatenate([np.arange(width) + s * (width + 1) for s in range(count)])
    keras = np.asarray(series[0].samples.expected[: count * width])
    for number, bar in enumerate(axes.bar(x, keras, width=0.8, color="0.82", label="keras")):
        bar.set_gid(f"{plot_id}-keras-{number}")
    for index, item in enumerate(series):
        axes.scatter(x, item.samples.actual[: count * width], marker="_", s=160.0 - 25 * (index % 5), linewidths=1.4,
                     color=f"C{index}", label=item.label).set_gid(f"{plot_id}-series-{index}")
    axes.set_xticks([s * (width + 1) + (width - 1) / 2 for s in range(count)],
                    [f"sample {s}" for s in range(count)])
    axes.set_xlabel(f"classes 0-{width - 1} of the first {count} samples")
    axes.set_ylabel("probability")
    axes.set_ylim(0, 1.05)


def _error_histogram(axes: Any, series: Sequence[ValueSeries], plot_id: str) -> None:
    """|runtime - keras| of every value, on log bins (an exact 0 counted at FLOOR), and the tolerance."""
    errors = [item.samples.errors() for item in series]
    finite = np.concatenate([e[np.isfinite(e)] for e in errors])
    tol = series[0].tolerance
    top = max(float(finite.max()) if finite.size else FLOOR, tol.atol, FLOOR * 10) * 10
    bins = np.logspace(math.log10(FLOOR), math.log10(top), 40)
    for index, error in enumerate(errors):
        drawn = np.clip(np.where(np.isfinite(error), error, top), FLOOR, top)
        *_, patches = axes.hist(drawn, bins=bins, histtype="step", linewidth=1.2, color=f"C{index}",
                                linestyle=DASHES[index % len(DASHES)])
        for patch in patches:
            patch.set_gid(f"{plot_id}-errors-{index}")
    axes.axvline(max(tol.atol, FLOOR), color="crimson", linewidth=1.0, label=f"atol {tol.atol:g}").set_gid(f"{plot_id}-atol-0")
    if tol.rtol > 0 and math.isfinite(tol.rtol):
        scale = float(np.nanmax(np.abs(np.asarray(series[0].samples.expected)))) if finite.size else 0.0
        axes.axvline(tol.atol + tol.rtol * scale, color="crimson", linewidth=0.8, linestyle=":",
                     label=f"atol + rtol·max|keras| (rtol {tol.rtol:g})").set_gid(f"{plot_id}-bound-0")
    axes.set_xscale("log")
    axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.0e}"))
    axes.xaxis.set_minor_formatter(NullFormatter())
    axes.set_xlabel("|runtime - keras| per value, every case (0 drawn at 1e-12)")
    axes.set_ylabel("values")
