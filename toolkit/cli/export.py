"""The `export` command (split out of `toolkit.cli`, which registers it on the group).

Its options become an `ExportOptions` (checked before anything is built: a malformed option exits 2), the
export runs in the library (`export_file` for a `.keras` file, `export_stacks` for built stacks), and the
results are printed and written: with `--triton`, the models and the repository as one outcome.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from toolkit.cli.common import (
    VARIABLE,
    Timesteps,
    command_line,
    echo,
    emit_json,
    html_path,
    json_option,
    limit_options,
    limits_from,
    option_values,
    quiet_tensorflow,
    runtimes_option,
    seed_option,
    tolerance_options,
)
from toolkit.errors import InputError, OptionError
from toolkit.models.builder import MAX_FEATURES, MAX_LAYERS, MAX_UNITS
from toolkit.options import CONVERTERS, DEFAULT_OPSET, MAX_OPSET, MIN_OPSET, PADDING_SIDES

_BUILDER_KEYS = ("layers", "units", "timesteps", "features", "all_states", "seed", "cell", "bidirectional", "masking",
                 "go_backwards")
_FLAG_KEYS = ("return_sequences", "return_state", "variant")

_export_options = [
    click.argument("model", required=False, type=click.Path(path_type=Path)),
    click.option("-o", "--output", type=click.Path(path_type=Path),
                 help="MODEL given: the .onnx file (default MODEL with .onnx). Otherwise: the folder (default exported/)."),
    click.option("--weights", "weights_file", type=click.Path(path_type=Path),
                 help="MODEL an architecture JSON or YAML (to_json(), to_yaml()): its weights-only .h5 (model.save_weights)."),
    click.option("--layers", type=click.IntRange(1, MAX_LAYERS),
                 help=f"Number of stacked LSTM layers (default 2, at most {MAX_LAYERS})."),
    click.option("--units", type=click.IntRange(1, MAX_UNITS), help=f"Units per layer (default 2, at most {MAX_UNITS})."),
    click.option("--timesteps", type=Timesteps(), help="Time steps, or 'none' for a variable length (default 3)."),
    click.option("--features", type=click.IntRange(1, MAX_FEATURES),
                 help=f"Input features (default 1, at most {MAX_FEATURES})."),
    click.option("--return-sequences/--no-return-sequences", default=None,
                 help="The last layer's flag; unset: both values are exported."),
    click.option("--return-state/--no-return-state", default=None,
                 help="The last layer's flag; unset: both values are exported."),
    click.option("--all-states", is_flag=True, default=None, help="Also output the states of every earlier layer."),
    seed_option("weights", "the built model's weights (default 0)", default=None),
    click.option("--variant", help="A named builder variant (see README), e.g. gru, bidirectional_sum, lstm_masking."),
    click.option("--cell", help="lstm, gru, simple_rnn, or one per layer: lstm,gru (default lstm)."),
    click.option("--bidirectional", "bidirectional", help="Wrap layers in Bidirectional: concat, sum, mul, ave or none."),
    click.option("--masking", help="masking (a Masking layer) or embedding (int ids, Embedding(mask_zero=True))."),
    click.option("--go-backwards", is_flag=True, default=None, help="Run every layer backwards."),
    click.option("--opset", type=int, default=DEFAULT_OPSET, show_default=True,
                 help=f"ONNX opset ({MIN_OPSET}-{MAX_OPSET})."),
    click.option("--converter", type=click.Choice(CONVERTERS), default=CONVERTERS[0], show_default=True,
                 help="lstm-onnx lowers recurrent layers to fused ops; tf2onnx converts the whole model alone."),
    click.option("--output-name", multiple=True, metavar="DEFAULT=NEW", help="Rename an output. Repeatable."),
    tolerance_options,
    click.option("--state-io", is_flag=True,
                 help="Give every recurrent layer initial-state inputs and final-state outputs (for streaming)."),
    click.option("--triton", "triton_repo", type=click.Path(path_type=Path),
                 help="Also write a Triton model repository here (NAME/1/model.onnx and NAME/config.pbtxt)."),
    click.option("--triton-name", help="The model's name in the --triton repository (default: the export's name)."),
    click.option("--propagate-nan", is_flag=True,
                 help="Make NaN inputs propagate as in Keras (ONNX Runtime's fused LSTM/GRU drop them); adds a few nodes."),
    click.option("--padding", type=click.Choice(PADDING_SIDES), default=PADDING_SIDES[0], show_default=True,
                 help="Where masked batches hold their padding (keras pad_sequences' default is left)."),
    runtimes_option("--target", "targets", before="Comma-separated runtimes the model will run in, refused before "
                    "writing where one of them is known to compute it wrong: "),
    runtimes_option("--runtimes", "prove_runtimes", before="Comma-separated runtimes to prove each file in against "
                    "Keras before it is written: "),
    click.option("--keep-failed", is_flag=True, help="Write models even when parity fails."),
    click.option("--bench", "bench_record", is_flag=True,
                 help="Then time the written file as bench --record does (bench --stream --record for a "
                      "--state-io export) and record the fastest runtime and threads in it (MODEL only)."),
    click.option("--require-fused", is_flag=True, help="Refuse a model whose recurrent layers are not fused ONNX ops."),
    limit_options,
    click.option("--quantize", type=click.Choice(["int8"]),
                 help="int8: ONNX Runtime's dynamic quantization of LSTM and MatMul weights (GRU/RNN stay float), "
                      "checked against Keras at the tier's measured tolerance."),
    click.option("--float16", is_flag=True, help="Store weights as float16 (inputs, outputs and states stay float32)."),
    json_option(),
    click.option("--html", "html", type=click.Path(path_type=Path), metavar="PATH",
                 help="Also write a self-contained HTML report of the parity check (written even when it fails)."),
]


def _with_export_options(func: Any) -> Any:
    for option in reversed(_export_options):
        func = option(func)
    return func


@click.command()
@_with_export_options
def export(**params: Any) -> None:
    """Export MODEL, or (without MODEL) the post's LSTM stacks, and check parity.

    MODEL is a Keras 3 .keras file, or a Keras 2 model: a .h5 file, a SavedModel folder, a tf.keras
    .keras file, or an architecture JSON or YAML with --weights (checked against the original: tf.keras, or the
    SavedModel's signature).

    Without MODEL, builds one stack per flag combination of the last layer (the post's four cases by
    default) into exported/ with a manifest.json. Exits 1 if any output fails parity; then nothing is
    written unless --keep-failed.
    """
    quiet_tensorflow()
    html_path(params["html"])
    options = _options(params)
    model, triton_repo, keep_failed = params["model"], params["triton_repo"], params["keep_failed"]
    _check_triton_name(params["triton_name"], model)
    if params["bench_record"] and (model is None or triton_repo is not None or params["quantize"] or params["float16"]):
        why = ("without MODEL" if model is None else "with --triton" if triton_repo is not None
               else "with a precision tier")
        raise OptionError("Expected --bench with MODEL, a float32 export and no --triton (it records into the one "
                          f"file it writes). Received: --bench {why}")
    outcome = _run(params, options)
    # As for built stacks: the table is printed whatever the outcome; files only when parity passed.
    items = outcome.items
    passed = outcome.passed  # parity, and each --runtimes proof
    from toolkit.deploy.triton import write_with_repository

    repository = (write_with_repository(outcome, triton_repo, params["triton_name"])
                  if triton_repo is not None and (passed or keep_failed) else [])
    if params["html"] is not None:
        _write_html(params["html"], outcome, passed)
    written, payload = list(outcome.written) + repository, outcome.to_json()
    payload["written"] = [str(p) for p in written]
    recorded = _bench_record(written) if params["bench_record"] and passed else []
    if recorded:
        payload["recorded"] = recorded
    if params["as_json"]:
        emit_json(payload)
    else:
        _print_export(items, outcome.warnings, outcome.notes, written)
        for line in recorded:
            echo(line)
    if not passed:
        from toolkit.checking.precision import failure_message

        raise click.ClickException("parity failed" + ("" if keep_failed else ": nothing written (use --keep-failed to keep it)")
                                   + f": {failure_message(items)}")


def _bench_record(written: Sequence[Path]) -> list[str]:
    """`export --bench`: each written .onnx timed (streamed where it has a state map) and its defaults recorded."""
    from toolkit.onnxfile.metadata import read_state_map
    from toolkit.onnxfile.model import load_onnx
    from toolkit.speed.bench import bench, record
    from toolkit.speed.stream import stream_bench

    lines = []
    for path in [p for p in written if p.suffix == ".onnx"]:
        streams = bool(read_state_map(load_onnx(path)))
        report = stream_bench(path, budget_s=3.0) if streams else bench(path, budget_s=3.0)
        lines.append(record(path, report.session_defaults()))
    return lines


def _write_html(path: Path, outcome: Any, passed: bool) -> None:
    """The export's parity check as a page: one section per model, its ONNX Runtime row (at its tier)."""
    from toolkit.checking.results import RuntimeReport
    from toolkit.pages.report import ModelSection, write_report

    sections = [ModelSection(f"{name}.onnx", result.model, (RuntimeReport("onnxruntime", result.parity),))
                for name, result in outcome.exported]
    write_report(path, sections, "lstm-onnx export", passed, command_line())


def _options(params: dict[str, Any]) -> Any:
    """The export options, every one checked before anything is built (a bad one is a malformed option)."""
    from toolkit.options import ExportOptions
    from toolkit.tolerance import Tolerances

    if params["quantize"] and params["float16"]:
        raise OptionError(f"Expected one precision tier: --quantize {params['quantize']} or --float16. Received: both")
    targets = tuple(t.strip() for t in (params["targets"] or "").split(",") if t.strip())
    proven = tuple(t.strip() for t in (params["prove_runtimes"] or "").split(",") if t.strip())
    with option_values():
        for names in (targets, proven):  # a mistyped runtime name is refused here, not after the conversion
            if names:
                from toolkit.runtimes.registry import runtimes_named  # the runtime registry; no TensorFlow

                runtimes_named(names)
        limits = limits_from(params["max_params"], params["max_timesteps"], params["max_activation"],
                             params["max_member_bytes"])
        return ExportOptions(opset=params["opset"], converter=params["converter"], propagate_nan=params["propagate_nan"],
                             state_io=params["state_io"], padding=params["padding"], require_fused=params["require_fused"],
                             output_names=_renames(params["output_name"]) or None,
                             tolerances=Tolerances.parse(params["atol"], params["rtol"]), targets=targets,
                             runtimes=proven,
                             tier=params["quantize"] or ("float16" if params["float16"] else "float32"), limits=limits)


def _renames(specs: Sequence[str]) -> dict[str, str]:
    renames: dict[str, str] = {}
    for spec in specs:
        old, sep, new = spec.partition("=")
        if not sep or not old or not new:
            raise InputError(f"Expected --output-name DEFAULT_NAME=NEW_NAME. Received: {spec!r}")
        renames[old] = new
    return renames


def _check_triton_name(triton_name: str | None, model: Path | None) -> None:
    if triton_name is None:  # checked before anything is exported or written
        return
    from toolkit.deploy.triton import check_model_name

    if model is None:
        raise InputError("Expected --triton-name with MODEL (one export). "
                         f"Received: --triton-name {triton_name!r} without MODEL")
    check_model_name(triton_name)


def _run(params: dict[str, Any], options: Any) -> Any:
    """Export the file, or build and export the stacks; written here only without --triton (see
    `toolkit.deploy.triton.write_with_repository`)."""
    model, output, write = params["model"], params["output"], params["triton_repo"] is None
    builder_options = {key: params[key] for key in _BUILDER_KEYS}
    if model is not None:
        given = [f"--{k.replace('_', '-')}" for k in (*_BUILDER_KEYS, *_FLAG_KEYS) if params[k] is not None]
        if given:
            raise InputError(f"Expected builder options only without MODEL. Received: MODEL and {', '.join(given)}")
        from toolkit.export.exporter import export_file

        return export_file(model, output or model.with_suffix(".onnx"), options, keep_failed=params["keep_failed"],
                           write=write, weights=params["weights_file"])
    if params["weights_file"] is not None:
        raise InputError(f"Expected --weights with MODEL, an architecture JSON or YAML. Received: --weights "
                         f"{str(params['weights_file'])!r} without MODEL")
    from toolkit.export.suite import export_stacks
    from toolkit.models.builder import requested_configs

    chosen = {k: (None if v == VARIABLE else v) for k, v in builder_options.items() if v is not None}
    with option_values():
        configs = requested_configs(chosen, params["variant"], params["return_sequences"], params["return_state"])
    from toolkit.cli.quiet import progress_for

    return export_stacks(configs, output or Path("exported"), options, keep_failed=params["keep_failed"], write=write,
                         progress=progress_for(params["as_json"]))


def _print_export(items: Sequence[tuple[str, Any]], warnings: Sequence[str], notes: Sequence[str],
                  written: Sequence[Path]) -> None:
    from toolkit.checking.report import invariant_lines, parity_table

    echo(parity_table(items))
    for line in invariant_lines(items):
        echo(line)
    for warning in warnings:
        echo(f"warning: {warning}", err=True)
    for note in notes:
        echo(f"note: {note}", err=True)
    echo(f"wrote {len(written)} file(s): {', '.join(str(p) for p in written)}" if written else "wrote nothing")
