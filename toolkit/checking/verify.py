"""`verify`: re-run the parity check of an existing export against its Keras model, in one or more runtimes.

The runners, the runtime registry and the comparison loop are `toolkit.checking.loop`'s; this module opens an
export and its `.keras` file, reads what the export recorded (its output names, padding side, tier
tolerances: through `toolkit.onnxfile.metadata`'s readers), and compares every chosen runtime with Keras. A
stateful export (a file with a state map) is also run, in ONNX Runtime, on the three consecutive calls of
export's own check (`toolkit.checking.carry`), its states carried through that map.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from toolkit.checking.carry import carried_parity, with_carried_calls
from toolkit.checking.inputs import InputCase, input_cases
from toolkit.checking.loop import compare_with_keras, decided_tolerances
from toolkit.checking.results import ParityReport, RuntimeReport, VerifyReport
from toolkit.errors import InputError
from toolkit.models.naming import output_origins, unique_names
from toolkit.onnxfile import metadata
from toolkit.onnxfile.model import load_onnx
from toolkit.options import DEFAULT_LIMITS, ResourceLimits
from toolkit.progress import Progress
from toolkit.runtimes.base import open_or_failed
from toolkit.runtimes.keras import KerasRunner
from toolkit.runtimes.onnxrt import OnnxRunner
from toolkit.runtimes.registry import Runtime, installed_of, not_installed, runtimes_named
from toolkit.tolerance import Tolerances


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
    padding = metadata.read_options(proto).padding  # the side the export was made for
    # As at export: the recorded tier's, the compute dtype's, the ops'; once, unless `verify_export` did.
    tolerances = decided_tolerances(tolerances, proto, keras.model)
    cases = input_cases(keras.model, seed, padding_side=padding)
    return compare_in_runtimes(Path(onnx_path), proto, keras, chosen, expected, tolerances, cases, progress,
                               seed=seed, padding=padding)


def prove_written(proto: onnx.ModelProto, keras: KerasRunner, runtimes: Sequence[str], expected: Sequence[str],
                  tolerances: Tolerances, cases: Sequence[InputCase]) -> list[RuntimeReport]:
    """`export --runtimes`: the bytes about to be written, run from a private file in each runtime and
    compared with Keras on the export's own parity cases (`all`: every runtime a model deploys to, so
    not onnx.reference, a check rather than a target)."""
    chosen = deploy_runtimes(runtimes)
    with tempfile.TemporaryDirectory(prefix="lstm-onnx-prove-") as folder:
        path = Path(folder) / "model.onnx"
        path.write_bytes(proto.SerializeToString())
        return compare_in_runtimes(path, proto, keras, chosen, expected, tolerances, cases)


def compare_in_runtimes(path: Path, proto: onnx.ModelProto, keras: KerasRunner, chosen: Sequence[Runtime],
                        expected: Sequence[str], tolerances: Tolerances, cases: Sequence[InputCase],
                        progress: Progress = Progress(), seed: int = 0, padding: str = "right") -> list[RuntimeReport]:
    """Keras vs each chosen runtime on these cases; a runtime the model is not valid in says why. A
    stateful export's consecutive calls (`seed`, `padding`: as its cases were drawn) in ONNX Runtime too."""
    problems = {runtime.name: runtime.problem(proto) for runtime in chosen}
    valid = [r for r in chosen if not problems[r.name]]
    progress.begin(len(valid) + len(cases), "verify")
    with contextlib.ExitStack() as stack:
        runners = []
        for runtime in valid:
            runners.append(stack.enter_context(open_or_failed(runtime.name, runtime.open, path, proto)))
            progress.advance(f"opened {runtime.name}")
        reports = compare_with_keras(keras, runners, proto, expected, tolerances, cases, progress)
        with_carried_calls_in_onnxruntime(keras, runners, reports, expected, tolerances, seed, padding)
    progress.end()
    return [RuntimeReport(r.name, reports.get(r.name), problems[r.name] or "") for r in chosen]


def with_carried_calls_in_onnxruntime(keras: KerasRunner, runners: Sequence[Any], reports: dict[str, ParityReport],
                                      expected: Sequence[str], tolerances: Tolerances, seed: int, padding: str) -> None:
    """A stateful export's consecutive calls, as at export (`toolkit.checking.carry`): Keras keeps its states from
    call to call, ONNX Runtime is fed the states its previous call returned, by the file's state map. Added
    to each in-process ONNX Runtime's report; a file without a state map, or a model without stateful
    layers, adds nothing."""
    for runner in runners:
        if isinstance(runner, OnnxRunner) and runner.name in reports:
            # A Keras 2 file's original carries its own states where it can (`carried_parity`).
            carried = carried_parity(keras.model, runner, expected, tolerances, seed, padding, reference=keras)
            reports[runner.name] = with_carried_calls(reports[runner.name], carried)


def deploy_runtimes(names: Sequence[str]) -> list[Runtime]:
    """The registry's runtimes of these names; `all` means every runtime a model deploys to, so not
    onnx.reference, a check rather than a target (`export --runtimes` and `--target` alike)."""
    return [r for r in runtimes_named(names) if list(names) != ["all"] or r.name != "reference"]


def recorded_keras_model(model: onnx.ModelProto, name: str = "the model") -> Any:
    """The Keras model a builder export was made from, rebuilt from the flags it records
    (`lstm_onnx.source`'s `builder`, checked as `StackConfig` checks them): `verify` without `--keras`."""
    from toolkit.models.builder import StackConfig, build_stack

    flags = metadata.read_source(model).get("builder")
    if not isinstance(flags, dict):
        raise InputError(f"Expected --keras, or an export that records the builder flags it was made from. Received: "
                         f"{name}, which records {sorted(metadata.read_source(model)) or 'no source'}")
    try:
        config = StackConfig(**flags)
    except TypeError as exc:  # a flag StackConfig does not have
        raise InputError(f"Expected builder flags among StackConfig's fields in {name}. Received: {exc}") from None
    return build_stack(config)


def expected_output_names(keras_model: Any, onnx_model: onnx.ModelProto) -> list[str]:
    """The names an export of this Keras model should carry: those recorded at export, else the defaults."""
    recorded = metadata.read_output_names(onnx_model)
    return recorded or unique_names([o.name for o in output_origins(keras_model)])


@dataclass(frozen=True)
class VerifyOutcome:
    """What `lstm-onnx verify` finds: the report (each runtime, the streamed run), the runtimes named but not
    installed (each with how to install it), and the reference when it is not the Keras model itself (a Keras
    2 file's original). True when every runtime passed and none named explicitly is missing (`all` lists the
    missing ones without failing)."""

    report: VerifyReport
    not_installed: dict[str, str] = field(default_factory=dict)
    reference: str | None = None
    all_asked: bool = False

    def __bool__(self) -> bool:
        return bool(self.report) and (self.all_asked or not self.not_installed)


def verify_export(onnx_path: str | Path, keras_path: str | Path | None = None, runtimes: Sequence[str] = ("onnxruntime",),
                  tolerances: Tolerances = Tolerances(), seed: int = 0, chunks: Sequence[int] | None = None,
                  stream_length: int = 12, limits: ResourceLimits = DEFAULT_LIMITS,
                  progress: Progress = Progress(), weights: str | Path | None = None) -> VerifyOutcome:
    """`lstm-onnx verify` as a function: the export against its Keras model (or, without one, the model rebuilt
    from the builder flags the export records) in each installed runtime named, and with `chunks` also fed
    in chunks carrying its states. A runtime not installed is listed; none installed is an error. With
    `weights`, `keras_path` is an architecture JSON or YAML and `weights` its weights-only `.h5`."""
    onnx_path = Path(onnx_path)
    ready, missing = installed_of(runtimes)  # an unknown name is refused before the Keras model is loaded
    absent = {r.name: not_installed(r) for r in missing}
    if not ready:
        raise InputError(f"Expected an installed runtime among {list(runtimes)}. Received: "
                         + "; ".join(f"{name}: {hint}" for name, hint in absent.items()))
    reference = reference_of(onnx_path, keras_path, limits, weights)
    try:
        # Decided once, here: the unchunked check in every runtime and the chunked one use the same.
        tolerances = decided_tolerances(tolerances, load_onnx(onnx_path), reference.model)
        results = verify_runtimes(onnx_path, reference, [r.name for r in ready], tolerances, seed=seed,
                                  progress=progress)
        streamed = None
        if chunks is not None:
            from toolkit.checking.streaming import stream_parity

            streamed = stream_parity(reference.model, load_onnx(onnx_path), chunks, stream_length, seed=seed,
                                     tolerances=tolerances, reference=reference)
    finally:
        reference.close()  # a SavedModel signature's child process
    return VerifyOutcome(VerifyReport(onnx_path.name, tuple(results), streamed), absent,
                         getattr(reference, "label", None), list(runtimes) == ["all"])


def reference_of(onnx_path: Path, keras_path: str | Path | None, limits: ResourceLimits = DEFAULT_LIMITS,
                 weights: str | Path | None = None) -> KerasRunner:
    """The parity reference, loaded once within `limits` for the parity check and the streamed one alike;
    or rebuilt from the builder flags the export records. A Keras 2 file's reference is its original
    (tf.keras, or the SavedModel's signature), over its Keras 3 translation."""
    if keras_path is not None:
        from toolkit.runtimes.keras2 import load_reference

        return load_reference(Path(keras_path), limits, weights)
    if weights is not None:
        raise InputError(f"Expected --weights with --keras, an architecture JSON or YAML. Received: --weights "
                         f"{str(weights)!r} without --keras")
    return KerasRunner(recorded_keras_model(load_onnx(onnx_path), onnx_path.name))
