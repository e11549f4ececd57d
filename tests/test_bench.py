"""`lstm-onnx bench`: behaviour only (forms, columns, errors, the recommendation, JSON), never timing."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from toolkit.cli import cli
from toolkit.errors import InputError
from toolkit.export.exporter import export_model
from toolkit.models.builder import build_stack, variant_config
from toolkit.speed.bench import BENCH_HEADERS, FormResult, Target, bench, bench_inputs, recommend
from toolkit.tolerance import Tolerances

ORT_FORMS = ["onnxruntime", "onnxruntime-int8", "onnxruntime-float16"]
FAST = {"budget_s": 0.05, "rounds": 2, "threads": (1,), "runtimes": ORT_FORMS}


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    paths = {}
    for name in ("lstm", "gru"):
        model = build_stack(variant_config(name))
        model.save(folder / f"{name}.keras")
        export_model(model).save(folder / f"{name}.onnx")
        paths[name] = folder / f"{name}.onnx"
    export_model(build_stack(variant_config("lstm")), tier="int8").save(folder / "lstm_int8.onnx")
    paths["int8"] = folder / "lstm_int8.onnx"
    return paths


def _result(label: str, ms: float | None, within: bool, problem: str = "") -> FormResult:
    runtime, tier = label.split()
    return FormResult(Target(runtime, tier), ms, None if ms is None else 10 / ms, 0.0, 0.0, within, 1, problem)


def test_recommend_picks_the_fastest_form_within_tolerance():
    results = [_result("onnxruntime float32", 10.0, True), _result("onnxruntime int8", 5.0, False),
               _result("onnxruntime float16", 8.0, True), _result("openvino float32", None, False, "not valid")]
    assert recommend(results).label == "onnxruntime float16 x1"
    assert recommend([_result("onnxruntime int8", 5.0, False)]) is None
    assert recommend([_result("onnxruntime float32", 4.0, True), _result("onnxruntime float16", 4.0, True)]).label \
        == "onnxruntime float32 x1"  # a tie goes to the earlier, simpler form


def test_bench_against_onnxruntime_float32(exports):
    report = bench(exports["lstm"], batch=3, steps=7, **FAST)
    forms = {r.label: r for r in report.results}
    assert list(forms) == ["onnxruntime float32 x1", "onnxruntime int8 x1", "onnxruntime float16 x1"]
    assert report.reference == "onnxruntime float32 x1" and report.steps == 7
    assert forms["onnxruntime float32 x1"].max_abs == 0.0 and forms["onnxruntime float32 x1"].speed == 1.0
    # At the default tolerance (atol 1e-6) neither tier qualifies: their error is real and shown.
    assert forms["onnxruntime int8 x1"].max_abs > 1e-4 and not forms["onnxruntime int8 x1"].within
    assert 0 < forms["onnxruntime float16 x1"].max_abs < 1e-2 and not forms["onnxruntime float16 x1"].within
    assert forms["onnxruntime int8 x1"].size_bytes < forms["onnxruntime float32 x1"].size_bytes
    assert all(r.median_ms > 0 for r in report.results)
    assert report.recommended.label == "onnxruntime float32 x1"
    text = report.text()
    assert all(header in text for header in BENCH_HEADERS) and "recommended: onnxruntime float32 x1" in text


def test_a_loose_tolerance_lets_every_tier_qualify(exports):
    report = bench(exports["lstm"], batch=2, steps=5, tolerances=Tolerances.parse(atol=["0.05"]), **FAST)
    assert all(r.within for r in report.results)
    assert report.recommended is not None and report.recommended.median_ms == min(r.median_ms for r in report.results)


def test_bench_against_keras_and_a_form_that_changes_nothing(exports):
    report = bench(exports["gru"], batch=2, steps=5, keras_path=exports["gru"].with_suffix(".keras"), **FAST)
    forms = {r.label: r for r in report.results}
    assert report.reference == "keras"
    assert 0 < forms["onnxruntime float32 x1"].max_abs < 1e-6 and forms["onnxruntime float32 x1"].within
    int8 = forms["onnxruntime int8 x1"]
    assert int8.median_ms is None and "nothing to convert to int8 (2 GRU stay float32)" == int8.problem
    assert "not valid: onnxruntime int8: nothing to convert to int8 (2 GRU stay float32)" in report.text()


def test_bench_inputs_follow_the_models_inputs(exports):
    import onnx

    from toolkit.onnxfile.model import load_onnx

    feeds, steps = bench_inputs(load_onnx(exports["lstm"]), 4, 9)
    (x,) = feeds.values()
    assert x.shape == (4, 9, 4) and x.dtype == "float32" and -1 <= x.min() and x.max() <= 1 and steps == 9
    assert isinstance(load_onnx(exports["lstm"]), onnx.ModelProto)


def test_bench_refuses_a_tier_export_and_bad_options(exports):
    with pytest.raises(InputError, match="Expected a float32 export"):
        bench(exports["int8"], **FAST)
    with pytest.raises(InputError, match="Expected runtimes among"):
        bench(exports["lstm"], **{**FAST, "runtimes": ["tensorrt"]})


def test_cli_bench_json_and_errors(exports):
    done = CliRunner().invoke(cli, ["bench", str(exports["lstm"]), "--batch", "2", "--steps", "4", "--threads", "1",
                                    "--runtimes", "onnxruntime,onnxruntime-int8", "--seconds", "0.1", "--json"])
    assert done.exit_code == 0, done.output
    payload = json.loads(done.output)
    assert [f["label"] for f in payload["forms"]] == ["onnxruntime float32 x1", "onnxruntime int8 x1"]
    assert payload["recommended"] == "onnxruntime float32 x1" and payload["batch"] == 2 and payload["steps"] == 4
    assert set(payload["forms"][0]) >= {"median_ms", "speed", "max_abs", "within_tolerance", "size_bytes", "problem"}
    bad = CliRunner().invoke(cli, ["bench", str(exports["lstm"]), "--threads", "0"])
    # A malformed option: exit 2, as for every command (README, "What lstm-onnx refuses").
    assert bad.exit_code == 2 and bad.output.strip().splitlines()[-1].startswith("Error: Expected --threads")


def test_openvino_forms_run_where_valid_and_say_why_not(exports, tmp_path):
    masked = tmp_path / "masked.onnx"
    export_model(build_stack(variant_config("lstm_masking"))).save(masked)
    report = bench(exports["lstm"], batch=2, steps=5, **{**FAST, "runtimes": ["onnxruntime", "openvino", "openvino-bf16"]})
    forms = {r.label: r for r in report.results}
    assert forms["openvino float32 x1"].within and forms["openvino float32 x1"].max_abs < 1e-5
    assert forms["openvino bf16 x1"].median_ms > 0 and forms["openvino bf16 x1"].max_abs is not None
    refused = bench(masked, batch=2, steps=5, **{**FAST, "runtimes": ["onnxruntime", "openvino"]})
    vino = {r.label: r for r in refused.results}["openvino float32 x1"]
    assert vino.median_ms is None and "openvino ignores the axes attribute of ReduceL1" in vino.problem


@pytest.fixture(scope="module")
def streamed(tmp_path_factory):
    path = tmp_path_factory.mktemp("stream") / "lstm_state_io.onnx"
    export_model(build_stack(variant_config("lstm", all_states=False)), state_io=True).save(path)
    return path


def test_bench_stream_times_every_form_with_states_carried(streamed):
    from toolkit.speed.stream import stream_bench

    report = stream_bench(streamed, steps=2, threads=(1,), budget_s=0.05, rounds=2)
    forms = {r.form.label: r for r in report.results}
    assert list(forms)[:2] == ["onnxruntime session.run x1", "onnxruntime open_stream x1"]
    assert "onnxruntime-node stream loop x1" in forms and "openvino stream loop x1" in forms
    for result in forms.values():  # every form runs the same 8 chunks from zero states, checked
        assert result.problem == "" and result.step_us > 0 and result.within and result.max_abs < 1e-5, result
    assert report.recommended.step_us == min(r.step_us for r in report.results)
    payload = report.to_json()
    assert payload["step_us"] == {label: r.step_us for label, r in forms.items()}
    assert payload["recommended"] == report.recommended.form.label and payload["steps"] == 2
    assert "recommended: " in report.text() and "us per call" in report.text()


def test_bench_stream_refusals(exports, streamed):
    plain = CliRunner().invoke(cli, ["bench", str(exports["lstm"]), "--stream"])
    assert plain.exit_code == 1 and "Expected an export made with --state-io" in plain.output
    both = CliRunner().invoke(cli, ["bench", str(streamed), "--stream", "--runtimes", "onnxruntime"])
    assert both.exit_code == 2 and "Received: --stream with --runtimes" in both.output


def test_bench_record_writes_the_defaults_that_run_and_open_stream_use(streamed, tmp_path):
    import shutil

    import numpy as np

    import toolkit
    from toolkit.onnxfile import metadata
    from toolkit.onnxfile.model import load_onnx
    from toolkit.runtimes.registry import open_runner

    path = shutil.copy(streamed, tmp_path / "recorded.onnx")
    before = load_onnx(path)
    done = CliRunner().invoke(cli, ["bench", str(path), "--stream", "--threads", "2", "--seconds", "0.1", "--record",
                                    "--json"])
    assert done.exit_code == 0, done.output
    payload = json.loads(done.output)
    recorded = metadata.read_session_defaults(load_onnx(path))
    assert payload["recorded"] == recorded.to_json() and recorded.threads == 2 and recorded.stream
    assert recorded.runtime == payload["recommended"].split()[0]
    after = load_onnx(path)  # only the one key was added: the graph and every other entry are as they were
    assert after.graph == before.graph
    assert [p for p in after.metadata_props if p.key != "lstm_onnx.session"] == list(before.metadata_props)
    if recorded.runtime == "onnxruntime":
        with open_runner(path) as runner:
            assert runner.session.get_session_options().intra_op_num_threads == 2
        with toolkit.open_stream(path) as session:
            assert session.threads == 2 and session.threads_from.startswith("recorded by bench")
            assert session.step(np.zeros((1, 1, 4), np.float32))
    with open_runner(path, threads=1) as runner:  # a given count wins
        assert runner.session.get_session_options().intra_op_num_threads == 1


def test_bench_record_without_stream(exports, tmp_path):
    import shutil

    from toolkit.onnxfile import metadata
    from toolkit.onnxfile.model import load_onnx

    path = shutil.copy(exports["gru"], tmp_path / "gru.onnx")
    done = CliRunner().invoke(cli, ["bench", str(path), "--batch", "2", "--steps", "5", "--threads", "1",
                                    "--runtimes", "onnxruntime", "--seconds", "0.1", "--record"])
    assert done.exit_code == 0, done.output
    recorded = metadata.read_session_defaults(load_onnx(path))
    assert (recorded.runtime, recorded.threads, recorded.batch, recorded.steps, recorded.stream) == \
        ("onnxruntime", 1, 2, 5, False)
    assert "recorded in gru.onnx: onnxruntime with 1 thread(s)" in done.output


def test_export_bench_records_the_streaming_defaults(tmp_path):
    from toolkit.onnxfile import metadata
    from toolkit.onnxfile.model import load_onnx

    keras_file = tmp_path / "gru.keras"
    build_stack(variant_config("gru", all_states=False)).save(keras_file)
    done = CliRunner().invoke(cli, ["export", str(keras_file), "--state-io", "--bench", "--json"])
    assert done.exit_code == 0, done.output
    payload = json.loads(done.output)
    recorded = metadata.read_session_defaults(load_onnx(tmp_path / "gru.onnx"))
    assert recorded.stream and recorded.steps == 1 and payload["recorded"][0].startswith("recorded in gru.onnx: ")
    refused = CliRunner().invoke(cli, ["export", "--bench"])
    assert refused.exit_code == 2 and "Expected --bench with MODEL" in refused.output
    plain = CliRunner().invoke(cli, ["export", str(keras_file), "-o", str(tmp_path / "plain.onnx")])
    assert plain.exit_code == 0 and metadata.read_session_defaults(load_onnx(tmp_path / "plain.onnx")) is None
