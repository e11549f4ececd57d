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
from toolkit.cli.common import (
    command_line,
    echo,
    emit_json,
    html_path,
    json_option,
    limit_options,
    limits_from,
    one_line,
    option_values,
    quiet_tensorflow,
    runtimes_option,
    seed_option,
    timeout_option,
    tolerance_options,
)
from toolkit.cli.export import export
from toolkit.cli.quiet import quiet_stderr
from toolkit.errors import LstmOnnxError, OptionError


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




@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lstm-onnx",
                      message=f"%(prog)s %(version)s (import package toolkit, from {Path(__file__).resolve().parents[1]})")
@click.option("-v", "--verbose", is_flag=True,
              help="Show what TensorFlow, tf2onnx and ONNX Runtime print (hidden by default), e.g. lstm-onnx -v export ...")
def cli(verbose: bool) -> None:
    """Export Keras recurrent models to ONNX with every output named, and prove them equal in ONNX Runtime."""


cli.add_command(export)


@cli.command()
@click.argument("onnx_model", type=click.Path(path_type=Path))
@click.option("--keras", "keras_model", type=click.Path(path_type=Path),
              help="The Keras model it came from (default: rebuilt from the builder flags the export records).")
@click.option("--weights", "weights_file", type=click.Path(path_type=Path),
              help="--keras an architecture JSON or YAML (to_json(), to_yaml()): its weights-only .h5 (model.save_weights).")
@tolerance_options
@seed_option("input", "the random inputs", default=0)
@click.option("--stream", metavar="CHUNKS",
              help="Also feed a sequence in chunks (3, or sizes 1,4,2), carrying states (a --state-io export).")
@click.option("--stream-length", type=click.IntRange(min=1), default=12, show_default=True,
              help="Steps of the streamed sequence.")
@runtimes_option("--runtimes", before="Comma-separated: ", default="onnxruntime", show_default=True)
@limit_options
@json_option()
@click.option("--html", "html", type=click.Path(path_type=Path), metavar="PATH",
              help="Also write a self-contained HTML report: matrix, error per time step, versions.")
def verify(onnx_model: Path, keras_model: Path | None, weights_file: Path | None, atol: Sequence[str],
           rtol: Sequence[str], seed: int, stream: str | None, stream_length: int, runtimes: str,
           max_params: int | None, max_timesteps: int | None, max_activation: int | None,
           max_member_bytes: int | None, as_json: bool, html: Path | None) -> None:
    """Re-run the parity check of ONNX_MODEL against its Keras model. Exits 1 on any failure."""
    quiet_tensorflow()
    from toolkit.checking.report import verify_text
    from toolkit.checking.verify import verify_export
    from toolkit.cli.quiet import progress_for
    from toolkit.tolerance import Tolerances

    asked = [r.strip() for r in runtimes.split(",") if r.strip()]
    chunks = None
    html_path(html)
    with option_values():
        tolerances = Tolerances.parse(atol, rtol)
        if stream is not None:
            from toolkit.checking.streaming import parse_chunks

            chunks = parse_chunks(stream)
        limits = limits_from(max_params, max_timesteps, max_activation, max_member_bytes)
    outcome = verify_export(onnx_model, keras_model, asked, tolerances, seed, chunks, stream_length, limits,
                            progress_for(as_json), weights=weights_file)
    absent, label = outcome.not_installed, outcome.reference
    if html is not None:  # written whatever the outcome: the page shows what failed
        from toolkit.onnxfile.model import load_onnx
        from toolkit.pages.report import ModelSection, write_report

        section = ModelSection(onnx_model.name, load_onnx(onnx_model), outcome.report.runtimes, outcome.report.stream,
                               tuple(f"{name}: {hint}" for name, hint in absent.items()))
        write_report(html, [section], f"lstm-onnx verify {onnx_model.name}", bool(outcome.report), command_line())
    if as_json:
        emit_json({**outcome.report.to_json(), **({"reference": label} if label else {}),
                   **({"not_installed": absent} if absent else {})})
    else:
        echo("\n".join([verify_text(outcome.report), *([f"note: parity reference: {label}"] if label else []),
                        *(f"{name}: {hint}" for name, hint in absent.items())]))
    if not outcome:
        sys.exit(1)


@cli.command()
@click.argument("onnx_model", type=click.Path(path_type=Path))
@click.option("-i", "--input", "inputs", multiple=True, required=True, metavar="[NAME=]FILE",
              help="A .npy per input (NAME=FILE.npy when the model has several), or one .npz of named arrays.")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Save the outputs to this .npz file.")
@click.option("--runtime", type=click.Choice(["onnxruntime", "openvino", "onnxruntime-scan"]),
              help="openvino runs only what it computes correctly (it says why otherwise); onnxruntime-scan: "
                   "a SimpleRNN export's RNN ops run as MatMul + Scan. Default: what bench --record recorded "
                   "in the file, else onnxruntime.")
@click.option("--precision", type=click.Choice(["f32", "bf16"]), default="f32", show_default=True,
              help="bf16: OpenVINO's CPU default, faster and off by 2e-3 to 1.5e-2 (openvino only).")
@click.option("--threads", type=int, help="Intra-op threads, 1 to 4 per core (default: what bench --record recorded, "
              "else the runtime's, one per core).")
@timeout_option("a run")
@json_option("the outputs (lists)")
def run(onnx_model: Path, inputs: Sequence[str], output: Path | None, runtime: str | None, precision: str,
        threads: int | None, timeout: float, as_json: bool) -> None:
    """Run ONNX_MODEL in ONNX Runtime (or OpenVINO) and print (or save) each named output. Needs no TensorFlow."""
    from toolkit.checking.report import outputs_text
    from toolkit.fileio import save_npz
    from toolkit.runtimes.feeds import check_input_names, load_feeds
    from toolkit.runtimes.registry import open_runner
    from toolkit.runtimes.threads import check_threads

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
@json_option("the description")
def inspect(onnx_model: Path, as_json: bool) -> None:
    """List ONNX_MODEL's inputs and outputs, dynamic axes, recurrent ops and metadata. Needs no TensorFlow."""
    from toolkit.checking.report import description_text
    from toolkit.onnxfile.model import inspect_model

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

    from toolkit.pages.explain import explain as run_explain

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
        from toolkit.pages.lesson import write_lesson

        echo(f"wrote {write_lesson(html, cases)}")


from toolkit.cli.serve import serve  # noqa: E402  (the command lives in its own module)

cli.add_command(serve)

from toolkit.cli.bench import bench_command  # noqa: E402

cli.add_command(bench_command)

from toolkit.cli.install import setup_command  # noqa: E402

cli.add_command(setup_command)


def main() -> None:
    cli(prog_name="lstm-onnx")


if __name__ == "__main__":
    main()
