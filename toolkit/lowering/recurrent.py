"""A recurrent layer (LSTM, GRU, SimpleRNN, Bidirectional of one of them) as one fused ONNX op, in steps.

As in tf2onnx's recurrent rewriters, one call is lowered in named steps: read the call (its sequence,
mask and initial states); plan the cell (`cells.plan_cell`, which refuses before anything is written);
write the inputs (state inputs, the flips and `sequence_lens` a padding side needs); write the op;
write the outputs (the carry-over at masked steps, the NaN and padding guards, the merge of a
Bidirectional's directions, in `bidirectional.py`); record the states the export returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from onnx import TensorProto, helper

from toolkit.lowering import masks
from toolkit.lowering.cells import (CellPlan, NotFusable, bidirectional_plans, is_bidirectional, op_attributes,
                                    plan_cell, state_roles)
from toolkit.lowering.context import LoweringContext, StateIO, Value
from toolkit.lowering.writer import trim


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


@dataclass(frozen=True)
class OpRun:
    """The fused op as written: its outputs and how its input was arranged."""

    y: str  # Y, (time, directions, batch, units)
    states: list[str]  # Y_h (and Y_c), (directions, batch, units)
    lengths: str | None  # sequence_lens, when the layer applies a mask
    left: bool  # the op read the input flipped in time: a left padding's kept steps come first


def read_call(ctx: LoweringContext, node: Any, values: dict[int, Value]) -> RecurrentCall:
    """Step 1: the sequence, its mask and the initial states a call passes."""
    layer = node.operation
    args, kwargs = node.arguments.args, node.arguments.kwargs
    sequence = values[id(args[0])]
    initial = kwargs.get("initial_state")
    if initial is None and len(args) > 1:
        initial = args[1]
    incoming_mask = sequence.mask
    if kwargs.get("mask") is None:
        # Keras applies a mask only when it passes one (mask=) to the layer. It does not, for one,
        # when initial_state is given (Keras 3.15): the padded steps are then processed like any other.
        sequence = Value(sequence.name, None)
    elif sequence.mask is None:
        # Keras passes a propagated mask as mask=; only one we computed ourselves can be lowered.
        raise NotFusable("a mask= argument that does not come from Masking or Embedding(mask_zero=True)")
    # Flattened: an RNN over StackedRNNCells takes one (nested) list of states per cell.
    initial_values = [values[id(t)].name for t in _flatten(initial)] if initial is not None else []
    owner = ctx.owner(layer, node)  # a shared layer: one set per call
    explicit = ctx.state_io or getattr(layer, "stateful", False)
    return RecurrentCall(layer, sequence, incoming_mask, initial_values, list(initial_values), owner, explicit,
                         state_roles(layer))


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
    without states yet feed zeros; the library's runners do (`toolkit.runner.with_zero_states`)."""
    if not rc.explicit or rc.initial:
        return
    rc.sources = [_state_input(ctx, f"{rc.owner}_initial_{role}", units) for role, units in rc.roles]
    rc.initial = list(rc.sources)


def _state_input(ctx: LoweringContext, name: str, units: int) -> str:
    ctx.report.state_inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", units]))
    return name


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
    """Step 6: remember which input feeds which final state, for the exporter's state map and outputs."""
    if rc.explicit:
        for (role, units), source, value in zip(rc.roles, rc.sources, states):
            ctx.report.states.append(StateIO(source, value.name, rc.owner, role, units))


def main_count(layer: Any) -> int:
    """How many outputs come before the states: two for a Bidirectional with merge_mode=None."""
    return 2 if is_bidirectional(layer) and layer.merge_mode is None else 1


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


def lower_recurrent(ctx: LoweringContext, node: Any, values: dict[int, Value]) -> tuple[list[Value], str]:
    """Every step for one call; returns its outputs and the fused op's type. Raises NotFusable."""
    from toolkit.lowering.bidirectional import lower_bidirectional  # it builds on this module's steps

    rc = read_call(ctx, node, values)
    plans = plan(rc.layer)
    write_state_inputs(ctx, rc)
    lower = lower_bidirectional if is_bidirectional(rc.layer) else lower_unidirectional
    # The states come back even when the layer does not return them: `finish` records them for the
    # state map, then drops them (an unread value is pruned from the graph).
    return finish(ctx, rc, lower(ctx, rc, plans)), plans[0].op


# -- one direction


def lower_unidirectional(ctx: LoweringContext, rc: RecurrentCall, plans: Sequence[CellPlan]) -> list[Value]:
    layer, sequence = rc.layer, rc.sequence
    go_backwards = bool(layer.go_backwards)
    x = ctx.to_time_major(sequence.name)
    lengths = masks.sequence_lens(ctx, sequence.mask)
    left = lengths is not None and ctx.padding == "left"
    # sequence_lens counts valid steps from the start of the op's input. A right-padded input goes in
    # as it is; a left-padded one goes in flipped in time, where its kept steps come first. Keras
    # returns a backwards layer's outputs in processing order: without a mask, reversing the input
    # and running forward gives that order (as tf2onnx does). With a mask the op runs forward on the
    # input whose padding ends it in processing order (right padding forward, left padding
    # backwards) and in reverse otherwise, and its output is flipped back.
    flip_input = (go_backwards and lengths is None and layer.return_sequences) or left
    if flip_input:
        x = ctx.w.flip(x, 0)
    if lengths is None:
        direction = "reverse" if go_backwards and not flip_input else "forward"
    else:
        direction = "reverse" if go_backwards != left else "forward"
    outs = write_op(ctx, plans, x, lengths, [rc.initial] if rc.initial else [], direction)
    run = OpRun(outs[0], outs[1:], lengths, left)
    return _unidirectional_outputs(ctx, rc, run, reverse=direction == "reverse")


def _unidirectional_outputs(ctx: LoweringContext, rc: RecurrentCall, run: OpRun, reverse: bool) -> list[Value]:
    """Step 5: the states and the sequence, guarded; the sequence in Keras' order and layout."""
    mask = rc.sequence.mask
    states = [ctx.w.squeeze(s, 0) for s in run.states]
    nan = masks.nan_steps(ctx, ctx.to_time_major(rc.sequence.name), mask) if ctx.propagate_nan else None
    if nan is not None:
        states = [masks.poison(ctx, s, masks.any_step(ctx, nan)) for s in states]
    bad = masks.padding_flag(ctx, mask) if run.lengths is not None else None
    if bad is not None:
        states = [masks.poison(ctx, s, bad) for s in states]
    if rc.layer.return_sequences:
        main_tm = _sequence(ctx, rc, run, reverse, states[0], nan)
        if bad is not None:
            main_tm = masks.poison(ctx, main_tm, bad)
        main = ctx.from_time_major(main_tm)
    else:
        main = states[0]
    if run.lengths is not None and rc.initial:
        states = masks.keep_initial_when_empty(ctx, states, rc.initial, run.lengths)
    outputs = [Value(main, mask if rc.layer.return_sequences else None)]
    return outputs + [Value(s) for s in states]  # dropped by `finish` unless the layer returns its states


def _sequence(ctx: LoweringContext, rc: RecurrentCall, run: OpRun, reverse: bool, state_h: str,
              nan: str | None) -> str:
    """The (time, batch, units) output sequence in Keras' order, with Keras' values at masked steps.
    `state_h` is the final (batch, units) state, NaN-guarded when `nan` is given."""
    mask = rc.sequence.mask
    go_backwards = bool(rc.layer.go_backwards)
    zero_masked = bool(getattr(rc.layer, "zero_output_for_mask", False))
    main_tm = ctx.w.squeeze(run.y, 1)  # (time, batch, units)
    if reverse:
        # ONNX writes a reverse op's outputs in its input's order; flipped, they are in Keras'
        # order. The padding is then processed first, and Keras, like ONNX, outputs zeros there.
        main_tm = ctx.w.flip(main_tm, 0)
    elif mask is not None and not zero_masked:
        # The padding comes last in processing order: Keras carries the last output over it. Y_h is
        # (1, batch, units): it broadcasts against (time, batch, units).
        last = run.states[0] if nan is None else ctx.w.unsqueeze(state_h, 0)
        main_tm = masks.carry_over(ctx, main_tm, last, mask, flipped=run.left)
    if nan is not None:
        # Keras' outputs are in processing order; a NaN poisons every later step, but for a layer
        # that writes zeros at masked steps (zero_output_for_mask) not those.
        flags = masks.from_first(ctx, ctx.w.flip(nan, 0) if go_backwards else nan)
        if mask is not None and zero_masked:
            flags = ctx.w.op1("And", [flags, masks.kept_steps(ctx, mask, reverse=go_backwards)])
        main_tm = masks.poison(ctx, main_tm, ctx.w.unsqueeze(flags, -1))
    return main_tm
