"""Precision tiers (`--quantize int8`, `--float16`): real exports, real quantization, real ONNX Runtime.

Each tier is checked against Keras at its own measured tolerance, recorded in the metadata and the JSON,
and never applied unless asked: float32 exports keep their bytes and their `lstm_onnx.options`.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from toolkit.checking.verify import verify_runtimes
from toolkit.cli import cli
from toolkit.errors import InputError, ParityError
from toolkit.export.exporter import export_model
from toolkit.models.builder import build_stack, variant_config
from toolkit.onnxfile.metadata import metadata_value
from toolkit.onnxfile.model import count_ops, graph_inputs, graph_outputs
from toolkit.onnxfile.tiers import apply_tier
from toolkit.options import ExportOptions
from toolkit.runtimes.onnxrt import OnnxRunner
from toolkit.tolerance import DEFAULT_TOLERANCE, FLOAT16_TOLERANCE, INT8_TOLERANCE, Tolerances, decide


@pytest.fixture(scope="module")
def models():
    return {name: build_stack(variant_config(name)) for name in ("lstm", "mixed_cells", "dense_head", "gru")}


@pytest.mark.parametrize("variant", ["lstm", "mixed_cells", "dense_head"])
def test_int8_quantizes_lstm_and_matmul_and_keeps_gru_and_rnn_float(models, variant):
    result = export_model(models[variant], tier="int8")
    counts = count_ops(result.model)
    assert result.parity, result.parity.failures()
    assert counts["DynamicQuantizeLSTM"] >= 1 and not counts["LSTM"]
    assert counts["GRU"] == counts["RNN"] == (1 if variant == "mixed_cells" else 0)
    if variant == "dense_head":
        assert counts["MatMulInteger"] == 1 and not counts["MatMul"]
    assert result.tier.converted.get("LSTM") == counts["DynamicQuantizeLSTM"]
    assert result.fused_ops.get("DynamicQuantizeLSTM") == counts["DynamicQuantizeLSTM"]
    worst = max(s.max_abs for s in result.parity.summaries())
    # The tier really changed the numbers (beyond float32's tolerance) and is checked at its own.
    assert DEFAULT_TOLERANCE.atol < worst < INT8_TOLERANCE.atol
    assert all(s.tolerance == INT8_TOLERANCE for s in result.parity.summaries())
    if variant == "mixed_cells":
        assert result.tier.kept_float == {"GRU": 1, "RNN": 1}
        assert any("kept float32: 'gru_2' (GRU), 'simple_rnn_3' (RNN)" in note for note in result.notes)


def test_int8_of_a_gru_only_model_converts_nothing_and_says_so(models):
    result = export_model(models["gru"], tier="int8")
    assert result.parity and result.tier.converted == {} and result.tier.kept_float == {"GRU": 2}
    assert "nothing converted" in result.tier.describe()


def test_float16_stores_weights_half_and_keeps_float32_io(models):
    result = export_model(models["lstm"], tier="float16")
    assert result.parity, result.parity.failures()
    halves = [t for t in result.model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    assert halves and all(int(np.prod(t.dims)) >= 16 for t in halves)
    assert {t.dtype for t in graph_inputs(result.model) + graph_outputs(result.model)} == {"float32"}
    assert result.tier.size_ratio < 0.85
    assert all(s.tolerance == FLOAT16_TOLERANCE for s in result.parity.summaries())


def test_float16_state_io_export_loads_and_streams():
    from toolkit.checking.streaming import stream_parity

    model = build_stack(variant_config("lstm", units=32))  # states of 32 values: large enough to be converted
    result = export_model(model, tier="float16", state_io=True)
    assert result.parity
    runner = OnnxRunner(result.model)  # the keep_io_types conversion failed right here
    assert runner.optional and {t.dtype for t in runner.optional} == {"float32"}
    streamed = stream_parity(model, result.model, [1, 3, 2], tolerances=decide(Tolerances(), {}, "float16"))
    assert streamed, streamed.against_keras.failures()


@pytest.mark.parametrize("tier", ["int8", "float16"])
def test_tier_exports_are_reproducible_and_record_the_tier(models, tier):
    first, second = export_model(models["lstm"], tier=tier), export_model(models["lstm"], tier=tier)
    assert first.sha256 == second.sha256
    options = json.loads(metadata_value(first.model, "options"))
    assert options["tier"] == tier and ExportOptions.from_json(options).tier == tier
    onnx.checker.check_model(first.model, full_check=True)


def test_float32_options_record_is_unchanged():
    assert ExportOptions().to_json() == {"converter": "lstm-onnx", "propagate_nan": False, "state_io": False,
                                         "padding": "right"}
    _, info = apply_tier(onnx.ModelProto(), "float32")
    assert info.tier == "float32" and info.size_ratio == 1.0


def test_a_users_tolerance_is_never_loosened_by_the_tier(models, tmp_path):
    strict = Tolerances.parse(atol=["1e-6"], rtol=["1e-5"])
    result = export_model(models["lstm"], tier="int8", tolerances=strict)
    assert not result.parity
    with pytest.raises(ParityError):
        result.save(tmp_path / "int8.onnx")
    assert not (tmp_path / "int8.onnx").exists()


def test_unknown_tier_is_refused():
    with pytest.raises(InputError, match="Expected a precision tier"):
        ExportOptions(tier="int4")


def test_cli_int8_export_verifies_at_its_tier_tolerance(models, tmp_path):
    keras_path, onnx_path = tmp_path / "lstm.keras", tmp_path / "lstm_int8.onnx"
    models["lstm"].save(keras_path)
    done = CliRunner().invoke(cli, ["export", str(keras_path), "-o", str(onnx_path), "--quantize", "int8", "--json"])
    assert done.exit_code == 0, done.output
    payload = json.loads(done.output)
    assert payload["tier"]["tier"] == "int8" and payload["tier"]["tolerance"] == {"atol": 0.02, "rtol": 0.01, "scale": 0.1}
    report = verify_runtimes(onnx_path, keras_path)[0]
    assert report and report.report.summaries()[0].tolerance == INT8_TOLERANCE
    text = CliRunner().invoke(cli, ["export", str(keras_path), "-o", str(tmp_path / "t.onnx"), "--float16"])
    assert text.exit_code == 0 and "t.onnx [float16]" in text.output


def test_cli_refuses_two_tiers(models, tmp_path):
    keras_path = tmp_path / "lstm.keras"
    models["lstm"].save(keras_path)
    done = CliRunner().invoke(cli, ["export", str(keras_path), "--quantize", "int8", "--float16"])
    assert done.exit_code == 2  # a malformed option, as README's refusal section says
    expected = "Error: Expected one precision tier: --quantize int8 or --float16. Received: both"
    assert done.output.strip().splitlines()[-1] == expected


def test_run_with_threads_and_precision_options(models, tmp_path):
    from toolkit.runtimes.registry import open_runner

    onnx_path, x_path = tmp_path / "lstm.onnx", tmp_path / "x.npy"
    export_model(models["lstm"]).save(onnx_path)
    np.save(x_path, np.random.default_rng(0).uniform(-1, 1, (2, 5, 4)).astype(np.float32))
    default = CliRunner().invoke(cli, ["run", str(onnx_path), "-i", str(x_path), "--json"])
    one = CliRunner().invoke(cli, ["run", str(onnx_path), "-i", str(x_path), "--threads", "1", "--json"])
    assert default.exit_code == one.exit_code == 0, one.output
    for name, value in json.loads(default.output).items():
        np.testing.assert_allclose(json.loads(one.output)[name]["values"], value["values"], rtol=1e-5, atol=1e-6)
    bf16 = CliRunner().invoke(cli, ["run", str(onnx_path), "-i", str(x_path), "--precision", "bf16"])
    assert bf16.exit_code == 1
    assert bf16.output.strip() == "Error: Expected --precision among ['f32'] with onnxruntime. Received: 'bf16'"
    with open_runner(onnx_path, threads=2) as runner:
        assert runner.session.get_session_options().intra_op_num_threads == 2


def test_run_in_openvino_where_it_computes_right(models, tmp_path):
    onnx_path, masked_path, x_path = tmp_path / "lstm.onnx", tmp_path / "masked.onnx", tmp_path / "x.npy"
    export_model(models["lstm"]).save(onnx_path)
    export_model(build_stack(variant_config("lstm_masking"))).save(masked_path)
    np.save(x_path, np.random.default_rng(0).uniform(-1, 1, (2, 5, 4)).astype(np.float32))
    ort_run = CliRunner().invoke(cli, ["run", str(onnx_path), "-i", str(x_path), "--json"])
    vino = CliRunner().invoke(cli, ["run", str(onnx_path), "-i", str(x_path), "--runtime", "openvino", "--threads", "1",
                                    "--json"])
    assert vino.exit_code == 0, vino.output
    for name, value in json.loads(ort_run.output).items():
        np.testing.assert_allclose(json.loads(vino.output)[name]["values"], value["values"], rtol=1e-5, atol=1e-6)
    refused = CliRunner().invoke(cli, ["run", str(masked_path), "-i", str(x_path), "--runtime", "openvino"])
    assert refused.exit_code == 1 and "Error: Expected a model openvino computes correctly. Received: masked.onnx: " \
        "openvino ignores the axes attribute of ReduceL1" in refused.output
