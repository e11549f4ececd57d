"""What every lowering step shares: the values written so far, their layouts, the report, the handler table.

A handler lowers one call of one Keras layer (`LayerCall`) into the graph through the `LoweringContext`;
handlers are registered per Keras class name with `@handles(...)`, as tf2onnx registers one per op.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import onnx
from onnx import TensorProto

from toolkit.lowering.cells import CELL_OPS
from toolkit.lowering.writer import GraphWriter
from toolkit.models.naming import OutputOrigin
from toolkit.options import ExportOptions

# Keras' float dtypes as ONNX element types (numpy spells no bfloat16).
FLOAT_TYPES = {"float32": TensorProto.FLOAT, "float64": TensorProto.DOUBLE, "float16": TensorProto.FLOAT16,
               "bfloat16": TensorProto.BFLOAT16}


@dataclass
class Value:
    """One Keras tensor in the ONNX graph."""

    name: str
    mask: str | None = None  # bool (batch, time) ONNX value, where Keras would carry a mask


@dataclass(frozen=True)
class LayerLowering:
    layer: str
    layer_class: str
    onnx_op: str  # "LSTM", "GRU", "RNN", or "tf2onnx" when not fused
    reason: str = ""  # why it was not fused
    note: str = ""  # what a user must know about a fused layer (e.g. stateful)

    @property
    def fused(self) -> bool:
        # A stack of cells is a stack of ops: "LSTM+GRU".
        return all(op in CELL_OPS.values() for op in self.onnx_op.split("+"))


@dataclass(frozen=True)
class StateIO:
    """One recurrent state made explicit: fed by graph input `input`, returned as value `value`."""

    input: str  # the graph input (zeros when not fed)
    value: str  # the ONNX value of the final state
    layer: str  # the layer's name, with "_callN" for a later call of a shared layer
    role: str  # state_h, state_c, forward_state_h, ...
    units: int
    dtype: str = "float32"  # Keras' dtype of the state, that of its input and output

    @property
    def name(self) -> str:
        """Its output name by the naming rules, e.g. lstm_1_state_h."""
        return OutputOrigin(self.layer, "state", self.role).name


@dataclass
class LoweringReport:
    layers: list[LayerLowering] = field(default_factory=list)
    states: list[StateIO] = field(default_factory=list)
    state_inputs: list[onnx.ValueInfoProto] = field(default_factory=list)


class LoweringContext:
    """The writer, the options, and what is derived once and shared by every layer reading it."""

    def __init__(self, writer: GraphWriter, report: LoweringReport, options: ExportOptions | None = None):
        self.w = writer
        self.report = report
        self.options = options or ExportOptions()  # whole, as the exporter was given it
        # ONNX Runtime runs recurrent ops time-major only. Every value that has (or needs) a
        # (time, batch, ...) form keeps it here, so a stack hands one layer's time-major output straight
        # to the next instead of transposing to Keras' batch-major layout and back; the batch-major
        # form is pruned when only the next layer read it. Each node costs about half a microsecond
        # on the single-step path, and a (batch, time, units) transpose moves every value.
        self.time_major: dict[str, str] = {}
        # What is derived from a (batch, time) bool mask, written once and shared by every layer reading
        # that mask: its (time, batch, 1) form, its int32 cast, sequence_lens, the padding check.
        self.mask_forms: dict[tuple[str, str], str] = {}
        # Which call of its layer each Keras node is within the model walked (by id of the node), as the
        # output names count them: Keras numbers calls across every model sharing a layer, and a loaded
        # Sequential gives its first layer an inbound node outside its graph.
        self.calls: dict[int, int] = {}

    @property
    def propagate_nan(self) -> bool:
        return self.options.propagate_nan

    @property
    def padding(self) -> str:
        """Where masked batches hold their padding: "right" or "left"."""
        return self.options.padding

    @property
    def state_io(self) -> bool:
        return self.options.state_io

    def owner(self, layer: Any, node: Any) -> str:
        """The layer's name, with `_call<n>` for a later call of a shared layer (as `naming` does)."""
        call = self.calls.get(id(node), 0)
        return layer.name if call == 0 else f"{layer.name}_call{call}"

    def to_time_major(self, value: str) -> str:
        """The (time, batch, features) form of a batch-major sequence."""
        if value not in self.time_major:
            self.time_major[value] = self.w.transpose(value, [1, 0, 2])
        return self.time_major[value]

    def from_time_major(self, value_tm: str) -> str:
        """The batch-major form of a time-major sequence: the Keras layout, for outputs and other layers."""
        batch_major = self.w.transpose(value_tm, [1, 0, 2])
        self.time_major[batch_major] = value_tm
        return batch_major


@dataclass(frozen=True)
class LayerCall:
    """One call of a Keras layer in the functional graph, with the values written for its inputs."""

    node: Any  # the Keras graph node
    values: dict[int, Value]  # every Keras tensor lowered so far, by id

    @property
    def layer(self) -> Any:
        return self.node.operation

    @property
    def layer_class(self) -> str:
        return type(self.node.operation).__name__

    @property
    def tensor(self) -> Any:
        """The first input tensor (Keras' symbolic tensor: its shape and dtype), None for none."""
        return self.node.input_tensors[0] if self.node.input_tensors else None

    @property
    def first(self) -> Value | None:
        return self.values[id(self.node.input_tensors[0])] if self.node.input_tensors else None

    @property
    def inputs(self) -> list[Value]:
        return [self.values[id(t)] for t in self.node.input_tensors]


# A handler returns the layer's output values, or None when it leaves the layer to tf2onnx.
Handler = Callable[[LoweringContext, LayerCall], list[Value] | None]
HANDLERS: dict[str, Handler] = {}


def handles(*layer_classes: str) -> Callable[[Handler], Handler]:
    """Register a handler for Keras layer classes, by class name."""

    def register(handler: Handler) -> Handler:
        for name in layer_classes:
            if name in HANDLERS:
                raise ValueError(f"Expected one handler per layer class. Received a second for {name}")
            HANDLERS[name] = handler
        return handler

    return register
