"""A user's own saved .keras models: functional with initial_state inputs, Sequential, and refusals."""


import numpy as np
import pytest

from toolkit.checking.verify import verify_files
from toolkit.errors import ModelLoadError, UnsupportedModelError
from toolkit.export.exporter import export_keras_file
from toolkit.models.keras3 import load_keras_model
from toolkit.onnxfile import metadata
from toolkit.onnxfile.model import count_ops
from toolkit.runtimes.onnxrt import OnnxRunner


def test_functional_model_with_initial_state_inputs(saved_models, tmp_path):
    target = tmp_path / "functional.onnx"
    result = export_keras_file(saved_models["functional"], target)
    assert result.parity, result.parity.failures()
    runner = OnnxRunner(target)
    assert runner.input_names == ["frames", "h0", "c0"]
    assert runner.output_names == ["head_output", "encoder_state_h", "encoder_state_c"]
    assert [t.shape for t in runner.inputs] == [("batch", "time", 3), ("batch", 4), ("batch", 4)]
    assert runner.outputs[0].shape == ("batch", "time", 2)
    assert count_ops(runner.model)["LSTM"] == 1 and count_ops(runner.model)["Loop"] == 0
    assert metadata.read_source(runner.model) == {"keras_file": "functional.keras", "keras_model": "with_initial_state"}
    # The initial states really are used: other states give other outputs.
    x = np.ones((2, 4, 3), np.float32)
    zeros = runner.run({"frames": x, "h0": np.zeros((2, 4), np.float32), "c0": np.zeros((2, 4), np.float32)})
    ones = runner.run({"frames": x, "h0": np.ones((2, 4), np.float32), "c0": np.ones((2, 4), np.float32)})
    assert not np.allclose(zeros["encoder_state_c"], ones["encoder_state_c"])


def test_sequential_model(saved_models, tmp_path):
    target = tmp_path / "sequential.onnx"
    result = export_keras_file(saved_models["sequential"], target)
    assert result.parity, result.parity.failures()
    assert [o.name for o in result.outputs] == ["out_output"]
    assert [i.name for i in result.inputs] == ["series"]
    assert count_ops(result.model)["LSTM"] == 2


def test_verify_an_existing_export(saved_models, tmp_path):
    target = tmp_path / "functional.onnx"
    export_keras_file(saved_models["functional"], target)
    report = verify_files(target, saved_models["functional"])
    assert report and report.names_match
    assert not verify_files(target, saved_models["functional"], _too_tight())


def _too_tight():
    from toolkit.tolerance import Tolerances

    return Tolerances.parse(atol=["0"], rtol=["0"])


@pytest.mark.parametrize("key,error,needle", [
    ("dense_only", UnsupportedModelError, "Expected a model with at least one recurrent layer"),
    ("lambda", ModelLoadError, "safe mode"),
    ("not_a_model", ModelLoadError, r"Expected a \.keras file \(a zip archive\)\. Received: .* has no zip directory"),
])
def test_refused_models_write_nothing(saved_models, tmp_path, key, error, needle):
    target = tmp_path / "out.onnx"
    with pytest.raises(error, match=needle):
        export_keras_file(saved_models[key], target)
    assert list(tmp_path.iterdir()) == []


def test_missing_file_bad_h5_and_plain_folder_are_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="no such file"):
        load_keras_model(tmp_path / "missing.keras")
    (tmp_path / "old.h5").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="Expected a Keras 2 model file"):  # .h5 that is not HDF5
        load_keras_model(tmp_path / "old.h5")
    with pytest.raises(ModelLoadError, match="without saved_model.pb"):
        load_keras_model(tmp_path)
    (tmp_path / "model.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="ending in .keras or .h5"):
        load_keras_model(tmp_path / "model.json")


def test_the_issues_saved_cell_models_export_fused(tmp_path):
    """Issue 11's cases as users have them, saved and loaded: RNN(LSTMCell) (was reported not fused) and
    RNN(StackedRNNCells([LSTMCell, GRUCell])) (was a Loop with outputs named ..._state_0)."""
    import keras

    from toolkit.models.builder import set_deterministic_weights

    x = keras.Input((None, 4), name="frames")
    single = keras.layers.RNN(keras.layers.LSTMCell(32), name="rnn_lstmcell")(x)
    stack = keras.layers.RNN(keras.layers.StackedRNNCells([keras.layers.LSTMCell(16), keras.layers.GRUCell(16)]),
                             return_state=True, name="rnn_stack")(x)
    model = keras.Model(x, [single, *stack], name="cells")
    set_deterministic_weights(model, 7)
    model.save(tmp_path / "cells.keras")
    result = export_keras_file(tmp_path / "cells.keras", tmp_path / "cells.onnx", require_fused=True)
    assert result.parity, result.parity.failures()
    assert [o.name for o in result.outputs] == ["rnn_lstmcell_last", "rnn_stack_last", "rnn_stack_cell0_state_h",
                                                "rnn_stack_cell0_state_c", "rnn_stack_cell1_state_h"]
    assert result.fused_ops == {"GRU": 1, "LSTM": 2} and result.warnings == ()
    layers = {entry["name"]: entry for entry in metadata.read_layers(result.model)}
    assert layers["rnn_stack"]["onnx_op"] == "LSTM+GRU" and layers["rnn_stack"]["units"] == [16, 16]
    assert layers["rnn_lstmcell"]["onnx_op"] == "LSTM" and layers["rnn_lstmcell"]["units"] == 32
