"""The tolerance tells float32 rounding from damage on trained-scale weights (issue 24 item 3, issue 25 F3).

A char-RNN with logits in the tens differs from Keras by tens of 1e-6 through rounding alone: the export
must be written. The same check must still fail a wrong activation, a sign flip and a shifted bias, and
say they are defects rather than offer an atol.
"""

import numpy as np
import pytest

from toolkit.checking.parity import check_parity
from toolkit.checking.precision import failure_message
from toolkit.checking.results import ParityReport, compare_case
from toolkit.checking.rounding import RoundingProbe, float64_config
from toolkit.export.exporter import export_model
from toolkit.runtimes.onnxrt import OnnxRunner
from toolkit.tolerance import (
    DEFAULT_TOLERANCE,
    ROUNDING_CAP,
    ROUNDING_FACTOR,
    Tolerance,
    Tolerances,
    looks_like_rounding,
    widened,
)

VOCAB, STEPS = 80, 50
NAMES = ["logits_output"]


def _char_rnn(recurrent_activation: str = "sigmoid"):
    """Embedding -> LSTM(128) x2 -> Dense logits, weights drawn at a trained model's scale (logits ~20)."""
    import keras

    ids = keras.Input((STEPS,), dtype="int32", name="ids")
    h = keras.layers.Embedding(VOCAB, 64, name="embed")(ids)
    h = keras.layers.LSTM(128, return_sequences=True, recurrent_activation=recurrent_activation, name="lstm_1")(h)
    h = keras.layers.LSTM(128, recurrent_activation=recurrent_activation, name="lstm_2")(h)
    out = keras.layers.Dense(VOCAB, name="logits")(h)
    model = keras.Model(ids, out, name="char_rnn")
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(0, (25 if w.shape[-1] == VOCAB and w.ndim == 2 else 3) / np.sqrt(w.shape[0]),
                                  w.shape).astype("float32") for w in model.get_weights()])
    return model


@pytest.fixture(scope="module")
def char_rnn_export():
    model = _char_rnn()
    return model, export_model(model)


def test_a_trained_scale_char_rnn_is_written_at_its_measured_rounding(char_rnn_export):
    model, result = char_rnn_export
    assert result.parity, result.parity.failures()
    (summary,) = result.parity.summaries()
    assert summary.scale > 10  # logits in the tens, as the published char-RNNs' are
    # The fixed default would have refused it: the error is rounding, many times its atol.
    assert summary.max_abs > 5 * DEFAULT_TOLERANCE.atol
    assert summary.tolerance.rounding is not None and summary.tolerance.atol > DEFAULT_TOLERANCE.atol
    assert summary.tolerance.atol <= ROUNDING_FACTOR * summary.tolerance.rounding * 1.01
    assert summary.tolerance.atol <= ROUNDING_CAP * summary.scale
    assert "from rounding" in str(summary.tolerance)


def test_the_float64_twin_measures_the_same_function():
    model = _char_rnn()
    feeds = {"ids": np.random.default_rng(1).integers(0, VOCAB, (2, STEPS)).astype("int32")}
    noise = RoundingProbe(model, NAMES).measure(feeds)
    assert noise is not None and 0 < noise["logits_output"] < 1e-3  # rounding, not another function


def test_float64_config_keeps_integer_and_bool_inputs():
    config = {"layers": [{"config": {"dtype": "int32"}}, {"config": {"dtype": "bool"}},
                         {"config": {"dtype": {"class_name": "DTypePolicy", "config": {"name": "float32"}}}},
                         {"config": {"dtype": "float32"}}]}
    out = float64_config(config)["layers"]
    assert [layer["config"]["dtype"] for layer in out[:2]] == ["int32", "bool"]
    assert out[2]["config"]["dtype"]["config"]["name"] == "float64" and out[3]["config"]["dtype"] == "float64"


@pytest.mark.parametrize("damage", ["hard_sigmoid", "sign", "bias"])
def test_damage_still_fails_and_is_called_a_defect(char_rnn_export, damage):
    """Keras computing something else than the file: a wrong recurrent activation (Keras 2's hard_sigmoid
    meaning lost), every logit's sign flipped, one LSTM bias moved by 0.01."""
    model, result = char_rnn_export
    changed = _char_rnn("hard_sigmoid" if damage == "hard_sigmoid" else "sigmoid")
    weights = [w.copy() for w in model.get_weights()]
    if damage == "sign":
        weights[-2], weights[-1] = -weights[-2], -weights[-1]
    if damage == "bias":
        weights[3] += 0.01  # lstm_1's bias
    changed.set_weights(weights)
    report = check_parity(changed, OnnxRunner(result.model), NAMES)
    assert not report and report.names_match
    message = failure_message([("char_rnn.onnx", report)])
    assert "far past float32 rounding" in message and "--keep-failed" in message
    assert "to accept it" not in message


def test_a_users_tolerance_is_never_widened(char_rnn_export):
    model, result = char_rnn_export
    report = check_parity(model, OnnxRunner(result.model), NAMES, Tolerances.parse(atol=["1e-6"]))
    assert not report  # the user asked for 1e-6: rounding is not waved through
    assert report.summaries()[0].tolerance.rounding is None
    message = failure_message([("char_rnn.onnx", report)])
    assert "to accept it: --atol logits_output:" in message  # small against the scale: rounding, an atol is offered


def test_widening_is_bounded_by_the_output_scale():
    base = Tolerance(1e-6, 1e-5)
    assert widened(base, 1e-9, 10.0) is base  # narrower than the policy: unchanged
    wide = widened(base, 1e-5, 10.0)
    assert wide.atol == pytest.approx(ROUNDING_FACTOR * 1e-5) and wide.rounding == pytest.approx(1e-5)
    assert widened(base, 1.0, 10.0).atol == pytest.approx(ROUNDING_CAP * 10.0)  # capped: damage cannot pass
    assert looks_like_rounding(5e-4, 10.0) and not looks_like_rounding(5e-3, 10.0) and not looks_like_rounding(1e-9, 0.0)


def test_a_shape_mismatch_is_reported_as_one():
    case = compare_case("c", [np.zeros((2, 3), np.float32)], {"y": np.zeros((2, 4), np.float32)}, ["y"], Tolerances())
    message = failure_message([("m.onnx", ParityReport(("y",), ("y",), (case,)))])
    assert "y: shape mismatch: expected (2, 3), got (2, 4)" in message
    assert "non-finite" not in message


def test_carried_calls_are_measured_on_copies_that_carry_their_states():
    """A stateful model's consecutive calls: the probe's float32 copy and float64 twin carry their own
    states, call after call, and never move the states of the model the reference carries."""
    import keras

    from toolkit.checking.rounding import CarriedRoundingProbe
    from toolkit.runtimes.keras import StatefulKerasRunner

    def build():
        x = keras.Input(batch_shape=(1, 5, 3), name="x")
        model = keras.Model(x, keras.layers.LSTM(8, stateful=True, name="lstm")(x), name="stateful")
        model.set_weights([np.random.default_rng(3).normal(0, 1, w.shape).astype("float32") for w in model.get_weights()])
        return model

    feeds = {"x": np.random.default_rng(4).normal(0, 1, (1, 5, 3)).astype("float32")}
    model, alone = build(), StatefulKerasRunner(build())
    reference = StatefulKerasRunner(model)
    probe = CarriedRoundingProbe(model, ["lstm_last"])
    for _ in range(3):
        expected = next(iter(reference.run(feeds).values()))
        noise = probe.measure(feeds)
        assert noise is not None and 0 <= noise["lstm_last"] < 1e-5
        np.testing.assert_array_equal(expected, next(iter(alone.run(feeds).values())))  # the reference undisturbed
