"""Every builder variant and the seed's four cases, in every runtime: pass, fail, or not valid (why).

    python scripts/runtime_matrix.py                        # all, about 5 minutes on 2 cores
    python scripts/runtime_matrix.py --variants gru lstm_masking --runtimes openvino onnxruntime-node

Each model is built (`toolkit.models.builder`), exported with lstm-onnx's defaults, written to a temporary
folder and run in each runtime on the parity check's input cases (`toolkit.checking.inputs.input_cases`: random
batches of 1 and 4, padded where the model masks, two lengths where time is dynamic), compared with Keras
output by output at the default tolerances. A runtime whose `problem` rejects the model is still run,
so the matrix shows what the rejected model would have computed: its status is "not valid" with the
reason and the error measured (or the runtime's own error). Writes scripts/results/runtime_matrix.{json,md}.
A measurement, not a test: it never asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import onnx  # noqa: E402

from toolkit.checking.parity import check_parity  # noqa: E402
from toolkit.errors import InputError  # noqa: E402
from toolkit.export.exporter import export_model  # noqa: E402
from toolkit.fileio import atomic_write_text  # noqa: E402
from toolkit.models.builder import VARIANTS, StackConfig, build_stack, stack_configs, variant_config  # noqa: E402
from toolkit.runtimes.registry import RUNTIMES, Runtime  # noqa: E402
from toolkit.tolerance import Tolerances

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Cell:
    """One model in one runtime."""

    model: str
    runtime: str
    status: str  # "pass", "fail", "not valid"
    reason: str  # why not valid, or what failed
    measured: str  # "ok" (within tolerance), "off" (outside), "error" (the runtime refused or crashed)
    max_abs: float | None
    max_rel: float | None
    seconds: float


def models(variants: list[str]) -> list[tuple[str, StackConfig]]:
    seeds = [(config.name, config) for config in stack_configs()]
    return seeds + [(name, variant_config(name)) for name in variants]


def measure(runtime: Runtime, path: Path, proto: onnx.ModelProto, keras_model: Any,
            names: list[str]) -> tuple[str, str, float | None, float | None]:
    """(measured, detail, max_abs, max_rel) of one runtime against Keras."""
    try:
        with runtime.open(path, proto) as runner:
            report = check_parity(keras_model, runner, names, Tolerances())
    except InputError as exc:  # the runtime refused the model or failed a run: its own one-line message
        return "error", str(exc), None, None
    summaries = report.summaries()
    max_abs = max((s.max_abs for s in summaries), default=None)
    max_rel = max((s.max_rel for s in summaries), default=None)
    return ("ok" if report else "off"), "; ".join(report.failures()[:1]), max_abs, max_rel


def judge(name: str, runtime: Runtime, path: Path, proto: onnx.ModelProto, keras_model: Any,
          names: list[str]) -> Cell:
    started = time.perf_counter()
    problem = runtime.problem(proto)
    measured, detail, max_abs, max_rel = measure(runtime, path, proto, keras_model, names)
    if problem:
        status, reason = "not valid", problem
    else:
        status, reason = ("pass", "") if measured == "ok" else ("fail", detail)
    return Cell(name, runtime.name, status, reason if status != "not valid" or measured != "error" else
                f"{problem} [{detail}]", measured, max_abs, max_rel, round(time.perf_counter() - started, 2))


def run_matrix(variants: list[str], runtimes: dict[str, Runtime], log: Callable[[str], None]) -> list[Cell]:
    cells: list[Cell] = []
    with tempfile.TemporaryDirectory() as folder:
        for name, config in models(variants):
            keras_model = build_stack(config)
            result = export_model(keras_model, source={"variant": name})
            path = Path(folder) / f"{name}.onnx"
            path.write_bytes(result.model.SerializeToString())
            names = [o.name for o in result.outputs]
            for runtime in runtimes.values():
                cell = judge(name, runtime, path, result.model, keras_model, names)
                cells.append(cell)
                log(f"{name:28} {runtime.name:17} {cell.status:9} {cell.measured:5} "
                    f"{'' if cell.max_abs is None else f'{cell.max_abs:.2g}':8} {cell.reason[:90]}")
    return cells


def markdown(cells: list[Cell], runtimes: list[str]) -> str:
    rows = list(dict.fromkeys(c.model for c in cells))
    by = {(c.model, c.runtime): c for c in cells}
    lines = ["Max abs error against Keras over the parity cases, in parentheses.", "",
             "| model | " + " | ".join(runtimes) + " |", "|---|" + "---|" * len(runtimes)]
    for model in rows:
        marks = []
        for runtime in runtimes:
            cell = by[model, runtime]
            error = "" if cell.max_abs is None else f" ({cell.max_abs:.1g})"
            marks.append({"pass": "pass", "fail": "**fail**", "not valid": "not valid"}[cell.status] + error)
        lines.append(f"| {model} | " + " | ".join(marks) + " |")
    lines += ["", "Not valid (the runtime's `problem`), with what it computed anyway:", ""]
    lines += [f"- {c.model} in {c.runtime}: {c.reason}" + (f" (measured: off by {c.max_abs:.2g})" if c.measured == "off" else "")
              for c in cells if c.status == "not valid"]
    failed = [c for c in cells if c.status == "fail"]
    lines += ["", "Failed (outside the default tolerance):", ""]
    for runtime in dict.fromkeys(c.runtime for c in failed):
        errors = [c.max_abs for c in failed if c.runtime == runtime and c.max_abs is not None]
        span = f"max abs error {min(errors):.2g} to {max(errors):.2g}" if errors else "errors only"
        lines.append(f"- {runtime}: {sum(c.runtime == runtime for c in failed)} models, {span}")
    return "\n".join(lines) + "\n"


def summary(cells: list[Cell]) -> dict[str, dict[str, int]]:
    table: dict[str, dict[str, int]] = {}
    for cell in cells:
        counts = table.setdefault(cell.runtime, {"pass": 0, "fail": 0, "not valid": 0})
        counts[cell.status] += 1
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--runtimes", nargs="*", default=list(RUNTIMES), choices=list(RUNTIMES))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    chosen = {name: RUNTIMES[name] for name in args.runtimes}
    cells = run_matrix(args.variants, chosen, lambda line: print(line, flush=True))
    counts = summary(cells)
    payload = {"summary": counts, "cells": [asdict(c) for c in cells]}
    atomic_write_text(args.out / "runtime_matrix.json", json.dumps(payload, indent=1) + "\n")
    atomic_write_text(args.out / "runtime_matrix.md", markdown(cells, list(chosen)))
    print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
