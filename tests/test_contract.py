"""Issue 19: one runner contract and one tolerance policy, through the CLI and the library.

Every runner's public `run(feeds, timeout)` checks the feeds and honours the deadline; thread counts and
input sizes have stated bounds; a precision tier that damages an output relative to its own scale fails.
Each test failed on the code before the change (the issue's measurements in the comments).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from test_refusals import _endless_loop, one_error

from toolkit.checking.results import compare_arrays
from toolkit.cli import cli
from toolkit.runtimes.threads import max_threads
from toolkit.tolerance import Tolerance

ROOT = Path(__file__).resolve().parent.parent
CASE1 = ROOT / "exported" / "case1_sequences.onnx"
CASE3 = ROOT / "exported" / "case3_sequences_state.onnx"


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def dynamic_lstm(path: Path) -> Path:
    """One ONNX LSTM (2 units) over a dynamic batch and time axis, with its last states as outputs."""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.uniform(-0.5, 0.5, shape).astype(np.float32), name)
               for name, shape in (("W", (1, 8, 1)), ("R", (1, 8, 2)))]
    node = helper.make_node("LSTM", ["input", "W", "R"], ["y", "state_h", "state_c"], hidden_size=2)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", "time", 1])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, "batch", 2])
                               for n in ("state_h", "state_c")], initializer=weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


# ------------------------------------------------------------------ feeds are checked in every runtime


def test_openvino_refuses_a_time_axis_of_0(tmp_path):
    # Before: exit 0, printing uninitialized memory as the states.
    np.save(tmp_path / "x.npy", np.ones((1, 0, 1), np.float32))
    model = dynamic_lstm(tmp_path / "lstm.onnx")
    one_error(invoke("run", model, "--runtime", "openvino", "--input", tmp_path / "x.npy"),
              "Expected input 'input' with every axis at least 1")


def test_openvino_honours_the_timeout(tmp_path):
    # Before: OpenVINO had no deadline (a crafted Loop ran for 40 s; this one for ever).
    np.save(tmp_path / "x.npy", np.ones((2, 2), np.float32))
    start = time.perf_counter()
    one_error(invoke("run", _endless_loop(tmp_path / "loop.onnx"), "--runtime", "openvino", "--input",
                     tmp_path / "x.npy", "--timeout", 3),
              "Expected a run that ends within 3 s (--timeout). Received: a run still going, stopped")
    assert time.perf_counter() - start < 60


def test_threads_have_a_stated_bound(tmp_path):
    # Before: --threads 2000 was accepted (0.3 s became 20 s).
    np.save(tmp_path / "x.npy", np.ones((1, 3, 1), np.float32))
    bound = max_threads()
    assert bound == 4 * (os.cpu_count() or 1)
    for command in (("run", CASE1, "--input", tmp_path / "x.npy", "--threads", 2000),
                    ("bench", CASE1, "--threads", "1,2000")):
        one_error(invoke(*command), f"Expected --threads between 1 and {bound}", code=2)


# ------------------------------------------------------------------------------------- bench, bounded


def test_bench_refuses_inputs_beyond_the_byte_bound(tmp_path):
    # Before: a MemoryError traceback.
    one_error(invoke("bench", dynamic_lstm(tmp_path / "lstm.onnx"), "--batch", 1_000_000, "--steps", 1_000_000),
              "Expected input 'input' of at most")


def test_bench_has_a_timeout(tmp_path):
    # Before: bench had no timeout at all; this Loop of 2**62 steps never ended.
    start = time.perf_counter()
    one_error(invoke("bench", _endless_loop(tmp_path / "loop.onnx"), "--runtimes", "onnxruntime", "--threads", "1",
                     "--timeout", 2),
              "Expected a run that ends within 2 s (--timeout). Received: a run still going, stopped")
    assert time.perf_counter() - start < 60


# ------------------------------------------------------------------------ relative damage by a tier


def test_a_tier_tolerance_catches_damage_relative_to_the_outputs_own_scale():
    expected = np.array([1e-4, -2e-4, 3e-4, -1e-4, 2e-4, 1e-4, -3e-4, 2e-4], np.float32)
    damaged = expected * np.array([1, -1, 1, 1, 2, 0, -1, 1], np.float32)  # 2 of 8 signs flipped, errors > 100%
    absolute_only = Tolerance(atol=2e-2, rtol=1e-2)
    assert compare_arrays("y", expected, damaged, absolute_only)  # what the int8 tier was checked with
    scaled = Tolerance(atol=2e-2, rtol=1e-2, scale=0.1)
    found = compare_arrays("y", expected, damaged, scaled)
    assert not found and "of the output's scale" in found.reason and "2 signs flipped" in found.reason
    assert compare_arrays("y", expected, expected * 1.01, scaled)  # 1% of the scale: within


def _small_output_model():
    """An LSTM whose cell-gate weights are tiny beside the others: its outputs are about 1e-4, and one
    per-tensor int8 scale rounds the cell gate's weights away."""
    import keras

    inputs = keras.Input((5, 3), name="input")
    lstm = keras.layers.LSTM(8, name="lstm")
    model = keras.Model(inputs, lstm(inputs))
    kernel, recurrent, bias = lstm.get_weights()
    rng = np.random.default_rng(1)
    kernel[:, 16:24] = rng.normal(0, 3e-4, (3, 8))
    recurrent[:, 16:24] *= 1e-4
    lstm.set_weights([kernel, recurrent, bias * 0])
    return model


def test_the_int8_tier_of_a_small_output_model_fails():
    # Before: PASS with errors over 100% of the outputs and signs flipped (atol 0.02 only).
    from toolkit.export.exporter import export_model

    result = export_model(_small_output_model(), tier="int8")
    summary = result.parity.summaries()[0]
    assert summary.max_abs < 2e-2  # inside the old absolute tolerance ...
    assert not result.parity, result.parity.failures()  # ... and failing now, saying why
    assert any("of the output's scale" in reason for reason in summary.reasons), summary.reasons


def test_export_cli_refuses_the_damaging_int8_tier(tmp_path):
    model = _small_output_model()
    model.save(tmp_path / "small.keras")
    result = invoke("export", tmp_path / "small.keras", "--quantize", "int8", "-o", tmp_path / "small.onnx")
    assert result.exit_code == 1, result.output
    assert not (tmp_path / "small.onnx").exists()
    assert "of the output's scale" in result.output


@pytest.mark.parametrize("tier", ["int8", "float16"])
def test_the_tiers_of_the_builder_variants_still_pass(tier):
    from toolkit.export.exporter import export_model
    from toolkit.models.builder import build_stack, variant_config

    for variant in ("lstm", "bidirectional_concat", "dense_head", "lstm_relu"):
        result = export_model(build_stack(variant_config(variant)), tier=tier)
        assert result.parity, (variant, result.parity.failures())


# ------------------------------------------------------------------------- the registry's validity


def test_reference_on_an_int8_export_is_not_valid(tmp_path):
    # Before (issue 19): a NotImplementedError traceback for DynamicQuantizeLSTM.
    from toolkit.models.builder import build_stack, variant_config

    keras_path, onnx_path = tmp_path / "lstm.keras", tmp_path / "lstm_int8.onnx"
    build_stack(variant_config("lstm")).save(keras_path)
    assert invoke("export", keras_path, "-o", onnx_path, "--quantize", "int8").exit_code == 0
    result = invoke("verify", onnx_path, "--keras", keras_path, "--runtimes", "onnxruntime,reference")
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    assert "not valid: onnx.reference has no kernel for com.microsoft.DynamicQuantizeLSTM" in result.output


def test_an_export_with_external_weights_works_in_every_runtime(tmp_path):
    # Before: FAIL in onnxruntime-node, onnxruntime-web and chromium (they were given the file's bytes,
    # without the weights beside it).
    from toolkit.checking.verify import verify_runtimes
    from toolkit.export.suite import read_manifest
    from toolkit.models.builder import StackConfig, build_stack

    entry = read_manifest(ROOT / "exported")["models"][0]
    model = onnx.load(str(ROOT / "exported" / entry["file"]))
    onnx.save(model, str(tmp_path / "external.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="external.onnx.data", size_threshold=64)  # weights out, small axes constants in
    assert (tmp_path / "external.onnx.data").stat().st_size > 0
    keras_model = build_stack(StackConfig(**entry["config"]))
    reports = verify_runtimes(tmp_path / "external.onnx", keras_model, ["onnxruntime", "onnxruntime-node",
                                                                         "onnxruntime-web", "chromium", "openvino"])
    assert [(r.runtime, r.status) for r in reports] == [(r.runtime, "pass") for r in reports], \
        [f for r in reports for f in (r.report.failures() if r.report else [r.not_valid])]


# -------------------------------------------------------------- the post's files, verified everywhere


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "exported").glob("*.onnx")))
def test_the_posts_exports_verify_everywhere_without_keras(name):
    # Before: "Missing option '--keras'", although each file records the builder flags it was made from.
    result = invoke("verify", ROOT / "exported" / name, "--runtimes", "all", "--json")
    assert result.exit_code == 0, result.output
    import json

    statuses = {runtime: report["status"] for runtime, report in json.loads(result.output)["runtimes"].items()}
    assert {"chromium", "onnxruntime-node", "onnxruntime-web", "openvino", "reference"} <= set(statuses)
    assert set(statuses.values()) == {"pass"}, statuses


def test_an_export_that_records_no_builder_flags_needs_keras(tmp_path):
    model = onnx.load(str(CASE1))
    for prop in model.metadata_props:
        if prop.key == "lstm_onnx.source":
            prop.value = '{"keras_file": "mine.keras", "keras_model": "mine"}'
    onnx.save(model, str(tmp_path / "mine.onnx"))
    one_error(invoke("verify", tmp_path / "mine.onnx"),
              "Expected --keras, or an export that records the builder flags it was made from. Received: mine.onnx, "
              "which records ['keras_file', 'keras_model']")


def test_export_proves_each_file_in_the_named_runtimes_before_writing(tmp_path):
    import json

    from toolkit.models.builder import build_stack, variant_config

    keras_path = tmp_path / "gru.keras"
    build_stack(variant_config("gru")).save(keras_path)
    done = invoke("export", keras_path, "-o", tmp_path / "gru.onnx", "--runtimes", "onnxruntime-node,openvino", "--json")
    assert done.exit_code == 0, done.output
    payload = json.loads(done.output)
    assert {name: r["status"] for name, r in payload["runtimes"].items()} == {"onnxruntime-node": "pass",
                                                                               "openvino": "pass"}
    assert (tmp_path / "gru.onnx").is_file()
    # A runtime that does not compute Keras' numbers at f32 (bf16, or not valid on a CPU without it): nothing written.
    refused = invoke("export", keras_path, "-o", tmp_path / "bf16.onnx", "--runtimes", "openvino-bf16")
    assert refused.exit_code == 1 and "openvino-bf16" in refused.output and "Traceback" not in refused.output
    assert not (tmp_path / "bf16.onnx").exists()
    one_error(invoke("export", keras_path, "-o", tmp_path / "x.onnx", "--runtimes", "tvm"),
              "Expected runtimes among", code=2)


def test_one_registry_names_the_runtimes_of_every_command(tmp_path):
    from toolkit.runtimes.registry import RUNTIMES
    from toolkit.speed.bench import _forms

    timed = [name for name, runtime in RUNTIMES.items() if runtime.timed and runtime.installed()]
    assert [form.name for form in _forms(None, [1])] == timed  # bench: the registry's timed runtimes
    assert {"onnxruntime", "onnxruntime-int8", "onnxruntime-float16"} <= set(timed)  # the rest: where installed
    one_error(invoke("bench", CASE1, "--runtimes", "tvm"), f"Expected runtimes among {timed}. Received: ['tvm']")
    np.save(tmp_path / "x.npy", np.ones((1, 3, 1), np.float32))
    one_error(invoke("run", CASE1, "--input", tmp_path / "x.npy", "--precision", "bf16"),
              "Expected --precision among ['f32'] with onnxruntime. Received: 'bf16'")
    # A tier is a runtime of its own: verify runs it when named, with its real figures, never in `all`.
    result = invoke("verify", CASE1, "--runtimes", "onnxruntime-float16", "--json")
    assert '"onnxruntime-float16"' in result.output and "Traceback" not in result.output, result.output


@pytest.mark.parametrize("timeout", [float("inf"), 1e300])
def test_an_endless_deadline_leaves_the_watchdog_running(timeout):
    """Before: the watchdog waited until the earliest deadline, and a wait of inf or 1e300 s raised
    OverflowError in its thread: no run of the process (a server's) was stopped any more. Infinity and NaN
    now mean no deadline, as None does; a finite one, however far, keeps the watchdog polling."""
    import onnxruntime as ort

    from toolkit.runtimes.onnxrt import _WATCHDOG, deadline

    with deadline(ort.RunOptions(), 1.0), deadline(ort.RunOptions(), timeout):
        time.sleep(0.1)  # the watchdog has woken for the second deadline
        assert _WATCHDOG._thread is not None and _WATCHDOG._thread.is_alive()
