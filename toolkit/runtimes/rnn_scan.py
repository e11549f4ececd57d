"""`onnxruntime-scan`: ONNX Runtime running a SimpleRNN export with each `RNN` op rewritten, at open, as one
MatMul for every step and a `Scan` over the recurrence. The file is not changed: its fused, named `RNN` op
is what an export promises, and ONNX Runtime's kernel for it is the slow part.

ONNX Runtime 1.32's RNN kernel (`onnxruntime/core/providers/cpu/rnn/rnn.cc`, `ApplyActivationToBatches`)
applies tanh one value at a time through a functor. The same recurrence as

    XW = MatMul(X, W^T) + (Wb + Rb)            every step's input product at once: [T, B, H]
    Scan(h0, XW): h = Tanh(MatMul(h, R^T) + XW[t])

runs tanh as one vectorized op per step. Measured on an lstm-onnx export of SimpleRNN(128) on 64 features,
1 thread, in alternation in one process (scripts/stream_benchmark.py, 2026-12-07, 2 shared cores): 1.63
against 5.89 ms at batch 32 x 100 steps (tf2onnx's Loop 2.41), 0.159 against 0.236 at 1 x 100; by hand,
CPU time, 0.477 against 1.753 at 8 x 100. Its outputs differ from the op's by up to 1.2e-6 over 100 steps
and from Keras' by up to 8.3e-7 (the bias joins the input product before the recurrent one: another sum
order). The Scan's own cost per step makes it slower than the op on tiny layers (6 units x 5 steps at
batch 2: 0.033 against 0.022 ms): `bench` times both and recommends the faster.

Rewritten: every `RNN` op (none may be left to the fused kernel: a runtime named for the rewrite never falls
back silently) that runs forward at layout 0 without `sequence_lens`, with Tanh and no clip or activation
alpha/beta, its W, R and B float32 initializers no feed can replace. `initial_h` is optional (absent:
zeros of [batch, H] from the input's shape, so a dynamic batch works); Y and Y_h are written only where the
graph reads them, in the op's shapes. `problem` says in one line which condition a model fails.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from toolkit.errors import InputError
from toolkit.lowering.writer import GraphWriter, outer_reads
from toolkit.onnxfile.model import all_nodes, main_opset, subgraphs
from toolkit.runtimes.onnxrt import OnnxRunner

NAME = "onnxruntime-scan"
SCAN_OPSET = 9  # Scan-8 runs over a batch axis of its own
OTHER_RECURRENT = ("LSTM", "GRU")
UNSUPPORTED_ATTRIBUTES = ("clip", "activation_alpha", "activation_beta")


@dataclass(frozen=True)
class RnnWeights:
    """One forward RNN op's weights in the form the rewrite multiplies by."""

    w_t: np.ndarray  # W^T: [features, hidden]
    r_t: np.ndarray  # R^T: [hidden, hidden]
    bias: np.ndarray | None  # Wb + Rb: [hidden], None where the op has no B (use_bias=False)


def _is_rnn(node: onnx.NodeProto) -> bool:
    return node.op_type == "RNN" and node.domain in ("", "ai.onnx")


def _attributes(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _input(node: onnx.NodeProto, position: int) -> str:
    """The op's input at `position`, or "" where it is absent (an optional input left out)."""
    return node.input[position] if position < len(node.input) else ""


def _form_problem(node: onnx.NodeProto, label: str) -> str | None:
    """Why the op's attributes or inputs are not the form the rewrite computes, or None."""
    attributes = _attributes(node)
    direction = attributes.get("direction", b"forward").decode(errors="replace")
    if direction != "forward":
        return f"{label} runs {direction} (a Bidirectional or go_backwards layer); {NAME} rewrites forward RNN ops only"
    if attributes.get("layout", 0) != 0:
        return f"{label} has layout {attributes['layout']}; {NAME} rewrites layout 0 (time-major) only"
    if _input(node, 4):
        return f"{label} is fed sequence_lens (a masked layer); {NAME} rewrites RNN ops without it only"
    activations = [a.decode(errors="replace") for a in attributes.get("activations", [b"Tanh"])]
    if activations != ["Tanh"]:
        return f"{label} uses the activation {', '.join(activations)}; {NAME} rewrites Tanh only"
    found = [name for name in UNSUPPORTED_ATTRIBUTES if name in attributes]
    if found:
        return f"{label} sets {', '.join(found)}; {NAME} rewrites RNN ops without them only"
    return None


def _weights_problem(node: onnx.NodeProto, label: str, initializers: dict[str, onnx.TensorProto],
                     fed: set[str]) -> str | None:
    """Why the op's W, R or B is not a float32 constant of the op's shapes, or None."""
    for position, role in ((1, "W"), (2, "R"), (3, "B")):
        name = _input(node, position)
        if not name and role == "B":
            continue
        tensor = initializers.get(name)
        if tensor is None or name in fed:
            return f"{label}: its {role} is not a constant (an initializer no feed replaces); {NAME} folds its weights"
        if tensor.data_type != TensorProto.FLOAT:
            known = tensor.data_type in TensorProto.DataType.values()
            dtype = TensorProto.DataType.Name(tensor.data_type).lower() if known else f"type {tensor.data_type}"
            return f"{label}: its {role} is {dtype}; {NAME} rewrites float32 RNN ops only"
    w, r = (initializers[_input(node, p)].dims for p in (1, 2))
    hidden = r[-1] if r else 0
    expected = {"W": [1, hidden, w[-1] if w else 0], "R": [1, hidden, hidden], "B": [1, 2 * hidden]}
    for position, role in ((1, "W"), (2, "R"), (3, "B")):
        name = _input(node, position)
        if name and list(initializers[name].dims) != expected[role]:
            return f"{label}: its {role} has shape {list(initializers[name].dims)}, not {expected[role]} (one direction)"
    if _attributes(node).get("hidden_size", hidden) != hidden:
        return f"{label}: its hidden_size is not its R's {hidden}"
    return None


def problem(model: onnx.ModelProto) -> str | None:
    """Why `model` is not valid in onnxruntime-scan (no RNN op, or one the rewrite does not compute), or None."""
    graph = model.graph
    top = [node for node in graph.node if _is_rnn(node)]
    inside = sum(1 for node in graph.node for sub in subgraphs(node) for n in all_nodes(sub) if _is_rnn(n))
    if inside:
        return f"{inside} RNN op(s) inside a Loop, If or Scan body; {NAME} rewrites the main graph's only"
    if not top:
        others = sorted({n.op_type for n in all_nodes(graph) if n.op_type in OTHER_RECURRENT})
        ops = f"its recurrent ops are {', '.join(others)}" if others else "it has no recurrent op"
        return f"no RNN op to rewrite as Scan ({NAME} rewrites SimpleRNN's fused RNN op; {ops})"
    if main_opset(model) < SCAN_OPSET:
        return f"opset {main_opset(model)}; {NAME} writes Scan as opset {SCAN_OPSET} and later define it"
    initializers = {t.name: t for t in graph.initializer}
    fed = {v.name for v in graph.input}
    for index, node in enumerate(top):
        label = f"RNN {node.name or index!r}"
        found = _form_problem(node, label) or _weights_problem(node, label, initializers, fed)
        if found:
            return found
    return None


def _weights(node: onnx.NodeProto, initializers: dict[str, onnx.TensorProto]) -> RnnWeights:
    w, r = (numpy_helper.to_array(initializers[node.input[p]]) for p in (1, 2))
    b = numpy_helper.to_array(initializers[_input(node, 3)]) if _input(node, 3) else None
    hidden = r.shape[-1]
    bias = None if b is None else (b[0, :hidden] + b[0, hidden:]).astype(np.float32)
    return RnnWeights(np.ascontiguousarray(w[0].T), np.ascontiguousarray(r[0].T), bias)


def _body(writer: GraphWriter, r_t: np.ndarray, sequence: bool) -> onnx.GraphProto:
    """One step: h' = Tanh(MatMul(h, R^T) + XW[t]); the state h', and h' again as the scan output where the
    graph reads Y (an Identity: a body output is one value)."""
    hidden = r_t.shape[0]
    h, step, r_name = writer.fresh("h"), writer.fresh("xw_t"), writer.fresh("R_t")
    product, total, h_next, y = (writer.fresh(hint) for hint in ("hR", "z", "h_next", "y"))
    nodes = [helper.make_node("MatMul", [h, r_name], [product]), helper.make_node("Add", [product, step], [total]),
             helper.make_node("Tanh", [total], [h_next])]
    if sequence:
        nodes.append(helper.make_node("Identity", [h_next], [y]))
    # One named batch dim for every body value: ONNX Runtime then plans the step's buffers once (at batch 1,
    # 100 steps of SimpleRNN(128): 0.149 ms a call against 0.221 with an unnamed dim; the RNN op's 0.229).
    batch = writer.fresh("batch")
    info = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [batch, hidden]) for name in (h, step, h_next, y)]
    return helper.make_graph(nodes, writer.fresh("scan_body"), info[:2], info[2:] if sequence else info[2:3],
                             [numpy_helper.from_array(r_t, r_name)])


def _zeros(writer: GraphWriter, x: str, hidden: int) -> str:
    """Zeros of [batch, hidden], the batch read from X's shape [T, B, F] (a dynamic batch)."""
    shape = writer.op1("Concat", [writer.dim_range(x, 1, 2), writer.ints([hidden])], axis=0)
    return writer.op1("ConstantOfShape", [shape], value=numpy_helper.from_array(np.zeros(1, np.float32)))


def _unsqueeze_to(writer: GraphWriter, value: str, axis: int, name: str) -> None:
    writer.unsqueeze(value, axis)
    writer.nodes[-1].output[:] = [name]  # the RNN op's own output name: the graph reads it


def _scanall_nodes(node: onnx.NodeProto, weights: RnnWeights, writer: GraphWriter) -> None:
    """The op's replacement, appended to `writer`: Y [T, 1, B, H] and Y_h [1, B, H] as the graph reads them."""
    x, hidden = node.input[0], weights.r_t.shape[0]
    steps = writer.op1("MatMul", [x, writer.const(weights.w_t, "W_t")])
    if weights.bias is not None:
        steps = writer.op1("Add", [steps, writer.const(weights.bias, "bias")])
    h0 = writer.squeeze(_input(node, 5), 0) if _input(node, 5) else _zeros(writer, x, hidden)
    y, y_h = _input_output(node, 0), _input_output(node, 1)
    outputs = writer.op("Scan", [h0, steps], 2 if y else 1, body=_body(writer, weights.r_t, bool(y)),
                        num_scan_inputs=1)
    if y:
        _unsqueeze_to(writer, outputs[1], 1, y)
    if y_h:
        _unsqueeze_to(writer, outputs[0], 0, y_h)


def _input_output(node: onnx.NodeProto, position: int) -> str:
    return node.output[position] if position < len(node.output) else ""


def _names(graph: onnx.GraphProto) -> set[str]:
    names = {t.name for t in graph.initializer} | {v.name for v in [*graph.input, *graph.output, *graph.value_info]}
    for node in all_nodes(graph):
        names.update(node.input)
        names.update(node.output)
    return names


def _prefix(graph: onnx.GraphProto) -> str:
    """A prefix no value of the graph starts with, for the rewrite's new names."""
    names, prefix = _names(graph), "scan"
    while any(name.startswith(prefix) for name in names):
        prefix += "_"
    return prefix


class _Writer(GraphWriter):
    """A graph writer whose every new name starts with a prefix the model's own names do not."""

    def __init__(self, opset: int, prefix: str):
        super().__init__(opset)
        self.prefix = prefix

    def fresh(self, hint: str) -> str:
        return f"{self.prefix}_{super().fresh(hint)}"


def as_scan(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` with every RNN op as MatMul + Add + Scan (see the module docstring); the weights
    only the RNN ops read are dropped. A model `problem` finds fault with is refused in one line."""
    found = problem(model)
    if found:
        raise InputError(f"Expected a model {NAME} rewrites. Received: {found}")
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    graph = rewritten.graph
    initializers = {t.name: t for t in graph.initializer}
    writer = _Writer(main_opset(model), _prefix(graph))
    nodes, consumed = [], set()
    for node in graph.node:
        if not _is_rnn(node):
            nodes.append(node)
            continue
        start = len(writer.nodes)
        _scanall_nodes(node, _weights(node, initializers), writer)
        nodes.extend(writer.nodes[start:])
        consumed.update(name for name in node.input[1:4] if name)
    graph.ClearField("node")
    graph.node.extend(nodes)
    graph.initializer.extend(writer.initializers)
    read = outer_reads(graph) | {n for node in graph.node for n in node.input}
    kept = [t for t in graph.initializer if t.name not in consumed or t.name in read]
    graph.ClearField("initializer")
    graph.initializer.extend(kept)
    return rewritten


def open_scan(path: str | Path, model: onnx.ModelProto, threads: int | None = None) -> OnnxRunner:
    """The registry's `open`: ONNX Runtime on the rewritten graph (the file on disk is not read again)."""
    return OnnxRunner(as_scan(model), name=NAME, threads=threads)
