"""What a Keras mask becomes in ONNX, and the guards that keep masked and NaN steps as Keras has them.

A (batch, time) bool mask gives `sequence_lens` (the kept steps of each sample, for right padding, or
left padding with the input flipped in time), its time-major form for `Where`s against sequences, and a
flag for the samples whose padding `sequence_lens` cannot describe. Each form is written once per mask
and shared by every layer reading it (`LoweringContext.mask_forms`).

NaN propagation (optional): ONNX Runtime's fused LSTM/GRU activations clamp, so a NaN input comes out
finite; Keras propagates it. The NaN helpers put the NaN back where Keras has it.
"""

from __future__ import annotations

from typing import Callable, Sequence

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


def as_int32(ctx: LoweringContext, mask: str) -> str:
    """The (time, batch, 1) mask as int32, for sequence_lens and the padding guard."""
    return _form(ctx, mask, "int32", lambda: ctx.w.op1("Cast", [time_major(ctx, mask)], to=TensorProto.INT32))


def sequence_lens(ctx: LoweringContext, mask: str | None) -> str | None:
    """(batch,) int32: the kept steps of each sample."""
    if mask is None:
        return None
    return _form(ctx, mask, "lengths", lambda: ctx.w.op1(
        "ReduceSum", [as_int32(ctx, mask), ctx.w.ints([0, 2])], keepdims=0))


def padding_flag(ctx: LoweringContext, mask: str) -> str:
    """(batch, 1) bool: the samples whose mask is not a padding on the export's side (right, or left
    with padding="left"). It broadcasts against states (batch, units), time-major sequences
    (time, batch, units) and Y (time, 2, batch, units) alike. Their outputs become NaN instead of
    silently wrong numbers.

    `sequence_lens` can only say "the first n steps are valid". Keras skips masked steps wherever
    they are, so for a mask with holes, or padding on the other side, the fused op computes something
    else; NaN is what no parity check or user can mistake for a result.
    """
    return _form(ctx, mask, "bad_padding", lambda: _write_padding_flag(ctx, mask))


def _write_padding_flag(ctx: LoweringContext, mask: str) -> str:
    # A right padding never goes from a masked step back to a kept one: a rise (mask[t+1] - mask[t] = 1)
    # marks a bad sample; a left padding never goes from kept to masked: a fall marks it. ReduceMax
    # over the empty axis of a 1-step sequence gives INT32_MIN: neither.
    w = ctx.w
    int_max = np.iinfo(np.int64).max
    as_int = as_int32(ctx, mask)  # (time, batch, 1)
    before = w.op1("Slice", [as_int, w.ints([0]), w.ints([-1]), w.ints([0])])
    after = w.op1("Slice", [as_int, w.ints([1]), w.ints([int_max]), w.ints([0])])
    change = [before, after] if ctx.padding == "left" else [after, before]
    rise = w.reduce("ReduceMax", w.op1("Sub", change), 0, keepdims=0)
    return w.op1("Greater", [rise, w.scalar(0, np.int32, "zero")])


def carry_over(ctx: LoweringContext, y_tm: str, last: str, mask: str, flipped: bool) -> str:
    """Keras carries the last output over masked steps, ONNX writes zeros there: put the last output
    (1, batch, units), broadcast against (time, batch, units), back. `flipped`: the op read the input
    flipped in time (left padding), so its outputs are in that order."""
    keep = time_major(ctx, mask)
    keep = ctx.w.flip(keep, 0) if flipped else keep  # processing order
    return ctx.w.op1("Where", [keep, y_tm, last])


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


def kept_steps(ctx: LoweringContext, mask: str, reverse: bool = False) -> str:
    """(time, batch) bool: the kept steps, in time order or reversed."""
    kept = ctx.w.squeeze(time_major(ctx, mask), -1)
    return ctx.w.flip(kept, 0) if reverse else kept


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
