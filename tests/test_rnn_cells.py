"""`keras.layers.RNN` over LSTMCell, GRUCell, SimpleRNNCell and StackedRNNCells of them: fused ops, named states,
parity with Keras (the export's own check, masked cases included) for every flag."""

import numpy as np
import pytest

from toolkit.errors import UnsupportedModelError
from toolkit.export.exporter import export_model
from toolkit.models.builder import set_deterministic_weights
from toolkit.onnxfile.metadata import read_state_map
from toolkit.onnxfile.model import LOOP_OPS, count_ops
from toolkit.runtimes.onnxrt import OnnxRunner

CELLS = {
    "lstm": lambda units: __import__("keras").layers.LSTMCell(units),
    "gru": lambda units: __import__("keras").layers.GRUCell(units),
    "gru_v1": lambda units: __import__("keras").layers.GRUCell(units, reset_after=False),
    "simple": lambda units: __import__("keras").layers.SimpleRNNCell(units),
}
OPS = {"lstm": "LSTM", "gru": "GRU", "gru_v1": "GRU", "simple": "RNN"}
STATES = {"lstm": ["state_h", "state_c"], "gru": ["state_h"], "gru_v1": ["state_h"], "simple": ["state_h"]}


def _model(cells, return_sequences=False, return_state=False, go_backwards=False, masking=False, seed=3):
    import keras

    x = keras.Input((6, 3), name="x")
    seq = keras.layers.Masking(name="mask")(x) if masking else x
    made = [CELLS[c](4 + i) for i, c in enumerate(cells)]
    cell = made[0] if len(made) == 1 else keras.layers.StackedRNNCells(made)
    out = keras.layers.RNN(cell, return_sequences=return_sequences, return_state=return_state,
                           go_backwards=go_backwards, name="rnn")(seq)
    model = keras.Model(x, out, name="cells")
    set_deterministic_weights(model, seed)
    return model


def _fused_ops(result):
    return {op: n for op, n in result.op_counts.items() if op in ("LSTM", "GRU", "RNN")}


def _expected_roles(cells, return_sequences, return_state):
    main = ["sequence" if return_sequences else "last"]
    if not return_state:
        return main
    if len(cells) == 1:
        return main + STATES[cells[0]]
    return main + [f"cell{i}_{role}" for i, c in enumerate(cells) for role in STATES[c]]


STACKS = [["lstm"], ["gru"], ["gru_v1"], ["simple"], ["lstm", "gru"], ["gru", "simple", "lstm"]]


@pytest.mark.parametrize("cells", STACKS, ids=["+".join(s) for s in STACKS])
@pytest.mark.parametrize("flags", [(False, False, False), (True, True, False), (True, True, True), (False, True, True)],
                         ids=["last", "seq_state", "seq_state_backwards", "last_state_backwards"])
def test_cells_and_stacks_export_fused_with_named_states(cells, flags):
    return_sequences, return_state, go_backwards = flags
    model = _model(cells, return_sequences, return_state, go_backwards)
    result = export_model(model, require_fused=True)
    assert result.parity, result.parity.failures()
    assert [o.name for o in result.outputs] == [f"rnn_{r}" for r in _expected_roles(cells, return_sequences, return_state)]
    wanted: dict[str, int] = {}
    for c in cells:
        wanted[OPS[c]] = wanted.get(OPS[c], 0) + 1
    assert _fused_ops(result) == wanted  # a stack of cells is a stack of ops
    assert not any(result.op_counts.get(op) for op in LOOP_OPS)
    assert [e.onnx_op for e in result.lowering] == ["+".join(OPS[c] for c in cells)]
    assert result.warnings == ()


@pytest.mark.parametrize("cells", [["lstm"], ["lstm", "gru"]], ids=["lstm", "lstm+gru"])
@pytest.mark.parametrize("go_backwards", [False, True], ids=["forward", "backwards"])
def test_masked_cells_match_keras(cells, go_backwards):
    model = _model(cells, return_sequences=True, return_state=True, go_backwards=go_backwards, masking=True)
    result = export_model(model, require_fused=True)
    assert result.parity, result.parity.failures()
    assert any("padded" in c.label for c in result.parity.cases)  # masked cases were compared


def test_stack_with_initial_states_and_state_io():
    import keras

    x = keras.Input((None, 3), name="x")
    h0, c0, g0 = (keras.Input((n,), name=name) for n, name in ((4, "h0"), (4, "c0"), (5, "g0")))
    cell = keras.layers.StackedRNNCells([keras.layers.LSTMCell(4), keras.layers.GRUCell(5)])
    out = keras.layers.RNN(cell, return_state=True, name="stack")(x, initial_state=[[h0, c0], g0])
    model = keras.Model([x, h0, c0, g0], out, name="stack_init")
    set_deterministic_weights(model, 5)
    result = export_model(model, require_fused=True)
    assert result.parity, result.parity.failures()
    runner = OnnxRunner(result.model)
    feeds = {"x": np.ones((2, 4, 3), np.float32), "h0": np.zeros((2, 4), np.float32),
             "c0": np.zeros((2, 4), np.float32), "g0": np.zeros((2, 5), np.float32)}
    moved = dict(feeds, g0=np.ones((2, 5), np.float32))
    assert not np.allclose(runner.run(feeds)["stack_cell1_state_h"], runner.run(moved)["stack_cell1_state_h"])

    plain = _model(["lstm", "gru"], return_sequences=True)
    streamed = export_model(plain, state_io=True)
    assert streamed.parity, streamed.parity.failures()
    names = [i.name for i in streamed.model.graph.input]
    assert names == ["x", "rnn_initial_cell0_state_h", "rnn_initial_cell0_state_c", "rnn_initial_cell1_state_h"]
    assert [o.name for o in streamed.outputs][1:] == ["rnn_cell0_state_h", "rnn_cell0_state_c", "rnn_cell1_state_h"]
    assert read_state_map(streamed.model) == {f"rnn_initial_{r}": f"rnn_{r}"
                                              for r in ("cell0_state_h", "cell0_state_c", "cell1_state_h")}


def test_bidirectional_over_a_cell_is_one_fused_op():
    import keras

    x = keras.Input((5, 3), name="x")
    out = keras.layers.Bidirectional(keras.layers.RNN(keras.layers.GRUCell(4), return_sequences=True), name="bi")(x)
    model = keras.Model(x, out)
    set_deterministic_weights(model, 2)
    result = export_model(model, require_fused=True)
    assert result.parity, result.parity.failures()
    assert _fused_ops(result) == {"GRU": 1}


def test_custom_cell_is_reported_with_what_to_do_and_refused_by_require_fused():
    import keras

    class MinimalCell(keras.layers.Layer):
        def __init__(self, units, **kwargs):
            super().__init__(**kwargs)
            self.units = units
            self.state_size = units

        def build(self, input_shape):
            self.kernel = self.add_weight(shape=(input_shape[-1], self.units), name="kernel")

        def call(self, inputs, states):
            out = keras.ops.matmul(inputs, self.kernel) + states[0]
            return out, [out]

    x = keras.Input((4, 2), name="x")
    model = keras.Model(x, keras.layers.RNN(MinimalCell(3), name="custom")(x))
    set_deterministic_weights(model, 1)
    result = export_model(model)
    assert result.parity, result.parity.failures()
    assert len(result.warnings) == 1
    warning = result.warnings[0]
    assert "custom cell MinimalCell" in warning and "keras.layers.RNN over LSTMCell" in warning
    assert count_ops(result.model).get("Loop", 0) + count_ops(result.model).get("Scan", 0) >= 1
    with pytest.raises(UnsupportedModelError, match="custom cell MinimalCell"):
        export_model(model, require_fused=True)
