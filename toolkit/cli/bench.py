"""`lstm-onnx bench`: the command edge of `toolkit.speed.bench`, built from the options every command shares.

`toolkit.speed.bench` (numpy, ONNX Runtime) is imported inside the command, so `--help` does not pay for it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import click

from toolkit.cli.common import (
    echo,
    emit_json,
    json_option,
    option_values,
    quiet_tensorflow,
    runtimes_option,
    timeout_option,
    tolerance_options,
)
from toolkit.errors import OptionError


@click.command("bench")
@click.argument("onnx_model", type=click.Path(path_type=Path))
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True, help="Batch size of the timed inputs.")
@click.option("--steps", type=click.IntRange(min=1),
              help="Time steps of the timed inputs (default 100; with --stream, steps per call, default 1; a "
                   "model with a fixed length uses its own).")
@click.option("--stream", is_flag=True,
              help="Time consecutive calls of --steps steps with the states carried (a --state-io export): "
                   "session.run, open_stream, Node and OpenVINO, in microseconds per call.")
@click.option("--record", is_flag=True,
              help="Write the fastest runtime and thread count into the file's metadata: run and open_stream use them.")
@click.option("--keras", "keras_model", type=click.Path(path_type=Path),
              help="Measure error against this Keras model instead of ONNX Runtime float32.")
@tolerance_options
@click.option("--threads", "threads_text", metavar="LIST", help="Intra-op thread counts to try (default: 1 and every core).")
@runtimes_option("--runtimes", "runtimes_text", before="Forms to try, comma-separated (default all available): ",
                 timed=True)
@click.option("--seconds", type=click.FloatRange(min=0.1), default=8.0, show_default=True,
              help="About how long to time all forms together.")
@timeout_option("one run")
@json_option()
def bench_command(onnx_model: Path, batch: int, steps: int | None, stream: bool, record: bool,
                  keras_model: Path | None, atol: Sequence[str], rtol: Sequence[str], threads_text: str | None,
                  runtimes_text: str | None, seconds: float, timeout: float, as_json: bool) -> None:
    """Time ONNX_MODEL (a float32 export) in every runtime, tier and thread count; recommend the fastest
    form within the tolerance. Needs TensorFlow only with --keras."""
    from toolkit.speed.bench import _thread_list, bench
    from toolkit.speed.bench import record as record_defaults
    from toolkit.tolerance import Tolerances

    runtimes = [r.strip() for r in runtimes_text.split(",") if r.strip()] if runtimes_text is not None else None
    with option_values():
        tolerances, threads = Tolerances.parse(atol, rtol), _thread_list(threads_text)
        if stream and (keras_model is not None or runtimes is not None):
            given = " and ".join(o for o, v in (("--keras", keras_model), ("--runtimes", runtimes)) if v is not None)
            raise OptionError("Expected --stream without --keras and --runtimes (it times every streaming form "
                              f"against ONNX Runtime's unchunked run). Received: --stream with {given}")
    if keras_model is not None:
        quiet_tensorflow()
    from toolkit.cli.quiet import progress_for

    if stream:
        from toolkit.speed.stream import stream_bench

        report = stream_bench(onnx_model, batch, steps or 1, tolerances, threads, budget_s=seconds,
                              progress=progress_for(as_json))
    else:
        report = bench(onnx_model, batch, steps or 100, keras_model, tolerances, threads, runtimes, budget_s=seconds,
                       progress=progress_for(as_json), timeout=timeout)
    recorded = record_defaults(onnx_model, report.session_defaults()) if record else None
    if as_json:
        emit_json({**report.to_json(), **({"recorded": report.session_defaults().to_json()} if recorded else {})})
    else:
        echo(report.text() + (f"\n{recorded}" if recorded else ""))
