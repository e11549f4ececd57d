"""The step graph: a one-layer export's recurrent op alone, for streaming steps where the nodes around it
only move memory that does not move.

A single-layer export wraps its LSTM/GRU/RNN op in layout nodes: a Transpose to time-major, Unsqueeze of
each state to (directions, batch, units), Squeeze of the final states, Identity for each named output. For
a step of 1 time step (any batch), every one of them leaves the bytes where they are: the session can bind
the same buffers, viewed in the op's shapes, to the op alone, and skip 6 node dispatches (2.7 us of an
11 us one-step LSTM(128) call, docs/speed.md). `StreamSession` takes this graph only after both graphs gave
bit-identical outputs on the same random step at open; otherwise it runs the file's graph and says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

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


def _source(name: str, producers: dict[str, onnx.NodeProto]) -> str:
    """The tensor `name` is a layout of, following layout nodes back."""
    while name in producers:
        name = producers[name].input[0]
    return name


def step_graph(model: onnx.ModelProto, batch: int, steps: int, units_of: dict[str, int]) -> StepGraph | str:
    """The op-alone graph for steps of (batch, steps, ...), or why there is none. `units_of`: each graph
    input's last dim (the features of the step input, the units of a state)."""
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
    value = helper.make_tensor_value_info
    graph = helper.make_graph(
        [op], "step", [value(name, onnx.TensorProto.FLOAT, shapes[name]) for name in inputs],
        [value(name, onnx.TensorProto.FLOAT, shapes[name]) for name in dict.fromkeys(outputs.values())],
        [t for t in model.graph.initializer if t.name in used])
    step = helper.make_model(graph, opset_imports=list(model.opset_import))
    step.ir_version = model.ir_version
    return StepGraph(step, inputs, outputs, shapes)


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
        written.update(dict.fromkeys(names, target))
        keep.append(target.reshape(plan.shapes[op_output]))
        binding.bind_ortvalue_output(op_output, value(keep[-1]))


def same_outputs(plan: StepGraph, expected: dict[str, np.ndarray], step_outputs: dict[str, np.ndarray]) -> bool:
    """Whether the op alone gave the file's outputs bit for bit, byte order included (a layout node that
    moved memory would show as a difference on a random step)."""
    return all(expected[name].size == step_outputs[source].size
               and np.array_equal(expected[name].reshape(-1), step_outputs[source].reshape(-1))
               for name, source in plan.outputs.items())
