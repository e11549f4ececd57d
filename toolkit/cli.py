"""`lstm-onnx`: a thin edge over the library.

Each command turns its options into keyword arguments of a library function and prints the result.
Heavy modules are imported inside the commands that need them: `--help`, `run` and `inspect` never
import TensorFlow, which costs seconds and may not be installed on a deploy machine.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from toolkit import __version__
from toolkit.builder import MAX_FEATURES, MAX_LAYERS, MAX_UNITS
from toolkit.errors import InputError, LstmOnnxError, OptionError
from toolkit.limits import MAX_ACTIVATION_ELEMENTS, MAX_MEMBER_BYTES, MAX_PARAMS, MAX_TIMESTEPS, MAX_TOTAL_BYTES, ResourceLimits
from toolkit.options import CONVERTERS, DEFAULT_OPSET, MAX_OPSET, MIN_OPSET, PADDING_SIDES
from toolkit.quiet import echo_err, quiet_stderr


class _OptionError(click.ClickException):
    exit_code = 2  # as click's own errors for a malformed option (README)


class _Cli(click.Group):
    """Turns every `LstmOnnxError`, and any OSError, into click's one-line `Error: ...` and exit code 1
    (2 for a malformed option): no traceback. Text from files is escaped before it reaches the terminal."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            if ctx.params.get("verbose"):
                return super().invoke(ctx)
            with quiet_stderr():
                return super().invoke(ctx)
        except OptionError as exc:
            raise _OptionError(_one_line(str(exc))) from None
        except LstmOnnxError as exc:
            raise click.ClickException(_one_line(str(exc))) from None
        except OSError as exc:  # a read or write the library did not turn into an InputError itself
            where = f" {exc.filename!r}" if getattr(exc, "filename", None) else ""
            raise click.ClickException(_one_line(f"Expected files lstm-onnx can read and write. Received:{where} "
                                                 f"{exc.strerror or exc}")) from None


def _one_line(text: str) -> str:
    from toolkit.guard import safe_text

    return safe_text(" ".join(text.split()), limit=2000)


def _echo(text: str = "", err: bool = False) -> None:
    """click.echo with names and metadata from untrusted files escaped (lines and tabs kept)."""
    from toolkit.guard import safe_text

    line = safe_text(text, limit=None, keep="\n\t")
    if err:
        echo_err(line)  # the tool's own stderr lines reach the terminal also while stderr is quiet
    else:
        click.echo(line)


@contextmanager
def _option_values() -> Iterator[None]:
    """An InputError while reading option values is a malformed option: exit 2, like click's own."""
    try:
        yield
    except OptionError:
        raise
    except InputError as exc:
        raise OptionError(str(exc)) from None


def _verbose() -> bool:
    context = click.get_current_context(silent=True)
    return bool(context and context.find_root().params.get("verbose"))


def _quiet_tensorflow() -> None:
    # The CLI is an application edge, so it may choose TensorFlow's C++ log level (library code never
    # sets environment variables). Must happen before TensorFlow is first imported. This alone is not
    # enough: absl prints "WARNING: All log messages before absl::InitializeLog() ..." and oneDNN's
    # "I0000 ... port.cc" line whatever the level (measured, TensorFlow 2.21), hence `quiet_stderr`.
    if not _verbose():
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


VARIABLE = "none"
RUN_TIMEOUT = 300.0  # seconds; `run --timeout`


class _Timesteps(click.ParamType):
    name = "N|none"

    def convert(self, value: Any, param: Any, ctx: Any) -> int | str:
        # Returns VARIABLE rather than None for 'none': None already means "option not given".
        if isinstance(value, int) or value == VARIABLE:
            return value
        if str(value).lower() in ("none", "variable"):
            return VARIABLE
        try:
            steps = int(value)
        except ValueError:
            self.fail(f"Expected a number of time steps >= 1 or 'none'. Received: {value!r}", param, ctx)
        if steps < 1:
            self.fail(f"Expected a number of time steps >= 1 or 'none'. Received: {value!r}", param, ctx)
        return steps


def _renames(specs: Sequence[str]) -> dict[str, str]:
    renames: dict[str, str] = {}
    for spec in specs:
        old, sep, new = spec.partition("=")
        if not sep or not old or not new:
            raise InputError(f"Expected --output-name DEFAULT_NAME=NEW_NAME. Received: {spec!r}")
        renames[old] = new
    return renames


def _emit_json(payload: Any) -> None:
    _echo(json.dumps(payload, indent=2))


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lstm-onnx")
@click.option("-v", "--verbose", is_flag=True,
              help="Show what TensorFlow, tf2onnx and ONNX Runtime print (hidden by default), e.g. lstm-onnx -v export ...")
def cli(verbose: bool) -> None:
    """Export Keras recurrent models to ONNX with every output named, and prove them equal in ONNX Runtime."""


_tolerance_options = [
    click.option("--atol", multiple=True, metavar="[OUTPUT:]VALUE",
                 help="Absolute tolerance (default 1e-6); OUTPUT:VALUE for one output. Repeatable."),
    click.option("--rtol", multiple=True, metavar="[OUTPUT:]VALUE",
                 help="Relative tolerance (default 1e-5); OUTPUT:VALUE for one output. Repeatable."),
]


def tolerance_options(func: Any) -> Any:
    for option in reversed(_tolerance_options):
        func = option(func)
    return func


@cli.command()
@click.argument("model", required=False, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="MODEL given: the .onnx file (default MODEL with .onnx). Otherwise: the folder (default exported/).")
@click.option("--layers", type=click.IntRange(1, MAX_LAYERS),
              help=f"Number of stacked LSTM layers (default 2, at most {MAX_LAYERS}).")
@click.option("--units", type=click.IntRange(1, MAX_UNITS), help=f"Units per layer (default 2, at most {MAX_UNITS}).")
@click.option("--timesteps", type=_Timesteps(), help="Time steps, or 'none' for a variable length (default 3).")
@click.option("--features", type=click.IntRange(1, MAX_FEATURES), help=f"Input features (default 1, at most {MAX_FEATURES}).")
@click.option("--return-sequences/--no-return-sequences", default=None,
              help="The last layer's flag; unset: both values are exported.")
@click.option("--return-state/--no-return-state", default=None,
              help="The last layer's flag; unset: both values are exported.")
@click.option("--all-states", is_flag=True, default=None, help="Also output the states of every earlier layer.")
@click.option("--seed", type=click.IntRange(min=0), help="Seed of the weights (default 0).")
@click.option("--variant", help="A named builder variant (see README), e.g. gru, bidirectional_sum, lstm_masking.")
@click.option("--cell", help="lstm, gru, simple_rnn, or one per layer: lstm,gru (default lstm).")
@click.option("--bidirectional", "bidirectional", help="Wrap layers in Bidirectional: concat, sum, mul, ave or none.")
@click.option("--masking", help="masking (a Masking layer) or embedding (int ids, Embedding(mask_zero=True)).")
@click.option("--go-backwards", is_flag=True, default=None, help="Run every layer backwards.")
@click.option("--opset", type=int, default=DEFAULT_OPSET, show_default=True, help=f"ONNX opset ({MIN_OPSET}-{MAX_OPSET}).")
@click.option("--converter", type=click.Choice(CONVERTERS), default=CONVERTERS[0], show_default=True,
              help="lstm-onnx lowers recurrent layers to fused ops; tf2onnx converts the whole model alone.")
@click.option("--output-name", multiple=True, metavar="DEFAULT=NEW", help="Rename an output. Repeatable.")
@tolerance_options
@click.option("--state-io", is_flag=True,
              help="Give every recurrent layer initial-state inputs and final-state outputs (for streaming).")
@click.option("--triton", "triton_repo", type=click.Path(path_type=Path),
              help="Also write a Triton model repository here (NAME/1/model.onnx and NAME/config.pbtxt).")
@click.option("--triton-name", help="The model's name in the --triton repository (default: the export's name).")
@click.option("--propagate-nan", is_flag=True,
              help="Make NaN inputs propagate as in Keras (ONNX Runtime's fused LSTM/GRU drop them); adds a few nodes.")
@click.option("--padding", type=click.Choice(PADDING_SIDES), default=PADDING_SIDES[0], show_default=True,
              help="Where masked batches hold their padding (keras pad_sequences' default is left).")
@click.option("--target", "targets", metavar="LIST",
              help="Comma-separated runtimes the model will run in (as verify --runtimes names them, or all): "
                   "refuse, before writing, a model one of them is known to compute wrong.")
@click.option("--keep-failed", is_flag=True, help="Write models even when parity fails.")
@click.option("--require-fused", is_flag=True, help="Refuse a model whose recurrent layers are not fused ONNX ops.")
@click.option("--max-params", type=click.IntRange(min=1), help=f"Parameters a model may declare (default {MAX_PARAMS}).")
@click.option("--max-timesteps", type=click.IntRange(min=1),
              help=f"A fixed time axis, in steps (default {MAX_TIMESTEPS}).")
@click.option("--max-activation", type=click.IntRange(min=1),
              help=f"Values per sample in one layer's input or output (default {MAX_ACTIVATION_ELEMENTS}).")
@click.option("--max-member-bytes", type=click.IntRange(min=1),
              help=f"Uncompressed bytes of one member of a .keras archive (default {MAX_MEMBER_BYTES}); all "
                   "members together may hold twice this.")
@click.option("--quantize", type=click.Choice(["int8"]),
              help="int8: ONNX Runtime's dynamic quantization of LSTM and MatMul weights (GRU/RNN stay float), "
                   "checked against Keras at the tier's measured tolerance.")
@click.option("--float16", is_flag=True, help="Store weights as float16 (inputs, outputs and states stay float32).")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable report.")
def export(model: Path | None, output: Path | None, layers: int | None, units: int | None, timesteps: Any,
           features: int | None, return_sequences: bool | None, return_state: bool | None, all_states: bool | None,
           seed: int | None, variant: str | None, cell: str | None, bidirectional: str | None, masking: str | None,
           go_backwards: bool | None, opset: int, converter: str, output_name: Sequence[str], atol: Sequence[str],
           rtol: Sequence[str], state_io: bool, triton_repo: Path | None, triton_name: str | None,
           propagate_nan: bool, padding: str, targets: str | None, keep_failed: bool, require_fused: bool,
           quantize: str | None, float16: bool, max_params: int | None, max_timesteps: int | None,
           max_activation: int | None, max_member_bytes: int | None, as_json: bool) -> None:
    """Export MODEL.keras, or (without MODEL) the post's LSTM stacks, and check parity.

    Without MODEL, builds one stack per flag combination of the last layer (the post's four cases by
    default) into exported/ with a manifest.json. Exits 1 if any output fails parity; then nothing is
    written unless --keep-failed.
    """
    _quiet_tensorflow()
    from toolkit.compare import Tolerances
    from toolkit.options import ExportOptions

    if quantize and float16:
        raise OptionError(f"Expected one precision tier: --quantize {quantize} or --float16. Received: both")
    with _option_values():
        limits = _limits(max_params, max_timesteps, max_activation, max_member_bytes)
        options = ExportOptions(opset=opset, converter=converter, propagate_nan=propagate_nan, state_io=state_io,
                                padding=padding, require_fused=require_fused,
                                output_names=_renames(output_name) or None, tolerances=Tolerances.parse(atol, rtol),
                                targets=tuple(t.strip() for t in (targets or "").split(",") if t.strip()),
                                tier=quantize or ("float16" if float16 else "float32"), limits=limits)
    if triton_name is not None:  # checked before anything is exported or written
        from toolkit.triton import check_model_name
        if model is None:
            raise InputError("Expected --triton-name with MODEL (one export). "
                             f"Received: --triton-name {triton_name!r} without MODEL")
        check_model_name(triton_name)
    builder_options = {"layers": layers, "units": units, "timesteps": timesteps, "features": features,
                       "all_states": all_states, "seed": seed, "cell": cell, "bidirectional": bidirectional,
                       "masking": masking, "go_backwards": go_backwards}
    flags = {"return_sequences": return_sequences, "return_state": return_state, "variant": variant}
    if model is not None:
        given = [f"--{k.replace('_', '-')}" for k, v in {**builder_options, **flags}.items() if v is not None]
        if given:
            raise InputError(f"Expected builder options only without MODEL. Received: MODEL and {', '.join(given)}")
        from toolkit.exporter import export_file

        outcome: Any = export_file(model, output or model.with_suffix(".onnx"), options, keep_failed=keep_failed,
                                   write=triton_repo is None)
    else:
        from toolkit.builder import requested_configs
        from toolkit.suite import export_stacks

        chosen = {k: (None if v == VARIABLE else v) for k, v in builder_options.items() if v is not None}
        with _option_values():
            configs = requested_configs(chosen, variant, return_sequences, return_state)
        outcome = export_stacks(configs, output or Path("exported"), options, keep_failed=keep_failed,
                                write=triton_repo is None)
    # As for built stacks: the table is printed whatever the outcome; files only when parity passed.
    items = outcome.items
    passed = all(report for _, report in items)
    repository = (_write_triton(outcome, triton_repo, triton_name)
                  if triton_repo is not None and (passed or keep_failed) else [])
    written, payload = list(outcome.written) + repository, outcome.to_json()
    payload["written"] = [str(p) for p in written]
    if as_json:
        _emit_json(payload)
    else:
        _print_export(items, outcome.warnings, outcome.notes, written)
    if not passed:
        from toolkit.precision import failure_message

        raise click.ClickException("parity failed" + ("" if keep_failed else ": nothing written (use --keep-failed to keep it)")
                                   + f": {failure_message(items)}")


def _limits(max_params: int | None, max_timesteps: int | None, max_activation: int | None,
            max_member_bytes: int | None) -> ResourceLimits:
    """The default limits, raised (or lowered) by the flags given; all members may hold twice one member."""
    total = max(MAX_TOTAL_BYTES, 2 * max_member_bytes) if max_member_bytes else None
    return ResourceLimits().raised(max_params=max_params, max_timesteps=max_timesteps,
                                   max_activation_elements=max_activation, max_member_bytes=max_member_bytes,
                                   max_total_bytes=total)


def _write_triton(outcome: Any, repo: Path, model_name: str | None) -> list[Path]:
    """The repository first, then the models: a repository that cannot be written leaves no .onnx behind."""
    from toolkit.triton import write_repository

    repository = [p for name, result in outcome.exported
                  for p in write_repository(repo, model_name or name, result.model)]
    outcome.write()
    return repository


def _print_export(items: Sequence[tuple[str, Any]], warnings: Sequence[str], notes: Sequence[str],
                  written: Sequence[Path]) -> None:
    from toolkit.report import invariant_lines, parity_table

    _echo(parity_table(items))
    for line in invariant_lines(items):
        _echo(line)
    for warning in warnings:
        _echo(f"warning: {warning}", err=True)
    for note in notes:
        _echo(f"note: {note}", err=True)
    _echo(f"wrote {len(written)} file(s): {', '.join(str(p) for p in written)}" if written else "wrote nothing")


@cli.command()
@click.argument("onnx_model", type=click.Path(path_type=Path))
@click.option("--keras", "keras_model", required=True, type=click.Path(path_type=Path), help="The Keras model it came from.")
@tolerance_options
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the random inputs.")
@click.option("--stream", metavar="CHUNKS",
              help="Also feed a sequence in chunks (3, or sizes 1,4,2), carrying states (a --state-io export).")
@click.option("--stream-length", type=click.IntRange(min=1), default=12, show_default=True,
              help="Steps of the streamed sequence.")
@click.option("--runtimes", default="onnxruntime", show_default=True, metavar="LIST",
              help="Comma-separated: onnxruntime, onnxruntime-extended, onnxruntime-basic, onnxruntime-disabled "
                   "(graph optimization levels), reference (onnx.reference, where it is a valid oracle), "
                   "onnxruntime-node, onnxruntime-web (WASM under Node), chromium (onnxruntime-web in headless "
                   "Chromium), openvino (CPU, f32), openvino-bf16 (its default precision, a tier); or all "
                   "(every one but openvino-bf16).")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable report (for CI).")
def verify(onnx_model: Path, keras_model: Path, atol: Sequence[str], rtol: Sequence[str], seed: int,
           stream: str | None, stream_length: int, runtimes: str, as_json: bool) -> None:
    """Re-run the parity check of ONNX_MODEL against its Keras model. Exits 1 on any failure."""
    _quiet_tensorflow()
    from toolkit.compare import Tolerances, VerifyReport
    from toolkit.report import verify_text
    from toolkit.verify import verify_runtimes

    names = [r.strip() for r in runtimes.split(",") if r.strip()]
    sizes = None
    with _option_values():
        tolerances = Tolerances.parse(atol, rtol)
        if stream is not None:
            from toolkit.streaming import parse_chunks

            sizes = parse_chunks(stream)
    results = verify_runtimes(onnx_model, keras_model, names, tolerances, seed=seed)
    streamed = None
    if sizes is not None:
        from toolkit.exporter import load_keras_model
        from toolkit.runner import load_onnx
        from toolkit.streaming import stream_parity
        from toolkit.tiers import recorded_tier, tier_tolerances

        proto = load_onnx(onnx_model)
        streamed = stream_parity(load_keras_model(keras_model), proto, sizes, stream_length,
                                 tolerances=tier_tolerances(recorded_tier(proto), tolerances), seed=seed)
    outcome = VerifyReport(onnx_model.name, tuple(results), streamed)
    if as_json:
        _emit_json(outcome.to_json())
    else:
        _echo(verify_text(outcome))
    if not outcome:
        sys.exit(1)


@cli.command()
@click.argument("onnx_model", type=click.Path(path_type=Path))
@click.option("-i", "--input", "inputs", multiple=True, required=True, metavar="[NAME=]FILE",
              help="A .npy per input (NAME=FILE.npy when the model has several), or one .npz of named arrays.")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Save the outputs to this .npz file.")
@click.option("--runtime", type=click.Choice(["onnxruntime", "openvino"]), default="onnxruntime", show_default=True,
              help="openvino runs only what it computes correctly (it says why otherwise).")
@click.option("--precision", type=click.Choice(["f32", "bf16"]), default="f32", show_default=True,
              help="bf16: OpenVINO's CPU default, faster and off by 2e-3 to 1.5e-2 (openvino only).")
@click.option("--threads", type=click.IntRange(min=1), help="Intra-op threads (default: the runtime's, one per core).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=RUN_TIMEOUT, show_default=True,
              help="Seconds an ONNX Runtime run may take; a longer one is stopped (a crafted Loop can run for ever).")
@click.option("--json", "as_json", is_flag=True, help="Print outputs as JSON lists.")
def run(onnx_model: Path, inputs: Sequence[str], output: Path | None, runtime: str, precision: str,
        threads: int | None, timeout: float, as_json: bool) -> None:
    """Run ONNX_MODEL in ONNX Runtime (or OpenVINO) and print (or save) each named output. Needs no TensorFlow."""
    from toolkit.fileio import save_npz
    from toolkit.guard import check_input_names
    from toolkit.report import outputs_text
    from toolkit.runner import load_feeds
    from toolkit.tiers import open_runner

    if output is not None and output.suffix != ".npz":
        raise OptionError(f"Expected an output path ending in .npz. Received: {str(output)!r}")
    with _option_values():
        check_input_names(inputs)  # a repeated NAME= was resolved by keeping the last
    with open_runner(onnx_model, runtime, precision, threads) as runner:
        feeds = load_feeds(inputs, [t.name for t in runner.inputs])
        # ONNX Runtime stops a run at its terminate flag; OpenVINO has no such switch.
        outputs = runner.run(feeds, timeout=timeout) if runtime == "onnxruntime" else runner.run(feeds)
    if output is not None:
        save_npz(output, outputs)  # every output, whatever its name (np.savez took `file` as its own)
    if as_json:
        _emit_json({name: {"shape": list(v.shape), "dtype": v.dtype.name, "values": v.tolist()} for name, v in outputs.items()})
    else:
        _echo(outputs_text(outputs))
        if output is not None:
            _echo(f"wrote {output}")


@cli.command()
@click.argument("onnx_model", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable description.")
def inspect(onnx_model: Path, as_json: bool) -> None:
    """List ONNX_MODEL's inputs and outputs, dynamic axes, recurrent ops and metadata. Needs no TensorFlow."""
    from toolkit.report import description_text
    from toolkit.runner import inspect_model

    description = inspect_model(onnx_model)
    if as_json:
        _emit_json(description.to_json())
    else:
        _echo(description_text(description))


@cli.command()
def explain() -> None:
    """Show what the post's four flag combinations return, from live Keras and ONNX Runtime runs."""
    _quiet_tensorflow()
    import numpy as np

    from toolkit.explain import explain as run_explain

    cases = run_explain()
    for case in cases:
        c = case.config
        _echo(f"({case.number}) last layer LSTM({c.units}, return_sequences={c.return_sequences}, "
                   f"return_state={c.return_state}) on input [0.1, 0.2, 0.3], shape (1, 3, 1)")
        for out in case.outputs:
            keras_values = np.round(out.keras.astype(np.float64), 7).tolist()
            onnx_values = np.round(out.onnx.astype(np.float64), 7).tolist()
            _echo(f"    {out.name:<18} {str(out.shape):<10} keras {keras_values}")
            _echo(f"    {'':<18} {'':<10} onnx  {onnx_values}")
        for line in case.keras_equalities:
            _echo(f"    keras: {line}")
        for line in case.onnx_equalities:
            _echo(f"    onnx:  {line}")
        if not case.keras_equalities:
            _echo("    no state output: nothing to compare the output with")
        _echo("")
    _echo("return_sequences picks every step's hidden state or the last one; return_state adds the last step's "
               "state_h and state_c. The last output is state_h; with return_sequences its last step is.")
    if not all(case.all_hold for case in cases):
        raise click.ClickException("an equality or parity check failed")


from toolkit.serve_cli import serve  # noqa: E402  (the command lives in its own module)

cli.add_command(serve)

from toolkit.bench import bench_command  # noqa: E402 -- its body lives with the library function it calls

cli.add_command(bench_command)


def main() -> None:
    cli(prog_name="lstm-onnx")


if __name__ == "__main__":
    main()
