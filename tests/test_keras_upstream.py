"""Keras' own recurrent tests (`keras/src/layers/rnn/*_test.py`, Keras 3.15), as exports of lstm-onnx.

Keras' masking tests feed the mask as `layer(x, mask=m)`: here `m` is a bool model input, so each case is
also a model with a mask input, which must export with fused ops (no Loop) and give the values the
upstream test hard-codes, at the upstream tolerance (atol = rtol = 1e-5) and at lstm-onnx's own against
Keras. The stateful cases of `rnn_test.py` are in `test_stateful_cells.py`.
"""

from __future__ import annotations

import numpy as np
import pytest
from keras_cells import keras_cells

from toolkit.export.exporter import export_model
from toolkit.onnxfile.model import count_ops
from toolkit.runtimes.onnxrt import OnnxRunner

SEQUENCE = np.arange(24).reshape((2, 4, 3)).astype("float32")
TAIL_MASK = np.array([[True, True, True, False], [True, True, False, False]])  # lstm_test.py
HOLE_MASK = np.array([[True, True, False, True], [True, False, False, True]])  # gru_test.py, simple_rnn_test.py
LEADING_MASK = np.array([[False, True, True, True], [False, False, True, True]])  # lstm_test.py, go_backwards


def _constant_layer(kind: str, units: int = 2, **flags):
    import keras

    init = {"kernel_initializer": keras.initializers.Constant(0.01),
            "recurrent_initializer": keras.initializers.Constant(0.02),
            "bias_initializer": keras.initializers.Constant(0.03)}
    return {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU, "simple_rnn": keras.layers.SimpleRNN}[kind](
        units, name="rec", **init, **flags)


# (upstream test, layer kind, units, flags, mask, the output it hard-codes)
CASES = {
    "lstm_test.test_masking unroll": ("lstm", 2, {"unroll": True}, TAIL_MASK,
                                      [[0.11755939, 0.11755939], [0.28556206, 0.28556206]]),
    "lstm_test.test_masking sequences": (
        "lstm", 2, {"return_sequences": True}, TAIL_MASK,
        [[[0.01588910] * 2, [0.05552048] * 2, [0.11755939] * 2, [0.11755939] * 2],
         [[0.14185596] * 2, [0.28556206] * 2, [0.28556206] * 2, [0.28556206] * 2]]),
    "lstm_test.test_masking zero_output_for_mask": (
        "lstm", 2, {"return_sequences": True, "zero_output_for_mask": True}, TAIL_MASK,
        [[[0.01588910] * 2, [0.05552048] * 2, [0.11755939] * 2, [0.0] * 2],
         [[0.14185596] * 2, [0.28556206] * 2, [0.0] * 2, [0.0] * 2]]),
    "lstm_test.test_masking go_backwards": ("lstm", 2, {"go_backwards": True}, LEADING_MASK,
                                            [[0.15341201, 0.15341201], [0.3844719, 0.3844719]]),
    "gru_test.test_masking unroll": ("gru", 2, {"unroll": True}, HOLE_MASK,
                                     [[0.19393763, 0.19393763], [0.30818558, 0.30818558]]),
    "gru_test.test_masking zero_output_for_mask": (
        "gru", 2, {"return_sequences": True, "zero_output_for_mask": True}, HOLE_MASK,
        [[[0.03606692] * 2, [0.09497581] * 2, [0.0] * 2, [0.19393763] * 2],
         [[0.16051409] * 2, [0.0] * 2, [0.0] * 2, [0.30818558] * 2]]),
    "simple_rnn_test.test_masking unroll": ("simple_rnn", 4, {"unroll": True}, HOLE_MASK,
                                            [[0.32951632] * 4, [0.61799484] * 4]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_keras_masking_case_is_fused_and_gives_the_upstream_values(name):
    import keras

    kind, units, flags, mask, expected = CASES[name]
    x = keras.Input((4, 3), name="sequence")
    m = keras.Input((4,), dtype="bool", name="mask")
    model = keras.Model([x, m], _constant_layer(kind, units, **flags)(x, mask=m))
    result = export_model(model)
    assert result.parity, result.parity.failures()
    assert count_ops(result.model)["Loop"] == 0 and not result.warnings
    got = OnnxRunner(result.model).run({"sequence": SEQUENCE, "mask": mask})["rec_" + (
        "sequence" if flags.get("return_sequences") else "last")]
    np.testing.assert_allclose(got, np.array(expected, np.float32), atol=1e-5, rtol=1e-5)


def test_stacked_rnn_cells_single_state_stack_gives_the_upstream_values():
    """stacked_rnn_cells_test.py, test_correctness_single_state_stack: custom cells (a Loop, reported)."""
    import keras

    one, _ = keras_cells()
    x = keras.Input((3, 4), name="sequence")
    layer = keras.layers.RNN([one(3), one(2)], return_sequences=True, return_state=True, name="rec")
    result = export_model(keras.Model(x, layer(x)))
    assert result.parity and any("not fused" in w for w in result.warnings)
    got = OnnxRunner(result.model).run({"sequence": np.arange(24).reshape((2, 3, 4)).astype("float32")})
    np.testing.assert_allclose(got["rec_sequence"], [[[18.0] * 2, [156.0] * 2, [786.0] * 2],
                                                     [[162.0] * 2, [1020.0] * 2, [4386.0] * 2]])
    np.testing.assert_allclose(got["rec_cell0_state_h"], [[158.0] * 3, [782.0] * 3])
