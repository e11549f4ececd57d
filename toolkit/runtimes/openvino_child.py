"""The OpenVINO child: `python -m toolkit.runtimes.openvino_child CONFIG_JSON` compiles one model for the
CPU plugin and answers one JSON line per request line on stdin (`toolkit.process`'s framing; tensors in the
wire form of `runtimes/wire.py`, as the Node harness does). OpenVINO cannot stop a run in progress
(`InferRequest.cancel` leaves a Loop running, and the process then hangs at exit): in a child, a run past
its deadline is stopped by stopping the child.

CONFIG_JSON: {"path", "runtime", "precision" (or null: the plugin's default), "threads" (or null),
"outputs" (the graph's output names), "properties" (set on the CPU plugin first; tests pin f32 there)}.
The first line says it compiled ({ready, precision, bf16, inputs}) or {error}; a request {feeds, repeat}
is answered with {outputs}, or with {seconds} per call of `repeat` timed runs.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import numpy as np

from toolkit.process import read_frame, write_frame
from toolkit.runtimes.wire import decode_tensor, encode_tensor


def openvino_line(exc: Exception) -> str:
    """OpenVINO's messages open with "Exception from <file>:<line>:" lines and may end in a graph dump
    followed by "CALLBACK HAS THROWN: <reason>"; keep the reason."""
    text = str(exc).rsplit("CALLBACK HAS THROWN:", 1)[-1]
    lines = [line.strip() for line in text.splitlines()]
    said = [line for line in lines if line and not line.startswith("Exception from")]
    return (said[0] if said else type(exc).__name__)[:300]


def _compile(config: dict[str, Any]) -> tuple[Any, dict]:
    import openvino

    core = openvino.Core()
    if config.get("properties"):
        core.set_property("CPU", config["properties"])
    settings: dict[str, Any] = {"INFERENCE_PRECISION_HINT": config["precision"]} if config.get("precision") else {}
    if config.get("threads"):
        settings["INFERENCE_NUM_THREADS"] = int(config["threads"])
    compiled = core.compile_model(core.read_model(config["path"]), "CPU", settings)
    hint = compiled.get_property("INFERENCE_PRECISION_HINT")
    ready = {"ready": True, "precision": str(hint), "bf16": hint == openvino.Type.bf16,
             "inputs": [port.get_any_name() for port in compiled.inputs]}
    return compiled, ready


def _stream(compiled: Any, ports: dict[str, Any], spec: dict) -> dict:
    """`calls` consecutive infers of one request, each fed the next chunk and the states the infer before
    returned (`map`: state input -> output), timed here; the last infer's outputs (as Node's `stream`)."""
    request = compiled.create_infer_request()
    feeds = {state["name"]: decode_tensor(state) for state in spec["states"]}
    chunks = [decode_tensor(chunk) for chunk in spec["chunks"]]
    carried = [(name, ports[output]) for name, output in spec["map"].items()]
    calls = max(int(spec["calls"]), 1)
    start = time.perf_counter()
    for call in range(calls):
        feeds[spec["input"]] = chunks[call % len(chunks)]
        results = request.infer(feeds)
        for name, port in carried:
            feeds[name] = results[port]
    seconds = (time.perf_counter() - start) / calls
    return {"seconds": seconds, "outputs": [encode_tensor(name, np.array(results[port])) for name, port in ports.items()]}


def _answer(compiled: Any, ports: dict[str, Any], request: dict) -> dict:
    try:
        if "stream" in request:
            return _stream(compiled, ports, request["stream"])
    except RuntimeError as exc:
        return {"error": openvino_line(exc)}
    feeds = {spec["name"]: decode_tensor(spec) for spec in request["feeds"]}
    try:
        repeat = int(request.get("repeat") or 0)
        if repeat:
            compiled(feeds)
            start = time.perf_counter()
            for _ in range(repeat):
                compiled(feeds)
            return {"seconds": (time.perf_counter() - start) / repeat}
        results = compiled(feeds)
        return {"outputs": [encode_tensor(name, np.array(results[port])) for name, port in ports.items()]}
    except RuntimeError as exc:
        return {"error": openvino_line(exc)}


def main(argv: list[str]) -> None:
    out = os.fdopen(os.dup(1), "wb")  # the answers' own channel: what OpenVINO prints goes to stderr
    os.dup2(2, 1)
    config = json.loads(argv[0])
    try:
        compiled, ready = _compile(config)
    except RuntimeError as exc:  # OpenVINO reports a refused op or attribute as a RuntimeError
        write_frame(out, {"error": openvino_line(exc)})
        return
    wanted = set(config["outputs"])
    # A port may carry several tensor names; keep the one that is a graph output.
    by_name = {next(iter(port.get_names() & wanted), port.get_any_name()): port for port in compiled.outputs}
    missing = [name for name in config["outputs"] if name not in by_name]
    if missing:
        write_frame(out, {"error": f"Expected outputs {config['outputs']} in the compiled model. Received: {list(by_name)}"})
        return
    ports = {name: by_name[name] for name in config["outputs"]}
    write_frame(out, ready)
    while (frame := read_frame(sys.stdin.buffer)) is not None:
        if frame.header is not None:  # the parent sends JSON objects only
            write_frame(out, _answer(compiled, ports, frame.header))


if __name__ == "__main__":
    main(sys.argv[1:])
