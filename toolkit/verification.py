"""`verify`: re-run the parity check of an existing export against its Keras model, in one or more runtimes.

The runners, the runtime registry and the comparison loop are `toolkit.verify`'s; this module opens an
export and its `.keras` file, reads what the export recorded (its output names, padding side, tier
tolerances: through `toolkit.metadata`'s readers), and compares every chosen runtime with Keras. A
stateful export (a file with a state map) is also run, in ONNX Runtime, on the three consecutive calls of
export's own check (`toolkit.carry`), its states carried through that map.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx

from toolkit import metadata
from toolkit.carry import carried_parity, with_carried_calls
from toolkit.compare import ParityReport, RuntimeReport, Tolerances
from toolkit.errors import InputError
from toolkit.inputs import make_cases
from toolkit.naming import output_origins, unique_names
from toolkit.progress import Progress
from toolkit.runner import load_onnx
from toolkit.runtimes.base import open_or_failed
from toolkit.tiers import recorded_tolerances
from toolkit.verify import KerasRunner, OnnxRunner, compare_with_keras, runtimes_named


def verify_files(onnx_path: str | Path, keras_path: str | Path, tolerances: Tolerances = Tolerances(),
                 seed: int = 0) -> ParityReport:
    """Re-run the parity check of an existing export against its Keras model, in ONNX Runtime."""
    return verify_runtimes(onnx_path, keras_path, ("onnxruntime",), tolerances, seed)[0].report


def verify_runtimes(onnx_path: str | Path, keras_path: str | Path | KerasRunner, runtimes: Sequence[str] = ("onnxruntime",),
                    tolerances: Tolerances = Tolerances(), seed: int = 0,
                    progress: Progress = Progress()) -> list[RuntimeReport]:
    """Keras vs each runtime over one set of cases; a runtime the model is not valid in says why. `progress`
    hears of each runtime opened (Chromium and OpenVINO take seconds) and each case compared."""
    chosen = runtimes_named(runtimes)
    proto = load_onnx(onnx_path)
    keras = keras_path if isinstance(keras_path, KerasRunner) else KerasRunner(keras_path)
    expected = expected_output_names(keras.model, proto)
    if len(keras.model.outputs) > len(proto.graph.output):
        raise InputError(
            f"Expected the ONNX model to have the Keras model's {len(keras.model.outputs)} outputs {expected}. "
            f"Received: {len(proto.graph.output)} outputs {[o.name for o in proto.graph.output]}"
        )
    problems = {runtime.name: runtime.problem(proto) for runtime in chosen}
    padding = metadata.read_options(proto).padding  # the side the export was made for
    tolerances = recorded_tolerances(proto, tolerances, keras.model)  # an int8 or float16 export's, as at export
    cases = make_cases(keras.model, seed, padding)
    valid = [r for r in chosen if not problems[r.name]]
    progress.begin(len(valid) + len(cases), "verify")
    with contextlib.ExitStack() as stack:
        runners = []
        for runtime in valid:
            runners.append(stack.enter_context(open_or_failed(runtime.name, runtime.open, Path(onnx_path), proto)))
            progress.advance(f"opened {runtime.name}")
        reports = compare_with_keras(keras, runners, proto, expected, tolerances, cases, progress)
        with_carried_calls_in_onnxruntime(keras, runners, reports, expected, tolerances, seed, padding)
    progress.end()
    return [RuntimeReport(r.name, reports.get(r.name), problems[r.name] or "") for r in chosen]


def with_carried_calls_in_onnxruntime(keras: KerasRunner, runners: Sequence[Any], reports: dict[str, ParityReport],
                                      expected: Sequence[str], tolerances: Tolerances, seed: int, padding: str) -> None:
    """A stateful export's consecutive calls, as at export (`toolkit.carry`): Keras keeps its states from
    call to call, ONNX Runtime is fed the states its previous call returned, by the file's state map. Added
    to each in-process ONNX Runtime's report; a file without a state map, or a model without stateful
    layers, adds nothing."""
    for runner in runners:
        if isinstance(runner, OnnxRunner) and runner.name in reports:
            carried = carried_parity(keras.model, runner, expected, tolerances, seed, padding)
            reports[runner.name] = with_carried_calls(reports[runner.name], carried)


def expected_output_names(keras_model: Any, onnx_model: onnx.ModelProto) -> list[str]:
    """The names an export of this Keras model should carry: those recorded at export, else the defaults."""
    recorded = metadata.read_output_names(onnx_model)
    return recorded or unique_names([o.name for o in output_origins(keras_model)])
