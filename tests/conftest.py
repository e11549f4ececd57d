"""Shared fixtures. Exports are slow-ish (about half a second each), so the seed suite is made once."""

from __future__ import annotations

import os

# Tests are an application edge too: keep TensorFlow's C++ logging out of the test output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def seed_suite(tmp_path_factory):
    """The four seed exports, written to a temporary folder with their manifest."""
    from toolkit.export.suite import export_stacks
    from toolkit.models.builder import stack_configs

    out = tmp_path_factory.mktemp("seed_suite")
    return export_stacks(stack_configs(), out)


@pytest.fixture(scope="session")
def saved_models(tmp_path_factory):
    """Users' own models saved as .keras: a functional one with initial_state inputs, a Sequential one,
    one without any recurrent layer, and one with a Lambda layer (refused by safe mode)."""
    import keras
    import numpy as np

    from toolkit.models.builder import set_deterministic_weights

    folder = tmp_path_factory.mktemp("keras_models")
    paths = {}

    x = keras.Input(shape=(None, 3), name="frames")
    h0 = keras.Input(shape=(4,), name="h0")
    c0 = keras.Input(shape=(4,), name="c0")
    seq, h, c = keras.layers.LSTM(4, return_sequences=True, return_state=True, name="encoder")(x, initial_state=[h0, c0])
    head = keras.layers.Dense(2, name="head")(seq)
    functional = keras.Model([x, h0, c0], [head, h, c], name="with_initial_state")
    set_deterministic_weights(functional, 3)
    paths["functional"] = folder / "functional.keras"
    functional.save(paths["functional"])

    sequential = keras.Sequential(
        [keras.Input((5, 2), name="series"), keras.layers.LSTM(6, return_sequences=True, name="lstm_a"),
         keras.layers.LSTM(3, name="lstm_b"), keras.layers.Dense(1, name="out")],
        name="sequential_stack",
    )
    set_deterministic_weights(sequential, 4)
    paths["sequential"] = folder / "sequential.keras"
    sequential.save(paths["sequential"])

    dense_only = keras.Sequential([keras.Input((3,), name="x"), keras.layers.Dense(2, name="d")], name="dense_only")
    paths["dense_only"] = folder / "dense_only.keras"
    dense_only.save(paths["dense_only"])

    lam_in = keras.Input((3, 1), name="x")
    lam = keras.layers.Lambda(lambda t: t * 2.0, name="double")(lam_in)
    lam_out = keras.layers.LSTM(2, name="lstm")(lam)
    paths["lambda"] = folder / "lambda.keras"
    keras.Model(lam_in, lam_out).save(paths["lambda"])

    paths["not_a_model"] = folder / "garbage.keras"
    paths["not_a_model"].write_bytes(b"this is not a zip archive")
    np.save(folder / "unused.npy", np.zeros(1))
    return paths


def assert_close(actual, expected, name="output", tolerances=None):
    """Assert one output within the project's parity tolerance (`compare.Tolerances`: rtol 1e-5, atol 1e-6
    by default, or that output's own), with the comparison's figures as the failure message."""
    from toolkit.checking.results import compare_arrays
    from toolkit.tolerance import Tolerances

    comparison = compare_arrays(name, expected, actual, (tolerances or Tolerances()).for_output(name))
    assert comparison, str(comparison)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for the servers the tests start)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_as_nobody(*args: object) -> dict:
    """tests/local_attacker.py as another local user (`nobody`, the system python3), from a copy in a
    folder that user can read; its JSON answer."""
    import json
    import shutil
    import subprocess
    import tempfile
    from pathlib import Path

    folder = Path(tempfile.mkdtemp(prefix="lstm-onnx-attacker-"))
    try:
        folder.chmod(0o755)
        script = folder / "local_attacker.py"
        shutil.copyfile(Path(__file__).with_name("local_attacker.py"), script)
        script.chmod(0o644)
        done = subprocess.run(["runuser", "-u", "nobody", "--", "python3", str(script), *map(str, args)],
                              capture_output=True, text=True, timeout=120, cwd="/")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)
