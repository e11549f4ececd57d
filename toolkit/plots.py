"""The report's plots: error per time step, one series per runtime or tier, drawn by matplotlib as inline SVG.

matplotlib is imported here only, and this module only by `toolkit.html_report`: `run`, `inspect` and
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

import numpy as np

from toolkit.steps import StepErrors
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
    from matplotlib.ticker import FuncFormatter, NullFormatter

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
