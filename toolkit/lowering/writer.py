"""Writing an ONNX graph: unique value names, shared constants, splicing converted sub-models, pruning."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from toolkit.lowering.cells import CELL_OPS
from toolkit.onnxfile.model import subgraphs


class GraphWriter:
    """Accumulates nodes and initializers with unique value names (canonicalized later by the exporter)."""

    def __init__(self, opset: int):
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0
        self._consts: dict[tuple, str] = {}

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}__{self._count}"

    def const(self, array: np.ndarray, hint: str = "const") -> str:
        array = np.asarray(array)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._consts:
            name = self.fresh(hint)
            self.initializers.append(numpy_helper.from_array(array, name))
            self._consts[key] = name
        return self._consts[key]

    def scalar(self, value: float | int, dtype: Any, hint: str) -> str:
        """A 0-d constant: 0, 0.5, NaN, ... (shared by every node that reads the same value and dtype)."""
        return self.const(np.asarray(value, dtype), hint)

    def ints(self, values: Sequence[int]) -> str:
        return self.const(np.asarray(values, dtype=np.int64), "ints")

    def op(self, op_type: str, inputs: Sequence[str], outputs: int = 1, **attrs: Any) -> list[str]:
        names = [self.fresh(op_type) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, **attrs))
        return names

    def op1(self, op_type: str, inputs: Sequence[str], **attrs: Any) -> str:
        return self.op(op_type, inputs, 1, **attrs)[0]

    def squeeze(self, value: str, axis: int) -> str:
        return self._on_axis("Squeeze", value, axis)

    def unsqueeze(self, value: str, axis: int) -> str:
        return self._on_axis("Unsqueeze", value, axis)

    def _on_axis(self, op_type: str, value: str, axis: int) -> str:
        # Squeeze and Unsqueeze take their axes as an input from opset 13, as an attribute before (an
        # export is opset 14 or later; `runtimes/rnn_scan.py` rewrites any file it is given).
        if self.opset >= 13:
            return self.op1(op_type, [value, self.ints([axis])])
        return self.op1(op_type, [value], axes=[axis])

    def reduce(self, op_type: str, value: str, axis: int, keepdims: int) -> str:
        # ReduceSum takes its axes as an input from opset 13, the other reductions from opset 18.
        if op_type == "ReduceSum" or self.opset >= 18:
            return self.op1(op_type, [value, self.ints([axis])], keepdims=keepdims)
        return self.op1(op_type, [value], axes=[axis], keepdims=keepdims)

    def transpose(self, value: str, perm: Sequence[int]) -> str:
        return self.op1("Transpose", [value], perm=list(perm))

    def flip(self, value: str, axis: int) -> str:
        """Reverse one axis (a negative-step Slice)."""
        int_min = np.iinfo(np.int64).min
        return self.op1("Slice", [value, self.ints([-1]), self.ints([int_min]), self.ints([axis]), self.ints([-1])])

    def dim_range(self, value: str, start: int, end: int) -> str:
        """Dimensions start..end-1 of a value's shape, as a 1-d int64 (for a Reshape or an Expand)."""
        return self.op1("Slice", [self.op1("Shape", [value]), self.ints([start]), self.ints([end])])

    def splice(self, model: onnx.ModelProto, inputs: Sequence[str], prefix: str) -> list[str]:
        """Copy a converted sub-model in, wiring its graph inputs to `inputs`; return its outputs' new names."""
        graph = model.graph
        initializer_names = {t.name for t in graph.initializer}
        real_inputs = [v.name for v in graph.input if v.name not in initializer_names]
        mapping = dict(zip(real_inputs, inputs))
        for node in graph.node:
            for name in node.output:
                if name and name not in mapping:
                    mapping[name] = self.fresh(prefix)
        for name in initializer_names:
            mapping[name] = self.fresh(prefix)
        rename_values(graph, mapping)
        self.nodes.extend(graph.node)
        self.initializers.extend(graph.initializer)
        return [mapping.get(v.name, v.name) for v in graph.output]


def rename_values(graph: onnx.GraphProto, mapping: dict[str, str]) -> None:
    """Rename values in one pass, subgraphs included (a Loop body reads outer values by name)."""
    if not mapping:
        return
    for node in graph.node:
        node.input[:] = [mapping.get(n, n) for n in node.input]
        node.output[:] = [mapping.get(n, n) for n in node.output]
        for sub in subgraphs(node):
            inner = {k: v for k, v in mapping.items()
                     if k not in {i.name for i in sub.input} | {o.name for o in sub.output}}
            rename_values(sub, inner)
    for init in graph.initializer:
        init.name = mapping.get(init.name, init.name)
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        value.name = mapping.get(value.name, value.name)


def prune(nodes: Sequence[onnx.NodeProto], outputs: Sequence[str]) -> list[onnx.NodeProto]:
    """Drop nodes nothing reads, and unread outputs of the recurrent ops (ORT then skips writing them:
    a `return_sequences=False` layer's Y costs a copy per step otherwise)."""
    needed = set(outputs)
    kept: list[onnx.NodeProto] = []
    for node in reversed(list(nodes)):
        if not any(name in needed for name in node.output):
            continue
        if node.op_type in CELL_OPS.values():
            node.output[:] = trim([name if name in needed else "" for name in node.output])
        needed.update(name for name in node.input if name)
        for sub in subgraphs(node):  # values a subgraph reads from outside count as read
            needed.update(outer_reads(sub))
        kept.append(node)
    return kept[::-1]


def outer_reads(graph: onnx.GraphProto) -> set[str]:
    """The values a (sub)graph reads without producing them: what it needs from the graph around it."""
    produced = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    reads: set[str] = set()
    for node in graph.node:
        reads.update(n for n in node.input if n and n not in produced)
        for sub in subgraphs(node):
            reads.update(r for r in outer_reads(sub) if r not in produced)
        produced.update(node.output)
    return reads


def trim(inputs: list[str]) -> list[str]:
    """Drop trailing empty optional inputs (or outputs)."""
    while inputs and inputs[-1] == "":
        inputs.pop()
    return inputs
