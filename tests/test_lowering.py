"""The lowering package piece by piece: the handler table, the graph writer, the cell plans and the mask
forms, each on real Keras layers and run in ONNX Runtime."""

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from toolkit.lowering import CELL_OPS, LoweringReport, NotFusable, lower_model, masks, plan_cell
from toolkit.lowering.cells import op_attributes
from toolkit.lowering.context import HANDLERS, LoweringContext
from toolkit.lowering.dispatch import handler_for
from toolkit.lowering.layers import IDENTITY_LAYERS, fallback, lower_recurrent_layer
from toolkit.lowering.writer import GraphWriter, outer_reads, prune, rename_values
from toolkit.options import ExportOptions
from toolkit.tf2onnx_lib import InputSignature

OPSET = 17


def _run(writer, inputs, outputs, feeds):
    """Run what a writer wrote in ONNX Runtime: `inputs` are (name, elem_type, shape) triples."""
    graph = helper.make_graph(
        prune(writer.nodes, outputs), "t", [helper.make_tensor_value_info(*i) for i in inputs],
        [helper.make_empty_tensor_value_info(o) for o in outputs], writer.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", writer.opset)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(outputs, feeds)


# ------------------------------------------------------------------------------------- handler table


def test_every_lowered_layer_class_has_a_handler():
    lowered = {"Masking", "Dense", "Embedding", "TimeDistributed", "LSTM", "GRU", "SimpleRNN", "RNN",
               "Bidirectional", *IDENTITY_LAYERS}
    assert lowered <= set(HANDLERS)
    assert all(HANDLERS[name] is lower_recurrent_layer for name in ("LSTM", "GRU", "SimpleRNN", "Bidirectional"))


def test_handlers_are_found_by_class_and_a_recurrent_subclass_goes_to_the_recurrent_handler():
    import keras

    class PeepholeLSTM(keras.layers.LSTM):  # a subclass under its own name
        pass

    assert handler_for(keras.layers.Dense(2)) is HANDLERS["Dense"]
    assert handler_for(keras.layers.Dropout(0.1)) is HANDLERS["Dropout"]
    assert handler_for(PeepholeLSTM(2)) is lower_recurrent_layer
    assert handler_for(keras.layers.LayerNormalization()) is fallback


def test_an_unknown_layer_goes_to_tf2onnx_and_an_unfusable_one_with_its_reason():
    import keras

    x = keras.Input((None, 3), name="x")
    y = keras.layers.LayerNormalization(name="norm")(x)  # no handler: tf2onnx
    y = keras.layers.GRU(2, activation="selu", return_sequences=True, name="selu_gru")(y)  # not fusable
    y = keras.layers.LSTM(2, name="plain")(y)
    model = keras.Model(x, y)
    proto, report = lower_model(model, [InputSignature("x", "float32", (None, None, 3))], ExportOptions(opset=OPSET))
    ops = {node.op_type for node in proto.graph.node}
    assert "LSTM" in ops and "GRU" not in ops and "Loop" in ops  # the unfusable GRU is tf2onnx's Loop
    assert [(e.layer, e.onnx_op) for e in report.layers] == [("selu_gru", "tf2onnx"), ("plain", "LSTM")]
    assert report.layers[0].reason.startswith("activation 'selu' has no ONNX GRU equivalent (supported: [")
    data = np.random.default_rng(0).standard_normal((2, 4, 3)).astype(np.float32)
    got = ort.InferenceSession(proto.SerializeToString()).run(None, {"x": data})[0]
    np.testing.assert_allclose(got, model(data).numpy(), rtol=1e-5, atol=1e-6)


def test_a_handler_may_leave_its_layer_to_tf2onnx():
    import keras

    x = keras.Input((None, 3), name="x")
    y = keras.layers.Dense(2, activation="elu", name="elu")(keras.layers.LSTM(2, return_sequences=True)(x))
    proto, _ = lower_model(keras.Model(x, y), [InputSignature("x", "float32", (None, None, 3))], ExportOptions(opset=OPSET))
    assert "Elu" in {node.op_type for node in proto.graph.node}  # tf2onnx's conversion, spliced in


# -------------------------------------------------------------------------------------- graph writer


def test_constants_are_shared_by_value_and_dtype():
    w = GraphWriter(OPSET)
    assert w.ints([1, 2]) == w.ints([1, 2]) != w.const(np.asarray([1, 2], np.int32))
    assert w.scalar(0, np.float32, "zero") == w.scalar(0.0, np.float32, "other hint")
    assert len(w.initializers) == 3 and len({w.fresh("v") for _ in range(5)}) == 5


@pytest.mark.parametrize("opset", [17, 18])
def test_flip_reduce_and_dim_range_run_in_onnx_runtime(opset):
    w = GraphWriter(opset)
    flipped = w.flip("x", 1)
    biggest = w.reduce("ReduceMax", "x", -1, keepdims=0)  # axes an attribute before opset 18, an input after
    dims = w.dim_range("x", 0, 2)
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    got = _run(w, [("x", TensorProto.FLOAT, [None, None, 4])], [flipped, biggest, dims], {"x": x})
    np.testing.assert_array_equal(got[0], x[:, ::-1])
    np.testing.assert_array_equal(got[1], x.max(-1))
    np.testing.assert_array_equal(got[2], [2, 3])


def test_prune_drops_unread_nodes_and_trims_unread_recurrent_outputs():
    w = GraphWriter(OPSET)
    unread = w.op1("Relu", ["x"])
    y, y_h, y_c = w.op("LSTM", ["x", "W", "R"], outputs=3, hidden_size=2)
    kept = prune(w.nodes, [y_h])
    assert [n.op_type for n in kept] == ["LSTM"] and unread not in kept[0].output
    assert list(kept[0].output) == ["", y_h]  # Y not written, Y_c dropped from the end


def test_rename_values_reaches_into_subgraphs_but_not_their_own_names():
    body = helper.make_graph([helper.make_node("Add", ["outer", "inner"], ["out"])], "body",
                             [helper.make_tensor_value_info("inner", TensorProto.FLOAT, None)],
                             [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)])
    graph = helper.make_graph([helper.make_node("If", ["cond"], ["result"], then_branch=body, else_branch=body)],
                              "g", [], [])
    assert outer_reads(graph) == {"cond", "outer"}
    rename_values(graph, {"outer": "renamed", "inner": "nope", "cond": "c"})
    assert outer_reads(graph) == {"c", "renamed"}
    assert list(graph.node[0].attribute[0].g.node[0].input) == ["renamed", "inner"]


# ---------------------------------------------------------------------------------------- cell plans


def _keras_lstm(**kwargs):
    import keras

    layer = keras.layers.LSTM(3, return_sequences=True, **kwargs)
    layer.build((None, None, 2))
    rng = np.random.default_rng(1)
    layer.set_weights([rng.standard_normal(v.shape).astype(np.float32) for v in layer.weights])
    return layer


def test_lstm_gates_are_reordered_from_ifco_to_iofc():
    layer = _keras_lstm()
    kernel, recurrent, bias = layer.get_weights()
    plan = plan_cell(layer)
    keras_gate = {"i": 0, "f": 1, "c": 2, "o": 3}
    for onnx_index, gate in enumerate("iofc"):
        rows = slice(3 * onnx_index, 3 * onnx_index + 3)
        cols = slice(3 * keras_gate[gate], 3 * keras_gate[gate] + 3)
        np.testing.assert_array_equal(plan.W[rows], kernel[:, cols].T)
        np.testing.assert_array_equal(plan.R[rows], recurrent[:, cols].T)
        np.testing.assert_array_equal(plan.B[rows], bias[cols])
    np.testing.assert_array_equal(plan.B[12:], 0)  # Keras has one bias: the recurrent one is zero
    assert plan.activations == ("Sigmoid", "Tanh", "Tanh") and plan.state_count == 2


@pytest.mark.parametrize("recurrent_activation", ["sigmoid", "hard_sigmoid"])
def test_a_planned_lstm_runs_like_keras_in_onnx_runtime(recurrent_activation):
    layer = _keras_lstm(recurrent_activation=recurrent_activation)
    plan = plan_cell(layer)
    w = GraphWriter(OPSET)
    y = w.op1("LSTM", ["x", w.const(plan.W[None]), w.const(plan.R[None]), w.const(plan.B[None])],
              **op_attributes([plan], "forward"))
    x = np.random.default_rng(2).standard_normal((5, 2, 2)).astype(np.float32)  # (time, batch, features)
    got = _run(w, [("x", TensorProto.FLOAT, [None, None, 2])], [y], {"x": x})[0]  # (time, 1, batch, units)
    want = layer(np.transpose(x, (1, 0, 2))).numpy()
    np.testing.assert_allclose(np.transpose(got[:, 0], (1, 0, 2)), want, rtol=1e-5, atol=1e-6)


def test_gru_reset_after_bias_and_refusals():
    import keras

    gru = keras.layers.GRU(2, reset_after=True)
    gru.build((None, None, 3))
    plan = plan_cell(gru)
    bias = gru.get_weights()[2]  # (2, 6): input bias, recurrent bias
    np.testing.assert_array_equal(plan.B, np.concatenate([bias[0], bias[1]]))
    assert plan.linear_before_reset == 1 and set(CELL_OPS) == {"LSTM", "GRU", "SimpleRNN"}
    rnn = keras.layers.SimpleRNN(2, activation="selu")
    rnn.build((None, None, 3))
    with pytest.raises(NotFusable, match="activation 'selu' has no ONNX RNN equivalent"):
        plan_cell(rnn)
    with pytest.raises(NotFusable, match="ConvLSTM1D is not one of"):
        plan_cell(keras.layers.ConvLSTM1D(2, 3))


# ---------------------------------------------------------------------------------------- mask forms


def _mask_graph():
    ctx = LoweringContext(GraphWriter(OPSET), LoweringReport())
    return ctx, [("mask", TensorProto.BOOL, [None, None])]


MASK = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 1, 1], [1, 0, 1, 0], [0, 0, 0, 0]], bool)  # (batch, time)


@pytest.mark.parametrize("reverse", [False, True])
def test_sequence_lens_and_the_steps_that_move_kept_steps_first_and_back(reverse):
    """(batch, time, 1) step indices, GatherND's with batch_dims=1."""
    ctx, inputs = _mask_graph()
    lengths = masks.sequence_lens(ctx, "mask")
    forms = [masks.gather_steps(ctx, "mask", reverse), masks.scatter_steps(ctx, "mask", reverse, zero_masked=False),
             masks.scatter_steps(ctx, "mask", reverse, zero_masked=True)]
    assert masks.sequence_lens(ctx, "mask") == lengths and masks.gather_steps(ctx, "mask", reverse) == forms[0]
    got_lengths, gather, carried, zeroed = _run(ctx.w, inputs, [lengths, *forms], {"mask": MASK})
    np.testing.assert_array_equal(got_lengths, [3, 2, 2, 2, 0])
    steps = MASK.shape[1]
    for b, kept in enumerate(MASK):
        order = [t for t in (range(steps - 1, -1, -1) if reverse else range(steps)) if kept[t]]
        # The op's step j reads sample b's j-th kept step, in processing order; later steps are never read.
        np.testing.assert_array_equal(gather[b, :len(order), 0], order)
        processed = kept[::-1] if reverse else kept
        count = np.cumsum(processed) - 1  # the op's step holding the last kept step so far; -1: none yet
        np.testing.assert_array_equal(carried[b, :, 0], count)
        np.testing.assert_array_equal(zeroed[b, :, 0], np.where(processed, count, -1))


def test_masking_mask_and_nan_guards():
    ctx, _ = _mask_graph()
    keep = masks.any_differs(ctx, "x", 0.0)
    steps = masks.nan_steps(ctx, "x")
    after = masks.from_first(ctx, steps)
    poisoned = masks.poison(ctx, "x", masks.any_step(ctx, steps))
    x = np.zeros((3, 2, 2), np.float32)  # (time, batch, features)
    x[0, 0, 1] = 0.5
    x[1, 1, 0] = np.nan
    got = _run(ctx.w, [("x", TensorProto.FLOAT, [None, None, 2])], [keep, after, poisoned], {"x": x})
    np.testing.assert_array_equal(got[0][..., 0], [[True, False], [False, True], [False, False]])
    np.testing.assert_array_equal(got[1], [[False, False], [False, True], [False, True]])
    assert not np.isnan(got[2][:, 0]).any() and np.isnan(got[2][:, 1]).all()
