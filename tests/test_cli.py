"""The CLI through click's CliRunner: exit codes, tables, JSON, and one-line errors that write nothing."""

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from toolkit.cli import cli


def invoke(*args, cwd=None):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result


def test_export_builds_the_four_seed_cases_with_a_table(tmp_path):
    result = invoke("export", "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    for name in ["case1_sequences.onnx", "case2_state.onnx", "case3_sequences_state.onnx", "case4_last.onnx"]:
        assert name in result.output
        assert (tmp_path / "out" / name).is_file()
    assert "lstm_2_state_c" in result.output and "FAIL" not in result.output
    assert "case2_state.onnx: lstm_2_last == lstm_2_state_h: holds" in result.output
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert len(manifest["models"]) == 4


def test_export_with_builder_options_and_json(tmp_path):
    result = invoke("export", "-o", tmp_path, "--layers", 3, "--units", 4, "--timesteps", "none", "--features", 2,
                    "--return-sequences", "--return-state", "--all-states", "--seed", 7, "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert payload["passed"] and len(payload["models"]) == 1
    model = payload["models"][0]
    assert model["file"] == "lstm3x4_tvar_f2_seq1_state1_all_states_s7.onnx"
    assert model["fused_ops"] == {"LSTM": 3}
    assert [o["name"] for o in model["parity"]["outputs"]][:3] == ["lstm_3_sequence", "lstm_3_state_h", "lstm_3_state_c"]


def test_export_user_model_verify_run_inspect(saved_models, tmp_path):
    target = tmp_path / "seq.onnx"
    result = invoke("export", saved_models["sequential"], "-o", target, "--output-name", "out_output=prediction")
    assert result.exit_code == 0, result.output
    assert "prediction" in result.output

    verified = invoke("verify", target, "--keras", saved_models["sequential"], "--json")
    assert verified.exit_code == 0, verified.output
    report = json.loads(verified.output)
    assert report["passed"] and report["actual_names"] == ["prediction"]
    assert {"name", "shapes", "max_abs", "max_rel", "atol", "rtol", "passed"} <= set(report["outputs"][0])

    failing = invoke("verify", target, "--keras", saved_models["sequential"], "--atol", "0", "--rtol", "0")
    assert failing.exit_code == 1 and "FAIL" in failing.output

    np.save(tmp_path / "x.npy", np.ones((2, 5, 2), np.float32))
    ran = invoke("run", target, "--input", tmp_path / "x.npy", "-o", tmp_path / "y.npz")
    assert ran.exit_code == 0, ran.output
    assert "prediction  float32 (2, 1)" in ran.output
    assert list(np.load(tmp_path / "y.npz").keys()) == ["prediction"]

    shown = invoke("inspect", target, "--json")
    assert shown.exit_code == 0
    described = json.loads(shown.output)
    assert described["outputs"][0]["name"] == "prediction" and described["recurrent_ops"] == {"LSTM": 2}


def test_export_user_model_defaults_to_onnx_beside_it(saved_models, tmp_path):
    src = tmp_path / "mine.keras"
    src.write_bytes(saved_models["functional"].read_bytes())
    result = invoke("export", src)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "mine.onnx").is_file()


def _files(folder):
    return sorted(p.name for p in folder.rglob("*"))


@pytest.mark.parametrize("args,needle", [
    (["export", "{missing}", "-o", "{tmp}/m.onnx"], "no such file"),
    (["export", "{dense_only}", "-o", "{tmp}/m.onnx"], "Expected a model with at least one recurrent layer"),
    (["export", "{lambda}", "-o", "{tmp}/m.onnx"], "safe mode"),
    (["export", "{not_a_model}", "-o", "{tmp}/m.onnx"], "Expected a .keras file (a zip archive)"),
    (["export", "{sequential}", "-o", "{tmp}/m.txt"], "Expected an output path ending in .onnx"),
    (["export", "{sequential}", "-o", "{tmp}/m.onnx", "--atol", "nope:1e-3"], "Received unknown key(s): ['nope']"),
    (["export", "{sequential}", "-o", "{tmp}/m.onnx", "--units", "3"], "Expected builder options only without MODEL"),
    (["export", "-o", "{tmp}/out", "--rtol", "lstm_2_stat_h:1e-3"], "Received unknown key(s): ['lstm_2_stat_h']"),
    (["export", "-o", "{tmp}/out", "--output-name", "lstm_2_last"], "Expected --output-name DEFAULT_NAME=NEW_NAME"),
    (["export", "-o", "{tmp}/out", "--opset", "11"], "Expected --opset between 14 and 18. Received: 11"),
    (["export", "-o", "{tmp}/out", "--atol", "0", "--rtol", "0"], "parity failed: nothing written"),
    (["run", "{not_a_model}", "--input", "{tmp}/x.npy"], "Expected an ONNX model file"),
    (["run", "{onnx}", "--input", "{tmp}/wrong_shape.npy"], "Expected input 'series' with shape (batch, 5, 2)"),
    (["run", "{onnx}", "--input", "{tmp}/wrong_dtype.npy"], "Expected input 'series' of dtype float32. Received: dtype int64"),
    (["run", "{onnx}", "--input", "{tmp}/x.npy", "-o", "{tmp}/y.txt"], "Expected an output path ending in .npz"),
    (["inspect", "{tmp}/absent.onnx"], "no such file"),
    (["verify", "{onnx}", "--keras", "{functional}"], "Expected the ONNX model to have the Keras model's 3 outputs"),
    (["verify", "{onnx}", "--keras", "{sequential}", "--atol", "typo:1"], "Received unknown key(s): ['typo']"),
])
def test_bad_input_gives_one_line_error_nonzero_exit_and_writes_nothing(saved_models, tmp_path, args, needle):
    from toolkit.export.exporter import export_keras_file

    onnx_dir = tmp_path / "fixtures"
    onnx_path = onnx_dir / "seq.onnx"
    export_keras_file(saved_models["sequential"], onnx_path)
    np.save(onnx_dir / "x.npy", np.ones((1, 5, 2), np.float32))
    np.save(onnx_dir / "wrong_shape.npy", np.ones((1, 4, 2), np.float32))
    np.save(onnx_dir / "wrong_dtype.npy", np.ones((1, 5, 2), np.int64))
    work = tmp_path / "work"
    work.mkdir()
    names = {k: str(v) for k, v in saved_models.items()} | {"missing": str(tmp_path / "missing.keras"),
                                                             "tmp": str(work), "onnx": str(onnx_path)}
    filled = [a.format(**names).replace(f"{work}/x.npy", str(onnx_dir / "x.npy"))
              .replace(f"{work}/wrong_shape.npy", str(onnx_dir / "wrong_shape.npy"))
              .replace(f"{work}/wrong_dtype.npy", str(onnx_dir / "wrong_dtype.npy")) for a in args]
    result = CliRunner().invoke(cli, filled)
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1 and needle in error_lines[0], result.output
    assert _files(work) == []


def test_bad_timesteps_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(cli, ["export", "-o", str(tmp_path), "--timesteps", "0"])
    assert result.exit_code == 2 and "Expected a number of time steps >= 1 or 'none'. Received: '0'" in result.output


def test_explain_shows_the_posts_four_cases():
    result = invoke("explain")
    assert result.exit_code == 0, result.output
    for number in range(1, 5):
        assert f"({number}) last layer LSTM(2" in result.output
    assert "keras: lstm_2_last == lstm_2_state_h: yes" in result.output
    assert "onnx:  lstm_2_sequence[:, -1] == lstm_2_state_h: yes" in result.output


NO_TF = """
import sys
from click.testing import CliRunner
from toolkit.cli import cli
args = sys.argv[1:]
result = CliRunner().invoke(cli, args)
assert result.exit_code == 0, result.output
heavy = sorted(m for m in ("tensorflow", "keras", "tf2onnx") if m in sys.modules)
print("HEAVY:" + ",".join(heavy))
"""


@pytest.mark.parametrize("command", ["--help", "run", "inspect"])
def test_help_run_and_inspect_do_not_import_tensorflow(seed_suite, tmp_path, command):
    model = seed_suite.out_dir / "case4_last.onnx"
    np.save(tmp_path / "x.npy", np.ones((1, 3, 1), np.float32))
    args = {"--help": ["--help"], "run": ["run", str(model), "--input", str(tmp_path / "x.npy")],
            "inspect": ["inspect", str(model)]}[command]
    done = subprocess.run([sys.executable, "-c", NO_TF, *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "HEAVY:"


def test_export_variant_options(tmp_path):
    result = invoke("export", "-o", tmp_path, "--variant", "bidirectional_gru_masking", "--timesteps", "none",
                    "--return-sequences", "--return-state", "--json")
    assert result.exit_code == 0, result.output
    model = json.loads(result.output)["models"][0]
    assert model["fused_ops"] == {"GRU": 2} and model["warnings"] == []
    names = [o["name"] for o in model["parity"]["outputs"]]
    # variant_config returns every layer's states (all_states), as the variant matrix exports it.
    assert names[:3] == ["bi_gru_2_sequence", "bi_gru_2_forward_state_h", "bi_gru_2_backward_state_h"]
    assert names[3:] == ["bi_gru_1_forward_state_h", "bi_gru_1_backward_state_h"]


@pytest.mark.parametrize("args,overrides", [
    (["--variant", "gru"], {}),
    (["--variant", "lstm_masking", "--no-return-state", "--units", "3"], {"return_state": False, "units": 3}),
], ids=["plain", "overridden"])
def test_export_variant_builds_exactly_what_variant_config_builds(tmp_path, args, overrides):
    from toolkit.models.builder import variant_config

    result = invoke("export", "-o", tmp_path, *args, "--json")
    assert result.exit_code == 0, result.output
    config = variant_config(args[1], **overrides)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [(m["file"], m["config"]) for m in manifest["models"]] == [(f"{config.name}.onnx", config.to_json())]


def test_tf2onnx_converter_fallback_is_reported_and_refusable(tmp_path):
    args = ["export", "-o", tmp_path / "a", "--cell", "gru", "--return-sequences", "--no-return-state",
            "--converter", "tf2onnx"]
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    assert "warning:" in result.output and "not fused" in result.output and "Loop" in result.output
    refused = CliRunner().invoke(cli, [str(a) for a in args[:-2]] + ["--converter", "tf2onnx", "--require-fused",
                                                                     "-o", str(tmp_path / "b")])
    assert refused.exit_code == 1 and "Error: Expected every recurrent layer as a fused ONNX op" in refused.output
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("args,needle", [
    (["--cell", "lstmm"], "Expected cell among ['lstm', 'gru', 'simple_rnn']"),
    (["--bidirectional", "stack"], "Expected bidirectional among ['concat', 'sum', 'mul', 'ave', 'none']"),
    (["--masking", "zeros"], "Expected masking among ['masking', 'embedding']"),
    (["--variant", "lstmx"], "Expected --variant among"),
    (["--bidirectional", "sum", "--go-backwards"], "Expected go_backwards=False with bidirectional"),
])
def test_bad_variant_options(tmp_path, args, needle):
    result = CliRunner().invoke(cli, ["export", "-o", str(tmp_path / "out")] + args)
    assert result.exit_code == 2 and needle in result.output, result.output  # a malformed option: 2 (README)
    assert not (tmp_path / "out").exists()


def test_export_user_model_failing_parity_prints_the_table_and_writes_nothing(saved_models, tmp_path):
    target = tmp_path / "m.onnx"
    result = CliRunner().invoke(cli, ["export", str(saved_models["sequential"]), "-o", str(target),
                                      "--atol", "0", "--rtol", "0"])
    assert result.exit_code == 1
    assert "out_output" in result.output and "FAIL" in result.output and "wrote nothing" in result.output
    assert not target.exists()
    as_json = CliRunner().invoke(cli, ["export", str(saved_models["sequential"]), "-o", str(target),
                                       "--atol", "0", "--rtol", "0", "--json"])
    assert as_json.exit_code == 1 and '"passed": false' in as_json.output and '"written": []' in as_json.output
    assert not target.exists()


def test_export_sequential_variant_from_the_cli(tmp_path):
    result = CliRunner().invoke(cli, ["export", "-o", str(tmp_path), "--variant", "sequential", "--json"])
    assert result.exit_code == 0, result.output
    models = json.loads(result.output)["models"]
    assert len(models) == 1 and models[0]["fused_ops"] == {"LSTM": 2}


def test_export_padding_left_from_the_cli_and_verify_reads_it(tmp_path):
    result = invoke("export", "-o", tmp_path, "--variant", "lstm_masking", "--timesteps", "none",
                    "--return-sequences", "--no-return-state", "--padding", "left", "--json")
    assert result.exit_code == 0, result.output
    labels = json.loads(result.output)["models"][0]["parity"]["cases"]
    assert any("left-padded" in label for label in labels)
    bad = invoke("export", "-o", tmp_path / "x", "--variant", "lstm_masking", "--padding", "middle")
    assert bad.exit_code == 2 and "'middle' is not one of" in bad.output


# ------------------------------------------------------------------------------ fix round A (reviewer)

def test_verify_takes_the_limit_flags_for_both_of_its_loads(saved_models, tmp_path):
    # The refusal names --max-params; verify used to lack the flag it named ("No such option", exit 2),
    # and --stream loaded the model a second time with the default limits.
    import keras

    keras_file = tmp_path / "stream.keras"
    keras.Sequential([keras.Input((None, 2)), keras.layers.LSTM(3, name="lstm")]).save(keras_file)  # 72 parameters
    target = tmp_path / "stream.onnx"
    assert invoke("export", keras_file, "-o", target, "--state-io").exit_code == 0
    for extra in ([], ["--stream", "2"]):
        refused = CliRunner().invoke(cli, ["verify", str(target), "--keras", str(keras_file), "--max-params", "71", *extra])
        assert refused.exit_code == 1, refused.output
        assert "Expected at most 71 parameters (--max-params). Received:" in refused.output
        assert "Traceback" not in refused.output
        passed = invoke("verify", target, "--keras", keras_file, "--max-params", "72", *extra)
        assert passed.exit_code == 0, passed.output
    fixed = saved_models["sequential"]
    assert invoke("export", fixed, "-o", tmp_path / "seq.onnx").exit_code == 0
    short = CliRunner().invoke(cli, ["verify", str(tmp_path / "seq.onnx"), "--keras", str(fixed), "--max-timesteps", "4"])
    assert short.exit_code == 1 and "fixed time axis of at most 4 steps (--max-timesteps)" in short.output


BAD_TARGET = """
import sys
from click.testing import CliRunner
from toolkit.cli import cli
result = CliRunner().invoke(cli, sys.argv[1:])
heavy = sorted(m for m in ("tensorflow", "keras", "tf2onnx") if m in sys.modules)
print(result.exit_code, "HEAVY:" + ",".join(heavy))
print(result.output)
"""


@pytest.mark.parametrize("model", [None, "sequential"])
def test_a_mistyped_target_is_a_malformed_option_refused_before_any_build(saved_models, tmp_path, model):
    args = ["export", *([str(saved_models[model])] if model else []), "-o", str(tmp_path / "out.onnx"),
            "--target", "onnxruntime,tvm"]
    done = subprocess.run([sys.executable, "-c", BAD_TARGET, *args], capture_output=True, text=True, timeout=120)
    first, *rest = done.stdout.splitlines()
    assert first == "2 HEAVY:", done.stdout + done.stderr  # exit 2, and no TensorFlow: nothing was built
    assert "Expected runtimes among ['onnxruntime'" in "\n".join(rest) and "Received: ['onnxruntime', 'tvm']" in done.stdout
    assert list(tmp_path.iterdir()) == []


def test_triton_repository_goes_when_the_model_cannot_be_written(saved_models, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the model's folder should be")
    repo = tmp_path / "repo"
    result = CliRunner().invoke(cli, ["export", str(saved_models["sequential"]), "-o", str(blocker / "m.onnx"),
                                      "--triton", str(repo), "--triton-name", "seq"])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert not (repo / "seq").exists()
    # A repository that held the model before gets its old files back, byte for byte.
    assert invoke("export", saved_models["sequential"], "-o", tmp_path / "ok.onnx", "--triton", repo,
                  "--triton-name", "seq", "--atol", "1e-5").exit_code == 0
    before = {p.relative_to(repo): p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    again = CliRunner().invoke(cli, ["export", str(saved_models["sequential"]), "-o", str(blocker / "m.onnx"),
                                     "--triton", str(repo), "--triton-name", "seq"])
    assert again.exit_code == 1
    assert {p.relative_to(repo): p.read_bytes() for p in repo.rglob("*") if p.is_file()} == before


def test_a_suite_export_removes_only_files_an_lstm_onnx_manifest_lists_unchanged(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "theirs.onnx").write_bytes(b"another tool's model")
    (out / "manifest.json").write_text(json.dumps({"generator": "other-tool 2.0", "models": [
        {"file": "theirs.onnx", "sha256": "0" * 64}]}))
    args = ["export", "-o", out, "--no-return-sequences", "--no-return-state"]
    assert invoke(*args).exit_code == 0
    assert (out / "theirs.onnx").read_bytes() == b"another tool's model"
    # Our own manifest's file goes when the next suite drops it; one changed since it was written stays.
    assert invoke("export", "-o", out, "--return-sequences", "--no-return-state").exit_code == 0
    assert sorted(p.name for p in out.glob("*.onnx")) == ["case1_sequences.onnx", "theirs.onnx"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["generator"].startswith("lstm-onnx ")
    (out / "case1_sequences.onnx").write_bytes(b"edited by hand")
    assert invoke(*args).exit_code == 0
    assert (out / "case1_sequences.onnx").read_bytes() == b"edited by hand"


def test_the_previous_manifest_is_read_with_the_folder_lock_held(tmp_path):
    import fcntl
    import os

    from toolkit.export.fileset import write_file_set

    seen = []

    def remove(folder):
        fd = os.open(folder, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):  # another writer would wait here
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
        seen.append(folder)
        return ["old.onnx"]

    (tmp_path / "old.onnx").write_bytes(b"old")
    write_file_set(tmp_path, {"new.onnx": b"new"}, remove=remove)
    assert seen == [tmp_path] and sorted(p.name for p in tmp_path.iterdir()) == ["new.onnx"]
