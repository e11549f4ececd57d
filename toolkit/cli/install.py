"""`lstm-onnx setup`: the command edge of `toolkit.runtimes.install` (nothing heavy is imported: no TensorFlow)."""

from __future__ import annotations

import sys

import click

from toolkit.cli.common import echo, emit_json, json_option, option_values


@click.command("setup")
@click.option("--runtimes", "runtimes_text", default="all", show_default=True, metavar="LIST",
              help="Comma-separated: node (onnxruntime-node), web (onnxruntime-web), chromium, tf-keras (the Keras 2 "
                   "reference), openvino, nginx, triton (the serve extra); or all. A runtime named here that cannot "
                   "be installed (no root for apt-get) exits 1; with all it is only reported.")
@json_option("the result")
def setup_command(runtimes_text: str, as_json: bool) -> None:
    """Install the optional runtimes for this lstm-onnx: the npm packages in a per-user cache, Python
    packages into this interpreter, Chromium and nginx with apt-get. Skips what is installed already."""
    from toolkit.runtimes.install import parse_runtimes, setup

    with option_values():
        names, explicit = parse_runtimes(runtimes_text)
    context = click.get_current_context()
    report = setup(names, explicit, verbose=bool(context.find_root().params.get("verbose")))
    if as_json:
        emit_json(report.to_json())
    else:
        echo(report.text())
    if not report:
        sys.exit(1)
