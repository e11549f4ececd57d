"""The `serve` command: a thin edge over `toolkit.deploy.serve` (no TensorFlow on its import path)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("onnx_model", type=click.Path(path_type=Path))
@click.option("--name", help="The model's name on the server (default: the file's stem).")
@click.option("--http-port", type=click.IntRange(1, 65535), default=8000, show_default=True,
              help="The port on 127.0.0.1 (nginx's; Triton itself listens only in a private network namespace).")
@click.option("--grpc", is_flag=True, help="Refused: gRPC requests cannot be checked before Triton parses them.")
@click.option("--max-batch-size", type=click.IntRange(min=1), default=64, show_default=True,  # triton.MAX_BATCH_SIZE
              help="Largest batch Triton's dynamic batcher forms (and accepts in one request).")
def serve(onnx_model: Path, name: str | None, http_port: int, grpc: bool, max_batch_size: int) -> None:
    """Serve ONNX_MODEL on a Triton Inference Server (ONNX Runtime in its Python backend, dynamic
    batching) behind nginx on 127.0.0.1 until Ctrl-C or SIGTERM. A --state-io export's states are
    request tensors."""
    from toolkit.cli.quiet import progress_for
    from toolkit.deploy.serve import ServeOptions, serve_forever

    options = ServeOptions(name=name, http_port=http_port, grpc=grpc, max_batch_size=max_batch_size)
    serve_forever(onnx_model, options, echo=lambda line: click.echo(line), progress=progress_for())
