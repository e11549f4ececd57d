"""A recurrent layer (LSTM, GRU, SimpleRNN, Bidirectional of one of them) as one fused ONNX op, in steps.

As in tf2onnx's recurrent rewriters, one call is lowered in named steps: read the call (its sequence,
mask and initial states); plan the cell (`cells.plan_cell`, which refuses before anything is written);
write the inputs (state inputs; with a mask, the kept steps moved first and `sequence_lens`); write the
op; write the outputs (moved back to Keras' steps under a mask, the NaN guards, the merge of a
Bidirectional's directions, in `bidirectional.py`); record the states the export returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from onnx import TensorProto, helper

from toolkit.lowering import masks
from toolkit.lowering.cells import (
    CellPlan,
    NotFusable,
    bidirectional_plans,
    op_attributes,
    plan_cell,
    state_roles,
)
from toolkit.lowering.context import FLOAT_TYPES, LoweringContext, StateIO, Value
from toolkit.lowering.writer import trim
from toolkit.models.naming import is_bidirectional, main_count


@dataclass
class RecurrentCall:
    """What one call of a recurrent layer reads, and where its states come from."""

    layer: Any
    sequence: Value  # its mask is None when Keras does not apply one
    incoming_mask: str | None  # the input's mask, handed on to a layer returning sequences
    initial: list[str]  # initial-state values, in Keras' order (empty: zeros)
    sources: list[str]  # what feeds each state: a model input, or an inner value
    owner: str  # the layer's name, "_callN" added for a later call of a shared layer
    explicit: bool  # its states are graph inputs and outputs (state_io, or a stateful layer)
    roles: list[tuple[str, int]]  # (role, units) of each state
    # Each state's dtype, that of its input and of its output, so that an output feeds its input on the next
    # call as it is: a given initial state's own, else `_state_dtype`'s. `op_dtype` is the one they are
    # computed in: float32 for a fused op (ONNX Runtime's CPU kernels run float only), the layer's own for
    # tf2onnx's conversion (`carried.py`).
    dtypes: list[str] = field(default_factory=list)
    op_dtype: str = "float32"


def read_call(ctx: LoweringContext, node: Any, values: dict[int, Value],
              uncast: dict[int, Value] | None = None) -> RecurrentCall:
    """Step 1: the sequence, its mask and the initial states a call passes. `values` are what the op reads
    (cast to float32 for a fused op); `uncast`, the call's own values before any Cast, name the states'
    sources: a float64 model input given as an initial state is a state input of the state map, its
    Cast is not (before, a float64 layer's given states were left out of the map)."""
    layer = node.operation
    args, kwargs = node.arguments.args, node.arguments.kwargs
    sequence = values[id(args[0])]
    initial = kwargs.get("initial_state")
    if initial is None and len(args) > 1:
        initial = args[1]
    given = kwargs.get("mask")
    if given is None:
        # Keras applies a mask only when it passes one (mask=) to the layer. It does not, for one,
        # when initial_state is given (Keras 3.15): the padded steps are then processed like any other.
        incoming_mask, sequence = sequence.mask, Value(sequence.name, None)
    else:
        incoming_mask = mask_argument(ctx, args[0], given, values)
        sequence = Value(sequence.name, incoming_mask)
    # Flattened: an RNN over StackedRNNCells takes one (nested) list of states per cell.
    states = _flatten(initial) if initial is not None else []
    sources = [(uncast or values)[id(t)].name for t in states]
    owner = ctx.owner(layer, node)  # a shared layer: one set per call
    explicit = ctx.state_io or getattr(layer, "stateful", False)
    roles = state_roles(layer)
    dtypes = [str(t.dtype) for t in states] or [_state_dtype(layer, str(node.outputs[0].dtype))] * len(roles)
    return RecurrentCall(layer, sequence, incoming_mask, [values[id(t)].name for t in states], sources, owner,
                         explicit, roles, dtypes)


def _state_dtype(layer: Any, keras_dtype: str) -> str:
    """The dtype of a state input, that of the output feeding it on the next call: Keras' where the layer
    returns its states (the model's output is in it), else the wider of float32 and Keras' (a float64
    layer's states stay float64; a float16 one's are carried in float32, as the op computes them: float16
    carried states drifted 1.2e-4 from the unchunked run of a one-step LSTM(4) stream)."""
    return keras_dtype if layer.return_state or keras_dtype == "float64" else "float32"


def mask_argument(ctx: LoweringContext, tensor: Any, mask: Any, values: dict[int, Value]) -> str:
    """The (batch, time) bool value of a call's mask= argument, wherever it comes from. The mask Keras
    propagated from Masking or Embedding(mask_zero=True) is the one those handlers wrote (with its
    time-major form); any other (a bool model input, a comparison in the graph, a 0/1 tensor) is its
    own value, cast to bool as Keras' RNN casts it (nonzero is kept)."""
    propagated = values[id(tensor)].mask
    if propagated is not None and getattr(tensor, "_keras_mask", None) is mask:
        return propagated
    if id(mask) not in values:
        raise NotFusable("a mask= argument that is not a tensor of the model")
    if len(mask.shape) != 2:
        raise NotFusable(f"a mask= argument of shape {tuple(mask.shape)}: Expected (batch, time)")
    name = values[id(mask)].name
    return name if str(mask.dtype) == "bool" else ctx.w.op1("Cast", [name], to=TensorProto.BOOL)


def _flatten(states: Any) -> list[Any]:
    import keras

    return keras.tree.flatten(states)


def plan(layer: Any) -> list[CellPlan]:
    """Step 2: the cell plans, one per direction. Planned (and so refused) before anything is written:
    a refused layer leaves no state input behind."""
    return bidirectional_plans(layer) if is_bidirectional(layer) else [plan_cell(layer)]


def write_state_inputs(ctx: LoweringContext, rc: RecurrentCall) -> None:
    """Step 3a: explicit states with no initial state given become plain graph inputs of shape
    (batch, units). No same-name initializer gives them a default: onnxruntime-node ignores a fed state
    that has one, onnxruntime-web and OpenVINO refuse it, and ONNX Runtime warns on every load. Callers
    without states yet feed zeros; the library's runners do (`toolkit.onnxfile.model.with_zero_states`).
    They are declared in the states' Keras dtype and read cast to the op's."""
    if not rc.explicit or rc.initial:
        return
    rc.sources = [_state_input(ctx, f"{rc.owner}_initial_{role}", units, dtype)
                  for (role, units), dtype in zip(rc.roles, rc.dtypes)]
    rc.initial = [_cast(ctx, name, dtype, rc.op_dtype) for name, dtype in zip(rc.sources, rc.dtypes)]


def _state_input(ctx: LoweringContext, name: str, units: int, dtype: str) -> str:
    ctx.report.state_inputs.append(helper.make_tensor_value_info(name, FLOAT_TYPES[dtype], ["batch", units]))
    return name


def _cast(ctx: LoweringContext, name: str, dtype: str, to: str) -> str:
    return name if dtype == to else ctx.w.op1("Cast", [name], to=FLOAT_TYPES[to])


def write_op(ctx: LoweringContext, plans: Sequence[CellPlan], x: str, lengths: str | None,
             initial: Sequence[Sequence[str]], direction: str) -> list[str]:
    """Step 4: the fused op. `plans` and `initial` (each direction's initial states) in the op's
    direction order; ONNX stacks the directions of each weight and each state."""
    w = ctx.w
    weights = [w.const(np.stack([getattr(p, k) for p in plans]), k) for k in ("W", "R", "B")]
    states = []
    for k in range(len(initial[0]) if initial else 0):
        parts = [w.unsqueeze(per_direction[k], 0) for per_direction in initial]
        states.append(parts[0] if len(parts) == 1 else w.op1("Concat", parts, axis=0))
    inputs = [x, *weights, lengths or "", *states]
    return w.op(plans[0].op, trim(inputs), outputs=1 + plans[0].state_count, **op_attributes(plans, direction))


def record_states(ctx: LoweringContext, rc: RecurrentCall, states: Sequence[Value]) -> None:
    """Step 6: remember which input feeds which final state, for the exporter's state map and outputs;
    each final state in its input's dtype (Keras'), so that it feeds that input on the next call."""
    if rc.explicit:
        for (role, units), source, value, dtype in zip(rc.roles, rc.sources, states, rc.dtypes):
            final = _cast(ctx, value.name, rc.op_dtype, dtype)
            ctx.report.states.append(StateIO(source, final, rc.owner, role, units, dtype))



def finish(ctx: LoweringContext, rc: RecurrentCall, outputs: list[Value]) -> list[Value]:
    """Record the states, keep them only when the layer returns them, and hand the input's mask on: Keras
    does so for a layer returning sequences, whether or not it applied the mask."""
    count = main_count(rc.layer)
    record_states(ctx, rc, outputs[count:])
    outputs = outputs if rc.layer.return_state else outputs[:count]
    if rc.layer.return_sequences and rc.incoming_mask is not None:
        for value in outputs[:count]:
            value.mask = rc.incoming_mask
    return outputs


# -- one direction


def lower_unidirectional(ctx: LoweringContext, rc: RecurrentCall, plans: Sequence[CellPlan]) -> list[Value]:
    if rc.sequence.mask is not None:
        return _lower_masked(ctx, rc, plans)
    layer = rc.layer
    go_backwards = bool(layer.go_backwards)
    x = ctx.to_time_major(rc.sequence.name)
    # Keras returns a backwards layer's outputs in processing order: reversing the input and running
    # forward gives that order (as tf2onnx does); without outputs a reverse op needs no flip.
    flip_input = go_backwards and layer.return_sequences
    if flip_input:
        x = ctx.w.flip(x, 0)
    direction = "reverse" if go_backwards and not flip_input else "forward"
    outs = write_op(ctx, plans, x, None, [rc.initial] if rc.initial else [], direction)
    states = [ctx.w.squeeze(s, 0) for s in outs[1:]]
    nan = masks.nan_steps(ctx, ctx.to_time_major(rc.sequence.name)) if ctx.propagate_nan else None
    if nan is not None:
        states = [masks.poison(ctx, s, masks.any_step(ctx, nan)) for s in states]
    main = states[0]
    if layer.return_sequences:
        main_tm = ctx.w.squeeze(outs[0], 1)  # (time, batch, units)
        if direction == "reverse":
            main_tm = ctx.w.flip(main_tm, 0)  # ONNX writes a reverse op's outputs in its input's order
        if nan is not None:  # a NaN poisons every later step in processing order
            flags = masks.from_first(ctx, ctx.w.flip(nan, 0) if go_backwards else nan)
            main_tm = masks.poison(ctx, main_tm, ctx.w.unsqueeze(flags, -1))
        main = ctx.from_time_major(main_tm)
    return [Value(main)] + [Value(s) for s in states]  # states dropped by `finish` unless returned


def _lower_masked(ctx: LoweringContext, rc: RecurrentCall, plans: Sequence[CellPlan]) -> list[Value]:
    """A masked layer: Keras processes each sample's kept steps in order, wherever they are. The op reads
    them moved to the front (`masks.compact`), runs forward with sequence_lens = their count (so its
    final states are those after the last kept step), and its outputs move back to Keras' steps
    (`masks.expand`): each step repeats the output of the last kept step at or before it in processing
    order (zeros before the first; zeros at every masked step with zero_output_for_mask). A
    go_backwards layer's processing order is the input's reversed, and Keras returns its outputs so."""
    layer, mask = rc.layer, rc.sequence.mask
    reverse = bool(layer.go_backwards)
    x_tm = ctx.to_time_major(rc.sequence.name)  # pruned unless the NaN guard reads it
    lengths = masks.sequence_lens(ctx, mask)
    x = masks.compact(ctx, rc.sequence.name, mask, reverse)
    outs = write_op(ctx, plans, x, lengths, [rc.initial] if rc.initial else [], "forward")
    states = [ctx.w.squeeze(s, 0) for s in outs[1:]]
    nan = masks.nan_steps(ctx, x_tm, mask) if ctx.propagate_nan else None
    if nan is not None:
        states = [masks.poison(ctx, s, masks.any_step(ctx, nan)) for s in states]
    # return_sequences=False: the last output is Y_h (zeros for an all-masked sample, as in Keras, whose
    # last output is then its initial zero output); Y is unread and pruned, so the op never writes it.
    main = states[0]
    zero_masked = bool(getattr(layer, "zero_output_for_mask", False))
    if zero_masked and not layer.return_sequences:
        # With zero_output_for_mask Keras' last output is the last processed step's output: zeros when
        # that step is masked, whatever the steps before it held.
        zero = ctx.w.scalar(0, np.float32, "zero")
        main = ctx.w.op1("Where", [masks.last_processed_kept(ctx, mask, reverse), main, zero])
    if layer.return_sequences:
        main = masks.expand(ctx, outs[0], mask, reverse, zero_masked)  # (batch, time, units)
        if nan is not None:
            # A NaN poisons every later step in processing order, but not the zeros of zero_output_for_mask.
            flags = masks.from_first(ctx, ctx.w.flip(nan, 0) if reverse else nan)
            if zero_masked:
                flags = ctx.w.op1("And", [flags, masks.kept_steps(ctx, mask, reverse)])
            main = masks.poison(ctx, main, ctx.w.unsqueeze(ctx.w.transpose(flags, [1, 0]), -1))
    if rc.initial:
        states = masks.keep_initial_when_empty(ctx, states, rc.initial, lengths)
    outputs = [Value(main, mask if layer.return_sequences else None)]
    return outputs + [Value(s) for s in states]
