"""Streaming parity: feed a sequence to a `--state-io` export in chunks, carrying the states, and compare
with Keras on the whole sequence.

ONNX Runtime is stateless, so a `--state-io` export records which state input each final-state output
feeds (`lstm_onnx.state_map` in its metadata); `StreamingRunner` uses exactly that map, as deploy code
would. Outputs with a time axis are concatenated over the chunks; the others (last outputs, states) are
the last chunk's. A Bidirectional or `go_backwards` layer cannot stream: its first output needs the end of
the sequence. The comparison is `loop.compare_runners`, as for every other check.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx

from toolkit.checking.inputs import InputCase, input_cases
from toolkit.checking.loop import compare_runners, decided_tolerances
from toolkit.checking.results import StreamReport, split_steps
from toolkit.errors import InputError
from toolkit.onnxfile import metadata
from toolkit.onnxfile.model import TensorInfo, graph_inputs, graph_outputs, optional_inputs
from toolkit.runtimes.base import Runner
from toolkit.runtimes.keras import KerasRunner
from toolkit.runtimes.onnxrt import OnnxRunner
from toolkit.text import safe_text
from toolkit.tolerance import Tolerances


def parse_chunks(spec: str) -> list[int]:
    """`3` means chunks of 3 steps; `1,4,2` those sizes in turn."""
    try:
        sizes = [int(part) for part in spec.split(",") if part.strip()]
    except ValueError:
        sizes = []
    if not sizes or any(size < 1 for size in sizes):
        raise InputError(f"Expected --stream as a chunk size or a comma-separated list of sizes >= 1. Received: {spec!r}")
    return sizes


def state_map(model: onnx.ModelProto) -> dict[str, str]:
    """The recorded map from state inputs to the outputs that feed them, checked against the graph."""
    mapping = metadata.read_state_map(model)
    if not mapping:
        raise InputError("Expected an export made with --state-io (its metadata maps state outputs to inputs). "
                         "Received: a model without lstm_onnx.state_map")
    inputs = {t.name for t in graph_inputs(model) + optional_inputs(model)}
    outputs = {t.name for t in graph_outputs(model)}
    if not all(k in inputs and v in outputs for k, v in mapping.items()):
        raise InputError("Expected lstm_onnx.state_map mapping this model's state inputs to its outputs. "
                         f"Received: {safe_text(json.dumps(mapping), limit=200)}")
    return mapping


def check_streamable(model: onnx.ModelProto) -> None:
    backwards = [safe_text(layer.get("name")) for layer in metadata.read_layers(model)
                 if layer.get("class") == "Bidirectional" or layer.get("go_backwards")]
    if backwards:
        raise InputError(f"Expected only forward recurrent layers to stream. Received: {backwards}, which read the "
                         "sequence from its end (Bidirectional or go_backwards): they need the whole sequence")


def time_outputs(runner: OnnxRunner) -> set[str]:
    """Outputs whose axis 1 is the dynamic time axis."""
    return timed(runner.outputs)


def timed(outputs: Sequence[TensorInfo]) -> set[str]:
    return {t.name for t in outputs if len(t.shape) >= 3 and isinstance(t.shape[1], str)}


def sequence_input(inputs: Sequence[TensorInfo]) -> str:
    """The one input with a variable time axis, which is what gets cut into chunks."""
    found = [t for t in inputs if len(t.shape) >= 2 and isinstance(t.shape[1], str)]
    if len(found) != 1:
        raise InputError(f"Expected one input with a variable time axis to stream. Received: "
                         f"{[f'{t.name} {t.shape_text()}' for t in inputs]}")
    return found[0].name


def check_chunks_carry(run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]], zeros: dict[str, np.ndarray],
                       sequence_input: str, mapping: Mapping[str, str], model: onnx.ModelProto, steps: int = 4) -> None:
    """Refuse a model whose run in two chunks, its states carried by the map, is not its run on the whole
    sequence: a layer before or after the recurrent ones mixes time steps (a Conv1D, attention), and only the
    states cross a chunk's edge. Streamed, a causal Conv1D under an LSTM was 4.3e-2 off, silently.
    `zeros`: the optional state inputs' zeros at batch 1 ({} where `run` fills them); the required inputs
    are drawn as `bench` draws a file's."""
    feeds = {**zeros, **input_cases(model, 1, batch=1, steps=steps)[0].feeds}
    x = feeds[sequence_input]
    whole = run(feeds)
    first = run({**feeds, sequence_input: x[:, :1]})
    second = run({**feeds, sequence_input: x[:, 1:], **{state: first[out] for state, out in mapping.items()}})
    atol, rtol = _chunk_tolerance(model, whole.values())
    steps = timed(graph_outputs(model))
    for name in whole:  # a time output is both chunks' steps; any other, the last chunk's
        chunked = np.concatenate([first[name], second[name]], axis=1) if name in steps else second[name]
        exact = whole[name].astype(np.float64)
        off = np.abs(chunked.astype(np.float64) - exact)
        if (off > atol + rtol * np.abs(exact)).any():
            raise InputError(f"Expected a model whose run in chunks, carrying its recurrent states, is its run on the "
                             f"whole sequence. Received: {safe_text(name)} off by {float(off.max()):.2g} for steps 1 + "
                             f"{x.shape[1] - 1} against {x.shape[1]} at once: a layer mixes time steps across a "
                             "chunk's edge (a Conv1D, attention, a pooling over time)")


def _chunk_tolerance(model: onnx.ModelProto, values: Any) -> tuple[float, float]:
    """What a chunked run may differ by: 100 ulps of the narrowest float output (float32 1.2e-5; float16
    carried states 1e-2 at most), or the file's own recorded parity tolerance where looser (an int8 tier
    quantizes each chunk's input on its own range: 1.1e-4 off at 1 + 3 steps)."""
    eps = min((float(np.finfo(v.dtype).eps) for v in values if v.dtype.kind == "f"), default=0.0)
    floor = min(100 * max(eps, float(np.finfo(np.float32).eps)), 1e-2)
    recorded = [v for v in metadata.read_parity(model).get("outputs", {}).values() if isinstance(v, dict)]
    atol = max([floor] + [float(v["atol"]) for v in recorded if isinstance(v.get("atol"), (int, float))])
    rtol = max([floor] + [float(v["rtol"]) for v in recorded if isinstance(v.get("rtol"), (int, float))])
    return atol, rtol


def chunks_carry(model: onnx.ModelProto) -> None:
    """`check_chunks_carry` in a session of its own (a --triton repository's sequence batching carries
    the states from request to request as `open_stream` does from step to step)."""
    runner = OnnxRunner(model)
    check_chunks_carry(runner.run, {}, sequence_input(runner.inputs), state_map(model), model)


def run_streamed(runner: OnnxRunner, feeds: Mapping[str, np.ndarray], sequence_input: str, sizes: Sequence[int],
                 mapping: Mapping[str, str]) -> dict[str, np.ndarray]:
    """Run chunk by chunk, feeding each chunk's final states into the next; missing states are zeros."""
    length = feeds[sequence_input].shape[1]
    carried: dict[str, np.ndarray] = {}
    pieces: dict[str, list[np.ndarray]] = {}
    timed = time_outputs(runner)
    last: dict[str, np.ndarray] = {}
    for start, end in split_steps(length, sizes):
        chunk = {name: value for name, value in feeds.items() if name not in mapping or not carried}
        chunk[sequence_input] = feeds[sequence_input][:, start:end]
        chunk.update(carried)
        last = runner.run(chunk)
        for name in timed:
            pieces.setdefault(name, []).append(last[name])
        carried = {state_in: last[state_out] for state_in, state_out in mapping.items()}
    return {name: (np.concatenate(pieces[name], axis=1) if name in timed else value) for name, value in last.items()}


class StreamingRunner(Runner):
    """An ONNX Runtime session fed chunk by chunk through the export's state map: a runner like any other
    (the session checks each chunk's feeds)."""

    def __init__(self, runner: OnnxRunner, sizes: Sequence[int]):
        super().__init__(None)
        check_streamable(runner.model)
        self.mapping = state_map(runner.model)
        self.sequence_input = sequence_input(runner.inputs)
        self.runner = runner
        self.sizes = tuple(sizes)
        self.name = f"{runner.name} stream {','.join(map(str, self.sizes))}"

    def _run(self, feeds: dict[str, np.ndarray], timeout: float) -> dict[str, np.ndarray]:
        return run_streamed(self.runner, feeds, self.sequence_input, self.sizes, self.mapping)


def stream_parity(keras_model: Any, onnx_model: onnx.ModelProto, sizes: Sequence[int], length: int = 12,
                  batch: int = 2, tolerances: Tolerances = Tolerances(), seed: int = 0,
                  reference: KerasRunner | None = None) -> StreamReport:
    """Chunked ONNX Runtime against Keras (and against an unchunked run) on one random sequence.
    `reference`: what computes Keras' outputs instead of `keras_model` (a Keras 2 file's original)."""
    state_map(onnx_model)  # refuse a model without a state map before anything else, then a backward one
    check_streamable(onnx_model)
    runner = OnnxRunner(onnx_model)
    streamed = StreamingRunner(runner, sizes)
    tolerances = decided_tolerances(tolerances, onnx_model, keras_model)  # as `verify` decided them, if it did
    # The file's inputs at `length` steps, drawn as the Keras model's own cases are.
    feeds = input_cases(onnx_model, seed, batch=batch, steps=length, keras_model=keras_model)[0].feeds
    label = f"chunks {','.join(map(str, sizes))} over {length} steps"
    names = runner.output_names
    keras_names = names[: len(keras_model.outputs)]  # the extra outputs are --state-io's states
    keras = reference if reference is not None else KerasRunner(keras_model)
    against_keras = compare_runners(keras, [streamed], [InputCase(label, feeds)], tolerances, keras_names)
    against_whole = compare_runners(runner, [streamed], [InputCase(label + " vs unchunked", feeds)], tolerances,
                                    names)
    return StreamReport(tuple(sizes), against_keras[streamed.name], against_whole[streamed.name], length, keras.name)
