"""The step graph: a one-layer export's recurrent op alone, for streaming steps where the nodes around it
only move memory that does not move.

A single-layer export wraps its LSTM/GRU/RNN op in layout nodes: a Transpose to time-major, Unsqueeze of
each state to (directions, batch, units), Squeeze of the final states, Identity for each named output. For
a step of 1 time step (any batch), every one of them leaves the bytes where they are: the session can bind
the same buffers, viewed in the op's shapes, to the op alone, and skip 6 node dispatches (2.7 us of an
11 us one-step LSTM(128) call, docs/speed.md). `StreamSession` takes this graph only after both graphs gave
bit-identical outputs on the same random step at open; otherwise it runs the file's graph and says why.

An LSTM's bias also moves, into its input weights (`fold_bias`): the op then reads a step with one more
feature, a constant 1, and W gains one column, Wb + Rb, the sum ONNX Runtime forms on every call. Without
the B input ONNX Runtime's LSTM kernel skips four scratch allocations, the bias sum and the bias add of every
call: 0.7 us of a one-step LSTM(128), 7.7 against 7.0 us (docs/speed.md). The arithmetic is the same, the
order of one sum is not (the bias joins the input product instead of coming after both products), so that
graph is held to a float32 rounding bound (`fold_bound`) instead of bit identity. GRU's bias does not fold
where Keras puts it (`reset_after`: a recurrent bias inside the reset gate) and SimpleRNN's gains nothing
(3.8 us either way, measured): both keep B.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

RECURRENT = ("LSTM", "GRU", "RNN")
LAYOUT = ("Transpose", "Unsqueeze", "Squeeze", "Identity", "Reshape")
STATE_POSITIONS = {"LSTM": (5, 6), "GRU": (5,), "RNN": (5,)}  # initial_h (and initial_c) among the op's inputs


@dataclass(frozen=True)
class StepGraph:
    """The op alone, and how its tensors are the file's: op input -> graph input, graph output -> op output;
    `shapes`: each op tensor's shape for a step of (batch, 1, ...)."""

    model: onnx.ModelProto
    inputs: dict[str, str]
    outputs: dict[str, str]
    shapes: dict[str, tuple[int, ...]]
    folded: str = ""  # the op input that carries the constant-1 feature, when the bias is folded into W

    def op_feeds(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The op's feeds from the file's graph inputs (the constant-1 feature appended where folded)."""
        ops = {}
        for op_input, graph_input in self.inputs.items():
            value = feeds[graph_input]
            if op_input == self.folded:
                value = np.concatenate([value, np.ones((*value.shape[:-1], 1), value.dtype)], axis=-1)
            ops[op_input] = value.reshape(self.shapes[op_input])
        return ops


def _source(name: str, producers: dict[str, onnx.NodeProto]) -> str:
    """The tensor `name` is a layout of, following layout nodes back."""
    while name in producers:
        name = producers[name].input[0]
    return name


def step_graph(model: onnx.ModelProto, batch: int, steps: int, units_of: dict[str, int]) -> StepGraph | str:
    """The op-alone graph for steps of (batch, steps, ...), or why there is none. `units_of`: each graph
    input's last dim (the features of the step input, the units of a state). An LSTM's bias is folded."""
    if steps != 1:
        return "chunks of more than one step: the Transpose to time-major moves memory"
    ops = [n for n in model.graph.node if n.op_type in RECURRENT]
    others = [n for n in model.graph.node if n.op_type not in RECURRENT]
    if len(ops) != 1 or any(n.op_type not in LAYOUT for n in others):
        return "not one recurrent op among layout nodes (stacks, masks and heads run the file's graph)"
    op = ops[0]
    attrs = {a.name: helper.get_attribute_value(a) for a in op.attribute}
    if attrs.get("layout", 0) != 0 or attrs.get("direction", b"forward") != b"forward":
        return "an op that is not forward and time-major"
    producers = {out: node for node in others for out in node.output}
    graph_inputs = {i.name for i in model.graph.input}
    units = int(attrs["hidden_size"])
    shapes: dict[str, tuple[int, ...]] = {}
    inputs: dict[str, str] = {}
    for position, name in enumerate(op.input):
        source = _source(name, producers) if name else ""
        if position == 0 or position in STATE_POSITIONS[op.op_type]:
            if source not in graph_inputs:
                return f"op input {position} does not come from a graph input"
            inputs[name] = source
            shapes[name] = (1, batch, units_of[source]) if position == 0 else (1, batch, units)
        elif name and source != name:
            return f"op input {position} is computed"
    outputs = {}
    for output in model.graph.output:
        source = _source(output.name, producers)
        if source not in op.output:
            return f"output {output.name} does not come from the op"
        outputs[output.name] = source
        shapes[source] = (1, 1, batch, units) if source == op.output[0] else (1, batch, units)
    used = set(op.input[1:])
    initializers = [t for t in model.graph.initializer if t.name in used]
    folded = fold_bias(op, initializers)
    if folded is not None:
        op, initializers = folded
        shapes[op.input[0]] = (*shapes[op.input[0]][:-1], shapes[op.input[0]][-1] + 1)
        op, outputs = _y_as_y_h(op, outputs)
    value = helper.make_tensor_value_info
    graph = helper.make_graph(
        [op], "step", [value(name, onnx.TensorProto.FLOAT, shapes[name]) for name in inputs],
        [value(name, onnx.TensorProto.FLOAT, shapes[name]) for name in dict.fromkeys(outputs.values())],
        initializers)
    step = helper.make_model(graph, opset_imports=list(model.opset_import))
    step.ir_version = model.ir_version
    return StepGraph(step, inputs, outputs, shapes, op.input[0] if folded is not None else "")


def _y_as_y_h(op: onnx.NodeProto, outputs: dict[str, str]) -> tuple[onnx.NodeProto, dict[str, str]]:
    """At one step an LSTM's Y is its Y_h, value for value: outputs read from Y read Y_h's buffer instead and
    the op writes no Y (ONNX Runtime's kernel then writes h straight into Y_h instead of into Y and copying:
    0.16 us of a one-step LSTM(128), measured with the bias folded)."""
    if len(op.output) < 2 or not op.output[0] or not op.output[1]:
        return op, outputs
    node = onnx.NodeProto()
    node.CopyFrom(op)
    node.output[0] = ""
    return node, {name: op.output[1] if source == op.output[0] else source for name, source in outputs.items()}


def fold_bias(op: onnx.NodeProto, initializers: list[onnx.TensorProto]) -> tuple[onnx.NodeProto, list] | None:
    """An LSTM with its bias moved into W as one more input column (see the module docstring), and its
    initializers; None where it has no float32 initializer bias, or has peepholes."""
    if op.op_type != "LSTM" or len(op.input) < 4 or not op.input[3] or (len(op.input) > 7 and op.input[7]):
        return None
    found = {t.name: t for t in initializers}
    if op.input[1] not in found or op.input[3] not in found:
        return None
    w, b = (numpy_helper.to_array(found[op.input[i]]) for i in (1, 3))
    if w.dtype != np.float32 or b.dtype != np.float32:
        return None
    gates = w.shape[1]
    bias = b[:, :gates] + b[:, gates:]  # Wb + Rb in float32, as ONNX Runtime's kernel sums them
    name = f"{op.input[1]}_with_bias"
    node = onnx.NodeProto()
    node.CopyFrom(op)
    node.input[1], node.input[3] = name, ""
    kept = [t for t in initializers if t.name not in (op.input[1], op.input[3])]
    return node, [*kept, numpy_helper.from_array(np.concatenate([w, bias[:, :, None]], axis=2), name)]


def fold_bound(plan: StepGraph, op_feeds: dict[str, np.ndarray]) -> float:
    """How far the folded op may differ from the file's graph on this step by rounding alone. A float32 sum of
    n terms is within n * u * sum|terms| of the exact one (u = 2**-24; Higham's bound, 1996, 3.1), so two
    orders of it are within 2 n u S, S the largest sum|terms| of a gate's row here. The gates pass that on at
    most doubled: sigmoid' <= 1/4, tanh' <= 1, c = f c0 + i g with |c0| <= 1 on the random step, h = o tanh(c).
    Plus 8 u for the outputs' own rounding (|c| <= 2). A bias dropped or moved to another gate differs by
    the bias through a gate, far above this for any bias a trained layer has."""
    if not plan.folded:
        return 0.0
    op = plan.model.graph.node[0]
    weights = {t.name: numpy_helper.to_array(t) for t in plan.model.graph.initializer}
    w, r = np.abs(weights[op.input[1]][0]), np.abs(weights[op.input[2]][0])
    x = np.abs(op_feeds[op.input[0]]).reshape(-1, w.shape[1])
    h = np.abs(op_feeds[op.input[5]]).reshape(-1, r.shape[1]) if len(op.input) > 5 and op.input[5] else 0 * x[:, :1]
    largest = float((x @ w.T + h @ r.T).max())
    u = 2.0 ** -24
    return 4 * (w.shape[1] + r.shape[1]) * u * largest + 8 * u


def bind(binding: Any, plan: StepGraph | None, reads: dict[str, np.ndarray], written: dict[str, np.ndarray],
         carried: set[str], keep: list) -> None:
    """Bind the buffers by graph name (`reads`: inputs, `written`: outputs) to the file's graph, or, with a
    plan, viewed in the op's shapes to the op alone. Graph outputs that are one op output share one buffer
    (a carried state's, when one of them is): `written` is updated to say which."""
    value = ort.OrtValue.ortvalue_from_numpy
    if plan is None:
        for name, array in reads.items():
            binding.bind_ortvalue_input(name, value(array))
        for name, array in written.items():
            binding.bind_ortvalue_output(name, value(array))
        return
    for op_input, graph_input in plan.inputs.items():
        keep.append(reads[graph_input].reshape(plan.shapes[op_input]))  # a view: the same bytes
        binding.bind_ortvalue_input(op_input, value(keep[-1]))
    for op_output in dict.fromkeys(plan.outputs.values()):
        names = [name for name, source in plan.outputs.items() if source == op_output]
        target = next((written[name] for name in names if name in carried), written[names[0]])
        written.update({name: target.reshape(written[name].shape) for name in names})  # views, each its own shape
        keep.append(target.reshape(plan.shapes[op_output]))
        binding.bind_ortvalue_output(op_output, value(keep[-1]))


def same_outputs(plan: StepGraph, expected: dict[str, np.ndarray], step_outputs: dict[str, np.ndarray],
                 bound: float = 0.0) -> bool:
    """Whether the op alone gave the file's outputs, element for element in the same byte order (a layout
    node that moved memory would show as a difference on a random step): bit for bit, or within `bound`
    (`fold_bound`, for a folded bias)."""
    return all(expected[name].size == step_outputs[source].size
               and (np.array_equal(expected[name].reshape(-1), step_outputs[source].reshape(-1)) if not bound else
                    float(np.abs(expected[name].reshape(-1) - step_outputs[source].reshape(-1)).max()) <= bound)
               for name, source in plan.outputs.items())
