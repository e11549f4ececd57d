"""When tf2onnx or TensorFlow fails on a layer, the one-line error names the layer and the cause.

TensorFlow reports an error raised while it traces a function as "in user code:", then the frames, then
the exception raised inside. The first line is all a one-line error used to keep, so the user read
`tf2onnx could not convert 'rnn': ValueError: in user code:` and nothing more. `-v` shows the whole error.
"""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from toolkit.cli import cli
from toolkit.errors import ExportError
from toolkit.export.exporter import export_model
from toolkit.text import error_cause

TRACED = ("in user code:\n\n    File \"/x/tf2onnx_lib.py\", line 73, in traced  *\n        return call(*args)\n"
          "    File \"/x/traceback_utils.py\", line 122, in error_handler  **\n        raise e from None\n\n"
          "    ValueError: Exception encountered when calling RNN.call().\n    \n"
          "    \x1b[1mInput tensor `rnn_1/ReadVariableOp:0` enters the loop with shape (1, 2), but has shape "
          "(None, 2) after one iteration.\x1b[0m\n    \n    Arguments received by RNN.call():\n"
          "      • sequences=tf.Tensor(shape=(None, 2, 3), dtype=float32)\n")


def test_the_cause_of_a_traced_error_is_the_exception_raised_inside():
    """The message TensorFlow 2.21 gave for a stateful custom cell of batch 1 (issue 20), verbatim."""
    cause = error_cause(ValueError(TRACED))
    assert cause.startswith("ValueError: Exception encountered when calling RNN.call(). Input tensor")
    assert "enters the loop with shape (1, 2)" in cause and "\n" not in cause and "\x1b" not in cause


def test_a_plain_error_keeps_its_type_and_first_line():
    assert error_cause(KeyError("keras_tensor_12")) == "KeyError: 'keras_tensor_12'"
    assert error_cause(RuntimeError("")) == "RuntimeError: (no message)"
    assert error_cause(TypeError("first\nsecond")) == "TypeError: first"


def _numpy_layer():
    """A layer Keras runs eagerly but TensorFlow cannot trace: it reads its input's value."""
    import keras

    @keras.saving.register_keras_serializable(package="test_fallback_errors")
    class ReadsValues(keras.layers.Layer):
        def call(self, x):
            return x * float(np.asarray(x.numpy()).mean())

        def compute_output_shape(self, shape):
            return shape

    return ReadsValues(name="reads_values")


def _model():
    import keras

    x = keras.Input((4, 3), name="x")
    return keras.Model(x, keras.layers.LSTM(2, name="lstm")(_numpy_layer()(x)))


def test_a_fallback_failure_names_the_layer_and_the_cause():
    with pytest.raises(ExportError) as raised:
        export_model(_model())
    message = str(raised.value)
    assert message.startswith("tf2onnx could not convert 'reads_values': AttributeError: Exception encountered "
                              "when calling ReadsValues.call().")
    assert "'SymbolicTensor' object has no attribute 'numpy'" in message
    assert "in user code" not in message and "\n" not in message


def test_the_cli_prints_one_line_and_v_the_whole_error(tmp_path):
    path = tmp_path / "reads_values.keras"
    _model().save(path)
    quiet = CliRunner().invoke(cli, ["export", str(path), "-o", str(tmp_path / "m.onnx")])
    assert quiet.exit_code == 1
    lines = quiet.output.strip().splitlines()
    assert lines[-1].startswith("Error: tf2onnx could not convert 'reads_values': AttributeError:")
    assert "Traceback" not in quiet.output and not (tmp_path / "m.onnx").exists()
    verbose = CliRunner().invoke(cli, ["-v", "export", str(path), "-o", str(tmp_path / "m.onnx")])
    assert verbose.exit_code == 1
    assert "in user code:" in verbose.output and "x.numpy()" in verbose.output  # the frames, with the line
    assert verbose.output.strip().splitlines()[-1] == lines[-1]
