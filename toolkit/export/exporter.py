"""Exporting a Keras model to ONNX: lowered to fused ops, named, made reproducible and proven.

`export_model` runs these steps, in order:
1. convert: `lower_model` (in `lowering`) writes the graph: recurrent layers as fused ONNX ops from their
   weights, every other layer through tf2onnx; inputs are named and the batch axis is dynamic.
   (`converter="tf2onnx"` converts the whole model with tf2onnx instead, as a user would without us.)
2. name: every graph output gets its `<layer>_<role>` name (see `toolkit.models.naming`), in the Keras model's
   output order, and dynamic axes are named `batch` and `time` instead of `unk__N` (`toolkit.export.graph`).
3. canonicalize: every node, intermediate value and initializer is renamed by graph position, so that
   two exports of one model in two processes are the same bytes.
4. tier (`toolkit.onnxfile.tiers`, only with `tier` float16 or int8): weights stored as float16 or quantized to
   int8, then canonicalized again.
5. check fusion (on the float32 graph), then parity: ONNX Runtime against Keras, at the tier's tolerance.
6. record metadata (`toolkit.onnxfile.metadata`, in `toolkit.export.record` with step 4) and check the model in full
   with `onnx.checker`.
`ExportResult.save` writes the file atomically, and refuses to write a model that failed parity unless
asked to keep it. What an export is asked to do travels as one `ExportOptions` value (`toolkit.options`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from toolkit import __version__
from toolkit.checking.loop import decided_tolerances
from toolkit.checking.parity import check_parity
from toolkit.checking.precision import choose as choose_tolerance
from toolkit.checking.results import ParityReport, RuntimeReport
from toolkit.errors import InputError, UnsupportedModelError
from toolkit.export.graph import canonicalize, name_axes, name_outputs, prune_opset_imports
from toolkit.export.record import record_metadata, tier_graph, tier_notes
from toolkit.export.result import ExportResult, OutputInfo, load_runner
from toolkit.lowering import LayerLowering, StateIO, lower_model
from toolkit.models.keras3 import (
    load_keras_model,
    model_signature,
    output_shapes,
    require_recurrent,
    time_axis_sources,
)
from toolkit.models.naming import OutputOrigin, apply_overrides, default_output_names, output_origins
from toolkit.onnxfile import metadata
from toolkit.onnxfile.model import (
    FUSED_RECURRENT_OPS,
    LOOP_OPS,
    count_ops,
    graph_inputs,
    graph_outputs,
)
from toolkit.options import ExportOptions
from toolkit.tf2onnx_lib import InputSignature, convert


@dataclass
class _Graph:
    """The graph between the steps of `export_model`, and what it exports: names, origins, Keras shapes."""

    proto: onnx.ModelProto
    names: list[str]
    origins: list[OutputOrigin]
    shapes: list[tuple[int | None, ...]]
    lowering: tuple[LayerLowering, ...] = ()
    state_map: dict[str, str] = field(default_factory=dict)


def export_model(model: Any, options: ExportOptions | None = None, *, source: Mapping[str, Any] | None = None,
                 seed: int = 0, reference: Any = None, **changes: Any) -> ExportResult:
    """Export a built Keras model with named outputs, check parity, and return it in memory.

    `options` says what to export (`ExportOptions()` by default); keyword `changes` replace some of its
    fields (`export_model(model, padding="left")`). `source` is recorded in the metadata (e.g. the
    builder's flags); `seed` draws the parity inputs. `reference` (a `KerasRunner` with a `label`)
    computes the expected outputs instead of `model`: a Keras 2 file's original (`toolkit.runtimes.keras2`).
    """
    options = (options or ExportOptions()).replace(**changes)
    recurrent = require_recurrent(model)
    signature = model_signature(model)
    origins = output_origins(model)
    names = apply_overrides(default_output_names(model, origins), options.output_names)
    graph = _convert(model, signature, options, names, origins)
    _name(graph, model.name, signature, options, time_axis_sources(model))
    _check_targets(graph.proto, options.targets)
    _check_targets(graph.proto, options.runtimes, "--runtimes")
    warnings = _fusion_check(graph.lowering, count_ops(graph.proto), recurrent, options.require_fused)
    graph.proto, tier = tier_graph(graph.proto, options, graph.names)
    op_counts = dict(sorted(count_ops(graph.proto).items()))
    # Decided once (the tier is the one asked for: the metadata that records it is written after the check),
    # then passed to the parity check, its carried calls and `--runtimes`.
    tolerances = decided_tolerances(options.tolerances, graph.proto, model, options.tier)
    precision = choose_tolerance(options.tolerances, model, tolerances)
    report = check_parity(model, load_runner(graph.proto, model.name), graph.names, tolerances,
                          seed=seed, padding_side=options.padding, reference=reference, state_map=graph.state_map)
    reference_notes = (f"parity reference: {reference.label}",) if reference is not None else ()
    outputs = tuple(OutputInfo(info.name, origin.layer, origin.role, info.dtype, info.shape)
                    for info, origin in zip(graph_outputs(graph.proto), graph.origins))
    record_metadata(graph.proto, model, graph.lowering, [o.to_json() for o in outputs], report, options, source,
                    precision, graph.state_map)
    proven = _prove(graph.proto, model, options, graph.names, tolerances, seed, reference) if report else ()
    return ExportResult(
        model=graph.proto,
        inputs=graph_inputs(graph.proto),
        outputs=outputs,
        parity=report,
        op_counts=op_counts,
        recurrent_layers=tuple(recurrent),
        warnings=tuple(warnings),
        lowering=graph.lowering,
        notes=reference_notes + tuple(f"layer {e.layer!r}: {e.note}" for e in graph.lowering if e.note)
        + ((precision.note(),) if precision.chosen else ()) + tier_notes(tier, graph.lowering),
        tier=tier,
        proven=proven,
    )


def _prove(proto: onnx.ModelProto, model: Any, options: ExportOptions, names: Sequence[str], tolerances: Any,
           seed: int, reference: Any) -> tuple[RuntimeReport, ...]:
    """Step 6: with `--runtimes`, the final bytes run in each runtime against Keras on the parity cases."""
    if not options.runtimes:
        return ()
    from toolkit.checking.inputs import input_cases
    from toolkit.checking.verify import prove_written
    from toolkit.runtimes.keras import KerasRunner

    keras = reference if reference is not None else KerasRunner(model)
    cases = input_cases(model, seed, padding_side=options.padding)
    return tuple(prove_written(proto, keras, options.runtimes, names, tolerances, cases))


def _convert(model: Any, signature: Sequence[InputSignature], options: ExportOptions, names: list[str],
             origins: list[OutputOrigin]) -> _Graph:
    """Step 1: the graph from the chosen converter, with one output per name (state outputs appended)."""
    shapes = output_shapes(model)
    if options.converter == "tf2onnx":
        return _Graph(convert(model, signature, options.opset), names, origins, shapes)
    proto, report = lower_model(model, signature, options)
    state_map, extra = _state_outputs(proto, report.states, names, origins)
    graph = _Graph(proto, names + [st.name for st in extra],
                   origins + [OutputOrigin(st.layer, "state", st.role) for st in extra],
                   shapes + [(None, st.units) for st in extra], tuple(report.layers), state_map)
    if len(set(graph.names)) != len(graph.names):
        raise InputError(f"Expected unique output names with --state-io. Received: {graph.names}")
    if report.state_inputs:
        # Recorded now, not only in step 6: what tells every runner which inputs are initial states.
        metadata.write_state_inputs(proto, [v.name for v in report.state_inputs])
    return graph


def _state_outputs(proto: onnx.ModelProto, states: Sequence[StateIO], names: Sequence[str],
                   origins: Sequence[OutputOrigin]) -> tuple[dict[str, str], list[StateIO]]:
    """The state map (graph input -> output name) and the states that need outputs of their own.

    The lowering appended one graph output per state. A state the model already returns (an output whose
    origin is that state, `lstm_2_state_h`, whatever --output-name calls it) keeps that output; every other
    gets the appended one, even when it holds the same value as another output (`lstm_2_last` is
    `lstm_2_state_h`): deploy code looks states up by name. By origin, not by name: a head renamed
    `lstm_2_state_h` was taken for the state, and the map fed the head's output back as the state.
    """
    returned = {origin.name: name for origin, name in zip(origins, names)}
    appended = list(proto.graph.output[len(names):])
    extra = [(st, out) for st, out in zip(states, appended) if st.name not in returned]
    kept = list(proto.graph.output[: len(names)]) + [out for _, out in extra]
    proto.graph.ClearField("output")
    proto.graph.output.extend(kept)
    graph_input_names = {v.name for v in proto.graph.input}
    # A state fed from inside the model (a decoder fed by its encoder) has nothing to carry.
    state_map = {st.input: returned.get(st.name, st.name) for st in states if st.input in graph_input_names}
    return state_map, [st for st, _ in extra]


def _name(graph: _Graph, model_name: str, signature: Sequence[InputSignature], options: ExportOptions,
          time_sources: Sequence[str | None]) -> None:
    """Steps 2 and 3: output and axis names, canonical names for the rest, a reproducible header.
    `time_sources`: the input whose time axis each Keras output follows (state outputs have none)."""
    options.tolerances.check_names(graph.names)  # after the state outputs: they may carry tolerances too
    proto = graph.proto
    name_outputs(proto, graph.names)
    name_axes(proto, signature, graph.shapes, time_sources)
    canonicalize(proto.graph, options.opset, keep={v.name for v in proto.graph.input} | set(graph.names))
    prune_opset_imports(proto)
    proto.graph.name = model_name
    proto.producer_name = "lstm-onnx"
    proto.producer_version = __version__
    proto.doc_string = ""


def _check_targets(proto: onnx.ModelProto, targets: Sequence[str], option: str = "--target") -> None:
    """Step 3b: refuse a graph a target runtime (or one it is to be proven in) is known to compute wrong
    (its `problem`), before the parity check and before anything is written."""
    if not targets:
        return
    from toolkit.checking.verify import deploy_runtimes

    # `all` means every runtime a model deploys to: onnx.reference is a check, not a target (its `problem`
    # says where it is no oracle, not where a model would be wrong).
    chosen = deploy_runtimes(targets)
    found = [(runtime.name, runtime.problem(proto)) for runtime in chosen]
    problems = [f"not valid in {name}: {problem}" for name, problem in found if problem]
    if problems:
        raise UnsupportedModelError(f"Expected a model every {option} runtime computes right. Received: "
                                    f"{'; '.join(problems)}")


def _fusion_check(lowering: Sequence[LayerLowering], op_counts: Mapping[str, int], recurrent: Sequence[str],
                  require_fused: bool) -> list[str]:
    """Step 4a: say when the fast path was not taken: a layer left to tf2onnx, or (tf2onnx converter) a
    Loop/Scan where a fused LSTM/GRU/RNN op should be; `require_fused` refuses it."""
    warnings = [f"not fused: layer {entry.layer!r} ({entry.layer_class}) converted by tf2onnx: {entry.reason}"
                for entry in lowering if not entry.fused]
    loops = {op: op_counts[op] for op in LOOP_OPS if op_counts.get(op)}
    fused_ops = "/".join(FUSED_RECURRENT_OPS)
    if not warnings and loops:
        warnings = [f"not fused: the graph holds {loops} instead of fused {fused_ops} ops for recurrent layers "
                    f"{list(recurrent)} (tf2onnx's rewriter did not match them; expect it to run several times slower)"]
    elif not warnings and not any(op_counts.get(op) for op in FUSED_RECURRENT_OPS):
        warnings = [f"not fused: no {fused_ops} op in the graph for recurrent layers {list(recurrent)}"]
    if warnings and require_fused:
        raise UnsupportedModelError("Expected every recurrent layer as a fused ONNX op (--require-fused). "
                                    "Received: " + warnings[0])
    return warnings


@dataclass
class FileExport:
    """A user's `.keras` file exported to `target`: written only when parity passed (or kept on request)."""

    target: Path
    result: ExportResult
    written: list[Path] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.result.passed

    @property
    def items(self) -> list[tuple[str, ParityReport]]:
        tier = self.result.tier
        label = self.target.name if tier is None or tier.tier == "float32" else f"{self.target.name} [{tier.tier}]"
        return self.result.items(label)

    @property
    def exported(self) -> list[tuple[str, ExportResult]]:
        return [(self.target.stem, self.result)]

    @property
    def warnings(self) -> list[str]:
        return list(self.result.warnings)

    @property
    def notes(self) -> list[str]:
        return list(self.result.notes)

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.result.passed, "written": [str(p) for p in self.written],
                **self.result.to_json()}

    def write(self) -> list[Path]:
        """Write the model (atomically), whatever its parity: the caller decided."""
        self.written.append(self.result.save(self.target, keep_failed=True))
        return self.written


def export_file(src: str | Path, dst: str | Path, options: ExportOptions | None = None, *,
                keep_failed: bool = False, write: bool = True, weights: str | Path | None = None) -> FileExport:
    """Export a user's `.keras` file; write it when parity passed or `keep_failed` (and `write`: a caller
    that writes something else first calls `FileExport.write` itself), and say what happened."""
    result = export_keras_model(src, dst, options, weights=weights)
    done = FileExport(Path(dst), result)
    if write and (result.passed or keep_failed):
        done.write()
    return done


def export_keras_file(src: str | Path, dst: str | Path, options: ExportOptions | None = None, *,
                      keep_failed: bool = False, **changes: Any) -> ExportResult:
    """Export a user's `.keras` file to `dst`, checking parity first; writes nothing when anything fails
    (a failed parity raises ParityError unless `keep_failed`)."""
    result = export_keras_model(src, dst, options, **changes)
    result.save(dst, keep_failed=keep_failed)
    return result


def export_keras_model(src: str | Path, dst: str | Path, options: ExportOptions | None = None,
                       weights: str | Path | None = None, **changes: Any) -> ExportResult:
    """Load and export a user's `.keras` file for `dst`, in memory (`ExportResult.save` writes it). With
    `weights`, `src` is an architecture JSON or YAML (`model.to_json()`, `to_yaml()`) and `weights` its weights-only `.h5`."""
    options = (options or ExportOptions()).replace(**changes)
    target = Path(dst)
    if target.suffix != ".onnx":
        raise InputError(f"Expected an output path ending in .onnx. Received: {str(target)!r}")
    from toolkit.models.keras2.formats import model_source

    read, fmt = model_source(Path(src), None if weights is None else Path(weights))
    if fmt is not None:
        return _export_keras2(read, fmt, options)
    model = load_keras_model(src, options.limits)
    return export_model(model, options, source={"keras_file": Path(src).name, "keras_model": model.name})


def _export_keras2(src: Path, fmt: Any, options: ExportOptions) -> ExportResult:
    """A Keras 2 file (.h5, SavedModel folder, tf.keras .keras): translated, exported through the same
    lowering, and checked against the original (`toolkit.models.keras2`)."""
    if fmt.kind == "module":
        from toolkit.export.tf_module_export import export_module_savedmodel

        return export_module_savedmodel(src, options)
    from toolkit.runtimes.keras2 import open_original

    loaded, reference = open_original(src, fmt, options.limits)
    with reference:  # a SavedModel's signature runs in a child process, stopped on close
        return export_model(loaded.model, options, source=dict(loaded.source, reference=reference.label),
                            reference=reference)
