"""A Bidirectional layer as one fused op with direction=bidirectional: its inputs, its guards, its merge."""

from __future__ import annotations

from collections.abc import Sequence

from toolkit.lowering import masks
from toolkit.lowering.cells import CellPlan
from toolkit.lowering.context import LoweringContext, Value
from toolkit.lowering.recurrent import RecurrentCall, write_op


def lower_bidirectional(ctx: LoweringContext, rc: RecurrentCall, plans: Sequence[CellPlan]) -> list[Value]:
    """Steps 3 to 5 for both directions: outputs are the merged sequence (or last output), then the
    forward states, then the backward ones."""
    count = plans[0].state_count
    mask = rc.sequence.mask
    x_tm = ctx.to_time_major(rc.sequence.name)
    lengths = masks.sequence_lens(ctx, mask)
    # With a mask, the op reads each sample's kept steps moved to the front (`masks.compact`) with
    # sequence_lens = their count: its forward direction runs over them in order, its reverse direction
    # from the last kept step back to the first, as Keras' two layers do.
    x = masks.compact(ctx, rc.sequence.name, mask, reverse=False) if mask is not None else x_tm
    # Keras orders initial states forward states then backward states; ONNX stacks directions per state.
    initial = [rc.initial[:count], rc.initial[count:]] if rc.initial else []
    outs = write_op(ctx, plans, x, lengths, initial, "bidirectional")
    y, states = outs[0], outs[1:]
    nan = masks.nan_steps(ctx, x_tm, mask) if ctx.propagate_nan else None
    if nan is not None:
        any_nan = ctx.w.unsqueeze(masks.any_step(ctx, nan), 0)  # (1, batch, 1) against (2, batch, units)
        states = [masks.poison(ctx, s, any_nan) for s in states]
        y = _guard(ctx, y, nan) if mask is None else y
    merge = rc.layer.merge_mode
    if rc.layer.return_sequences:
        # Keras' Bidirectional zeroes masked steps (zero_output_for_mask).
        main = _masked_sequences(ctx, rc, y, merge, nan) if mask is not None else _merge_sequences(ctx, y, merge)
    else:
        main = _merge(ctx, states[0], merge, direction_axis=0)
    out_mask = mask if rc.layer.return_sequences else None
    outputs = [Value(m, out_mask) for m in main]
    split = [ctx.w.op("Split", [s, ctx.w.ints([1, 1])], outputs=2, axis=0) for s in states]
    finals = [ctx.w.squeeze(parts[0], 0) for parts in split] + [ctx.w.squeeze(parts[1], 0) for parts in split]
    if lengths is not None and rc.initial:  # an all-masked sample keeps its initial states in Keras
        finals = masks.keep_initial_when_empty(ctx, finals, rc.initial, lengths)
    return outputs + [Value(s) for s in finals]


def _guard(ctx: LoweringContext, y: str, nan: str) -> str:
    """Y (time, 2, batch, units) of an unmasked layer with NaN where Keras has it: forward outputs from
    the NaN step on, backward ones up to it."""
    flags = ctx.w.op1("Concat", [ctx.w.unsqueeze(masks.from_first(ctx, nan, reverse=r), 1) for r in (False, True)],
                      axis=1)
    return masks.poison(ctx, y, ctx.w.unsqueeze(flags, 3))


def _masked_sequences(ctx: LoweringContext, rc: RecurrentCall, y: str, merge: str | None,
                      nan: str | None) -> list[str]:
    """Y moved back to Keras' steps (zeros at masked ones), guarded, merged, batch-major."""
    w, mask = ctx.w, rc.sequence.mask
    merged = masks.expand(ctx, y, mask, reverse=False, zero_masked=True)  # (batch, time, 2 * units)
    if merge == "concat" and nan is None:
        return [merged]
    both = w.op1("Reshape", [merged, w.ints([0, 0, 2, -1])])  # (batch, time, 2, units)
    if nan is not None:
        # Forward outputs are NaN from the NaN step on, backward ones up to it, but not at masked steps.
        flags = w.op1("Concat", [w.unsqueeze(masks.from_first(ctx, nan, reverse=r), -1) for r in (False, True)],
                      axis=-1)
        flags = w.op1("And", [w.transpose(flags, [1, 0, 2]), masks.batch_major(ctx, mask)])  # (batch, time, 2)
        both = masks.poison(ctx, both, w.unsqueeze(flags, -1))
    if merge == "concat":
        return [w.op1("Reshape", [both, w.ints([0, 0, -1])])]
    return _merge(ctx, both, merge, direction_axis=2)


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
