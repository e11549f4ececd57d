"""A SavedModel's serving signature behind the runner contract (`toolkit.runtimes.signature`): a real
`tf.Module` SavedModel, saved by TensorFlow in a subprocess, run by its bounded child. The feeds are checked
before the child sees them, the outputs come keyed by the signature's keys, and `close` stops the child."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from toolkit.errors import InputError, UnsupportedModelError
from toolkit.runtimes.base import Runner
from toolkit.runtimes.signature import SignatureRunner, signature_spec

MODULE_SCRIPT = """
import sys, tensorflow as tf
class Affine(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec((None, None, 2), tf.float32, name='signal'),
                                  tf.TensorSpec((None, 2), tf.float32, name='bias')])
    def serve(self, signal, bias):
        return {'total': tf.reduce_sum(signal, axis=1) + bias, 'twice': signal * 2.0}
m = Affine()
tf.saved_model.save(m, sys.argv[1], signatures={'serving_default': m.serve})
"""


@pytest.fixture(scope="module")
def module_folder(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("signature") / "affine"
    subprocess.run([sys.executable, "-c", MODULE_SCRIPT, str(path)], check=True, capture_output=True, timeout=300)
    return path


@pytest.fixture(scope="module")
def runner(module_folder):
    from toolkit.runtimes.keras2_child import SignatureChild

    child = SignatureChild(module_folder)
    with SignatureRunner(child, signature_spec(child.spec, module_folder)) as opened:
        yield opened


def _feeds(batch: int = 3, steps: int = 4, bias_batch: int | None = None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"signal": rng.uniform(-1, 1, (batch, steps, 2)).astype(np.float32),
            "bias": rng.uniform(-1, 1, (bias_batch or batch, 2)).astype(np.float32)}


def test_the_signature_runs_behind_the_runner_contract(runner):
    assert isinstance(runner, Runner) and runner.input_names == ["bias", "signal"]
    feeds = _feeds()
    outputs = runner.run(feeds, timeout=60)
    assert list(outputs) == ["total", "twice"] == runner.output_names
    np.testing.assert_allclose(outputs["total"], feeds["signal"].sum(axis=1) + feeds["bias"], rtol=1e-6)
    np.testing.assert_array_equal(outputs["twice"], feeds["signal"] * 2)


@pytest.mark.parametrize("feeds, expected", [
    ({"signal": _feeds()["signal"]}, r"Expected inputs \['bias', 'signal'\]\. Received: \['signal'\]"),
    ({**_feeds(), "extra": np.zeros(1, np.float32)}, r"Expected inputs \['bias', 'signal'\]"),
    ({**_feeds(), "bias": np.zeros((3, 2), np.float64)}, r"Expected input 'bias' of dtype float32\. Received: dtype float64"),
    ({**_feeds(), "signal": np.zeros((3, 2), np.float32)}, r"Expected input 'signal' of rank 3 .* Received: shape \(3, 2\)"),
    ({**_feeds(), "bias": np.zeros((3, 5), np.float32)}, r"Expected input 'bias' with shape \(batch, 2\) \(axis 1 = 2\)"),
    (_feeds(bias_batch=1), r"Expected the same batch size \(axis 0\) in every input\. Received: 'bias' batch 1, "
                           r"'signal' batch 3"),
    ({**_feeds(), "signal": np.zeros((3, 0, 2), np.float32)}, r"Expected input 'signal' with every axis at least 1"),
])
def test_feeds_are_checked_before_the_child_sees_them(runner, feeds, expected):
    with pytest.raises(InputError, match=expected) as info:
        runner.run(feeds)
    assert "\n" not in str(info.value)
    assert runner.child.process.poll() is None  # refused here: the child never ran them, and still serves
    assert list(runner.run(_feeds(batch=1, steps=2))) == ["total", "twice"]


def test_close_stops_the_child_and_a_closed_runner_refuses_to_run(module_folder):
    from toolkit.runtimes.keras2_child import SignatureChild

    child = SignatureChild(module_folder)
    runner = SignatureRunner(child, signature_spec(child.spec, module_folder))
    runner.close()
    assert child.process.poll() is not None
    runner.close()  # twice: nothing left to stop
    with pytest.raises(InputError, match=r"^Expected an open savedmodel-signature runner\. Received: run\(\) after close\(\)$"):
        runner.run(_feeds())


def test_a_signature_without_named_inputs_or_outputs_is_refused(tmp_path):
    with pytest.raises(UnsupportedModelError, match=r"Expected a serving signature with named inputs and outputs"):
        signature_spec({"inputs": [["x", [None, 2], "float32"]], "outputs": []}, tmp_path)
