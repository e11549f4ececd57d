"""The walk over a Keras functional graph: each layer call goes to the handler registered for its class.

Handlers live in `layers.py` (registered with `@handles`); a nested model is walked in place; a layer
with no handler, or one its handler leaves, is converted by tf2onnx (`layers.fallback`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from toolkit.errors import UnsupportedModelError
from toolkit.lowering.context import FLOAT_TYPES, HANDLERS, Handler, LayerCall, LoweringContext, LoweringReport, Value
from toolkit.lowering.layers import fallback
from toolkit.lowering.traced_lambda import lower_traced_lambda  # noqa: F401 (registers the TracedLambda handler)
from toolkit.lowering.writer import GraphWriter, prune
from toolkit.models.naming import call_in_model, is_recurrent
from toolkit.options import ExportOptions
from toolkit.tf2onnx_lib import InputSignature


def handler_for(layer: Any) -> Handler:
    """The handler of a layer's class; a recurrent subclass under its own name goes to the recurrent
    handler (which reports why it cannot be fused), any other layer to tf2onnx."""
    handler = HANDLERS.get(type(layer).__name__)
    if handler is None and is_recurrent(layer):
        handler = HANDLERS["RNN"]
    return handler or fallback


def lower_node(ctx: LoweringContext, node: Any, values: dict[int, Value]) -> list[Value]:
    """The output values of one layer call."""
    import keras

    call = LayerCall(node, values)
    if isinstance(call.layer, keras.Model):
        return walk(ctx, call.layer, call.inputs)
    handler = handler_for(call.layer)
    outputs = None if handler is fallback else handler(ctx, autocast_float64(ctx, call))
    return fallback(ctx, call) if outputs is None else outputs


def autocast_float64(ctx: LoweringContext, call: LayerCall) -> LayerCall:
    """The call with each float64 input of a float32 layer cast to float32, as Keras' autocast does before
    the layer runs (a float64 model input into an LSTM, a Dropout, a Masking). The handlers write float32
    ops; tf2onnx (the fallback) converts the Keras layer with its float64 input and writes the Cast itself.
    A recurrent layer casts its own inputs (float64 layers too: `layers._float32_inputs`)."""
    if (str(getattr(call.layer, "compute_dtype", "float32")) != "float32" or not getattr(call.layer, "autocast", True)
            or is_recurrent(call.layer)):
        return call
    values = dict(call.values)
    for tensor in call.node.input_tensors:
        if str(tensor.dtype) == "float64":
            value = values[id(tensor)]
            values[id(tensor)] = Value(ctx.w.op1("Cast", [value.name], to=TensorProto.FLOAT), value.mask)
    return LayerCall(call.node, values)


def walk(ctx: LoweringContext, model: Any, inputs: Sequence[Value]) -> list[Value]:
    """Lower every layer call of a (functional or Sequential) model, deepest first."""
    functional = getattr(model, "_functional", None) or model
    if not hasattr(functional, "_nodes_by_depth"):
        raise UnsupportedModelError(f"Expected a functional or Sequential Keras model. Received: {type(model).__name__}")
    values: dict[int, Value] = {id(t): v for t, v in zip(functional.inputs, inputs)}
    for depth in sorted(functional._nodes_by_depth, reverse=True):
        for node in functional._nodes_by_depth[depth]:
            if not node.operation or node.is_input:
                continue  # an InputLayer: its value is a graph input (or the outer model's value)
            if any(id(t) not in values for t in node.input_tensors):
                continue  # a node of another model sharing this layer
            layer = node.operation
            ctx.calls[id(node)] = call_in_model(model, layer, layer._inbound_nodes.index(node))
            outputs = lower_node(ctx, node, values)
            for tensor, value in zip(node.outputs, outputs):
                values[id(tensor)] = value
    missing = [t.name for t in functional.outputs if id(t) not in values]
    if missing:
        raise UnsupportedModelError(f"Expected every output connected to the inputs. Received unconnected: {missing}")
    return [values[id(t)] for t in functional.outputs]


def lower_model(model: Any, signature: Sequence[InputSignature],
                options: ExportOptions) -> tuple[onnx.ModelProto, LoweringReport]:
    """Write the ONNX model for a Keras model; outputs in the model's order, named later by the exporter.

    Of `options` the lowering reads the opset, `propagate_nan`, `state_io` and `padding`. With `state_io`
    (and always for `stateful=True` layers) every recurrent layer gets initial-state inputs and its final
    states as extra outputs, after the model's own (see `LoweringReport.states`).
    """
    opset = options.opset
    writer = GraphWriter(opset)
    report = LoweringReport()
    ctx = LoweringContext(writer, report, options)
    outputs = walk(ctx, model, [Value(s.name) for s in signature])
    graph_inputs = [
        helper.make_tensor_value_info(s.name, helper.np_dtype_to_tensor_dtype(np.dtype(s.dtype)), list(s.shape))
        for s in signature
    ] + list(report.state_inputs)
    graph_outputs = [
        helper.make_tensor_value_info(v.name, helper.np_dtype_to_tensor_dtype(np.dtype(str(t.dtype))), None)
        for v, t in zip(outputs, model.outputs)
    ] + [helper.make_tensor_value_info(st.value, FLOAT_TYPES[st.dtype], None) for st in report.states]
    nodes = prune(writer.nodes, [v.name for v in graph_outputs])
    graph = helper.make_graph(nodes, model.name, graph_inputs, graph_outputs, writer.initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 8  # what tf2onnx writes for opsets 15-18; ONNX Runtime >= 1.13 loads it
    return proto, report
