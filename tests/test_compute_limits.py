"""Issue 18: limits by what a model computes (Keras' own shapes after a bounded load, `toolkit.shapes`),
and the stated bound: a `.keras` file that passes the default limits exports within 2 GB peak memory and
120 s on this machine, or is refused up front naming the limit. Each export runs in a fresh process, its
peak memory read from the kernel (`wait4`'s ru_maxrss of that child)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import hostile
import numpy as np
import pytest

from toolkit.limits import MAX_ACTIVATION_ELEMENTS, ResourceLimits
from toolkit.shapes import compute_budget

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}", TF_CPP_MIN_LOG_LEVEL="3")
BOUND_BYTES = 2 * 10**9  # README, "What lstm-onnx refuses": the stated bound
BOUND_SECONDS = 120


def export_in_a_fresh_process(model: Path, out: Path) -> tuple[int, str, float, int]:
    """Exit code, stderr, seconds and peak RSS (bytes, that child's own ru_maxrss) of `lstm-onnx export`."""
    start = time.monotonic()
    child = subprocess.Popen([sys.executable, "-m", "toolkit.cli", "export", str(model), "-o", str(out)], env=ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        err = child.stderr.read()
        _, status, usage = os.wait4(child.pid, 0)
    finally:
        if child.returncode is None and child.poll() is None:
            child.kill()
    child.returncode = os.waitstatus_to_exitcode(status)
    return child.returncode, err.decode(), time.monotonic() - start, usage.ru_maxrss * 1024


def save(model, folder: Path, name: str) -> Path:
    path = folder / f"{name}.keras"
    model.save(path)
    return path


def test_zero_padding_before_an_lstm_counts_against_the_time_limit(tmp_path):
    """Before: a 20 KB `Input -> ZeroPadding1D((0, 3_000_000)) -> LSTM` passed every limit and was still
    running at 70 s. Keras' own shapes see the 3,000,003 steps the LSTM runs over."""
    import keras

    x = keras.Input((3, 1), name="input")
    padded = keras.layers.ZeroPadding1D((0, 3_000_000))(x)
    honest = save(keras.Model(x, keras.layers.LSTM(2, name="lstm")(padded)), tmp_path, "honest")

    def declare_three_steps(config):  # what the attacker edits: the shapes the config check reads
        for layer in config["config"]["layers"]:
            if layer["class_name"] in ("LSTM", "ZeroPadding1D") and "build_config" in layer:
                layer["build_config"]["input_shape"] = [None, 3, 1]
            for node in layer.get("inbound_nodes", []):
                for arg in node.get("args", []):
                    if isinstance(arg, dict) and "shape" in arg.get("config", {}):
                        arg["config"]["shape"] = [None, 3, 1]

    path = hostile.edit_config(honest, tmp_path / "padded.keras", declare_three_steps)
    assert path.stat().st_size < 64 << 10
    from toolkit.limits import inspect_keras_file

    assert inspect_keras_file(path).longest_fixed_time == 3  # the config check alone lets it through
    code, err, seconds, _ = export_in_a_fresh_process(path, tmp_path / "padded.onnx")
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("Error: Expected a fixed time axis of at most 100000 steps (--max-timesteps). Received: ")
    assert "computes 3000003 at layer 'lstm' (LSTM)" in err
    assert not (tmp_path / "padded.onnx").exists() and seconds < BOUND_SECONDS


def test_a_time_axis_set_on_the_input_alone_is_refused(hostile_dir):
    path = hostile.fixed_time(hostile_dir, 2_000_000)
    code, err, seconds, _ = export_in_a_fresh_process(path, hostile_dir / "time.onnx")
    assert code == 1 and "(--max-timesteps)" in err and "2000000" in err, err
    assert not (hostile_dir / "time.onnx").exists() and seconds < BOUND_SECONDS


@pytest.fixture(scope="module")
def hostile_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("compute")


def _capped(width: int):
    """Input((4096, 64)) -> LSTM(16, return_sequences) -> Dense(width): 4096 * width values per sample."""
    import keras

    x = keras.Input((4096, 64), name="input")
    h = keras.layers.LSTM(16, return_sequences=True, name="lstm")(x)
    return keras.Model(x, keras.layers.Dense(width, name="head")(h))


@pytest.mark.slow
def test_a_model_at_the_activation_cap_exports_within_the_stated_bound(tmp_path):
    model = _capped(MAX_ACTIVATION_ELEMENTS // 4096)
    assert compute_budget(model).largest_activation == MAX_ACTIVATION_ELEMENTS
    path = save(model, tmp_path, "capped")
    code, err, seconds, peak = export_in_a_fresh_process(path, tmp_path / "capped.onnx")
    assert code == 0, err
    print(f"at the activation cap: {seconds:.1f} s, peak {peak / 1e9:.2f} GB")
    assert seconds < BOUND_SECONDS and peak < BOUND_BYTES, (seconds, peak)


def test_one_value_past_the_activation_cap_is_refused_up_front(tmp_path):
    path = save(_capped(MAX_ACTIVATION_ELEMENTS // 4096 + 1), tmp_path, "over")
    code, err, seconds, peak = export_in_a_fresh_process(path, tmp_path / "over.onnx")
    assert code == 1 and "(--max-activation)" in err and "Traceback" not in err, err
    assert peak < BOUND_BYTES / 2


def test_multiply_adds_per_sample_are_bounded(tmp_path):
    import keras

    x = keras.Input((2_500, 16), name="input")  # within every other limit: 9.1M parameters, 3.75M values
    model = keras.Model(x, keras.layers.LSTM(1_500, name="lstm")(x))
    budget = compute_budget(model)
    assert budget.macs == model.count_params() * 2_500 and budget.macs > ResourceLimits().max_macs
    code, err, _, _ = export_in_a_fresh_process(save(model, tmp_path, "macs"), tmp_path / "macs.onnx")
    assert code == 1 and "multiply-adds per sample (ResourceLimits.max_macs)" in err, err


def test_parity_inputs_are_drawn_in_the_models_dtype_and_bounded():
    from toolkit.inputs import batch_sizes, make_cases

    model = _capped(MAX_ACTIVATION_ELEMENTS // 4096)
    assert batch_sizes(model) == (1, 2)  # batch 4 at the cap: 128 MiB per output as float64
    cases = make_cases(model)
    assert [case.feeds["input"].dtype for case in cases] == [np.float32, np.float32]
    assert [case.feeds["input"].shape[0] for case in cases] == [1, 2]
