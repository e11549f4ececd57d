"""Lowering Keras recurrent layers to fused ONNX `LSTM`, `GRU` and `RNN` ops, from their weights.

tf2onnx fuses only plain LSTMs: GRU, SimpleRNN, masked layers, `hard_sigmoid` and recurrent dropout come
out as an ONNX `Loop` of elementwise ops, several times slower (measured in `scripts/benchmark.py`).
So lstm-onnx walks the Keras functional graph itself:

- each recurrent layer (LSTM, GRU, SimpleRNN, Bidirectional of one of them) becomes one fused op plus the
  transposes it needs, with its weights re-ordered (Keras gates i,f,c,o; ONNX i,o,f,c);
- `Masking` and `Embedding(mask_zero=True)` produce a mask, which becomes the op's `sequence_lens`
  (right padding, or left padding with the input flipped in time); Keras carries the last output over
  masked steps, ONNX writes zeros there, so a `Where` restores Keras' values;
- sequences stay time-major from one recurrent layer to the next (the layout ONNX Runtime runs);
- `Embedding` becomes a `Gather`, `Dense` (and `TimeDistributed(Dense)`) a `MatMul`/`Add`/activation;
- `Dropout`-like layers are identities at inference;
- every other layer is converted by tf2onnx on its own and spliced in (`tf2onnx_lib.convert_call`).

A recurrent layer that cannot be fused (an activation ONNX lacks, a custom cell, ...) is converted by
tf2onnx too, and the reason is reported (`LayerLowering.reason`, then the export's warnings): never a
silent fallback.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from toolkit.errors import UnsupportedModelError
from toolkit.naming import is_recurrent
from toolkit.runner import subgraphs
from toolkit.tf2onnx_lib import InputSignature, convert_call
from toolkit.lowering.cells import (ACTIVATIONS, CELL_OPS, CellPlan, NotFusable, _op_attributes, plan_cell,
                                    bidirectional_plans as _bidirectional_plans, state_roles as _state_roles,
                                    to_numpy as _numpy)
from toolkit.lowering.writer import GraphWriter, outer_reads, prune, rename_values, trim as _trim

# Layers that are the identity at inference time and pass their input's mask on.
IDENTITY_LAYERS = ("Dropout", "SpatialDropout1D", "GaussianNoise", "GaussianDropout", "AlphaDropout",
                   "ActivityRegularization")

# Keras merge layers: their output mask is the AND of their inputs' masks.
MERGE_LAYERS = ("Concatenate", "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum")


@dataclass(frozen=True)
class LayerLowering:
    layer: str
    layer_class: str
    onnx_op: str  # "LSTM", "GRU", "RNN", or "tf2onnx" when not fused
    reason: str = ""  # why it was not fused
    note: str = ""  # what a user must know about a fused layer (e.g. stateful)

    @property
    def fused(self) -> bool:
        return self.onnx_op in CELL_OPS.values()


@dataclass(frozen=True)
class StateIO:
    """One recurrent state made explicit: fed by graph input `input`, returned as value `value`."""

    input: str  # the graph input (zeros when not fed)
    value: str  # the ONNX value of the final state
    layer: str
    role: str  # state_h, state_c, forward_state_h, ...
    units: int

    @property
    def name(self) -> str:
        """Its output name by the naming rules, e.g. lstm_1_state_h."""
        return f"{self.layer}_{self.role}"


@dataclass
class LoweringReport:
    layers: list[LayerLowering] = field(default_factory=list)
    states: list[StateIO] = field(default_factory=list)
    state_inputs: list[onnx.ValueInfoProto] = field(default_factory=list)


# ------------------------------------------------------------------------------------ the graph walk


@dataclass
class _Value:
    name: str
    mask: str | None = None  # bool (batch, time) ONNX value, where Keras would carry a mask


class Lowerer:
    """Walks a Keras functional graph and writes the ONNX graph."""

    def __init__(self, writer: GraphWriter, report: LoweringReport, propagate_nan: bool = False,
                 state_io: bool = False, padding: str = "right"):
        self.w = writer
        self.report = report
        self.propagate_nan = propagate_nan
        self.padding = padding  # where masked batches hold their padding: "right" or "left"
        self.state_io = state_io
        # ONNX Runtime runs recurrent ops time-major only. Every value that has (or needs) a
        # (time, batch, ...) form keeps it here, so a stack hands one layer's time-major output straight
        # to the next instead of transposing to Keras' batch-major layout and back; the batch-major
        # form is pruned when only the next layer read it. Each node costs about half a microsecond
        # on the single-step path, and a (batch, time, units) transpose moves every value.
        self._time_major: dict[str, str] = {}
        # What is derived from a (batch, time) bool mask, written once and shared by every layer reading
        # that mask: its (time, batch, 1) form, its int32 cast, sequence_lens, the padding check.
        self._mask_forms: dict[tuple[str, str], str] = {}

    # -- the walk

    def walk(self, model: Any, inputs: Sequence[_Value]) -> list[_Value]:
        functional = getattr(model, "_functional", None) or model
        if not hasattr(functional, "_nodes_by_depth"):
            raise UnsupportedModelError(f"Expected a functional or Sequential Keras model. Received: {type(model).__name__}")
        values: dict[int, _Value] = {id(t): v for t, v in zip(functional.inputs, inputs)}
        for depth in sorted(functional._nodes_by_depth, reverse=True):
            for node in functional._nodes_by_depth[depth]:
                if not node.operation or node.is_input:
                    continue
                if any(id(t) not in values for t in node.input_tensors):
                    continue  # a node of another model sharing this layer
                outputs = self.lower_node(node, values)
                for tensor, value in zip(node.outputs, outputs):
                    values[id(tensor)] = value
        missing = [t.name for t in functional.outputs if id(t) not in values]
        if missing:
            raise UnsupportedModelError(f"Expected every output connected to the inputs. Received unconnected: {missing}")
        return [values[id(t)] for t in functional.outputs]

    def lower_node(self, node: Any, values: dict[int, _Value]) -> list[_Value]:
        import keras

        layer = node.operation
        cls = type(layer).__name__
        first = values[id(node.input_tensors[0])] if node.input_tensors else None
        if isinstance(layer, keras.Model):
            return self.walk(layer, [values[id(t)] for t in node.input_tensors])
        if cls in IDENTITY_LAYERS and len(node.input_tensors) == 1:
            return [first]
        tensor = node.input_tensors[0] if node.input_tensors else None
        if cls == "Dense" and _dense_activation(layer, tensor) is not None:
            return [self.lower_dense(layer, tensor, first)]
        if cls == "TimeDistributed" and _dense_activation(layer.layer, tensor) is not None:
            return [self.lower_dense(layer.layer, tensor, first)]  # a Dense acts on the last axis: no folding needed
        if cls == "Masking":
            return [self.lower_masking(layer, tensor, first)]
        if cls == "TimeDistributed" and len(node.input_tensors) == 1 and None not in tensor.shape[2:]:
            return [self.lower_time_distributed(layer, tensor, first)]
        if cls == "Embedding" and _plain_embedding(layer):
            return [self.lower_embedding(layer, tensor, first)]
        if is_recurrent(layer):
            try:
                outputs, op = self.lower_recurrent(layer, node, values)
                note = ("stateful=True: exported with state inputs and outputs (lstm_onnx.state_map); "
                        "carry the states from call to call" if getattr(layer, "stateful", False) else "")
                self.report.layers.append(LayerLowering(layer.name, cls, op, note=note))
                return outputs
            except NotFusable as reason:
                self.report.layers.append(LayerLowering(layer.name, cls, "tf2onnx", str(reason)))
                return self.convert_with_tf2onnx(node, values, consumes_mask=True)
        outputs = self.convert_with_tf2onnx(node, values, consumes_mask=False)
        if cls == "Embedding" and getattr(layer, "mask_zero", False):
            outputs[0].mask = self.w.op1("Cast", [first.name], to=TensorProto.BOOL)
        elif getattr(layer, "supports_masking", False) and len(node.input_tensors) == 1 and first.mask:
            for value in outputs:
                value.mask = first.mask
        elif cls in MERGE_LAYERS:
            masks = list(dict.fromkeys(values[id(t)].mask for t in node.input_tensors if values[id(t)].mask))
            if masks:  # Keras' Merge.compute_mask: a step is kept when every input keeps it
                mask = masks[0]
                for other in masks[1:]:
                    mask = self.w.op1("And", [mask, other])
                outputs[0].mask = mask
        return outputs

    # -- layers

    def lower_masking(self, layer: Any, tensor: Any, value: _Value) -> _Value:
        """Keras keeps a step when any feature differs from mask_value. On a (batch, time, features)
        input the mask is computed time-major, the layout the recurrent layer reading it needs."""
        mask_value = float(layer.mask_value)
        time_major = len(tensor.shape) == 3
        x = self._to_time_major(value.name) if time_major else value.name
        keep_full = self._any_differs(x, mask_value)  # (..., 1) bool
        keep = self.w.squeeze(keep_full, -1)  # Keras' mask: pruned unless a reader other than an RNN needs it
        if time_major:
            keep = self.w.transpose(keep, [1, 0])
            self._mask_forms[keep, "time_major"] = keep_full
        if mask_value == 0.0:
            # Keras outputs where(mask, x, 0). With mask_value 0 a masked step is all zeros already, so
            # the Where (a node on the single-step path) would change nothing.
            return _Value(value.name, keep)
        out = self.w.op1("Where", [keep_full, x, self.w.const(np.zeros((), np.float32), "zero")])
        return _Value(self._from_time_major(out) if time_major else out, keep)

    def _any_differs(self, x: str, mask_value: float) -> str:
        """(..., 1) bool over the last axis: does any feature differ from mask_value?"""
        value = self.w.const(np.asarray(mask_value, np.float32), "mask_value")
        if np.isfinite(mask_value):
            # The L1 norm of (x - mask_value) is 0 exactly when no feature differs: a sum of magnitudes
            # cannot cancel, a NaN or an Inf makes it nonzero as it makes Keras' not_equal true, and Cast
            # to bool is "!= 0". Two nodes where Equal/Not/Cast/ReduceMax/Cast take five.
            diff = x if mask_value == 0.0 else self.w.op1("Sub", [x, value])
            return self.w.op1("Cast", [self.w.reduce("ReduceL1", diff, -1, keepdims=1)], to=TensorProto.BOOL)
        # An infinite mask_value: inf - inf is NaN, which would count as "differs". Compare instead.
        differs = self.w.op1("Cast", [self.w.op1("Not", [self.w.op1("Equal", [x, value])])], to=TensorProto.FLOAT)
        return self.w.op1("Cast", [self.w.reduce("ReduceMax", differs, -1, keepdims=1)], to=TensorProto.BOOL)

    def lower_dense(self, layer: Any, tensor: Any, value: _Value) -> _Value:
        """MatMul (it broadcasts over batch and time), Add, activation: what Keras' Dense.call does.
        tf2onnx writes Keras' tensordot as Shape/Cast/Reshape/Gather/Concat/Cast/MatMul/Reshape."""
        out = self.w.op1("MatMul", [value.name, self.w.const(_numpy(layer.kernel), "kernel")])
        if layer.bias is not None:
            out = self.w.op1("Add", [out, self.w.const(_numpy(layer.bias), "bias")])
        activation = _dense_activation(layer, tensor)
        if activation == "gelu":
            # Keras' default (exact) gelu, x/2 (1 + erf(x/sqrt 2)); ONNX has Gelu only from opset 20, and
            # tf2onnx writes TensorFlow's erfc as an Erfc node ONNX does not have. Below x = -5.5 the sum
            # cancels to 0 where TensorFlow's erfc form gives values under 1e-8: far inside the tolerance.
            half = self.w.op1("Mul", [out, self.w.const(np.asarray(0.5, np.float32), "half")])
            erf = self.w.op1("Erf", [self.w.op1("Mul", [out, self.w.const(np.asarray(np.sqrt(0.5), np.float32), "rsqrt2")])])
            out = self.w.op1("Mul", [half, self.w.op1("Add", [erf, self.w.const(np.asarray(1.0, np.float32), "one")])])
        elif activation == "silu":
            out = self.w.op1("Mul", [out, self.w.op1("Sigmoid", [out])])
        elif activation:
            out = self.w.op1(activation, [out], **({"axis": -1} if activation == "Softmax" else {}))
        return _Value(out, value.mask)  # Dense supports masking: the mask passes through

    def lower_embedding(self, layer: Any, tensor: Any, value: _Value) -> _Value:
        """One Gather. tf2onnx writes ten nodes for Keras' take(), which maps negative ids to
        id + vocabulary by hand; ONNX Gather does that itself (and, like TensorFlow, refuses ids out of range)."""
        raw = value.name
        ids = raw
        if str(tensor.dtype) not in ("int32", "int64"):
            ids = self.w.op1("Cast", [raw], to=TensorProto.INT32)  # as Keras does; Gather takes int32/int64 only
        table = self.w.const(_numpy(layer.embeddings), "embeddings")
        out = self.w.op1("Gather", [table, ids], axis=0)
        mask = None
        sequence = len(tensor.shape) == 2  # (batch, time) ids: a recurrent layer may read them next
        if sequence:
            # Both layouts, each pruned when unread: gathering with transposed ids gives the time-major
            # embeddings directly, cheaper than transposing the embedded vectors.
            ids_tm = self.w.transpose(ids, [1, 0])
            self._time_major[out] = self.w.op1("Gather", [table, ids_tm], axis=0)
        if layer.mask_zero:
            # Keras' mask is not_equal(inputs, 0) on the ids as given, before its cast (an id 0.5 is kept):
            # Cast to bool is that "!= 0".
            mask = self.w.op1("Cast", [raw], to=TensorProto.BOOL)
            if sequence:
                raw_tm = ids_tm if ids == raw else self.w.transpose(raw, [1, 0])
                self._mask_forms[mask, "time_major"] = self.w.op1("Cast", [self.w.unsqueeze(raw_tm, -1)],
                                                                  to=TensorProto.BOOL)
        return _Value(out, mask)

    def lower_time_distributed(self, layer: Any, tensor: Any, value: _Value) -> _Value:
        """Fold time into batch, apply the inner layer once, unfold: tf2onnx turns Keras'
        TimeDistributed into a Loop whose output shape is wrong for a dynamic time axis."""
        rest = [int(d) for d in tensor.shape[2:]]
        flat = self.w.op1("Reshape", [value.name, self.w.ints([-1] + rest)])
        signature = [InputSignature("in0", str(tensor.dtype), (None, *rest))]
        proto = convert_call(lambda x: layer.layer(x), signature, self.w.opset, layer.name)
        inner = self.w.splice(proto, [flat], layer.name)[0]
        out_rest = [int(d) for d in layer.layer.compute_output_shape((None, *rest))[1:]]
        batch_time = self.w.op1("Slice", [self.w.op1("Shape", [value.name]), self.w.ints([0]), self.w.ints([2])])
        shape = self.w.op1("Concat", [batch_time, self.w.ints(out_rest)], axis=0)
        return _Value(self.w.op1("Reshape", [inner, shape]), value.mask)

    def convert_with_tf2onnx(self, node: Any, values: dict[int, _Value], consumes_mask: bool) -> list[_Value]:
        tensors = list(node.input_tensors)
        signature = [InputSignature(f"in{i}", str(t.dtype), (None,) + tuple(t.shape[1:])) for i, t in enumerate(tensors)]
        feeds = [values[id(t)].name for t in tensors]
        first = values[id(tensors[0])]
        pass_mask = consumes_mask and first.mask is not None
        if pass_mask:
            signature.append(InputSignature("mask", "bool", (None, tensors[0].shape[1])))
            feeds.append(first.mask)

        def call(*args: Any) -> Any:
            lookup = {id(t): a for t, a in zip(tensors, args)}
            call_args, call_kwargs = node.arguments.fill_in(lookup)
            if pass_mask:
                call_kwargs = dict(call_kwargs, mask=args[-1])
            return node.operation(*call_args, **call_kwargs)

        proto = convert_call(call, signature, self.w.opset, node.operation.name)
        names = self.w.splice(proto, feeds, node.operation.name)
        return [_Value(n) for n in names]

    def lower_recurrent(self, layer: Any, node: Any, values: dict[int, _Value]) -> tuple[list[_Value], str]:
        cls = type(layer).__name__
        args, kwargs = node.arguments.args, node.arguments.kwargs
        sequence = values[id(args[0])]
        initial = kwargs.get("initial_state")
        if initial is None and len(args) > 1:
            initial = args[1]
        incoming_mask = sequence.mask
        if kwargs.get("mask") is None:
            # Keras applies a mask only when it passes one (mask=) to the layer. It does not, for one,
            # when initial_state is given (Keras 3.15): the padded steps are then processed like any other.
            sequence = _Value(sequence.name, None)
        elif sequence.mask is None:
            # Keras passes a propagated mask as mask=; only one we computed ourselves can be lowered.
            raise NotFusable("a mask= argument that does not come from Masking or Embedding(mask_zero=True)")
        initial_values = [values[id(t)].name for t in (initial if isinstance(initial, (list, tuple)) else [initial])] \
            if initial is not None else []
        # Plan (and so refuse) before writing anything: a refused layer leaves no state input behind.
        plans = _bidirectional_plans(layer) if cls == "Bidirectional" else [plan_cell(layer)]
        explicit = self.state_io or getattr(layer, "stateful", False)
        roles = _state_roles(layer)
        call = layer._inbound_nodes.index(node)
        owner = layer.name if call == 0 else f"{layer.name}_call{call}"  # a shared layer: one set per call
        state_sources = list(initial_values)  # what feeds each state: a model input, or an inner value
        if explicit and not initial_values:
            state_sources = [self._state_input(f"{owner}_initial_{role}", units) for role, units in roles]
            initial_values = [self._expand_to_batch(name, units, self._to_time_major(sequence.name))
                              for name, (_, units) in zip(state_sources, roles)]
        if cls == "Bidirectional":
            outputs, op = self.lower_bidirectional(layer, plans, sequence, initial_values)
            self._record_states(owner, explicit, state_sources, outputs[_main_count(layer):], roles)
            outputs = outputs if layer.return_state else outputs[:_main_count(layer)]
            return self._keep_mask(outputs, layer, incoming_mask), op
        plan = plans[0]
        go_backwards = bool(layer.go_backwards)
        x = self._to_time_major(sequence.name)
        seq_lens = self._sequence_lens(sequence.mask)
        left = seq_lens is not None and self.padding == "left"
        # sequence_lens counts valid steps from the start of the op's input. A right-padded input goes in
        # as it is; a left-padded one goes in flipped in time, where its kept steps come first. Keras
        # returns a backwards layer's outputs in processing order: without a mask, reversing the input
        # and running forward gives that order (as tf2onnx does). With a mask the op runs forward on the
        # input whose padding ends it in processing order (right padding forward, left padding
        # backwards) and in reverse otherwise, and its output is flipped back.
        flip_input = (go_backwards and seq_lens is None and layer.return_sequences) or left
        if flip_input:
            x = self.w.flip(x, 0)
        op_inputs = [x, self.w.const(plan.W[None], "W"), self.w.const(plan.R[None], "R"),
                     self.w.const(plan.B[None], "B"), seq_lens or ""]
        op_inputs += [self.w.unsqueeze(s, 0) for s in initial_values]
        if seq_lens is None:
            direction = "reverse" if go_backwards and not flip_input else "forward"
        else:
            direction = "reverse" if go_backwards != left else "forward"
        outs = self.w.op(plan.op, _trim(op_inputs), outputs=1 + plan.state_count, **_op_attributes([plan], direction))
        y, states = outs[0], [self.w.squeeze(s, 0) for s in outs[1:]]
        nan = self._nan_steps(self._to_time_major(sequence.name), sequence.mask) if self.propagate_nan else None
        if nan is not None:
            states = [self._poison(s, self._any_step(nan)) for s in states]
        zero_masked = bool(getattr(layer, "zero_output_for_mask", False))
        bad = self._padding_flag(sequence.mask) if seq_lens is not None else None
        if bad is not None:
            states = [self._poison(s, bad) for s in states]
        if layer.return_sequences:
            main_tm = self.w.squeeze(y, 1)  # (time, batch, units)
            if direction == "reverse":
                # ONNX writes a reverse op's outputs in its input's order; flipped, they are in Keras'
                # order. The padding is then processed first, and Keras, like ONNX, outputs zeros there.
                main_tm = self.w.flip(main_tm, 0)
            elif sequence.mask is not None and not zero_masked:
                # The padding comes last in processing order: Keras carries the last output over it,
                # ONNX writes zeros. Y_h is (1, batch, units): it broadcasts against (time, batch, units).
                carried = outs[1] if nan is None else self.w.unsqueeze(states[0], 0)
                keep = self._mask_time_major(sequence.mask)
                keep = self.w.flip(keep, 0) if left else keep  # processing order
                main_tm = self.w.op1("Where", [keep, main_tm, carried])
            if nan is not None:
                # Keras' outputs are in processing order; a NaN poisons every later step, but for a layer
                # that writes zeros at masked steps (zero_output_for_mask) not those.
                in_order = self.w.flip(nan, 0) if go_backwards else nan
                flags = self._from_first(in_order)
                if sequence.mask is not None and zero_masked:
                    kept = self.w.squeeze(self._mask_time_major(sequence.mask), -1)
                    flags = self.w.op1("And", [flags, self.w.flip(kept, 0) if go_backwards else kept])
                main_tm = self._poison(main_tm, self.w.unsqueeze(flags, -1))
            if bad is not None:
                main_tm = self._poison(main_tm, bad)
            main = self._from_time_major(main_tm)
        else:
            main = states[0]
        if seq_lens is not None and initial_values:
            states = self._keep_initial_when_empty(states, initial_values, seq_lens)
        outputs = [_Value(main, sequence.mask if layer.return_sequences else None)]
        outputs += [_Value(s) for s in states]  # dropped below unless the layer returns its states
        self._record_states(owner, explicit, state_sources, outputs[1:], roles)
        outputs = outputs if layer.return_state else outputs[:1]
        return self._keep_mask(outputs, layer, incoming_mask), plan.op

    def _state_input(self, name: str, units: int) -> str:
        """A graph input for one initial state, zeros when not fed (an initializer it overrides)."""
        self.report.state_inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", units]))
        self.w.initializers.append(numpy_helper.from_array(np.zeros((1, units), np.float32), name))
        return name

    def _expand_to_batch(self, state: str, units: int, x_tm: str) -> str:
        """Broadcast a (1, units) default to the batch of the time-major input; a fed (batch, units)
        state passes unchanged."""
        batch = self.w.op1("Slice", [self.w.op1("Shape", [x_tm]), self.w.ints([1]), self.w.ints([2])])
        shape = self.w.op1("Concat", [batch, self.w.ints([units])], axis=0)
        return self.w.op1("Expand", [state, shape])

    def _record_states(self, owner: str, explicit: bool, sources: Sequence[str], states: Sequence[_Value],
                       roles: Sequence[tuple[str, int]]) -> None:
        """Remember which input feeds which final state, for the exporter's state map and extra outputs."""
        if explicit:
            for (role, units), source, value in zip(roles, sources, states):
                self.report.states.append(StateIO(source, value.name, owner, role, units))

    @staticmethod
    def _keep_mask(outputs: list[_Value], layer: Any, mask: str | None) -> list[_Value]:
        """Keras hands the input's mask on to a layer returning sequences, whether or not it applied it."""
        if layer.return_sequences and mask is not None:
            for value in outputs[:_main_count(layer)]:
                value.mask = mask
        return outputs

    def lower_bidirectional(self, layer: Any, plans: Sequence[CellPlan], sequence: _Value,
                            initial_values: list[str]) -> tuple[list[_Value], str]:
        count = plans[0].state_count
        x_tm = self._to_time_major(sequence.name)
        seq_lens = self._sequence_lens(sequence.mask)
        # Left padding: the op reads the input flipped in time, so that the kept steps come first for
        # sequence_lens. Its forward direction then does what Keras' backward layer does and its reverse
        # direction what the forward layer does: the weights, initial states, Y and the final states
        # swap directions, and Y flips back in time.
        left = seq_lens is not None and self.padding == "left"
        order = [1, 0] if left else [0, 1]
        x = self.w.flip(x_tm, 0) if left else x_tm
        W = self.w.const(np.stack([plans[i].W for i in order]), "W")
        R = self.w.const(np.stack([plans[i].R for i in order]), "R")
        B = self.w.const(np.stack([plans[i].B for i in order]), "B")
        op_inputs = [x, W, R, B, seq_lens or ""]
        if initial_values:
            # Keras orders them forward states then backward states; ONNX stacks directions per state.
            per_direction = [initial_values[:count], initial_values[count:]]
            op_inputs += [self.w.op1("Concat", [self.w.unsqueeze(per_direction[order[0]][k], 0),
                                                self.w.unsqueeze(per_direction[order[1]][k], 0)], axis=0)
                          for k in range(count)]
        outs = self.w.op(plans[0].op, _trim(op_inputs), outputs=1 + count,
                         **_op_attributes([plans[i] for i in order], "bidirectional"))
        y, states = outs[0], outs[1:]
        if left:
            swap = self.w.ints([1, 0])
            y = self.w.op1("Gather", [self.w.flip(y, 0), swap], axis=1)  # (time, [forward, backward], batch, units)
            states = [self.w.op1("Gather", [state, swap], axis=0) for state in states]
        if self.propagate_nan:
            nan = self._nan_steps(x_tm, sequence.mask)
            any_nan = self.w.unsqueeze(self._any_step(nan), 0)  # (1, batch, 1) against (2, batch, units)
            states = [self._poison(s, any_nan) for s in states]
            # Y is (time, 2, batch, units): forward outputs are poisoned after a NaN, backward ones before it,
            # but not at masked steps, where Keras' Bidirectional writes zeros.
            flags = self.w.op1("Concat", [self.w.unsqueeze(self._from_first(nan, reverse=r), 1) for r in (False, True)],
                               axis=1)
            if sequence.mask is not None:
                flags = self.w.op1("And", [flags, self.w.transpose(self._mask_time_major(sequence.mask), [0, 2, 1])])
            y = self._poison(y, self.w.unsqueeze(flags, 3))
        if seq_lens is not None:
            bad = self._padding_flag(sequence.mask)
            y = self._poison(y, bad)
            states = [self._poison(s, bad) for s in states]
        merge = layer.merge_mode
        if layer.return_sequences:
            # Keras' Bidirectional zeroes masked steps (zero_output_for_mask), as ONNX does.
            main = self._merge_sequences(y, merge)
        else:
            main = self._merge(states[0], merge, direction_axis=0)
        out_mask = sequence.mask if layer.return_sequences else None
        outputs = [_Value(m, out_mask) for m in main]
        split = [self.w.op("Split", [s, self.w.ints([1, 1])], outputs=2, axis=0) for s in states]
        outputs += [_Value(self.w.squeeze(parts[0], 0)) for parts in split]
        outputs += [_Value(self.w.squeeze(parts[1], 0)) for parts in split]
        # The states come back even when the layer does not return them: the caller records them for
        # the state map, then drops them (an unread value is pruned from the graph).
        return outputs, plans[0].op

    # -- NaN propagation (optional): ONNX Runtime's fused LSTM/GRU activations clamp, so a NaN input
    # comes out finite; Keras propagates it. These guards put the NaN back where Keras has it.

    def _nan_steps(self, x_tm: str, mask: str | None = None) -> str:
        """(time, batch) float: 1 where an input step holds a NaN (a kept step: Keras skips masked ones)."""
        isnan = self.w.op1("Cast", [self.w.op1("IsNaN", [x_tm])], to=TensorProto.FLOAT)
        steps = self.w.reduce("ReduceMax", isnan, -1, keepdims=0)
        if mask is None:
            return steps
        kept = self.w.op1("Cast", [self.w.squeeze(self._mask_time_major(mask), -1)], to=TensorProto.FLOAT)
        return self.w.op1("Mul", [steps, kept])

    def _any_step(self, nan_steps: str) -> str:
        """(batch, 1) bool: the sample has a NaN anywhere."""
        anywhere = self.w.transpose(self.w.reduce("ReduceMax", nan_steps, 0, keepdims=1), [1, 0])
        return self.w.op1("Cast", [anywhere], to=TensorProto.BOOL)

    def _from_first(self, nan_steps: str, reverse: bool = False) -> str:
        """(time, batch) bool: at or after (before, when reverse) a NaN step."""
        count = self.w.op1("CumSum", [nan_steps, self.w.const(np.asarray(0, np.int64), "zero")], reverse=int(reverse))
        return self.w.op1("Greater", [count, self.w.const(np.asarray(0, np.float32), "zero")])

    def _poison(self, value: str, flag: str) -> str:
        """NaN where the bool flag (broadcast against the value) is true."""
        return self.w.op1("Where", [flag, self.w.const(np.asarray(np.nan, np.float32), "nan"), value])

    def _padding_flag(self, mask: str) -> str:
        """(batch, 1) bool: the samples whose mask is not a padding on the export's side (right, or left
        with padding="left"). It broadcasts against states (batch, units), time-major sequences
        (time, batch, units) and Y (time, 2, batch, units) alike. Their outputs become NaN instead of
        silently wrong numbers.

        `sequence_lens` can only say "the first n steps are valid". Keras skips masked steps wherever
        they are, so for a mask with holes, or padding on the other side, the fused op computes something
        else; NaN is what no parity check or user can mistake for a result.
        """
        return self._mask_form(mask, "bad_padding", lambda: self._write_padding_flag(mask))

    def _write_padding_flag(self, mask: str) -> str:
        # A right padding never goes from a masked step back to a kept one: a rise (mask[t+1] - mask[t] = 1)
        # marks a bad sample; a left padding never goes from kept to masked: a fall marks it. ReduceMax
        # over the empty axis of a 1-step sequence gives INT32_MIN: neither.
        int_max = np.iinfo(np.int64).max
        as_int = self._mask_int32(mask)  # (time, batch, 1)
        before = self.w.op1("Slice", [as_int, self.w.ints([0]), self.w.ints([-1]), self.w.ints([0])])
        after = self.w.op1("Slice", [as_int, self.w.ints([1]), self.w.ints([int_max]), self.w.ints([0])])
        change = [before, after] if self.padding == "left" else [after, before]
        rise = self.w.reduce("ReduceMax", self.w.op1("Sub", change), 0, keepdims=0)
        return self.w.op1("Greater", [rise, self.w.const(np.asarray(0, np.int32), "zero")])

    def _keep_initial_when_empty(self, states: list[str], initial: Sequence[str], seq_lens: str) -> list[str]:
        """A sample with every step masked keeps its initial states in Keras; ONNX Runtime returns zeros
        for sequence_lens 0. Only matters when states come in (state inputs, stateful layers)."""
        empty = self.w.unsqueeze(self.w.op1("Equal", [seq_lens, self.w.const(np.asarray(0, np.int32), "zero")]), -1)
        return [self.w.op1("Where", [empty, init, state]) for state, init in zip(states, initial)]

    def _merge_sequences(self, y: str, merge: str | None) -> list[str]:
        """Merge the directions of Y (time, 2, batch, units) as Keras does, in both layouts: the
        batch-major value is the layer's output, the time-major one what a next recurrent layer reads
        (the unread one is pruned)."""
        if merge == "concat":
            batch_major = self.w.op1("Reshape", [self.w.transpose(y, [2, 0, 1, 3]), self.w.ints([0, 0, -1])])
            self._time_major[batch_major] = self.w.op1("Reshape", [self.w.transpose(y, [0, 2, 1, 3]),
                                                                    self.w.ints([0, 0, -1])])
            return [batch_major]
        return [self._from_time_major(m) for m in self._merge(y, merge, direction_axis=1)]

    def _merge(self, value: str, merge: str | None, direction_axis: int) -> list[str]:
        """Merge the two directions of Y_h (2, batch, units), or of Y along its direction axis when the
        merge is not concat: reduced, or split in two."""
        if merge == "concat":
            return [self.w.op1("Reshape", [self.w.transpose(value, [1, 0, 2]), self.w.ints([0, -1])])]
        reducers = {"sum": "ReduceSum", "ave": "ReduceMean", "mul": "ReduceProd"}
        if merge in reducers:
            return [self.w.reduce(reducers[merge], value, direction_axis, keepdims=0)]
        parts = self.w.op("Split", [value, self.w.ints([1, 1])], outputs=2, axis=direction_axis)
        return [self.w.squeeze(p, direction_axis) for p in parts]

    # -- layouts and masks

    def _to_time_major(self, value: str) -> str:
        """The (time, batch, features) form of a batch-major sequence."""
        if value not in self._time_major:
            self._time_major[value] = self.w.transpose(value, [1, 0, 2])
        return self._time_major[value]

    def _from_time_major(self, value_tm: str) -> str:
        """The batch-major form of a time-major sequence: the Keras layout, for outputs and other layers."""
        batch_major = self.w.transpose(value_tm, [1, 0, 2])
        self._time_major[batch_major] = value_tm
        return batch_major

    def _mask_form(self, mask: str, form: str, write: Callable[[], str]) -> str:
        if (mask, form) not in self._mask_forms:
            self._mask_forms[mask, form] = write()
        return self._mask_forms[mask, form]

    def _sequence_lens(self, mask: str | None) -> str | None:
        """(batch,) int32: the kept steps of each sample."""
        if mask is None:
            return None
        return self._mask_form(mask, "lengths", lambda: self.w.op1(
            "ReduceSum", [self._mask_int32(mask), self.w.ints([0, 2])], keepdims=0))

    def _mask_time_major(self, mask: str) -> str:
        """The (time, batch, 1) bool form of a (batch, time) mask: what a Where against a time-major
        sequence needs. Masking and Embedding write it directly; a mask made otherwise is transposed."""
        return self._mask_form(mask, "time_major", lambda: self.w.unsqueeze(self.w.transpose(mask, [1, 0]), -1))

    def _mask_int32(self, mask: str) -> str:
        """The (time, batch, 1) mask as int32, for sequence_lens and the padding guard."""
        return self._mask_form(mask, "int32", lambda: self.w.op1(
            "Cast", [self._mask_time_major(mask)], to=TensorProto.INT32))


def _main_count(layer: Any) -> int:
    """How many outputs come before the states: two for a Bidirectional with merge_mode=None."""
    return 2 if type(layer).__name__ == "Bidirectional" and layer.merge_mode is None else 1


# Keras activations a Dense layer may end in, as the ONNX op computing the same function ("" for none).
_DENSE_ACTIVATIONS = {"linear": "", "relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "softmax": "Softmax",
                      "gelu": "gelu", "silu": "silu"}  # the last two take a few nodes each


def _dense_activation(layer: Any, tensor: Any) -> str | None:
    """The ONNX op for a plain Dense layer's activation, "" for linear; None when lstm-onnx does not lower
    the layer itself (not a Dense, quantized or LoRA weights, an input or compute dtype other than
    float32 (Keras would cast), another activation): tf2onnx converts it then."""
    import keras

    if type(layer).__name__ != "Dense" or tensor is None or str(tensor.dtype) != "float32":
        return None
    if getattr(layer, "quantization_mode", None) or getattr(layer, "lora_enabled", False):
        return None
    if str(getattr(layer, "compute_dtype", "float32")) != "float32":
        return None
    # By identity, not by name: keras.ops.gelu is also called "gelu" but defaults to the tanh approximation.
    for name, op in _DENSE_ACTIVATIONS.items():
        if layer.activation is getattr(keras.activations, name) or (layer.activation is None and name == "linear"):
            return op
    return None


def _plain_embedding(layer: Any) -> bool:
    """An Embedding that is a table lookup: no quantized or LoRA weights, float32 output."""
    return (not getattr(layer, "quantization_mode", None) and not getattr(layer, "lora_enabled", False)
            and str(getattr(layer, "compute_dtype", "float32")) == "float32")


def _np_dtype(dtype: Any) -> np.dtype:
    return np.dtype(str(dtype))


def lower_model(model: Any, signature: Sequence[InputSignature], opset: int, propagate_nan: bool = False,
                state_io: bool = False, padding: str = "right") -> tuple[onnx.ModelProto, LoweringReport]:
    """Write the ONNX model for a Keras model; outputs in the model's order, named later by the exporter.

    With `state_io` (and always for `stateful=True` layers) every recurrent layer gets initial-state
    inputs and its final states as extra outputs, after the model's own (see `LoweringReport.states`).
    """
    writer = GraphWriter(opset)
    report = LoweringReport()
    inputs = [_Value(s.name) for s in signature]
    outputs = Lowerer(writer, report, propagate_nan, state_io, padding).walk(model, inputs)
    graph_inputs = [
        helper.make_tensor_value_info(s.name, helper.np_dtype_to_tensor_dtype(np.dtype(s.dtype)), list(s.shape))
        for s in signature
    ] + list(report.state_inputs)
    graph_outputs = [
        helper.make_tensor_value_info(v.name, helper.np_dtype_to_tensor_dtype(_np_dtype(t.dtype)), None)
        for v, t in zip(outputs, model.outputs)
    ] + [helper.make_tensor_value_info(st.value, TensorProto.FLOAT, None) for st in report.states]
    nodes = prune(writer.nodes, [v.name for v in graph_outputs])
    graph = helper.make_graph(nodes, model.name, graph_inputs, graph_outputs, writer.initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 8  # what tf2onnx writes for opsets 15-18; ONNX Runtime >= 1.13 loads it
    return proto, report
