"""float64 models (Keras 3): a float64 input keeps its dtype in the export; a float32 layer reads it cast to
float32, as Keras' autocast does; a float64 LSTM/GRU/SimpleRNN runs as a float32 fused op between Casts,
because ONNX Runtime's CPU kernels for them run float only (the first test shows it), and says so. Parity
is against Keras at the default tolerance (float64-vs-float32 rounding measured at 6e-8 to 3e-7)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from toolkit.export.exporter import export_model
from toolkit.onnxfile.model import LOOP_OPS


@pytest.mark.parametrize("op, gates", [("LSTM", 4), ("GRU", 3), ("RNN", 1)])
def test_onnxruntime_cpu_runs_recurrent_ops_in_float_only(op, gates):
    """Why a float64 layer is exported as a float32 op: ONNX Runtime 1.32's CPU kernel refuses double."""
    hidden, features = 2, 3
    weights = [numpy_helper.from_array(np.zeros((1, gates * hidden, size), np.float64), name)
               for name, size in (("W", features), ("R", hidden))]
    node = helper.make_node(op, ["X", "W", "R"], ["Y"], hidden_size=hidden)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", TensorProto.DOUBLE, [1, 1, features])],
                              [helper.make_tensor_value_info("Y", TensorProto.DOUBLE, None)], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    with pytest.raises(Exception, match="double|implementation"):
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        session.run(None, {"X": np.zeros((1, 1, features))})


def _float64_input_into_float32_layers():
    import keras

    x = keras.Input((None, 3), dtype="float64", name="x")
    y = keras.layers.Dropout(0.1)(keras.layers.Masking()(x))  # each casts as Keras' autocast does
    return keras.Model(x, keras.layers.Dense(2)(keras.layers.GRU(4)(y)))


def _float64_layers():
    import keras

    x = keras.Input((None, 3), dtype="float64", name="x")
    seq, h, c = keras.layers.LSTM(4, dtype="float64", return_sequences=True, return_state=True)(x)
    return keras.Model(x, [seq, h, c])


def _float64_bidirectional_rnn():
    import keras

    x = keras.Input((None, 3), name="x")
    y = keras.layers.Bidirectional(keras.layers.SimpleRNN(4, dtype="float64", return_sequences=True))(x)
    return keras.Model(x, keras.layers.Dense(2, dtype="float64")(y))


CASES = {"float64_input": (_float64_input_into_float32_layers, {"GRU": 1}, TensorProto.DOUBLE, [TensorProto.FLOAT]),
         "float64_lstm": (_float64_layers, {"LSTM": 1}, TensorProto.DOUBLE, [TensorProto.DOUBLE] * 3),
         "float64_rnn": (_float64_bidirectional_rnn, {"RNN": 1}, TensorProto.FLOAT, [TensorProto.DOUBLE])}


@pytest.mark.parametrize("name", sorted(CASES))
def test_float64_models_export_fused_with_their_declared_dtypes(name):
    build, fused, input_type, output_types = CASES[name]
    result = export_model(build(), seed=3)
    assert result.parity, result.parity
    assert result.fused_ops == fused and not any(result.op_counts.get(op) for op in LOOP_OPS)
    assert not result.warnings
    graph = result.model.graph
    assert graph.input[0].type.tensor_type.elem_type == input_type  # the model's declared dtype
    assert [o.type.tensor_type.elem_type for o in graph.output] == output_types  # Keras' output dtypes
    inferred = onnx.shape_inference.infer_shapes(result.model).graph
    types = {v.name: v.type.tensor_type.elem_type for v in list(inferred.value_info) + list(graph.input)}
    recurrent = [node for node in graph.node if node.op_type in fused]
    assert recurrent and all(types[node.input[0]] == TensorProto.FLOAT for node in recurrent)
    for summary in result.parity.summaries():  # float64 Keras against a float32 op: well inside the default
        assert summary.max_abs < 1e-6, summary


@pytest.mark.parametrize("build, op", [(_float64_layers, "LSTM"), (_float64_bidirectional_rnn, "RNN")])
def test_a_float64_layer_says_it_runs_as_float32(build, op):
    result = export_model(build(), seed=3)
    assert any(f"computed in float64 by Keras, exported as a float32 {op} between Casts" in note for note in result.notes)


def _float64_carried(activation: str, return_state: bool):
    """A float64 LSTM streamed with --state-io: fused (tanh), or through tf2onnx (swish has no ONNX LSTM
    activation) with its states as inputs and outputs."""
    import keras

    x = keras.Input((None, 3), dtype="float64", name="x")
    outputs = keras.layers.LSTM(4, dtype="float64", activation=activation, return_sequences=True,
                                return_state=return_state, name="lstm")(x)
    return keras.Model(x, outputs)


@pytest.mark.parametrize("activation, return_state", [("tanh", True), ("tanh", False), ("swish", True)])
def test_a_float64_state_io_export_carries_float64_states(activation, return_state, tmp_path):
    """Each state input is declared in the dtype of the output that feeds it on the next call (the state
    map): float32 inputs beside float64 outputs made the streamed second call fail in ONNX Runtime, and the
    tf2onnx path could not even load (a float32 state into the float64 Loop's MatMul)."""
    import toolkit
    from toolkit.options import ExportOptions

    result = export_model(_float64_carried(activation, return_state), ExportOptions(state_io=True), seed=3)
    assert result.parity, result.parity
    graph = result.model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in list(graph.input) + list(graph.output)}
    assert types["lstm_initial_state_h"] == types["lstm_state_h"] == TensorProto.DOUBLE
    assert types["lstm_initial_state_c"] == types["lstm_state_c"] == TensorProto.DOUBLE
    path = tmp_path / "m.onnx"
    result.save(path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    state_map = {"lstm_initial_state_h": "lstm_state_h", "lstm_initial_state_c": "lstm_state_c"}
    states = {name: np.zeros((1, 4)) for name in state_map}
    stream = toolkit.open_stream(path, outputs=names)  # the states too
    for steps in (1, 3, 2):  # by hand and by open_stream: the same numbers
        x = np.random.default_rng(steps).uniform(-1, 1, (1, steps, 3))
        outputs = dict(zip(names, session.run(None, {"x": x, **states})))
        states = {name: outputs[output] for name, output in state_map.items()}
        got = stream.step(x)
        assert set(got) == set(names)
        assert all(np.array_equal(got[name], outputs[name]) and got[name].dtype == np.float64 for name in got)
    stream.close()


def test_a_float64_layers_initial_states_given_as_model_inputs_are_in_the_state_map():
    """Before: the fused op reads them cast to float32, and the Casts were taken for their sources: no
    state map at all, where the float32 model maps h0 and c0 (`test_stream_session`'s required states)."""
    import keras

    from toolkit.onnxfile import metadata
    from toolkit.options import ExportOptions

    x = keras.Input((None, 3), dtype="float64", name="x")
    h0, c0 = keras.Input((4,), dtype="float64", name="h0"), keras.Input((4,), dtype="float64", name="c0")
    lstm = keras.layers.LSTM(4, dtype="float64", return_sequences=True, name="l")
    model = keras.Model([x, h0, c0], lstm(x, initial_state=[h0, c0]))
    result = export_model(model, ExportOptions(state_io=True), seed=3)
    assert result.parity, result.parity
    assert metadata.read_state_map(result.model) == {"h0": "l_state_h", "c0": "l_state_c"}
    types = {v.name: v.type.tensor_type.elem_type for v in list(result.model.graph.input) + list(result.model.graph.output)}
    assert types["h0"] == types["l_state_h"] == types["c0"] == types["l_state_c"] == TensorProto.DOUBLE
