"""The lowering of a SavedModel's `Lambda` (`toolkit.models.keras2.traced_lambda.TracedLambda`): the ONNX
nodes tf2onnx made of the layer's traced TensorFlow graph (in the SavedModel's bounded child process),
spliced in place of the layer, its inputs cast to the dtypes the trace takes."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from toolkit.errors import InputError, UnsupportedModelError
from toolkit.lowering.context import Value, handles


@handles("TracedLambda")
def lower_traced_lambda(ctx: Any, call: Any) -> list[Any]:
    from onnx import helper

    layer = call.layer
    if layer.source is None:
        raise UnsupportedModelError(f"Expected Lambda layer {layer.name!r} exported from its SavedModel folder (lstm-onnx "
                                    "export FOLDER). Received: a rebuilt model without the SavedModel's graph")
    try:
        proto = onnx.load_from_string(layer.source.convert_lambda(layer.node_path, ctx.w.opset))
    except InputError as exc:
        raise UnsupportedModelError(f"Expected Lambda layer {layer.name!r} converted to ONNX from its traced TensorFlow "
                                    f"graph. Received: {exc}; rewrite it with TensorFlow ops tf2onnx converts, or as "
                                    "built-in Keras layers") from None
    unconverted = sorted({node.op_type for node in proto.graph.node
                          if node.domain in ("", "ai.onnx") and not onnx.defs.has(node.op_type)})
    if unconverted:  # tf2onnx leaves a TensorFlow op it has no handler for in the graph, under its TF name
        raise UnsupportedModelError(f"Expected Lambda layer {layer.name!r} converted to ONNX from its traced TensorFlow "
                                    f"graph. Received: op {unconverted[0]!r}, which tf2onnx cannot convert; rewrite the "
                                    "Lambda with other TensorFlow ops (or as built-in Keras layers) and save it again")
    feeds, masks = [], []
    for tensor, value, (_, dtype, masked) in zip(call.node.input_tensors, call.inputs, layer.input_specs):
        name = value.name
        if str(tensor.dtype) != dtype:  # what the traced function takes, as tf.keras' autocast gave it
            name = ctx.w.op1("Cast", [name], to=helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))
        feeds.append(name)
        if masked and value.mask is None:
            raise UnsupportedModelError(f"Expected the mask Lambda layer {layer.name!r} was traced with. Received: "
                                        "an input without one in the rebuilt model")
        masks += [value.mask] if masked else []
    return [Value(name) for name in ctx.w.splice(proto, feeds + masks, layer.name)]
