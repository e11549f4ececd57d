"""tf2onnx's own Keras recurrent tests (`tests/keras2onnx_unit_tests/test_layers.py`), as exports of
lstm-onnx: the cases and their translation to Keras 3 are in `tf2onnx_cases.py`.

Each case passes lstm-onnx's own parity check (a stateful one also its three carried calls), and every
one is fused: no Loop and no "not fused" warning, where upstream asserts `no_loops_in_tf2` only for
tf.keras' v2 layers. Where upstream asserts `all_recurrents_should_bidirectional`, every recurrent op of
the file is one bidirectional op. Then the export is fed the upstream test's own inputs and compared with
Keras at the upstream test's tolerance (rtol 1e-3, atol 1e-6 unless it says otherwise).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from tf2onnx_cases import CASES

from toolkit.checking.carry import CALLS
from toolkit.export.exporter import export_model
from toolkit.onnxfile.metadata import read_state_map
from toolkit.onnxfile.model import count_ops
from toolkit.runtimes.keras import keras_outputs
from toolkit.runtimes.onnxrt import OnnxRunner

RECURRENT_OPS = ("LSTM", "GRU", "RNN")


def _directions(model: onnx.ModelProto) -> list[str]:
    return [onnx.helper.get_attribute_value(a).decode() for n in model.graph.node if n.op_type in RECURRENT_OPS
            for a in n.attribute if a.name == "direction"]


def _typed(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The upstream inputs in the dtypes the export declares (an Embedding's ids are int32)."""
    types = {i.name: onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type) for i in model.graph.input}
    return {name: value.astype(types[name]) for name, value in feeds.items()}


@pytest.mark.parametrize("name", list(CASES))
def test_tf2onnx_case_is_fused_and_matches_keras_on_its_inputs(name):
    case = CASES[name]()
    result = export_model(case.model)
    assert result.parity, result.parity.failures()
    ops = count_ops(result.model)
    assert ops["Loop"] == 0 and not result.warnings, (dict(ops), result.warnings)
    assert any(ops[op] for op in RECURRENT_OPS)
    if case.bidirectional:
        assert set(_directions(result.model)) == {"bidirectional"}
    if any(getattr(layer, "stateful", False) for layer in case.model._flatten_layers(include_self=False)):
        assert read_state_map(result.model)
        assert [c.label.split(",")[0] for c in result.parity.cases[-CALLS:]] == [f"call {i} of {CALLS}" for i in (1, 2, 3)]
    runner = OnnxRunner(result.model)
    for feeds in case.feeds:
        got = list(runner.run(_typed(result.model, feeds)).values())
        want = keras_outputs(case.model, feeds)
        for actual, expected in zip(got, want, strict=False):  # a stateful export adds its states after
            np.testing.assert_allclose(actual, expected, rtol=case.rtol, atol=case.atol)


def _sigmoid(v: float) -> float:
    return 1 / (1 + np.exp(-v))


def test_lstm_with_bias_gives_what_its_upstream_weights_compute():
    """test_LSTM_with_bias sets every weight by hand (kernel 1..4, recurrent 5..8, bias 1..4, gates i f c o).
    One step from zero states: i = sigmoid(x + 1), c = i tanh(3x + 3), h = sigmoid(4x + 4) tanh(c)."""
    result = export_model(CASES["test_LSTM_with_bias"]().model)
    x = 0.5
    c = _sigmoid(1 * x + 1) * np.tanh(3 * x + 3)  # the forget gate multiplies c0 = 0
    h = _sigmoid(4 * x + 4) * np.tanh(c)
    sequence, state_h, state_c, *cell = OnnxRunner(result.model).run({"x": np.full((1, 1, 1), x, np.float32)}).values()
    np.testing.assert_allclose(sequence, [[[h]]], rtol=1e-6)
    np.testing.assert_allclose(state_h, [[h]], rtol=1e-6)
    np.testing.assert_allclose(state_c, [[c]], rtol=1e-6)
    for mine, other in zip(cell, (sequence, state_h, state_c), strict=True):  # RNN(LSTMCell): the same
        np.testing.assert_allclose(mine, other, rtol=1e-6)
