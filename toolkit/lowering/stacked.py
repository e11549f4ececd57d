"""`keras.layers.RNN` over a `StackedRNNCells` as a stack of fused ops, one per cell.

Keras runs the cells of a stack one after the other at each step, each reading the previous cell's
output; over the whole sequence that is the same as one recurrent layer per cell, each returning its
sequence to the next. So every cell is lowered by the steps of `recurrent.py` as a layer of its own
(`CellLayer`), with the stack's mask, its share of the initial states and state inputs, and the
stack's flags on the last cell. The states come back cell by cell, as Keras returns them; their roles
are `cell<i>_state_h` (and `cell<i>_state_c` for an LSTM cell, see `toolkit.models.naming`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from toolkit.lowering.cells import CellPlan
from toolkit.lowering.context import LoweringContext, Value
from toolkit.lowering.recurrent import RecurrentCall, finish, lower_unidirectional


@dataclass(frozen=True)
class CellLayer:
    """One cell of a stack, with the flags the recurrent steps read from a layer."""

    name: str
    go_backwards: bool
    return_sequences: bool
    # Only the last cell's outputs at masked steps are Keras outputs; an earlier cell's are read by the
    # next cell, which skips masked steps: zeros there save the carry-over's nodes.
    zero_output_for_mask: bool
    return_state: bool = True  # each cell's states are the stack's states
    stateful: bool = False


def is_stacked(layer: Any) -> bool:
    return type(getattr(layer, "cell", None)).__name__ == "StackedRNNCells"


def lower_stacked(ctx: LoweringContext, rc: RecurrentCall, plans: Sequence[CellPlan]) -> list[Value]:
    """The stack's outputs as Keras returns them: the last cell's sequence (or last output), then, with
    `return_state`, every cell's states in stack order."""
    layer = rc.layer
    go_backwards = bool(layer.go_backwards)
    sequence, states, start = rc.sequence, [], 0
    main: Value | None = None
    for index, plan in enumerate(plans):
        last = index == len(plans) - 1
        cell_layer = CellLayer(f"{layer.name}_cell{index}", go_backwards, bool(layer.return_sequences) if last else True,
                               bool(getattr(layer, "zero_output_for_mask", False)) if last else True)
        count = plan.state_count
        part = slice(start, start + count)
        start += count
        cell_call = dataclasses.replace(rc, layer=cell_layer, sequence=sequence, initial=rc.initial[part],
                                        sources=rc.sources[part], roles=rc.roles[part], dtypes=rc.dtypes[part])
        outputs = finish(ctx, cell_call, lower_unidirectional(ctx, cell_call, [plan]))
        states += outputs[1:]
        main = outputs[0]
        if not last:
            sequence = Value(_input_order(ctx, main.name, go_backwards), rc.sequence.mask)
    assert main is not None  # a StackedRNNCells holds at least one cell
    main.mask = rc.incoming_mask if layer.return_sequences else None
    return [main] + (states if layer.return_state else [])


def _input_order(ctx: LoweringContext, sequence: str, go_backwards: bool) -> str:
    """A cell's output sequence in the order of the stack's input. A backwards layer returns it in
    processing order; the next cell, backwards too, must read step t where the stack's input has it."""
    if not go_backwards:
        return sequence
    return ctx.from_time_major(ctx.w.flip(ctx.to_time_major(sequence), 0))
