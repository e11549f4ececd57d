"""Mixed precision (keras.io's guide: float16/bfloat16 compute, float32 variables, a float32 head): fused float32
ops, a tolerance chosen from the compute dtype and recorded, and failure messages that say what to do."""

import numpy as np
import pytest

from toolkit.checking.parity import check_parity
from toolkit.checking.precision import failure_message
from toolkit.errors import ParityError
from toolkit.export.exporter import export_model
from toolkit.models.builder import set_deterministic_weights
from toolkit.onnxfile.metadata import read_parity
from toolkit.onnxfile.model import LOOP_OPS
from toolkit.runtimes.onnxrt import OnnxRunner
from toolkit.tolerance import DEFAULT_TOLERANCE, LOW_PRECISION_TOLERANCES, Tolerances, compute_dtype

POLICIES = {"mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}


@pytest.fixture
def policy(request):
    """Set a global dtype policy for one test, and always put float32 back."""
    import keras

    keras.mixed_precision.set_global_policy(request.param)
    yield request.param
    keras.mixed_precision.set_global_policy("float32")


def _guide_model(seed=1):
    """keras.io's mixed precision guide, with recurrent layers: the head is float32."""
    import keras

    x = keras.Input((12, 6), name="x")
    h = keras.layers.Dense(16, activation="relu", name="front")(x)
    h = keras.layers.LSTM(32, return_sequences=True, name="lstm_a")(h)
    h = keras.layers.GRU(24, name="gru_b")(h)
    h = keras.layers.Dense(4, name="head")(h)
    out = keras.layers.Activation("softmax", dtype="float32", name="out")(h)
    model = keras.Model(x, out, name="guide")
    set_deterministic_weights(model, seed)
    return model


@pytest.mark.parametrize("policy", list(POLICIES), indirect=True)
def test_mixed_models_export_fused_float32_ops_within_the_dtype_tolerance(policy):
    dtype = POLICIES[policy]
    model = _guide_model()
    assert compute_dtype(model) == dtype
    result = export_model(model, require_fused=True)
    assert result.parity, result.parity.failures()
    assert result.fused_ops == {"GRU": 1, "LSTM": 1}
    assert not any(result.op_counts.get(op) for op in LOOP_OPS)
    tolerance = LOW_PRECISION_TOLERANCES[dtype]
    (summary,) = result.parity.summaries()
    assert summary.tolerance == tolerance
    # The chosen tolerance is needed (Keras' rounding is far above the float32 default) and holds with margin.
    assert DEFAULT_TOLERANCE.atol * 10 < summary.max_abs < tolerance.atol / 2
    parity = read_parity(result.model)
    assert parity["compute_dtype"] == dtype and parity["tolerance_from_compute_dtype"] is True
    assert parity["outputs"]["out_output"]["atol"] == tolerance.atol
    assert any(f"computes in {dtype}" in note and "--atol" in note for note in result.notes)
    assert any("lstm_a" in note and f"computed in {dtype}" in note for note in result.notes)


@pytest.mark.parametrize("policy", ["mixed_float16"], indirect=True)
def test_the_dtype_tolerance_still_catches_a_wrong_export(policy):
    """The export of one model checked against the same model with one bias moved by 0.1: the check
    (through verify's comparison, which chooses the tolerance itself) must fail."""
    model = _guide_model()
    result = export_model(model)
    lstm = model.get_layer("lstm_a")
    lstm.cell.bias.assign(lstm.cell.bias.numpy() + 0.1)
    report = check_parity(model, OnnxRunner(result.model), [o.name for o in result.outputs])
    assert not report
    assert report.summaries()[0].tolerance == LOW_PRECISION_TOLERANCES["float16"]


@pytest.mark.parametrize("policy", ["mixed_float16"], indirect=True)
def test_a_users_tolerance_wins_and_a_failure_says_which_by_how_much_and_how_to_set_another(policy, tmp_path):
    result = export_model(_guide_model(), tolerances=Tolerances.parse(atol=["1e-6"]))
    assert not result.parity
    assert "tolerance_from_compute_dtype" in read_parity(result.model)
    assert read_parity(result.model)["tolerance_from_compute_dtype"] is False
    message = failure_message([("guide.onnx", result.parity)])
    max_abs = result.parity.summaries()[0].max_abs
    assert f"out_output: max abs error {max_abs:.3g} over atol=1e-06 rtol=1e-05" in message
    assert f"{max_abs / 1e-6:.3g}x its atol" in message
    assert "--atol out_output:" in message and "Tolerances.parse(atol=['out_output:" in message
    suggested = float(message.split("--atol out_output:")[1].split(" ")[0])
    assert suggested >= max_abs
    assert export_model(_guide_model(), tolerances=Tolerances.parse(atol=[f"out_output:{suggested:g}"])).parity
    with pytest.raises(ParityError, match="max abs error .* over atol=1e-06"):
        result.save(tmp_path / "guide.onnx")
    assert not (tmp_path / "guide.onnx").exists()


def test_float32_models_keep_the_default_tolerance_and_metadata():
    import keras

    assert keras.mixed_precision.global_policy().name == "float32"  # the fixture put it back
    x = keras.Input((4, 2))
    model = keras.Model(x, keras.layers.LSTM(3)(x))
    set_deterministic_weights(model, 0)
    result = export_model(model)
    assert "compute_dtype" not in read_parity(result.model)
    assert result.parity.summaries()[0].tolerance == DEFAULT_TOLERANCE
    assert np.isfinite(result.parity.summaries()[0].max_abs)


@pytest.mark.parametrize("policy", ["mixed_float16"], indirect=True)
def test_verify_stream_checks_a_mixed_model_at_the_same_tolerance_as_its_export(policy, tmp_path):
    import keras
    from click.testing import CliRunner

    from toolkit.cli import cli

    x = keras.Input((None, 6), name="x")
    h = keras.layers.LSTM(32, return_sequences=True, name="lstm_a")(x)
    out = keras.layers.Activation("linear", dtype="float32", name="out")(h)
    model = keras.Model(x, out, name="streamed")
    set_deterministic_weights(model, 2)
    keras_path, onnx_path = tmp_path / "m.keras", tmp_path / "m.onnx"
    model.save(keras_path)
    export_model(model, state_io=True).save(onnx_path)
    # Chunked, as unchunked: Keras' float16 run is far above the float32 default (1e-6), within 5e-3.
    done = CliRunner().invoke(cli, ["verify", str(onnx_path), "--keras", str(keras_path), "--stream", "2,3"])
    assert done.exit_code == 0, done.output


@pytest.mark.parametrize("policy", sorted(POLICIES), indirect=True)
def test_state_io_states_are_declared_in_the_dtype_keras_returns_them(policy, tmp_path):
    """A mixed layer returns its states in its compute dtype: each state input is declared in that dtype
    too, so that the state map's output feeds its input as it is (float32 inputs beside float16 outputs
    made the streamed session fail on its first step)."""
    import keras

    import toolkit

    x = keras.Input((None, 3), name="x")
    model = keras.Model(x, keras.layers.LSTM(4, return_sequences=True, return_state=True, name="lstm")(x))
    set_deterministic_weights(model, 1)
    result = export_model(model, state_io=True)
    graph = result.model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in list(graph.input) + list(graph.output)}
    expected = {"mixed_float16": 10, "mixed_bfloat16": 16}[policy]  # TensorProto.FLOAT16, BFLOAT16
    assert types["lstm_initial_state_h"] == types["lstm_state_h"] == expected
    assert types["lstm_initial_state_c"] == types["lstm_state_c"] == expected
    if policy == "mixed_float16":  # ONNX Runtime's CPU Cast reads and writes float16; numpy has no bfloat16
        result.save(tmp_path / "m.onnx")
        with toolkit.open_stream(tmp_path / "m.onnx", outputs=["lstm_state_c"]) as stream:  # a step returns no state unasked
            first = stream.step(np.ones((1, 1, 3), np.float32))
            second = stream.step(np.ones((1, 1, 3), np.float32))
        assert first["lstm_state_c"].dtype == np.float16 and not np.array_equal(first["lstm_state_c"], second["lstm_state_c"])


@pytest.mark.parametrize("policy", ["mixed_float16"], indirect=True)
def test_states_a_mixed_layer_does_not_return_are_carried_in_float32(policy):
    """As the op computes them: carried in float16 they drifted 1.2e-4 from the unchunked run (bench
    --stream: no form within the tolerance)."""
    import keras

    x = keras.Input((None, 3), name="x")
    model = keras.Model(x, keras.layers.LSTM(4, return_sequences=True, name="lstm")(x))
    set_deterministic_weights(model, 1)
    graph = export_model(model, state_io=True).model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in list(graph.input) + list(graph.output)}
    assert types["lstm_sequence"] == 10  # TensorProto.FLOAT16, as Keras returns it
    assert types["lstm_initial_state_h"] == types["lstm_state_h"] == 1  # TensorProto.FLOAT
    assert types["lstm_initial_state_c"] == types["lstm_state_c"] == 1


@pytest.mark.parametrize("policy", ["mixed_float16"], indirect=True)
def test_initial_states_given_as_float32_inputs_come_back_float32(policy):
    """A mixed decoder fed float32 model inputs as its initial states: each final state not returned by the
    model is returned in its input's dtype, so that the state map's output feeds its input as it is."""
    import keras

    from toolkit.onnxfile import metadata

    x, h0, c0 = keras.Input((None, 3), name="x"), keras.Input((4,), name="h0"), keras.Input((4,), name="c0")
    model = keras.Model([x, h0, c0], keras.layers.LSTM(4, return_sequences=True, name="l")(x, initial_state=[h0, c0]))
    set_deterministic_weights(model, 1)
    result = export_model(model, state_io=True)
    graph = result.model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in list(graph.input) + list(graph.output)}
    assert metadata.read_state_map(result.model) == {"h0": "l_state_h", "c0": "l_state_c"}
    assert types["h0"] == types["l_state_h"] == types["c0"] == types["l_state_c"] == 1  # TensorProto.FLOAT


@pytest.mark.parametrize("policy", ["mixed_float16"], indirect=True)
@pytest.mark.parametrize("return_state", [False, True])
def test_a_mixed_layer_through_tf2onnx_carries_its_states(policy, return_state):
    """swish has no ONNX LSTM activation: tf2onnx converts the layer with its states as inputs. Before: its
    float32 state signature did not load beside the float16 Loop, or streamed into a float16 output."""
    import keras

    import toolkit

    x = keras.Input((None, 3), name="x")
    layer = keras.layers.LSTM(4, activation="swish", return_sequences=True, return_state=return_state, name="l")
    model = keras.Model(x, layer(x))
    set_deterministic_weights(model, 1)
    result = export_model(model, state_io=True)
    assert result.parity, result.parity
    with toolkit.open_stream(result.model, outputs=["l_state_c"]) as stream:  # a step returns no state unasked
        first, second = (stream.step(np.ones((1, 1, 3), np.float32)) for _ in range(2))
    assert not np.array_equal(first["l_state_c"], second["l_state_c"])
    assert first["l_state_c"].dtype == (np.float16 if return_state else np.float32)
