"""`verify --html` and `export --html`: one self-contained page (no script, no network) per verification.

A page holds, per model: its inputs, its outputs by role and each recurrent layer with the ONNX op it
became (from the export's metadata); a runtime x output matrix (pass / fail / not valid, the reason on
hover and in a footnote); for every sequence output, a plot of the error per time step with one series per
runtime or tier (`toolkit.pages.plots`, from the per-step errors the comparison kept); for `--stream`, the
streamed series with its chunk boundaries; for a model without a sequence output (a forecaster, a
classifier), each runtime's values against Keras' per sample and its errors' distribution with the
tolerance (from the values the comparison kept, `toolkit.checking.samples`); then the versions and the command.

Everything from a model file (names, metadata) is escaped by `toolkit.pages.shell.esc` (`safe_text`, then markup): layer
names are user data. The page is bounded: at most `MAX_POINTS` points per series and `MAX_PLOTS` plots.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Any

import onnx

from toolkit import __version__
from toolkit.checking.results import ParityReport, RuntimeReport, StreamReport
from toolkit.fileio import atomic_write_text
from toolkit.onnxfile import metadata
from toolkit.onnxfile.model import graph_inputs, graph_outputs
from toolkit.pages.shell import PAGE_END, esc, page_start

MAX_PLOTS = 48  # sequence outputs drawn per page; any more are listed, not drawn (each plot is 20-90 KB)
# The packages a report lists besides the runtimes' own, which the registry names (`runtime_packages`).
TOOL_PACKAGES = ("lstm-onnx", "numpy", "onnx", "tensorflow-cpu", "keras", "tf2onnx", "matplotlib")


@dataclass(frozen=True)
class ModelSection:
    """One model on the page: its proto, each runtime's report, and the streamed run if there was one."""

    label: str  # the file's name
    model: onnx.ModelProto
    runtimes: tuple[RuntimeReport, ...]
    stream: StreamReport | None = None
    not_installed: tuple[str, ...] = ()  # "name: not installed: `lstm-onnx setup --runtimes X`", not run


def series_label(runtime: str, tier: str) -> str:
    """A runtime's name, with the export's tier when it is not float32 (`onnxruntime [int8]`)."""
    return runtime if tier == "float32" else f"{runtime} [{tier}]"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], css: str = "") -> str:
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _shape(shape: Sequence[object]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def model_html(section: ModelSection) -> str:
    """Inputs; outputs with their layer and role; recurrent layers with the ONNX op each became."""
    model = section.model
    inputs = [[esc(t.name), esc(t.dtype), esc(_shape(t.shape))] for t in graph_inputs(model)]
    roles = {str(o.get("name")): o for o in metadata.read_outputs(model)}
    outputs = [[esc(t.name), esc(roles.get(t.name, {}).get("layer", "")), esc(roles.get(t.name, {}).get("role", "")),
                esc(t.dtype), esc(_shape(t.shape))] for t in graph_outputs(model)]
    layers = [[esc(layer.get("name")), esc(layer.get("class")), esc(layer.get("units", "")),
               esc(", ".join(f"{flag}" for flag in ("return_sequences", "return_state", "go_backwards")
                             if layer.get(flag))), esc(", ".join(map(str, layer.get("outputs", [])))),
               f"<b>{esc(layer.get('onnx_op') or 'not fused')}</b>"] for layer in metadata.read_layers(model)]
    parts = [f"<p>tier <b>{esc(metadata.read_tier(model))}</b>, opset {esc(metadata.read_opset(model))}</p>",
             "<h3>Inputs</h3>", _table(["input", "dtype", "shape"], inputs),
             "<h3>Outputs</h3>", _table(["output", "layer", "role", "dtype", "shape"], outputs)]
    parts += ["<h3>Recurrent layers</h3>",
              _table(["layer", "class", "units", "flags", "returns", "ONNX op"], layers) if layers
              else "<p>none recorded (not an lstm-onnx export)</p>"]
    return "\n".join(parts)


@dataclass(frozen=True)
class Cell:
    runtime: str
    output: str
    status: str  # pass / fail / not valid
    text: str
    reason: str


def matrix_cells(section: ModelSection) -> list[list[Cell]]:
    """Rows of the runtime x output matrix, one per runtime (and one for the stream), in report order."""
    names = [t.name for t in graph_outputs(section.model)]
    rows = [_row(r.runtime, names, r.report, r.not_valid) for r in section.runtimes]
    stream = section.stream
    if stream is not None:
        label = f"onnxruntime stream {','.join(map(str, stream.chunks))}"
        rows.append(_row(label, names, stream.against_keras, ""))
    return rows


def _row(runtime: str, names: Sequence[str], report: ParityReport | None, not_valid: str) -> list[Cell]:
    if report is None:
        return [Cell(runtime, name, "not valid", "not valid", not_valid) for name in names]
    summaries = {s.name: s for s in report.summaries()}
    cells = []
    for name in names:
        found = summaries.get(name)
        if found is None:  # an extra output (--state-io's states) that Keras has no counterpart for
            cells.append(Cell(runtime, name, "not compared", "—", "no Keras output to compare with"))
            continue
        status = "pass" if found.passed else "fail"
        reason = "; ".join(found.reasons) or f"max abs {found.max_abs:.3g} within {found.tolerance}"
        cells.append(Cell(runtime, name, status, f"{status} {found.max_abs:.1e}", reason))
    return cells


def matrix_html(section: ModelSection, notes: list[str]) -> str:
    """The matrix; each fail or not-valid cell's reason is its hover text and a numbered footnote."""
    names = [t.name for t in graph_outputs(section.model)]
    head = "<th>runtime</th>" + "".join(f"<th>{esc(n)}</th>" for n in names)
    body = []
    for row in matrix_cells(section):
        cells = []
        for cell in row:
            mark = ""
            if cell.status in ("fail", "not valid"):
                notes.append(cell.reason)
                mark = f'<sup><a href="#note-{len(notes)}">{len(notes)}</a></sup>'
            cells.append(f'<td class="{cell.status.replace(" ", "-")}" data-runtime="{esc(cell.runtime)}" '
                         f'data-output="{esc(cell.output)}" data-status="{cell.status}" title="{esc(cell.reason)}">'
                         f"{esc(cell.text)}{mark}</td>")
        body.append(f'<tr><th class="rt">{esc(row[0].runtime)}</th>{"".join(cells)}</tr>')
    return f'<table class="matrix"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _has_sequence(section: ModelSection) -> bool:
    reports = [r.report for r in section.runtimes if r.report is not None]
    reports += [section.stream.against_keras] if section.stream is not None else []
    return any(s.steps is not None for report in reports for s in report.summaries())


def plots_html(section: ModelSection, start: int) -> tuple[str, int]:
    """One plot per sequence output, one series per runtime that ran (and the stream); returns the HTML and
    how many plots it drew (the page bounds the total)."""
    from toolkit.pages.plots import Series, step_plot

    tier = metadata.read_tier(section.model)
    by_output: dict[str, list[Series]] = {}
    for runtime in section.runtimes:
        for summary in runtime.report.summaries() if runtime.report is not None else ():
            if summary.steps is not None:
                by_output.setdefault(summary.name, []).append(
                    Series(series_label(runtime.runtime, tier), summary.steps, summary.tolerance))
    stream, boundaries = section.stream, []
    if stream is not None:
        boundaries = stream.boundaries
        label = series_label(f"onnxruntime stream {','.join(map(str, stream.chunks))}", tier)
        for summary in stream.against_keras.summaries():
            if summary.steps is not None:
                by_output.setdefault(summary.name, []).append(Series(label, summary.steps, summary.tolerance))
    parts, drawn = [], 0
    for name, series in by_output.items():
        if start + drawn >= MAX_PLOTS:
            parts.append(f"<p>{esc(name)}: not drawn (a page draws at most {MAX_PLOTS} plots)</p>")
            continue
        plot_id = f"plot{start + drawn}"
        streamed = any(s.label.startswith("onnxruntime stream") for s in series)
        svg = step_plot(series, boundaries if streamed else (), plot_id=plot_id)
        runtimes = esc(json.dumps([s.label for s in series]), limit=None)
        parts.append(f'<figure class="plot" id="{plot_id}" data-output="{esc(name)}" data-series="{len(series)}" '
                     f'data-runtimes="{runtimes}"><figcaption>{esc(name)}: max abs error per time step over batch '
                     f"and units, every case (log scale)</figcaption>{svg}</figure>")
        drawn += 1
    if not by_output:
        values, count = values_html(section, start)
        return values, count
    return "\n".join(parts), drawn


def _value_series(section: ModelSection) -> dict[str, list[Any]]:
    """Per output, each runtime's values with Keras' (and the stream's, its states carried), in report order."""
    from toolkit.pages.plots import ValueSeries

    tier = metadata.read_tier(section.model)
    runs = [(series_label(r.runtime, tier), r.report) for r in section.runtimes if r.report is not None]
    if section.stream is not None:
        runs.append((series_label(f"onnxruntime stream {','.join(map(str, section.stream.chunks))}", tier),
                     section.stream.against_keras))
    by_output: dict[str, list[Any]] = {}
    for label, report in runs:
        for summary in report.summaries():
            if summary.samples is not None:
                by_output.setdefault(summary.name, []).append(ValueSeries(label, summary.samples, summary.tolerance))
    return by_output


def _values_data(series: Sequence[Any]) -> str:
    """The drawn values as the figure's data: keras, then each series' (7 significant digits; JSON strings for
    non-finite values), and each series' max |error|, so a reader (or a test) can check them."""
    def number(value: float) -> float | str:
        return float(f"{value:.7g}") if math.isfinite(value) else str(value)

    first = series[0].samples
    data = {"width": first.width, "keras": [number(v) for v in first.expected],
            "runtimes": {s.label: [number(v) for v in s.samples.actual] for s in series},
            "max_abs": {s.label: number(float(s.samples.errors().max())) for s in series}}
    return esc(json.dumps(data), limit=None)


def values_html(section: ModelSection, start: int) -> tuple[str, int]:
    """A model with no sequence output (a forecaster, a classifier): per output, each runtime against Keras
    per sample, and the distribution of its errors with the tolerance (`toolkit.pages.plots.values_plot`)."""
    from toolkit.pages.plots import values_plot

    parts, drawn = [], 0
    for name, series in _value_series(section).items():
        if start + drawn >= MAX_PLOTS:
            parts.append(f"<p>{esc(name)}: not drawn (a page draws at most {MAX_PLOTS} plots)</p>")
            continue
        plot_id = f"plot{start + drawn}"
        kind = "bars per class (softmax)" if series[0].samples.is_softmax() else "scatter on the identity line"
        runtimes = esc(json.dumps([s.label for s in series]), limit=None)
        parts.append(f'<figure class="values" id="{plot_id}" data-output="{esc(name)}" data-series="{len(series)}" '
                     f'data-runtimes="{runtimes}" data-values="{_values_data(series)}"><figcaption>{esc(name)}: '
                     f"each runtime against Keras per sample ({kind}), and the distribution of |error| over the "
                     f"{series[0].samples.samples} samples of every case, with the tolerance</figcaption>"
                     f"{values_plot(series, plot_id)}</figure>")
        drawn += 1
    if not parts:
        parts.append("<p>No output was compared: nothing to plot.</p>")
    return "\n".join(parts), drawn


CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:1.5em auto;max-width:75em;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.4em 0 1em}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left}
th{background:#f4f4f4}.matrix td{font-variant-numeric:tabular-nums}.pass{background:#e3f6e3}
.fail{background:#fbe0e0;font-weight:600}.not-valid{background:#eee;color:#666}.verdict-pass{color:#1a7f37}
.verdict-fail{color:#c62828}figure{margin:1em 0}figcaption{font-weight:600;margin-bottom:.3em}
svg{max-width:100%;height:auto}code{background:#f4f4f4;padding:0 .25em}ol.notes{font-size:.92em}"""


def versions_html(models: Sequence[onnx.ModelProto]) -> str:
    """The installed versions that verified (read from package metadata: nothing is imported) and the
    versions each export records it was made with."""
    from toolkit.runtimes.js import installed_version, npm_installed, npm_package
    from toolkit.runtimes.registry import runtime_packages

    runtimes = runtime_packages()
    rows = []
    for package in dict.fromkeys(TOOL_PACKAGES + runtimes.python):
        try:
            rows.append([esc(package), esc(package_metadata.version(package))])
        except package_metadata.PackageNotFoundError:
            continue
    for package in runtimes.npm:
        if npm_installed(package):
            rows.append([f"{package} (npm)", esc(installed_version(npm_package(package)))])
    recorded = {k: v for model in models for k, v in metadata.read_versions(model).items()}
    made = ", ".join(f"{esc(k)} {esc(v)}" for k, v in sorted(recorded.items()))
    return _table(["package", "version"], rows) + (f"<p>The export records it was made with: {made}.</p>" if made else "")


def report_page(sections: Sequence[ModelSection], title: str, passed: bool, command: str) -> str:
    """The whole page; `command` is the command line that produced it, shown as text."""
    started = time.perf_counter()
    notes: list[str] = []
    parts, drawn = [], 0
    for section in sections:
        plots, count = plots_html(section, drawn)
        drawn += count
        parts += [f"<h2>{esc(section.label)}</h2>", model_html(section),
                  "<h3>Runtimes × outputs</h3>", matrix_html(section, notes),
                  *(f'<p class="not-installed">{esc(line)}</p>' for line in section.not_installed),
                  f"<h3>{'Error per time step' if _has_sequence(section) else 'Values against Keras'}</h3>", plots]
    verdict = "PASS" if passed else "FAIL"
    note_items = "".join(f'<li id="note-{i}">{esc(text)}</li>' for i, text in enumerate(notes, start=1))
    body = "\n".join([
        f"<h1>{esc(title)}: <span class=\"verdict-{verdict.lower()}\">{verdict}</span></h1>", *parts,
        *(["<h2>Notes</h2>", f'<ol class="notes">{note_items}</ol>'] if notes else []),
        "<h2>Versions</h2>", versions_html([s.model for s in sections]),
        "<h2>Command</h2>", f"<pre><code>{esc(command)}</code></pre>",
    ])
    page = f"{page_start(title, CSS)}{body}\n"
    footer = (f"<footer><p>Made by lstm-onnx {__version__} in {time.perf_counter() - started:.2f} s; "
              f"{{size}} KB, {drawn} plot(s).</p></footer>\n{PAGE_END}")
    size = len((page + footer).encode("utf-8")) // 1024
    return page + footer.replace("{size}", str(size))


def write_report(path: str | Path, sections: Sequence[ModelSection], title: str, passed: bool, command: str) -> Path:
    """Make the page and write it whole (atomically): a failed render leaves no half-written file."""
    return atomic_write_text(path, report_page(sections, title, passed, command))
