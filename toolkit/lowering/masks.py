"""What a Keras mask becomes in ONNX, and the guards that keep masked and NaN steps as Keras has them.

A masked Keras layer processes each sample's kept steps in order, wherever they are (padding on either
side, holes, all or none masked), and repeats its previous output on masked steps. A fused op only
knows `sequence_lens`: "the first n steps". So each sample's kept steps are moved to the front, in
processing order (`gather_steps`: one stable TopK over the mask), the op runs with `sequence_lens` =
their count, and its outputs are moved back (`scatter_steps`: each step reads the op's output after the
last kept step at or before it, from a CumSum of the mask). Both moves are one GatherND(batch_dims=1)
on the batch-major layout, Keras' own (the input as given, the output as returned). Each form is
written once per mask (and processing direction) and shared by every layer reading it
(`LoweringContext.mask_forms`).

Measured against the alternatives (ONNX Runtime sessions timed in alternation, 2026-11-28): a
Gather over the time-major sequence flattened to (time * batch) rows took 24 nodes where this takes 17
for a masked LSTM, and at batch 1, one step, each node costs about 2 us, as much as a sixth of the op.

NaN propagation (optional): ONNX Runtime's fused LSTM/GRU activations clamp, so a NaN input comes out
finite; Keras propagates it. The NaN helpers put the NaN back where Keras has it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from onnx import TensorProto

from toolkit.lowering.context import LoweringContext


def remember(ctx: LoweringContext, mask: str, form: str, value: str) -> None:
    """Record a form a layer wrote directly (Masking and Embedding write the time-major one)."""
    ctx.mask_forms[mask, form] = value


def _form(ctx: LoweringContext, mask: str, form: str, write: Callable[[], str]) -> str:
    if (mask, form) not in ctx.mask_forms:
        ctx.mask_forms[mask, form] = write()
    return ctx.mask_forms[mask, form]


def time_major(ctx: LoweringContext, mask: str) -> str:
    """The (time, batch, 1) bool form of a (batch, time) mask: what a Where against a time-major
    sequence needs. Masking and Embedding write it directly; a mask made otherwise is transposed."""
    return _form(ctx, mask, "time_major", lambda: ctx.w.unsqueeze(ctx.w.transpose(mask, [1, 0]), -1))


def sequence_lens(ctx: LoweringContext, mask: str | None) -> str | None:
    """(batch,) int32: the kept steps of each sample."""
    if mask is None:
        return None
    return _form(ctx, mask, "lengths", lambda: ctx.w.op1(
        "Cast", [ctx.w.op1("ReduceSum", [_kept_int(ctx, mask), ctx.w.ints([1, 2])], keepdims=0)], to=TensorProto.INT32))


def kept_steps(ctx: LoweringContext, mask: str, reverse: bool = False) -> str:
    """(time, batch) bool: the kept steps, in time order or reversed (a go_backwards layer's processing order)."""
    kept = _form(ctx, mask, "kept", lambda: ctx.w.squeeze(time_major(ctx, mask), -1))
    return _form(ctx, mask, "kept_reverse", lambda: ctx.w.flip(kept, 0)) if reverse else kept


def last_processed_kept(ctx: LoweringContext, mask: str, reverse: bool) -> str:
    """(batch, 1) bool: is the step processed last (the first in time for a go_backwards layer) kept?"""
    def write() -> str:
        index = ctx.w.scalar(0 if reverse else -1, np.int64, "first" if reverse else "last")
        return ctx.w.unsqueeze(ctx.w.op1("Gather", [kept_steps(ctx, mask), index], axis=0), -1)
    return _form(ctx, mask, "last_kept_reverse" if reverse else "last_kept", write)


def batch_major(ctx: LoweringContext, mask: str) -> str:
    """(batch, time, 1) bool: the layout of the GatherNDs that move steps (their batch axis comes first)."""
    return _form(ctx, mask, "batch_major", lambda: ctx.w.transpose(time_major(ctx, mask), [1, 0, 2]))


def _kept_int(ctx: LoweringContext, mask: str, reverse: bool = False) -> str:
    """(batch, time, 1) int64: 1 at kept steps, in processing order. One cast serves sequence_lens, the
    sort key and the counts; the trailing axis makes the sort's indices GatherND's directly."""
    if reverse:
        return _form(ctx, mask, "kept_int_reverse", lambda: ctx.w.flip(_kept_int(ctx, mask), 1))
    return _form(ctx, mask, "kept_int", lambda: ctx.w.op1("Cast", [batch_major(ctx, mask)], to=TensorProto.INT64))


def _length(ctx: LoweringContext, mask: str) -> str:
    """The number of steps, (1,) int64: TopK's k. One Shape node from opset 15 (its start and end)."""
    def write() -> str:
        w, kept = ctx.w, _kept_int(ctx, mask)
        if w.opset >= 15:
            return w.op1("Shape", [kept], start=1, end=2)
        return w.op1("Slice", [w.op1("Shape", [kept]), w.ints([1]), w.ints([2])])
    return _form(ctx, mask, "length", write)


def gather_steps(ctx: LoweringContext, mask: str, reverse: bool) -> str:
    """(batch, time, 1) int64: the time step that the fused op reads at its step j: sample b's j-th kept
    step in processing order (backwards when `reverse`), whatever the mask's shape (padding on either
    side, holes, all or no step masked). Past the kept count come masked steps, which the op, given
    `sequence_lens`, never reads.

    TopK(k = time, largest first) on "is kept" moves the kept steps first: ONNX's TopK breaks ties by the
    lower index, so they stay in order (a stable sort, in one node; tests/test_masks.py checks it over
    thousands of steps). A backwards layer sorts its reversed mask: processing step j is time step
    time - 1 - j."""
    def write() -> str:
        w = ctx.w
        length = _length(ctx, mask)
        order = w.op("TopK", [_kept_int(ctx, mask, reverse), length], outputs=2, axis=1, largest=1, sorted=1)[1]
        if reverse:
            order = w.op1("Sub", [w.op1("Sub", [length, w.scalar(1, np.int64, "one")]), order])
        return order
    return _form(ctx, mask, "gather_reverse" if reverse else "gather", write)


def scatter_steps(ctx: LoweringContext, mask: str, reverse: bool, zero_masked: bool) -> str:
    """(batch, time, 1) int64: the step of the op's output that Keras' output at processing step t is: the
    op's output after the last kept step at or before t (the kept count so far, minus one). Before the
    first kept step, and at every masked step when `zero_masked`, Keras writes zeros: the index is -1, the
    op's last step, which it leaves zero for a sample with a masked step (its `sequence_lens` is then below
    the length)."""
    def write() -> str:
        w = ctx.w
        kept = _kept_int(ctx, mask, reverse)
        count = w.op1("CumSum", [kept, w.scalar(1, np.int64, "one")])
        if zero_masked:
            count = w.op1("Mul", [count, kept])
        return w.op1("Sub", [count, w.scalar(1, np.int64, "one")])
    form = ("zeroed" if zero_masked else "carried") + ("_reverse" if reverse else "")
    return _form(ctx, mask, form, write)


def compact(ctx: LoweringContext, x: str, mask: str, reverse: bool) -> str:
    """The (batch, time, features) input with each sample's kept steps first, in processing order, in the
    op's time-major layout."""
    moved = ctx.w.op1("GatherND", [x, gather_steps(ctx, mask, reverse)], batch_dims=1)
    return ctx.w.transpose(moved, [1, 0, 2])


def expand(ctx: LoweringContext, y: str, mask: str, reverse: bool, zero_masked: bool) -> str:
    """The op's Y (time, directions, batch, units) moved back to Keras' steps, in processing order:
    (batch, time, directions * units), the directions side by side (Bidirectional's concat layout)."""
    w = ctx.w
    steps = scatter_steps(ctx, mask, reverse, zero_masked)
    moved = w.op1("GatherND", [w.transpose(y, [2, 0, 1, 3]), steps], batch_dims=1)  # (batch, time, dirs, units)
    return w.op1("Reshape", [moved, w.ints([0, 0, -1])])


def keep_initial_when_empty(ctx: LoweringContext, states: list[str], initial: Sequence[str],
                            lengths: str) -> list[str]:
    """A sample with every step masked keeps its initial states in Keras; ONNX Runtime returns zeros
    for sequence_lens 0. Only matters when states come in (state inputs, stateful layers)."""
    empty = ctx.w.unsqueeze(ctx.w.op1("Equal", [lengths, ctx.w.scalar(0, np.int32, "zero")]), -1)
    return [ctx.w.op1("Where", [empty, init, state]) for state, init in zip(states, initial)]


def any_differs(ctx: LoweringContext, x: str, mask_value: float) -> str:
    """(..., 1) bool over the last axis: does any feature differ from mask_value? (Keras' Masking)"""
    w = ctx.w
    value = w.scalar(mask_value, np.float32, "mask_value")
    if np.isfinite(mask_value):
        # The L1 norm of (x - mask_value) is 0 exactly when no feature differs: a sum of magnitudes
        # cannot cancel, a NaN or an Inf makes it nonzero as it makes Keras' not_equal true, and Cast
        # to bool is "!= 0". Two nodes where Equal/Not/Cast/ReduceMax/Cast take five.
        diff = x if mask_value == 0.0 else w.op1("Sub", [x, value])
        return w.op1("Cast", [w.reduce("ReduceL1", diff, -1, keepdims=1)], to=TensorProto.BOOL)
    # An infinite mask_value: inf - inf is NaN, which would count as "differs". Compare instead.
    differs = w.op1("Cast", [w.op1("Not", [w.op1("Equal", [x, value])])], to=TensorProto.FLOAT)
    return w.op1("Cast", [w.reduce("ReduceMax", differs, -1, keepdims=1)], to=TensorProto.BOOL)


# -- NaN propagation


def nan_steps(ctx: LoweringContext, x_tm: str, mask: str | None = None) -> str:
    """(time, batch) float: 1 where an input step holds a NaN (a kept step: Keras skips masked ones)."""
    isnan = ctx.w.op1("Cast", [ctx.w.op1("IsNaN", [x_tm])], to=TensorProto.FLOAT)
    steps = ctx.w.reduce("ReduceMax", isnan, -1, keepdims=0)
    if mask is None:
        return steps
    kept = ctx.w.op1("Cast", [kept_steps(ctx, mask)], to=TensorProto.FLOAT)
    return ctx.w.op1("Mul", [steps, kept])


def any_step(ctx: LoweringContext, steps: str) -> str:
    """(batch, 1) bool: the sample has a NaN anywhere."""
    anywhere = ctx.w.transpose(ctx.w.reduce("ReduceMax", steps, 0, keepdims=1), [1, 0])
    return ctx.w.op1("Cast", [anywhere], to=TensorProto.BOOL)


def from_first(ctx: LoweringContext, steps: str, reverse: bool = False) -> str:
    """(time, batch) bool: at or after (before, when reverse) a NaN step."""
    count = ctx.w.op1("CumSum", [steps, ctx.w.scalar(0, np.int64, "zero")], reverse=int(reverse))
    return ctx.w.op1("Greater", [count, ctx.w.scalar(0, np.float32, "zero")])


def poison(ctx: LoweringContext, value: str, flag: str) -> str:
    """NaN where the bool flag (broadcast against the value) is true."""
    return ctx.w.op1("Where", [flag, ctx.w.scalar(np.nan, np.float32, "nan"), value])
