"""OpenVINO on CPU, from pip: f32 (`openvino`) and its default precision (`openvino-bf16`).

OpenVINO's CPU plugin computes in bf16 by default where the processor has bf16 instructions (this
machine's does): every export is then off by 2e-3 to 1.5e-2, far outside the parity tolerance. The
`openvino` runtime pins `INFERENCE_PRECISION_HINT` to f32; `openvino-bf16` keeps the default and is a
tier of its own, reported with its error, never as f32-exact.

`problem(model)` names what OpenVINO computes wrong or refuses on our exports, each as re-measured with
real exports on OpenVINO 2026.4.1 (numbers in the comments).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from toolkit.errors import InputError, RuntimeFailure
from toolkit.onnxfile.model import all_nodes, describe
from toolkit.process import LineProcess
from toolkit.runtimes.base import START_TIMEOUT, Runner, stream_in_child
from toolkit.runtimes.threads import check_threads
from toolkit.runtimes.wire import decode_answer, encode_feeds

RECURRENT_OPS = ("LSTM", "GRU", "RNN")
# The activations OpenVINO computes in LSTM/GRU/RNN, matched case-insensitively as OpenVINO does. Measured
# with every Keras activation the builder offers, as `activation` and `recurrent_activation` of one LSTM,
# GRU and SimpleRNN: sigmoid, tanh and relu match Keras (<= 8.3e-7); HardSigmoid fails to compile
# ("Unsupported activation function"), Affine (linear), Softsign, Softplus and Elu too ("Unknown
# activation function").
SUPPORTED_ACTIVATIONS = ("sigmoid", "tanh", "relu")
# Reductions whose `axes` attribute OpenVINO's ONNX reader ignores at opsets 13-17 (openvino #38238):
# it reduces over every axis instead. Measured on one node with axes=[-1] over a (4, 5, 3) input: these
# three give shape (1, 1, 1) at opsets 13 and 17 and the right (4, 5, 1) at 18 (axes as an input);
# ReduceL2, ReduceMax, ReduceMin, ReduceMean, ReduceProd, ReduceSumSquare and ReduceSum are right at every
# opset. A Masking export's ReduceL1 then fails its LSTM at batch > 1 ("merged_batch_size" check); at
# --opset 18 the bidirectional_gru_masking variant matches Keras in OpenVINO (1.6e-7). Writing ReduceL1 as
# Abs + ReduceSum (axes as an input from opset 13) would fix opsets 14-17 too, for one more node: +1.7 us
# (46 -> 48 us) at batch 1 x 1 step in ONNX Runtime, not measurable at 32 x 100; left to --opset 18.
AXES_IGNORED = ("ReduceL1", "ReduceLogSum", "ReduceLogSumExp")
PRECISIONS = {"openvino": "f32", "openvino-bf16": None}  # None: the plugin's default (bf16 here)


def _direction(node: onnx.NodeProto) -> str:
    return next((a.s.decode() for a in node.attribute if a.name == "direction"), "forward")


def _ignores_sequence_lens(node: onnx.NodeProto) -> bool:
    """OpenVINO runs every step of an LSTM/GRU/RNN fed `sequence_lens`, padded ones too, except in a
    bidirectional LSTM or GRU. Measured against Keras on embedding-masked stacks (8 units, batches of 1
    and 4 padded to random lengths, 6 cases each): forward LSTM off by 0.38-0.41, reverse LSTM 0.15,
    forward GRU 0.39, reverse GRU 0.50, SimpleRNN 1.3, bidirectional SimpleRNN 1.6; bidirectional LSTM
    and GRU (concat, sum, ave; 1 and 2 layers) match to 1.5e-7."""
    if len(node.input) <= 4 or not node.input[4]:
        return False
    return node.op_type == "RNN" or _direction(node) != "bidirectional"


def _recurrent_problem(node: onnx.NodeProto) -> str | None:
    if _ignores_sequence_lens(node):
        return (f"openvino ignores sequence_lens in a {_direction(node)} {node.op_type} ({node.name!r}, a masked "
                f"layer): it runs the padded steps too")
    for attr in node.attribute:
        if attr.name == "activations":
            refused = sorted({s.decode() for s in attr.strings if s.decode().lower() not in SUPPORTED_ACTIVATIONS})
            if refused:
                return f"openvino refuses the activation {', '.join(refused)} in {node.op_type} {node.name!r}"
    return None


def problem(model: onnx.ModelProto) -> str | None:
    """Why OpenVINO does not compute this model's numbers, or None where it does (as measured)."""
    opset = describe(model).opset
    for node in all_nodes(model.graph):
        if node.op_type in RECURRENT_OPS:
            found = _recurrent_problem(node)
            if found:
                return found
        if node.op_type in AXES_IGNORED and 13 <= opset <= 17 and any(a.name == "axes" for a in node.attribute):
            return (f"openvino ignores the axes attribute of {node.op_type} {node.name!r} at opset {opset} "
                    f"(openvino #38238; export with --opset 18, where axes is an input it reads)")
    return None


F32_CPU = "this CPU runs OpenVINO in f32"  # why the bf16 tier is not valid where the plugin defaults to f32


def bf16_problem(core: Any) -> str | None:
    """None where `core`'s CPU plugin computes in bf16 by default; otherwise the tier would pass "as f32"."""
    openvino = _import_openvino()
    return None if core.get_property("CPU", "INFERENCE_PRECISION_HINT") == openvino.Type.bf16 else F32_CPU


def problem_bf16(model: onnx.ModelProto) -> str | None:
    """`problem`, and for the bf16 tier also a CPU that does not run it in bf16 (no bf16 instructions)."""
    return problem(model) or bf16_problem(_import_openvino().Core())


def _import_openvino() -> Any:
    try:
        import openvino
    except ImportError:
        raise InputError("Expected the openvino package for the OpenVINO runtimes. Received: not installed "
                         "(not installed: `lstm-onnx setup --runtimes openvino`)") from None
    return openvino


class OpenVinoRunner(Runner):
    """One model compiled by OpenVINO for its CPU plugin, at f32 or at the plugin's default precision, in a
    child process (`openvino_child`): a run past its deadline stops the child."""

    def __init__(self, path: Path, model: onnx.ModelProto, runtime: str = "openvino", threads: int | None = None,
                 properties: Mapping[str, Any] | None = None):
        if runtime not in PRECISIONS:
            raise InputError(f"Expected an OpenVINO runtime among {list(PRECISIONS)}. Received: {runtime!r}")
        if not installed():  # one line here, not a child's error; the child imports it
            _import_openvino()
        super().__init__(model, runtime)
        config = {"path": str(Path(path).resolve()), "runtime": runtime, "precision": PRECISIONS[runtime],
                  "threads": check_threads([threads])[0] if threads else None, "outputs": self.output_names,
                  "properties": dict(properties or {})}
        root = str(Path(__file__).resolve().parents[2])  # the folder holding `toolkit`
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (root, os.environ.get("PYTHONPATH"))))}
        try:
            self.process = LineProcess([sys.executable, "-m", "toolkit.runtimes.openvino_child", json.dumps(config)],
                                       runtime, env=env)
            ready = self.process.receive(START_TIMEOUT)
            if "error" in ready:
                raise RuntimeFailure(f"Expected OpenVINO to compile {Path(path).name}. Received: {ready['error']}")
            self.precision = ready["precision"]
            if PRECISIONS[runtime] is None and not ready["bf16"]:
                raise RuntimeFailure(f"Expected {runtime} to compute in bf16. Received: {F32_CPU} ({self.precision})")
        except BaseException:
            self.close()
            raise

    def _run(self, feeds: dict[str, np.ndarray], timeout: float) -> dict[str, np.ndarray]:
        return decode_answer(self.process.ask(encode_feeds(feeds), timeout), self.name, self.output_names)

    def time_calls(self, feeds: Mapping[str, np.ndarray], calls: int, timeout: float | None = None) -> float:
        """Timed in the child, around its own calls: the transfer to it is not OpenVINO's time."""
        message = {**encode_feeds(self.check(feeds)), "repeat": max(calls, 1)}
        answer = self.process.ask(message, self.timeout if timeout is None else timeout)
        if "error" in answer:
            raise RuntimeFailure(f"Expected a run in {self.name}. Received its error: {answer['error']}")
        return float(answer["seconds"])

    def stream(self, input_name: str, chunks: Sequence[np.ndarray], states: Mapping[str, np.ndarray],
               mapping: Mapping[str, str], calls: int, timeout: float | None = None) -> tuple[float, dict[str, np.ndarray]]:
        """A streaming loop in the child, on one infer request (`base.stream_in_child`)."""
        return stream_in_child(self, self.process, input_name, chunks, states, mapping, calls, timeout)

    def _stop(self) -> None:
        if hasattr(self, "process"):
            self.process.stop()


def installed() -> bool:
    """Whether the openvino package is installed (nothing is imported)."""
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def open_f32(path: Path, model: onnx.ModelProto, threads: int | None = None) -> OpenVinoRunner:
    return OpenVinoRunner(path, model, "openvino", threads=threads)


def open_default(path: Path, model: onnx.ModelProto, threads: int | None = None) -> OpenVinoRunner:
    return OpenVinoRunner(path, model, "openvino-bf16", threads=threads)
