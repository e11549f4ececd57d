"""`lstm-onnx`: a thin edge over the library.

Each command turns its options into keyword arguments of a library function and prints the result.
Heavy modules are imported inside the commands that need them: `--help`, `run` and `inspect` never
import TensorFlow, which costs seconds and may not be installed on a deploy machine.
"""

from __future__ import annotations

import shlex
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from toolkit import __version__
from toolkit.cli_common import (
    command_line,
    echo,
    emit_json,
    html_path,
    limit_options,
    limits_from,
    one_line,
    option_values,
    quiet_tensorflow,
    tolerance_options,
)
from toolkit.cli_export import export
from toolkit.errors import InputError, LstmOnnxError, OptionError
from toolkit.quiet import quiet_stderr


class _OptionError(click.ClickException):
    exit_code = 2  # as click's own errors for a malformed option (README)


class _Cli(click.Group):
    """Turns every `LstmOnnxError`, and any OSError, into click's one-line `Error: ...` and exit code 1
    (2 for a malformed option): no traceback. Text from files is escaped before it reaches the terminal."""

    command_line = ""  # the command as typed, for the pages that show what produced them

    def main(self, args: Sequence[str] | None = None, *rest: Any, **extra: Any) -> Any:
        self.command_line = shlex.join(["lstm-onnx", *(sys.argv[1:] if args is None else args)])
        return super().main(args, *rest, **extra)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            if ctx.params.get("verbose"):
                return super().invoke(ctx)
            with quiet_stderr():
                return super().invoke(ctx)
        except OptionError as exc:
            raise _OptionError(one_line(str(exc))) from None
        except LstmOnnxError as exc:
            if ctx.params.get("verbose") and exc.__cause__ is not None:  # -v: the whole error behind the line
                click.echo("".join(traceback.format_exception(exc.__cause__)).rstrip(), err=True)
            raise click.ClickException(one_line(str(exc))) from None
        except OSError as exc:  # a read or write the library did not turn into an InputError itself
            where = f" {exc.filename!r}" if getattr(exc, "filename", None) else ""
            raise click.ClickException(one_line(f"Expected files lstm-onnx can read and write. Received:{where} "
                                                 f"{exc.strerror or exc}")) from None


RUN_TIMEOUT = 300.0  # seconds; `run --timeout`


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lstm-onnx",
                      message=f"%(prog)s %(version)s (import package toolkit, from {Path(__file__).resolve().parent})")
@click.option("-v", "--verbose", is_flag=True,
              help="Show what TensorFlow, tf2onnx and ONNX Runtime print (hidden by default), e.g. lstm-onnx -v export ...")
def cli(verbose: bool) -> None:
    """Export Keras recurrent models to ONNX with every output named, and prove them equal in ONNX Runtime."""


cli.add_command(export)


def _verify_reference(keras_model: Path | None, onnx_model: Path, limits: Any) -> Any:
    """Loaded once, within the --max-* limits, for the parity check and the streamed one alike; or rebuilt
    from the builder flags the export records. A Keras 2 file's reference is its original (tf.keras, or the
    SavedModel's signature), over its Keras 3 translation."""
    if keras_model is not None:
        from toolkit.keras2.reference import load_reference

        return load_reference(keras_model, limits)
    from toolkit.keras_runner import KerasRunner
    from toolkit.runner import load_onnx
    from toolkit.verification import recorded_keras_model

    return KerasRunner(recorded_keras_model(load_onnx(onnx_model), onnx_model.name))


@cli.command()
@click.argument("onnx_model", type=click.Path(path_type=Path))
@click.option("--keras", "keras_model", type=click.Path(path_type=Path),
              help="The Keras model it came from (default: rebuilt from the builder flags the export records).")
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
@limit_options
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable report (for CI).")
@click.option("--html", "html", type=click.Path(path_type=Path), metavar="PATH",
              help="Also write a self-contained HTML report: matrix, error per time step, versions.")
def verify(onnx_model: Path, keras_model: Path | None, atol: Sequence[str], rtol: Sequence[str], seed: int,
           stream: str | None, stream_length: int, runtimes: str, max_params: int | None, max_timesteps: int | None,
           max_activation: int | None, max_member_bytes: int | None, as_json: bool, html: Path | None) -> None:
    """Re-run the parity check of ONNX_MODEL against its Keras model. Exits 1 on any failure."""
    quiet_tensorflow()
    from toolkit.compare import VerifyReport
    from toolkit.report import verify_text
    from toolkit.runtimes.registry import installed_of, not_installed
    from toolkit.tolerance import Tolerances
    from toolkit.verification import verify_runtimes

    asked = [r.strip() for r in runtimes.split(",") if r.strip()]
    ready, missing = installed_of(asked)  # an unknown name is refused before the Keras model is loaded
    absent = {r.name: not_installed(r) for r in missing}  # listed, not run; an error where named explicitly
    if not ready:
        raise InputError(f"Expected an installed runtime among {asked}. Received: "
                         + "; ".join(f"{name}: {hint}" for name, hint in absent.items()))
    names = [r.name for r in ready]
    sizes = None
    html_path(html)
    with option_values():
        tolerances = Tolerances.parse(atol, rtol)
        if stream is not None:
            from toolkit.streaming import parse_chunks

            sizes = parse_chunks(stream)
        limits = limits_from(max_params, max_timesteps, max_activation, max_member_bytes)
    reference = _verify_reference(keras_model, onnx_model, limits)
    loaded = reference.model  # the Keras model the cases and the stream are made from
    from toolkit.progress import progress_for

    results = verify_runtimes(onnx_model, reference, names, tolerances, seed=seed, progress=progress_for(as_json))
    streamed = None
    if sizes is not None:
        from toolkit.runner import load_onnx
        from toolkit.streaming import stream_parity
        from toolkit.verification import recorded_tolerances

        proto = load_onnx(onnx_model)
        # The same tolerance as the unchunked check: the tier's, and a mixed-precision model's compute dtype's.
        streamed = stream_parity(loaded, proto, sizes, stream_length, seed=seed,
                                 tolerances=recorded_tolerances(proto, tolerances, loaded), reference=reference)
    outcome = VerifyReport(onnx_model.name, tuple(results), streamed)
    if html is not None:  # written whatever the outcome: the page shows what failed
        from toolkit.html_report import ModelSection, write_report
        from toolkit.runner import load_onnx

        section = ModelSection(onnx_model.name, load_onnx(onnx_model), outcome.runtimes, streamed,
                               tuple(f"{name}: {hint}" for name, hint in absent.items()))
        write_report(html, [section], f"lstm-onnx verify {onnx_model.name}", bool(outcome), command_line())
    reference.close()  # a SavedModel signature's child process
    label = getattr(reference, "label", None)  # set for a Keras 2 file's original
    if as_json:
        emit_json({**outcome.to_json(), **({"reference": label} if label else {}),
                   **({"not_installed": absent} if absent else {})})
    else:
        echo("\n".join([verify_text(outcome), *([f"note: parity reference: {label}"] if label else []),
                        *(f"{name}: {hint}" for name, hint in absent.items())]))
    if not outcome or (absent and asked != ["all"]):
        sys.exit(1)


@cli.command()
@click.argument("onnx_model", type=click.Path(path_type=Path))
@click.option("-i", "--input", "inputs", multiple=True, required=True, metavar="[NAME=]FILE",
              help="A .npy per input (NAME=FILE.npy when the model has several), or one .npz of named arrays.")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Save the outputs to this .npz file.")
@click.option("--runtime", type=click.Choice(["onnxruntime", "openvino"]),
              help="openvino runs only what it computes correctly (it says why otherwise). Default: what "
                   "bench --record recorded in the file, else onnxruntime.")
@click.option("--precision", type=click.Choice(["f32", "bf16"]), default="f32", show_default=True,
              help="bf16: OpenVINO's CPU default, faster and off by 2e-3 to 1.5e-2 (openvino only).")
@click.option("--threads", type=int, help="Intra-op threads, 1 to 4 per core (default: what bench --record recorded, "
              "else the runtime's, one per core).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=RUN_TIMEOUT, show_default=True,
              help="Seconds a run may take; a longer one is stopped (a crafted Loop can run for ever).")
@click.option("--json", "as_json", is_flag=True, help="Print outputs as JSON lists.")
def run(onnx_model: Path, inputs: Sequence[str], output: Path | None, runtime: str | None, precision: str,
        threads: int | None, timeout: float, as_json: bool) -> None:
    """Run ONNX_MODEL in ONNX Runtime (or OpenVINO) and print (or save) each named output. Needs no TensorFlow."""
    from toolkit.fileio import save_npz
    from toolkit.guard import check_input_names, check_threads
    from toolkit.report import outputs_text
    from toolkit.runner import load_feeds
    from toolkit.runtimes.registry import open_runner

    if output is not None and output.suffix != ".npz":
        raise OptionError(f"Expected an output path ending in .npz. Received: {str(output)!r}")
    with option_values():
        check_input_names(inputs)  # a repeated NAME= was resolved by keeping the last
        if threads is not None:
            check_threads([threads])
    with open_runner(onnx_model, runtime, precision, threads) as runner:
        feeds = load_feeds(inputs, [t.name for t in runner.inputs])
        outputs = runner.run(feeds, timeout)  # every runtime stops at the deadline (OpenVINO: its child)
    if output is not None:
        save_npz(output, outputs)  # every output, whatever its name (np.savez took `file` as its own)
    if as_json:
        emit_json({name: {"shape": list(v.shape), "dtype": v.dtype.name, "values": v.tolist()} for name, v in outputs.items()})
    else:
        echo(outputs_text(outputs))
        if output is not None:
            echo(f"wrote {output}")


@cli.command()
@click.argument("onnx_model", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable description.")
def inspect(onnx_model: Path, as_json: bool) -> None:
    """List ONNX_MODEL's inputs and outputs, dynamic axes, recurrent ops and metadata. Needs no TensorFlow."""
    from toolkit.report import description_text
    from toolkit.runner import inspect_model

    description = inspect_model(onnx_model)
    if as_json:
        emit_json(description.to_json())
    else:
        echo(description_text(description))


@cli.command()
@click.option("--keras2", is_flag=True,
              help="Build the stack with tf.keras as the post does (Keras 2), save it as .h5 and export that file.")
@click.option("--html", "html", type=click.Path(path_type=Path), metavar="PATH",
              help="Also write the lesson as a page: the four cases unrolled, rerun in the browser on an input you edit.")
def explain(keras2: bool, html: Path | None) -> None:
    """Show what the post's four flag combinations return, from live Keras and ONNX Runtime runs."""
    quiet_tensorflow()
    html_path(html)
    import numpy as np

    from toolkit.explain import explain as run_explain

    if html is not None:
        from toolkit.runtimes.js import npm_package

        npm_package("onnxruntime-web")  # not installed: refused before the four exports run
    cases = run_explain(keras2=keras2)
    if keras2:
        echo("Keras 2 code path: tf.keras Model(inputs=..., outputs=[...]) saved as .h5, exported from the file; "
             "'keras' below is tf.keras")
    for case in cases:
        c = case.config
        echo(f"({case.number}) last layer LSTM({c.units}, return_sequences={c.return_sequences}, "
                   f"return_state={c.return_state}) on input [0.1, 0.2, 0.3], shape (1, 3, 1)")
        for out in case.outputs:
            keras_values = np.round(out.keras.astype(np.float64), 7).tolist()
            onnx_values = np.round(out.onnx.astype(np.float64), 7).tolist()
            echo(f"    {out.name:<18} {str(out.shape):<10} keras {keras_values}")
            echo(f"    {'':<18} {'':<10} onnx  {onnx_values}")
        for line in case.keras_equalities:
            echo(f"    keras: {line}")
        for line in case.onnx_equalities:
            echo(f"    onnx:  {line}")
        if not case.keras_equalities:
            echo("    no state output: nothing to compare the output with")
        echo("")
    echo("return_sequences picks every step's hidden state or the last one; return_state adds the last step's "
               "state_h and state_c. The last output is state_h; with return_sequences its last step is.")
    if not all(case.all_hold for case in cases):
        raise click.ClickException("an equality or parity check failed")
    if html is not None:
        from toolkit.lesson import write_lesson

        echo(f"wrote {write_lesson(html, cases)}")


from toolkit.serve_cli import serve  # noqa: E402  (the command lives in its own module)

cli.add_command(serve)

from toolkit.bench_cli import bench_command  # noqa: E402

cli.add_command(bench_command)

from toolkit.install_cli import setup_command  # noqa: E402

cli.add_command(setup_command)


def main() -> None:
    cli(prog_name="lstm-onnx")


if __name__ == "__main__":
    main()
