"""A Bidirectional layer as one fused op with direction=bidirectional: its inputs, its guards, its merge."""

from __future__ import annotations

from typing import Sequence

from toolkit.lowering import masks
from toolkit.lowering.cells import CellPlan
from toolkit.lowering.context import LoweringContext, Value
from toolkit.lowering.recurrent import OpRun, RecurrentCall, write_op


def lower_bidirectional(ctx: LoweringContext, rc: RecurrentCall, plans: Sequence[CellPlan]) -> list[Value]:
    """Steps 3 to 5 for both directions: outputs are the merged sequence (or last output), then the
    forward states, then the backward ones."""
    count = plans[0].state_count
    x_tm = ctx.to_time_major(rc.sequence.name)
    lengths = masks.sequence_lens(ctx, rc.sequence.mask)
    # Left padding: the op reads the input flipped in time, so that the kept steps come first for
    # sequence_lens. Its forward direction then does what Keras' backward layer does and its reverse
    # direction what the forward layer does: the weights, initial states, Y and the final states
    # swap directions, and Y flips back in time.
    left = lengths is not None and ctx.padding == "left"
    order = [1, 0] if left else [0, 1]
    x = ctx.w.flip(x_tm, 0) if left else x_tm
    # Keras orders initial states forward states then backward states; ONNX stacks directions per state.
    per_direction = [rc.initial[:count], rc.initial[count:]]
    initial = [per_direction[i] for i in order] if rc.initial else []
    outs = write_op(ctx, [plans[i] for i in order], x, lengths, initial, "bidirectional")
    y, states = outs[0], outs[1:]
    if left:
        swap = ctx.w.ints([1, 0])
        y = ctx.w.op1("Gather", [ctx.w.flip(y, 0), swap], axis=1)  # (time, [forward, backward], batch, units)
        states = [ctx.w.op1("Gather", [state, swap], axis=0) for state in states]
    y, states = _guard(ctx, rc, OpRun(y, states, lengths, left), x_tm)
    merge = rc.layer.merge_mode
    if rc.layer.return_sequences:
        # Keras' Bidirectional zeroes masked steps (zero_output_for_mask), as ONNX does.
        main = _merge_sequences(ctx, y, merge)
    else:
        main = _merge(ctx, states[0], merge, direction_axis=0)
    out_mask = rc.sequence.mask if rc.layer.return_sequences else None
    outputs = [Value(m, out_mask) for m in main]
    split = [ctx.w.op("Split", [s, ctx.w.ints([1, 1])], outputs=2, axis=0) for s in states]
    outputs += [Value(ctx.w.squeeze(parts[0], 0)) for parts in split]
    outputs += [Value(ctx.w.squeeze(parts[1], 0)) for parts in split]
    return outputs


def _guard(ctx: LoweringContext, rc: RecurrentCall, run: OpRun, x_tm: str) -> tuple[str, list[str]]:
    """Y and the states (directions in Keras' order) with NaN where Keras has it, and where the padding
    is not on the export's side."""
    mask = rc.sequence.mask
    y, states = run.y, run.states
    if ctx.propagate_nan:
        nan = masks.nan_steps(ctx, x_tm, mask)
        any_nan = ctx.w.unsqueeze(masks.any_step(ctx, nan), 0)  # (1, batch, 1) against (2, batch, units)
        states = [masks.poison(ctx, s, any_nan) for s in states]
        # Y is (time, 2, batch, units): forward outputs are poisoned after a NaN, backward ones before it,
        # but not at masked steps, where Keras' Bidirectional writes zeros.
        flags = ctx.w.op1("Concat", [ctx.w.unsqueeze(masks.from_first(ctx, nan, reverse=r), 1) for r in (False, True)],
                          axis=1)
        if mask is not None:
            flags = ctx.w.op1("And", [flags, ctx.w.transpose(masks.time_major(ctx, mask), [0, 2, 1])])
        y = masks.poison(ctx, y, ctx.w.unsqueeze(flags, 3))
    if run.lengths is not None:
        bad = masks.padding_flag(ctx, mask)
        y = masks.poison(ctx, y, bad)
        states = [masks.poison(ctx, s, bad) for s in states]
    return y, states


def _merge_sequences(ctx: LoweringContext, y: str, merge: str | None) -> list[str]:
    """Merge the directions of Y (time, 2, batch, units) as Keras does, in both layouts: the
    batch-major value is the layer's output, the time-major one what a next recurrent layer reads
    (the unread one is pruned)."""
    w = ctx.w
    if merge == "concat":
        batch_major = w.op1("Reshape", [w.transpose(y, [2, 0, 1, 3]), w.ints([0, 0, -1])])
        ctx.time_major[batch_major] = w.op1("Reshape", [w.transpose(y, [0, 2, 1, 3]), w.ints([0, 0, -1])])
        return [batch_major]
    return [ctx.from_time_major(m) for m in _merge(ctx, y, merge, direction_axis=1)]


def _merge(ctx: LoweringContext, value: str, merge: str | None, direction_axis: int) -> list[str]:
    """Merge the two directions of Y_h (2, batch, units), or of Y along its direction axis when the
    merge is not concat: reduced, or split in two."""
    w = ctx.w
    if merge == "concat":
        return [w.op1("Reshape", [w.transpose(value, [1, 0, 2]), w.ints([0, -1])])]
    reducers = {"sum": "ReduceSum", "ave": "ReduceMean", "mul": "ReduceProd"}
    if merge in reducers:
        return [w.reduce(reducers[merge], value, direction_axis, keepdims=0)]
    parts = w.op("Split", [value, w.ints([1, 1])], outputs=2, axis=direction_axis)
    return [w.squeeze(p, direction_axis) for p in parts]
