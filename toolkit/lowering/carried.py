"""A recurrent layer that cannot be fused but carries states (stateful=True, or --state-io): tf2onnx
converts it with its initial states as inputs and its final states as outputs.

Converted as it stands, a stateful layer over a custom cell is traced reading its state variables, which
tf2onnx freezes as constants: every call of the export starts from zeros, so the first call is exact and
the second wrong (Keras' own `test_statefulness_*`: 442 instead of 3978). So the layer is traced as
Keras runs it with states given, `layer(x, initial_state=states, mask=m)`, stateless and returning its
states for the duration of the trace. Its state inputs, outputs and `lstm_onnx.state_map` entries are
those of a fused layer (`recurrent.write_state_inputs`, `recurrent.finish`), for any number of states
per cell and any stack of cells. Read off the variables, the trace no longer fixes the batch size either
(tf2onnx refused a stateful layer of batch 1: its state's shape (1, 2) became (None, 2) in the loop).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from toolkit.lowering.context import LayerCall, LayerLowering, LoweringContext, Value
from toolkit.lowering.recurrent import RecurrentCall, finish, read_call, write_state_inputs
from toolkit.models.naming import is_bidirectional
from toolkit.tf2onnx_lib import InputSignature, convert_call

STATE_NOTE = ("stateful=True: exported with state inputs and outputs (lstm_onnx.state_map); "
              "carry the states from call to call")


def carries_states(ctx: LoweringContext, layer: Any) -> bool:
    """Whether the layer's states are graph inputs and outputs: --state-io, or a stateful layer."""
    return ctx.state_io or bool(getattr(layer, "stateful", False))


@contextlib.contextmanager
def _returning_states(layer: Any) -> Iterator[None]:
    """The layer (and a Bidirectional's two layers) stateless and returning its states, for one trace:
    a stateless layer reads the initial states it is given, not its variables. Restored after."""
    layers = [layer] + ([layer.forward_layer, layer.backward_layer] if is_bidirectional(layer) else [])
    saved = [(each, each.stateful, each.return_state) for each in layers]
    try:
        for each in layers:
            each.stateful, each.return_state = False, True
        yield
    finally:
        for each, stateful, return_state in saved:
            each.stateful, each.return_state = stateful, return_state


def _state_structure(layer: Any, states: list[Any]) -> Any:
    """The flat states packed as the layer takes them: an RNN over StackedRNNCells takes one list per cell."""
    import keras

    if is_bidirectional(layer) or not hasattr(layer, "get_initial_state"):
        return states
    return keras.tree.pack_sequence_as(layer.get_initial_state(batch_size=1), states)


def convert_carrying_states(ctx: LoweringContext, call: LayerCall, values: dict[int, Value],
                            reason: str) -> list[Value]:
    """tf2onnx's conversion of one recurrent layer call, fed its initial states (the given ones, or new
    state inputs) and returning its final states, recorded for the state map as a fused layer's are."""
    rc = read_call(ctx, call.node, values)
    rc.op_dtype = str(call.node.outputs[0].dtype)  # tf2onnx converts the layer as Keras runs it, in its dtypes
    write_state_inputs(ctx, rc)
    proto = convert_call(_traced_call(rc), _signature(call, rc), ctx.w.opset, rc.layer.name)
    feeds = [rc.sequence.name, *rc.initial] + ([rc.sequence.mask] if rc.sequence.mask is not None else [])
    outputs = [Value(name) for name in ctx.w.splice(proto, feeds, rc.layer.name)]
    ctx.report.layers.append(LayerLowering(rc.layer.name, call.layer_class, "tf2onnx", reason,
                                           note=STATE_NOTE if getattr(rc.layer, "stateful", False) else ""))
    return finish(ctx, rc, outputs)


def _signature(call: LayerCall, rc: RecurrentCall) -> list[InputSignature]:
    """The sequence, each state (batch, units), the mask (batch, time) when the layer applies one."""
    tensor = call.node.arguments.args[0]
    signature = [InputSignature("sequence", str(tensor.dtype), (None, *tensor.shape[1:]))]
    signature += [InputSignature(f"state{i}", dtype, (None, units))
                  for i, ((_, units), dtype) in enumerate(zip(rc.roles, rc.dtypes))]
    if rc.sequence.mask is not None:
        signature.append(InputSignature("mask", "bool", (None, tensor.shape[1])))
    return signature


def _traced_call(rc: RecurrentCall) -> Any:
    layer, count = rc.layer, len(rc.roles)
    masked = rc.sequence.mask is not None

    def run(sequence: Any, *rest: Any) -> list[Any]:
        import keras

        states = _state_structure(layer, list(rest[:count]))
        # A Bidirectional's `call`, not `__call__`: Keras 3.15's Bidirectional.compute_mask fails when it
        # returns states ("unsupported operand type(s) for *: 'generator' and 'int'").
        run_layer = layer.call if is_bidirectional(layer) else layer
        with _returning_states(layer):
            outputs = run_layer(sequence, initial_state=states, mask=rest[count] if masked else None, training=False)
        return keras.tree.flatten(outputs)  # the main outputs (main_count of them), then every state

    return run
