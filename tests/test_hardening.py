"""Untrusted files, atomic writes, hard inputs and a second runtime."""

import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from toolkit import fileio
from toolkit.checking.verify import verify_runtimes
from toolkit.cli import cli
from toolkit.errors import ModelLoadError, OutputError, ParityError
from toolkit.export.exporter import export_keras_file, export_model
from toolkit.models.builder import StackConfig, build_stack, variant_config
from toolkit.models.loading import check_keras_version
from toolkit.runtimes.keras import keras_outputs
from toolkit.runtimes.onnxrt import OnnxRunner
from toolkit.runtimes.reference import ReferenceRunner, reference_oracle_problem
from toolkit.tolerance import Tolerances, decide

# ------------------------------------------------------------------------------------ untrusted files


def test_old_keras_is_refused_for_loading_files():
    check_keras_version("3.15.1")
    check_keras_version("3.14.0rc1")
    with pytest.raises(ModelLoadError, match=r"Expected Keras >= 3.14 .* Received: Keras 3.13.2"):
        check_keras_version("3.13.2")


UNKNOWN_OBJECT = """
import keras, sys
@keras.saving.register_keras_serializable(package="mine")
class Doubler(keras.layers.Layer):
    def call(self, x):
        return x * 2.0
x = keras.Input((3, 1), name="x")
keras.Model(x, keras.layers.LSTM(2, name="lstm")(Doubler(name="doubler")(x))).save(sys.argv[1])
"""


@pytest.mark.slow
def test_unknown_custom_object_is_refused_in_a_fresh_process(tmp_path):
    model = tmp_path / "custom.keras"
    subprocess.run([sys.executable, "-c", UNKNOWN_OBJECT, str(model)], check=True, capture_output=True)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([sys.executable, "-m", "toolkit.cli", "export", str(model), "-o", str(tmp_path / "c.onnx")],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Expected a loadable Keras model" in errors[0] and "Doubler" in errors[0]
    assert not (tmp_path / "c.onnx").exists()


# --------------------------------------------------------------------------------------- atomic writes


def test_an_interrupted_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"good")

    def fail(*_args):
        raise OSError("disk full")

    monkeypatch.setattr(fileio.os, "replace", fail)
    with pytest.raises(OutputError, match=r"Expected a writable destination\. Received: .*model.onnx': disk full; "
                                          r"nothing was changed"):
        fileio.atomic_write_bytes(target, b"new bytes")
    assert target.read_bytes() == b"good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_a_failed_export_never_replaces_a_good_file(tmp_path):
    model = build_stack(StackConfig())
    keras_file = tmp_path / "m.keras"
    model.save(keras_file)
    target = tmp_path / "m.onnx"
    good = export_keras_file(keras_file, target)
    before = target.read_bytes()
    assert before == good.data
    with pytest.raises(ParityError):
        export_keras_file(keras_file, target, tolerances=Tolerances.parse(atol=["0"], rtol=["0"]))
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.keras", "m.onnx"]


def test_a_failed_suite_writes_nothing_and_keeps_the_old_folder(tmp_path):
    out = tmp_path / "exported"
    first = CliRunner().invoke(cli, ["export", "-o", str(out), "--return-state", "--return-sequences"])
    assert first.exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    failed = CliRunner().invoke(cli, ["export", "-o", str(out), "--atol", "0", "--rtol", "0"])
    assert failed.exit_code == 1 and "nothing written" in failed.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


# ------------------------------------------------------------------------------------------ hard inputs


@pytest.mark.slow
@pytest.mark.parametrize("cell", ["lstm", "gru", "simple_rnn"])
def test_long_sequences_keep_parity(cell):
    model = build_stack(StackConfig(layers=2, units=16, timesteps=None, features=4, cell=cell,
                                    return_sequences=True, return_state=True))
    result = export_model(model)
    x = np.random.default_rng(0).standard_normal((2, 2000, 4)).astype(np.float32)
    expected = keras_outputs(model, {"input": x})
    actual = OnnxRunner(result.model).run({"input": x})
    tol = decide(Tolerances(), result.op_counts).base
    for want, got in zip(expected, actual.values()):
        np.testing.assert_allclose(got, want, rtol=tol.rtol, atol=tol.atol)


@pytest.mark.parametrize("variant", ["lstm", "gru", "simple_rnn", "lstm_hard_sigmoid", "bidirectional_sum"])
def test_saturating_inputs_keep_parity(variant):
    model = build_stack(variant_config(variant))
    result = export_model(model)
    x = (np.random.default_rng(1).standard_normal((3, 9, 4)) * 1e4).astype(np.float32)
    feeds = {"input": x} | {i.name: np.zeros((3, 8), np.float32) for i in result.inputs[1:]}
    expected = keras_outputs(model, feeds)
    actual = OnnxRunner(result.model).run(feeds)
    tol = decide(Tolerances(), result.op_counts).base
    for want, got in zip(expected, actual.values()):
        np.testing.assert_allclose(got, want, rtol=tol.rtol, atol=tol.atol)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("variant", ["lstm", "gru", "simple_rnn", "lstm_go_backwards", "bidirectional_concat",
                                     "bidirectional_sum", "lstm_masking"])
def test_nan_and_inf_propagate_like_keras(variant, bad):
    model = build_stack(variant_config(variant, units=4, features=3))
    result = export_model(model, propagate_nan=True)
    x = np.random.default_rng(2).standard_normal((3, 6, 3)).astype(np.float32)
    x[1, 2, 0] = bad
    expected = keras_outputs(model, {"input": x})
    actual = OnnxRunner(result.model).run({"input": x})
    for want, got in zip(expected, actual.values()):
        assert np.array_equal(np.isnan(want), np.isnan(got))
        assert np.array_equal(np.isinf(want), np.isinf(got))
        finite = np.isfinite(want)
        np.testing.assert_allclose(got[finite], want[finite], rtol=1e-5, atol=1e-6)
    assert np.isfinite(actual[result.outputs[0].name][[0, 2]]).all()  # the other samples are untouched


def test_without_propagate_nan_onnx_runtime_drops_nan_as_documented():
    """ORT's fused LSTM clamps NaN in its activations; README says so and points to --propagate-nan."""
    model = build_stack(StackConfig(layers=1, units=4, timesteps=None, features=3, return_sequences=True))
    x = np.ones((1, 5, 3), np.float32)
    x[0, 2, 0] = np.nan
    plain = OnnxRunner(export_model(model).model).run({"input": x})["lstm_1_sequence"]
    guarded = OnnxRunner(export_model(model, propagate_nan=True).model).run({"input": x})["lstm_1_sequence"]
    assert np.isfinite(plain).all()
    assert np.isnan(guarded[0, 2:]).all() and np.isfinite(guarded[0, :2]).all()


# ------------------------------------------------------------------------------------- second runtime


@pytest.fixture()
def saved(tmp_path):
    def save(config):
        model = build_stack(config)
        keras_file = tmp_path / f"{config.name}.keras"
        model.save(keras_file)
        onnx_file = tmp_path / f"{config.name}.onnx"
        export_keras_file(keras_file, onnx_file)
        return keras_file, onnx_file
    return save


@pytest.mark.parametrize("variant", ["lstm", "gru", "gru_reset_before", "simple_rnn", "bidirectional_concat",
                                     "lstm_go_backwards", "lstm_initial_state"])
def test_every_runtime_and_optimization_level_matches_keras(saved, variant):
    keras_file, onnx_file = saved(variant_config(variant))
    reports = verify_runtimes(onnx_file, keras_file, ["onnxruntime", "onnxruntime-extended", "onnxruntime-basic",
                                                      "onnxruntime-disabled", "reference"])
    assert [r.runtime for r in reports if r.report is not None] == [
        "onnxruntime", "onnxruntime-extended", "onnxruntime-basic", "onnxruntime-disabled", "reference"]
    for r in reports:
        assert r, (r.runtime, r.report.failures())


@pytest.mark.parametrize("variant,reason", [
    ("lstm_hard_sigmoid", "ignores the activations attribute"),
    ("lstm_masking", "ignores sequence_lens"),
])
def test_reference_is_skipped_with_its_reason_where_it_is_no_oracle(saved, variant, reason):
    keras_file, onnx_file = saved(variant_config(variant))
    reports = {r.runtime: r for r in verify_runtimes(onnx_file, keras_file, ["onnxruntime", "reference"])}
    assert reports["onnxruntime"]
    assert reports["reference"].report is None and reason in reports["reference"].not_valid
    with pytest.raises(ValueError, match=reason):
        ReferenceRunner(onnx_file)
    assert reason in reference_oracle_problem(OnnxRunner(onnx_file).model)


def test_verify_runtimes_cli(saved):
    keras_file, onnx_file = saved(variant_config("lstm_masking"))
    result = CliRunner().invoke(cli, ["verify", str(onnx_file), "--keras", str(keras_file),
                                      "--runtimes", "onnxruntime,onnxruntime-disabled,reference"])
    assert result.exit_code == 0, result.output
    assert "[onnxruntime-disabled]" in result.output
    assert "reference: skipped: onnx.reference ignores sequence_lens" in result.output
    bad = CliRunner().invoke(cli, ["verify", str(onnx_file), "--keras", str(keras_file), "--runtimes", "tvm"])
    assert bad.exit_code == 1 and "Expected runtimes among" in bad.output




def test_verify_says_so_when_every_runtime_was_skipped(saved):
    keras_file, onnx_file = saved(variant_config("lstm_masking"))
    result = CliRunner().invoke(cli, ["verify", str(onnx_file), "--keras", str(keras_file), "--runtimes", "reference"])
    assert result.exit_code == 1 and "every requested runtime was skipped" in result.output
