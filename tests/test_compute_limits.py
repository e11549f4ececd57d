"""Issue 18: limits by what a model computes (Keras' own shapes after a bounded load, `toolkit.safety.shapes`),
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

from toolkit.options import MAX_ACTIVATION_ELEMENTS, ResourceLimits
from toolkit.safety.shapes import compute_budget

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
    from toolkit.safety.limits import inspect_keras_file

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
    from toolkit.checking.inputs import batch_sizes, make_cases

    model = _capped(MAX_ACTIVATION_ELEMENTS // 4096)
    assert batch_sizes(model) == (1, 2)  # batch 4 at the cap: 128 MiB per output as float64
    cases = make_cases(model)
    assert [case.feeds["input"].dtype for case in cases] == [np.float32, np.float32]
    assert [case.feeds["input"].shape[0] for case in cases] == [1, 2]


def test_a_padded_dynamic_time_axis_is_evaluated_at_the_lengths_the_checks_draw(hostile_dir):
    """Issue 25, F7 (round 3's N8): `Input((None, 1)) -> ZeroPadding1D((0, 3_000_000)) -> LSTM(8)` (20 KB).
    Keras' shapes say `None` after the padding, so the time axis counted as 1 and the parity check ran for
    minutes; evaluated at the 11 steps the checks draw, the LSTM runs 3,000,011: refused up front."""
    path = hostile.padded_dynamic(hostile_dir, 3_000_000)
    assert path.stat().st_size < 64 << 10
    code, err, seconds, peak = export_in_a_fresh_process(path, hostile_dir / "padded.onnx")
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("Error: Expected a time axis of at most 100000 steps (--max-timesteps). Received: ")
    assert "computes 3000011 at layer 'lstm' (LSTM) when its input has the 11 steps the checks draw" in err
    assert not (hostile_dir / "padded.onnx").exists() and seconds < BOUND_SECONDS and peak < BOUND_BYTES


def test_drawn_lengths_reach_into_nested_models_and_masks():
    import keras

    inner = keras.Sequential([keras.Input((None, 3)), keras.layers.ZeroPadding1D((0, 200_000)),
                              keras.layers.LSTM(3, return_sequences=True)], name="inner")
    z = keras.Input((None, 3))
    budget = compute_budget(keras.Model(z, keras.layers.GRU(2)(inner(z))))
    assert (budget.longest_time, budget.time_drawn) == (200_011, 11) and "ZeroPadding1D" in budget.activation_at
    ids = keras.Input((None,), dtype="int32")
    masked = keras.Model(ids, keras.layers.LSTM(3)(keras.layers.Embedding(10, 4, mask_zero=True)(ids)))
    assert compute_budget(masked).longest_time == 11  # the mask's own ops (NotEqual) evaluated on the way
    steps = keras.Input((7, 2))
    assert compute_budget(keras.Model(steps, keras.layers.LSTM(3)(steps))).time_drawn is None  # no dynamic axis


def test_a_fixed_batch_counts_whole_in_the_activation_and_multiply_add_limits():
    """F6: `Input(batch_shape=(4_000_000, 4, 4)) -> LSTM(16)` (21 KB) peaked at 8.46 GB: its batch was drawn
    whole while the limits counted one sample. The config check refuses the file (tests/test_limits.py);
    Keras' shapes count the batch too, and the check cases are bounded in bytes before they are drawn."""
    import keras

    from toolkit.checking.inputs import CASE_INPUT_BYTES, make_cases
    from toolkit.errors import InputError, ModelLoadError
    from toolkit.safety.shapes import check_model_budget

    x = keras.Input(batch_shape=(4_000_000, 4, 4), name="input")
    model = keras.Model(x, keras.layers.LSTM(16, name="lstm")(x))
    budget = compute_budget(model)
    assert (budget.batch, budget.largest_activation) == (4_000_000, 4_000_000 * 4 * 4)  # input = output
    assert budget.macs == model.count_params() * 4 * 4_000_000
    with pytest.raises(ModelLoadError, match=r"\(--max-activation\), a fixed batch counted whole\. Received: 'b' computes "
                                             r"64000000 at layer 'input' \(InputLayer\) with its fixed batch of 4000000"):
        check_model_budget(model, "b", ResourceLimits())
    big = keras.Input(batch_shape=(5_000_000, 4, 4))  # past the draw's own cap (with the limits raised)
    with pytest.raises(InputError, match=rf"at most {CASE_INPUT_BYTES >> 20} MiB per input\. Received: an input of "
                                         r"shape \(5000000, 4, 4\) float32 \(305 MiB\)"):
        make_cases(keras.Model(big, keras.layers.LSTM(1)(big)))
    small = keras.Input(batch_shape=(8, 5, 3))
    assert compute_budget(keras.Model(small, keras.layers.LSTM(4)(small))).largest_activation == 8 * 5 * 3
