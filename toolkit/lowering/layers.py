"""The handlers of the layers around the recurrent ones, and the tf2onnx fallback for every other layer.

- `Masking` and `Embedding(mask_zero=True)` produce a mask (`masks.py` turns it into `sequence_lens`);
- `Embedding` becomes a `Gather`, `Dense` (and `TimeDistributed(Dense)`) a `MatMul`/`Add`/activation;
- `Dropout`-like layers are identities at inference;
- every other layer is converted by tf2onnx on its own and spliced in (`tf2onnx_lib.convert_call`), its
  mask handed on as Keras does.
A handler returning None leaves its layer to the fallback (a quantized Dense, a TimeDistributed of a
layer with a dynamic shape, ...).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from onnx import TensorProto

from toolkit.errors import UnsupportedModelError
from toolkit.lowering import masks
from toolkit.lowering.bidirectional import lower_bidirectional
from toolkit.lowering.carried import STATE_NOTE, carries_states, convert_carrying_states
from toolkit.lowering.cells import NotFusable, plan_cells, to_numpy
from toolkit.lowering.context import LayerCall, LayerLowering, LoweringContext, Value, handles
from toolkit.lowering.recurrent import finish, lower_unidirectional, plan, read_call, write_state_inputs
from toolkit.lowering.stacked import is_stacked, lower_stacked
from toolkit.models.naming import is_bidirectional, is_recurrent
from toolkit.tf2onnx_lib import InputSignature, convert_call

# Layers that are the identity at inference time and pass their input's mask on.
IDENTITY_LAYERS = ("Dropout", "SpatialDropout1D", "GaussianNoise", "GaussianDropout", "AlphaDropout",
                   "ActivityRegularization")

# Keras merge layers: their output mask is the AND of their inputs' masks.
MERGE_LAYERS = ("Concatenate", "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum")

# Keras activations a Dense layer may end in, as the ONNX op computing the same function ("" for none).
_DENSE_ACTIVATIONS = {"linear": "", "relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "softmax": "Softmax",
                      "gelu": "gelu", "silu": "silu"}  # the last two take a few nodes each


@handles(*IDENTITY_LAYERS)
def lower_identity(ctx: LoweringContext, call: LayerCall) -> list[Value] | None:
    return [call.first] if len(call.node.input_tensors) == 1 else None


@handles("Masking")
def lower_masking(ctx: LoweringContext, call: LayerCall) -> list[Value]:
    """Keras keeps a step when any feature differs from mask_value. On a (batch, time, features)
    input the mask is computed time-major, the layout the recurrent layer reading it needs."""
    value, w = call.first, ctx.w
    mask_value = float(call.layer.mask_value)
    time_major = len(call.tensor.shape) == 3
    x = ctx.to_time_major(value.name) if time_major else value.name
    keep_full = masks.any_differs(ctx, x, mask_value)  # (..., 1) bool
    keep = w.squeeze(keep_full, -1)  # Keras' mask: pruned unless a reader other than an RNN needs it
    if time_major:
        keep = w.transpose(keep, [1, 0])
        masks.remember(ctx, keep, "time_major", keep_full)
    if mask_value == 0.0:
        # Keras outputs where(mask, x, 0). With mask_value 0 a masked step is all zeros already, so
        # the Where (a node on the single-step path) would change nothing.
        return [Value(value.name, keep)]
    out = w.op1("Where", [keep_full, x, w.scalar(0, np.float32, "zero")])
    return [Value(ctx.from_time_major(out) if time_major else out, keep)]


@handles("Dense")
def lower_dense_layer(ctx: LoweringContext, call: LayerCall) -> list[Value] | None:
    if dense_activation(call.layer, call.tensor) is not None:
        return [lower_dense(ctx, call.layer, call.tensor, call.first)]
    activation = mixed_dense_activation(call.layer, call.tensor)
    if activation is None:
        return None
    # A mixed-precision Dense (float32 variables, float16/bfloat16 compute) in float32, as its recurrent
    # neighbours are: tf2onnx writes a bfloat16 Dense as a MatMul of float16 and bfloat16 operands
    # that ONNX Runtime refuses to load (tf2onnx 1.17, ORT 1.32), and warns on a float16 one.
    value = _float32_inputs(ctx, call)[id(call.tensor)]
    out = lower_dense(ctx, call.layer, call.tensor, value, activation)
    return _keras_dtypes(ctx, call.node, [out])


@handles("TimeDistributed")
def lower_time_distributed(ctx: LoweringContext, call: LayerCall) -> list[Value] | None:
    layer, tensor = call.layer, call.tensor
    if dense_activation(layer.layer, tensor) is not None:
        return [lower_dense(ctx, layer.layer, tensor, call.first)]  # a Dense acts on the last axis: no folding
    if len(call.node.input_tensors) == 1 and None not in tensor.shape[2:]:
        return [_fold_time(ctx, call)]
    return None


def lower_dense(ctx: LoweringContext, layer: Any, tensor: Any, value: Value, activation: str | None = None) -> Value:
    """MatMul (it broadcasts over batch and time), Add, activation: what Keras' Dense.call does.
    tf2onnx writes Keras' tensordot as Shape/Cast/Reshape/Gather/Concat/Cast/MatMul/Reshape.
    `activation`: the ONNX op of the activation, when `dense_activation` does not give it (mixed precision)."""
    w = ctx.w
    out = w.op1("MatMul", [value.name, w.const(to_numpy(layer.kernel), "kernel")])
    if layer.bias is not None:
        out = w.op1("Add", [out, w.const(to_numpy(layer.bias), "bias")])
    if activation is None:
        activation = dense_activation(layer, tensor)
    if activation == "gelu":
        # Keras' default (exact) gelu, x/2 (1 + erf(x/sqrt 2)); ONNX has Gelu only from opset 20, and
        # tf2onnx writes TensorFlow's erfc as an Erfc node ONNX does not have. Below x = -5.5 the sum
        # cancels to 0 where TensorFlow's erfc form gives values under 1e-8: far inside the tolerance.
        half = w.op1("Mul", [out, w.scalar(0.5, np.float32, "half")])
        erf = w.op1("Erf", [w.op1("Mul", [out, w.scalar(np.sqrt(0.5), np.float32, "rsqrt2")])])
        out = w.op1("Mul", [half, w.op1("Add", [erf, w.scalar(1.0, np.float32, "one")])])
    elif activation == "silu":
        out = w.op1("Mul", [out, w.op1("Sigmoid", [out])])
    elif activation:
        out = w.op1(activation, [out], **({"axis": -1} if activation == "Softmax" else {}))
    return Value(out, value.mask)  # Dense supports masking: the mask passes through


@handles("Embedding")
def lower_embedding(ctx: LoweringContext, call: LayerCall) -> list[Value] | None:
    """One Gather. tf2onnx writes ten nodes for Keras' take(), which maps negative ids to
    id + vocabulary by hand; ONNX Gather does that itself (and, like TensorFlow, refuses ids out of range)."""
    layer, tensor, w = call.layer, call.tensor, ctx.w
    if not plain_weights(layer):
        return None
    raw = ids = call.first.name
    if str(tensor.dtype) not in ("int32", "int64"):
        ids = w.op1("Cast", [raw], to=TensorProto.INT32)  # as Keras does; Gather takes int32/int64 only
    table = w.const(to_numpy(layer.embeddings), "embeddings")
    out = w.op1("Gather", [table, ids], axis=0)
    mask = None
    sequence = len(tensor.shape) == 2  # (batch, time) ids: a recurrent layer may read them next
    if sequence:
        # Both layouts, each pruned when unread: gathering with transposed ids gives the time-major
        # embeddings directly, cheaper than transposing the embedded vectors.
        ids_tm = w.transpose(ids, [1, 0])
        ctx.time_major[out] = w.op1("Gather", [table, ids_tm], axis=0)
    if layer.mask_zero:
        # Keras' mask is not_equal(inputs, 0) on the ids as given, before its cast (an id 0.5 is kept):
        # Cast to bool is that "!= 0".
        mask = w.op1("Cast", [raw], to=TensorProto.BOOL)
        if sequence:
            raw_tm = ids_tm if ids == raw else w.transpose(raw, [1, 0])
            masks.remember(ctx, mask, "time_major", w.op1("Cast", [w.unsqueeze(raw_tm, -1)], to=TensorProto.BOOL))
    return [Value(out, mask)]


def _fold_time(ctx: LoweringContext, call: LayerCall) -> Value:
    """Fold time into batch, apply the inner layer once, unfold: tf2onnx turns Keras'
    TimeDistributed into a Loop whose output shape is wrong for a dynamic time axis."""
    layer, tensor, value, w = call.layer, call.tensor, call.first, ctx.w
    rest = [int(d) for d in tensor.shape[2:]]
    flat = w.op1("Reshape", [value.name, w.ints([-1] + rest)])
    signature = [InputSignature("in0", str(tensor.dtype), (None, *rest))]
    proto = convert_call(lambda x: layer.layer(x), signature, w.opset, layer.name)
    inner = w.splice(proto, [flat], layer.name)[0]
    out_rest = [int(d) for d in layer.layer.compute_output_shape((None, *rest))[1:]]
    shape = w.op1("Concat", [w.dim_range(value.name, 0, 2), w.ints(out_rest)], axis=0)
    return Value(w.op1("Reshape", [inner, shape]), value.mask)


def convert_with_tf2onnx(ctx: LoweringContext, call: LayerCall, consumes_mask: bool) -> list[Value]:
    """Convert one layer call with tf2onnx and splice it in. `consumes_mask`: pass the input's mask as
    the call's mask= (a recurrent layer tf2onnx converts as a Loop applies it)."""
    node = call.node
    tensors = list(node.input_tensors)
    signature = [InputSignature(f"in{i}", str(t.dtype), (None,) + tuple(t.shape[1:])) for i, t in enumerate(tensors)]
    feeds = [v.name for v in call.inputs]
    first = call.first
    pass_mask = consumes_mask and first.mask is not None
    if pass_mask:
        signature.append(InputSignature("mask", "bool", (None, tensors[0].shape[1])))
        feeds.append(first.mask)

    def run(*args: Any) -> Any:
        lookup = {id(t): a for t, a in zip(tensors, args)}
        call_args, call_kwargs = node.arguments.fill_in(lookup)
        if pass_mask:
            call_kwargs = dict(call_kwargs, mask=args[-1])
        return node.operation(*call_args, **call_kwargs)

    proto = convert_call(run, signature, ctx.w.opset, node.operation.name)
    return [Value(n) for n in ctx.w.splice(proto, feeds, node.operation.name)]


def fallback(ctx: LoweringContext, call: LayerCall) -> list[Value]:
    """Any layer lstm-onnx does not lower itself: tf2onnx converts it; its output mask is Keras'."""
    outputs = convert_with_tf2onnx(ctx, call, consumes_mask=False)
    layer, first = call.layer, call.first
    if call.layer_class == "Embedding" and getattr(layer, "mask_zero", False):
        outputs[0].mask = ctx.w.op1("Cast", [first.name], to=TensorProto.BOOL)
    elif getattr(layer, "supports_masking", False) and len(call.node.input_tensors) == 1 and first.mask:
        for value in outputs:
            value.mask = first.mask
    elif call.layer_class in MERGE_LAYERS:
        found = list(dict.fromkeys(v.mask for v in call.inputs if v.mask))
        if found:  # Keras' Merge.compute_mask: a step is kept when every input keeps it
            mask = found[0]
            for other in found[1:]:
                mask = ctx.w.op1("And", [mask, other])
            outputs[0].mask = mask
    return outputs


def dense_activation(layer: Any, tensor: Any) -> str | None:
    """The ONNX op for a plain Dense layer's activation, "" for linear; None when lstm-onnx does not lower
    the layer itself (not a Dense, quantized or LoRA weights, an input or compute dtype other than
    float32 (Keras would cast), another activation): tf2onnx converts it then."""
    if type(layer).__name__ != "Dense" or tensor is None or str(tensor.dtype) != "float32":
        return None
    if not plain_weights(layer):
        return None
    return _activation_op(layer)


def mixed_dense_activation(layer: Any, tensor: Any) -> str | None:
    """As `dense_activation`, for a Dense of a mixed-precision policy (float32 variables, float16 or
    bfloat16 compute; input float32 or that dtype): lowered in float32 with casts around it."""
    policy = getattr(layer, "dtype_policy", None)
    if type(layer).__name__ != "Dense" or tensor is None or policy is None:
        return None
    if str(policy.compute_dtype) not in _LOW_PRECISION or str(policy.variable_dtype) != "float32":
        return None
    if str(tensor.dtype) not in ("float32", str(policy.compute_dtype)):
        return None
    if getattr(layer, "quantization_mode", None) or getattr(layer, "lora_enabled", False):
        return None
    return _activation_op(layer)


def _activation_op(layer: Any) -> str | None:
    import keras

    from toolkit.models.keras2.activations import keras2_hard_sigmoid

    if layer.activation is keras2_hard_sigmoid:  # a Keras 2 file's: ONNX HardSigmoid's defaults (0.2, 0.5)
        return "HardSigmoid"
    # By identity, not by name: keras.ops.gelu is also called "gelu" but defaults to the tanh approximation.
    for name, op in _DENSE_ACTIVATIONS.items():
        if layer.activation is getattr(keras.activations, name) or (layer.activation is None and name == "linear"):
            return op
    return None


def plain_weights(layer: Any) -> bool:
    """A layer whose weights are plain float32 tables: no quantized or LoRA weights, float32 output."""
    return (not getattr(layer, "quantization_mode", None) and not getattr(layer, "lora_enabled", False)
            and str(getattr(layer, "compute_dtype", "float32")) == "float32")


def lower_recurrent(ctx: LoweringContext, node: Any, values: dict[int, Value],
                    uncast: dict[int, Value] | None = None) -> tuple[list[Value], str]:
    """Every step for one call; returns its outputs and the fused op's type. Raises NotFusable.
    `uncast`: the call's values before the Casts to float32 (`recurrent.read_call`)."""
    rc = read_call(ctx, node, values, uncast)
    plans = plan(rc.layer)
    write_state_inputs(ctx, rc)
    lower = lower_bidirectional if is_bidirectional(rc.layer) else lower_unidirectional
    # The states come back even when the layer does not return them: `finish` records them for the
    # state map, then drops them (an unread value is pruned from the graph).
    return finish(ctx, rc, lower(ctx, rc, plans)), plans[0].op


@handles("LSTM", "GRU", "SimpleRNN", "RNN", "Bidirectional")
def lower_recurrent_layer(ctx: LoweringContext, call: LayerCall) -> list[Value] | None:
    """One fused op (`recurrent.py`), a stack of them for an RNN over StackedRNNCells (`stacked.py`),
    or, when the layer cannot be fused, tf2onnx with the reason reported: never a silent fallback."""
    layer = call.layer
    if not is_recurrent(layer):
        return None  # a layer of another kind under a recurrent class name
    try:
        values = _float32_inputs(ctx, call)
        if is_stacked(layer):
            outputs, op = _lower_stacked_call(ctx, call.node, values, call.values)
        else:
            outputs, op = lower_recurrent(ctx, call.node, values, call.values)
    except NotFusable as reason:
        if carries_states(ctx, layer):  # tf2onnx alone would freeze its states as zeros
            return carry_or_refuse(ctx, call, str(reason))
        ctx.report.layers.append(LayerLowering(layer.name, call.layer_class, "tf2onnx", str(reason)))
        return convert_with_tf2onnx(ctx, call, consumes_mask=True)
    notes = []
    if getattr(layer, "stateful", False):
        notes.append(STATE_NOTE)
    compute = str(getattr(layer, "forward_layer", layer).dtype_policy.compute_dtype)  # a Bidirectional's: its layer's
    if compute == "float64":
        notes.append(f"computed in float64 by Keras, exported as a float32 {op} between Casts (ONNX Runtime's "
                     f"CPU {op} runs float only) from its float64 variables rounded to float32")
    elif compute != "float32":
        notes.append(f"computed in {compute} by Keras, exported as float32 {op} from its float32 variables")
    ctx.report.layers.append(LayerLowering(layer.name, call.layer_class, op, note="; ".join(notes)))
    return _keras_dtypes(ctx, call.node, outputs)


def carry_or_refuse(ctx: LoweringContext, call: LayerCall, reason: str) -> list[Value]:
    """A layer carrying states that cannot be fused: tf2onnx with its states as inputs and outputs, or,
    where even that cannot be done, a one-line refusal (never an export with frozen states)."""
    try:
        # The call's own values: tf2onnx converts the layer with its Keras dtypes and writes any Cast itself.
        return convert_carrying_states(ctx, call, dict(call.values), reason)
    except NotFusable as why:
        raise UnsupportedModelError(f"Expected a stateful (or --state-io) layer whose states lstm-onnx can carry. "
                                    f"Received: layer {call.layer.name!r} ({call.layer_class}): {reason}; "
                                    f"and its states cannot be inputs: {why}") from None


def _lower_stacked_call(ctx: LoweringContext, node: Any, values: dict[int, Value],
                        uncast: dict[int, Value]) -> tuple[list[Value], str]:
    """The recurrent steps around `lower_stacked`: read the call, plan every cell (refusing before anything
    is written), write the state inputs. The op reported is the cells' ops: "LSTM+GRU"."""
    rc = read_call(ctx, node, values, uncast)
    plans = plan_cells(rc.layer)
    write_state_inputs(ctx, rc)
    return lower_stacked(ctx, rc, plans), "+".join(p.op for p in plans)


# Keras' low-precision compute dtypes, as ONNX element types.
_LOW_PRECISION = {"float16": TensorProto.FLOAT16, "bfloat16": TensorProto.BFLOAT16}


# Keras' float dtypes as ONNX element types, for the casts around a fused op run in float32.
_FLOAT_TYPES = {**_LOW_PRECISION, "float64": TensorProto.DOUBLE}


def _float32_inputs(ctx: LoweringContext, call: LayerCall) -> dict[int, Value]:
    """The values of the call with every float16/bfloat16/float64 input (a mixed-precision layer's output
    before it, a float64 model input or layer) cast to float32: the fused op runs in float32 (ONNX
    Runtime's CPU LSTM/GRU/RNN kernels run float only: "LSTM operator does not support double yet")."""
    values = dict(call.values)
    for tensor in call.node.input_tensors:
        if str(tensor.dtype) in _FLOAT_TYPES:
            value = values[id(tensor)]
            values[id(tensor)] = Value(ctx.w.op1("Cast", [value.name], to=TensorProto.FLOAT), value.mask)
    return values


def _keras_dtypes(ctx: LoweringContext, node: Any, outputs: list[Value]) -> list[Value]:
    """Outputs in the dtypes Keras gives them (float16 under mixed_float16, float64 for a float64 layer), so
    that the layers after them, converted for those dtypes, read what they expect."""
    typed = []
    for tensor, value in zip(node.outputs, outputs):
        to = _FLOAT_TYPES.get(str(tensor.dtype))
        typed.append(value if to is None else Value(ctx.w.op1("Cast", [value.name], to=to), value.mask))
    return typed
