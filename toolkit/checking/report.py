"""Plain-text tables for the CLI. Imports nothing heavy: `run` and `inspect` print through here."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from toolkit.checking.results import ParityReport

if TYPE_CHECKING:  # only for annotations: `run` and `inspect` import this module
    from toolkit.checking.results import RuntimeReport, VerifyReport
    from toolkit.onnxfile.model import ModelDescription


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h)) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _shape(shape: Sequence[object]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def parity_rows(label: str, report: ParityReport) -> list[list[str]]:
    """One row per output: label, name, shapes seen, max abs, max rel, tolerance, PASS/FAIL."""
    rows = []
    for s in report.summaries():
        rows.append([
            label, s.name, " ".join(_shape(shape) for shape in s.shapes), f"{s.max_abs:.2e}", f"{s.max_rel:.2e}",
            f"{s.tolerance.atol:g}/{s.tolerance.rtol:g}", "PASS" if s.passed else "FAIL",
        ])
    if not report.names_match:
        rows.append([label, "(names)", f"expected {list(report.expected_names)}", "", "", "", "FAIL"])
    return rows


PARITY_HEADERS = ["model", "output", "shapes", "max abs", "max rel", "atol/rtol", "result"]


def parity_table(items: Sequence[tuple[str, ParityReport]]) -> str:
    rows = [row for label, report in items for row in parity_rows(label, report)]
    return table(PARITY_HEADERS, rows)


def runtime_rows(label: str, result: RuntimeReport) -> list[list[str]]:
    """A runtime's rows: one per output, or one "not valid" row saying why the model is not valid there."""
    if result.report is None:
        return [[label, "(all)", "", "", "", "", f"not valid: {result.not_valid}"]]
    return parity_rows(label, result.report)


def verify_text(result: VerifyReport) -> str:
    """`verify`'s text: the table (a runtime per row group, labelled when several), invariants, verdict."""
    several = len(result.runtimes) > 1
    labelled = [(f"{result.model} [{r.runtime}]" if several else result.model, r) for r in result.runtimes]
    items = [(label, r.report) for label, r in labelled if r.report is not None]
    rows = [row for label, r in labelled for row in runtime_rows(label, r)]
    if result.stream is not None:
        chunks = ",".join(map(str, result.stream.chunks))
        streamed = [(f"{result.model} [stream {chunks} vs {result.stream.reference}]", result.stream.against_keras),
                    (f"{result.model} [stream {chunks} vs unchunked]", result.stream.against_whole)]
        items += streamed
        rows += [row for label, report in streamed for row in parity_rows(label, report)]
    lines = [table(PARITY_HEADERS, rows), *invariant_lines(items)]
    lines += [f"{label}: {len(calls)} consecutive calls, states carried through lstm_onnx.state_map: "
              f"{'pass' if all(calls) else 'FAIL'}" for label, r in labelled if r.report is not None
              and (calls := r.report.carried_calls())]
    lines += [f"{r.runtime}: skipped: {r.not_valid}" for r in result.runtimes if r.not_valid]
    lines.append("PASS" if result else "FAIL: " + "; ".join(result.failures()[:5]))
    return "\n".join(lines)


def invariant_lines(items: Sequence[tuple[str, ParityReport]]) -> list[str]:
    lines = []
    for label, report in items:
        seen: dict[str, bool] = {}
        for inv in report.invariants():
            seen[inv.description] = seen.get(inv.description, True) and inv.passed
        lines += [f"{label}: {desc}: {'holds' if ok else 'FAILS'}" for desc, ok in seen.items()]
    return lines


def description_text(desc: ModelDescription) -> str:
    parts = [f"{desc.path}  (opset {desc.opset}, IR {desc.ir_version}, producer {desc.producer or '?'})", ""]
    parts.append(table(["input", "dtype", "shape"], [[t.name, t.dtype, _shape(t.shape)] for t in desc.inputs] +
                       [[t.name, t.dtype, _shape(t.shape) + "  optional (zeros)"] for t in desc.optional_inputs]))
    parts.append("")
    parts.append(table(["output", "dtype", "shape"], [[t.name, t.dtype, _shape(t.shape)] for t in desc.outputs]))
    dynamic = sorted({d for t in desc.inputs + desc.optional_inputs + desc.outputs for d in t.shape if isinstance(d, str)})
    parts.append("")
    parts.append(f"dynamic axes: {', '.join(dynamic) if dynamic else 'none'}")
    recurrent = desc.recurrent_ops
    parts.append(f"recurrent ops: {', '.join(f'{op} x{n}' for op, n in recurrent.items()) if recurrent else 'none'}")
    if desc.metadata:
        parts.append("metadata:")
        parts += [f"  {key} = {value}" for key, value in desc.metadata.items()]
    return "\n".join(parts)


def outputs_text(outputs: Mapping[str, np.ndarray]) -> str:
    lines = []
    with np.printoptions(precision=6, suppress=False, threshold=200, edgeitems=3):
        for name, value in outputs.items():
            lines.append(f"{name}  {value.dtype.name} {tuple(value.shape)}")
            lines += ["  " + row for row in np.array2string(value).splitlines()]
    return "\n".join(lines)
