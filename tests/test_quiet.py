"""Quiet by default: a command's stderr holds only the tool's own lines (warning:, note:, Error:), not
TensorFlow's, absl's, tf2onnx's or ONNX Runtime's; `-v` shows them. Run as a user runs it: a subprocess,
with no TF_CPP_MIN_LOG_LEVEL of ours in its environment."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
OWN = ("warning: ", "note: ", "Error: ")


def _cli(*args, cwd):
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "PYTHONWARNINGS")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "toolkit.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def _foreign(stderr):
    return [line for line in stderr.splitlines() if line and not line.startswith(OWN)]


@pytest.fixture(scope="module")
def mixed_file(tmp_path_factory):
    """A mixed_float16 model (its notes are the tool's own stderr lines; tf2onnx warned on it before)."""
    import keras

    from toolkit.models.builder import set_deterministic_weights

    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        x = keras.Input((6, 3), name="x")
        h = keras.layers.LSTM(8, return_sequences=True, name="lstm_a")(keras.layers.Dense(4, name="front")(x))
        out = keras.layers.Activation("linear", dtype="float32", name="out")(keras.layers.Dense(2, name="head")(h))
        model = keras.Model(x, out, name="mixed")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    set_deterministic_weights(model, 1)
    path = tmp_path_factory.mktemp("quiet") / "mixed.keras"
    model.save(path)
    return path


@pytest.mark.slow
def test_export_prints_only_its_own_lines_on_stderr(mixed_file, tmp_path):
    done = _cli("export", str(mixed_file), "-o", str(tmp_path / "mixed.onnx"), "--state-io", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert _foreign(done.stderr) == []
    assert "note: layer 'lstm_a': computed in float16" in done.stderr  # the tool's own lines still show
    assert "PASS" in done.stdout and "WARNING" not in done.stdout

    # run (no TensorFlow) on a state-io export: ONNX Runtime says nothing either.
    np.save(tmp_path / "x.npy", np.ones((2, 6, 3), np.float32))
    ran = _cli("run", str(tmp_path / "mixed.onnx"), "-i", f"x={tmp_path / 'x.npy'}", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert ran.stderr == "" and "out_output" in ran.stdout

    failed = _cli("export", str(tmp_path / "missing.keras"), cwd=tmp_path)
    assert failed.returncode == 1 and failed.stderr.splitlines() == [
        f"Error: Expected a Keras model file (.keras). Received: {str(tmp_path / 'missing.keras')!r} (no such file)"]


@pytest.mark.slow
def test_verbose_shows_what_tensorflow_prints(mixed_file, tmp_path):
    done = _cli("-v", "export", str(mixed_file), "-o", str(tmp_path / "mixed.onnx"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert _foreign(done.stderr), "expected TensorFlow's own stderr lines with -v"
    assert "note: layer 'lstm_a'" in done.stderr
