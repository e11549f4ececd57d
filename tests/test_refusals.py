"""Issue 13 through the CLI: every attack gets one `Error:` line, the right exit code, no traceback, no abort,
and leaves nothing half-written. Each test fails on the code before the fix (the numbers in comments are
the issue's measurements of that code)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import hostile
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from toolkit import fileio
from toolkit.cli import cli
from toolkit.errors import InputError, ModelLoadError
from toolkit.models.builder import StackConfig, build_stack
from toolkit.models.keras3 import load_keras_model
from toolkit.options import ResourceLimits

ROOT = Path(__file__).resolve().parent.parent
CASE1 = ROOT / "exported" / "case1_sequences.onnx"
ENV = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}", TF_CPP_MIN_LOG_LEVEL="3")
# Runs the CLI in this small process and reports its own peak memory (VmHWM: ru_maxrss would carry
# pytest's high-water mark across fork and exec).
MEASURED_CLI = ("import atexit, sys, time\n"
                "start = time.perf_counter()\n"
                "def report():\n"
                "    hwm = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]\n"
                "    print(f'MEASURED {time.perf_counter() - start:.2f} {int(hwm) / 1024:.0f}', file=sys.stderr)\n"
                "atexit.register(report)\n"
                "from toolkit.cli import main\n"
                "sys.argv = ['lstm-onnx', *sys.argv[1:]]\n"
                "main()\n")


@pytest.fixture(scope="module")
def hostile_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("refusals")


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_error(result, needle: str, code: int = 1) -> str:
    """The result failed with exit `code` and exactly one `Error:` line holding `needle`; no traceback."""
    assert result.exit_code == code, (result.exit_code, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and needle in lines[0], result.output
    assert "Traceback" not in result.output and "\x1b" not in result.output
    return lines[0]


def measured_cli(*args: object, timeout: float = 120) -> tuple[subprocess.CompletedProcess, float, float]:
    done = subprocess.run([sys.executable, "-c", MEASURED_CLI, *map(str, args)], capture_output=True, text=True,
                          env=ENV, timeout=timeout)
    seconds, peak_mb = next(line.split()[1:] for line in done.stderr.splitlines() if line.startswith("MEASURED"))
    return done, float(seconds), float(peak_mb)


def _model(nodes, inputs, outputs, inits=()):
    return helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits)),
                             opset_imports=[helper.make_opsetid("", 17)])


def _value(name, dims, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, dims)


# ------------------------------------------------------------------------- 1. bounded resources on loading


@pytest.mark.parametrize("build, needle", [
    (lambda d: hostile.lstm_units(d, 4096), "weights for the 67141672 parameters"),  # was 44 s, 2.4 GB
    (lambda d: hostile.embedding_rows(d), "at most 100000000 parameters (--max-params)"),  # was 22 s, 4.6 GB
    (lambda d: hostile.fixed_time(d, 2_000_000), "at most 100000 steps (--max-timesteps)"),  # was > 120 s
    (lambda d: hostile.fixed_time(d, 0), "every declared axis >= 1"),  # was a traceback
    (hostile.fifo, "which is a FIFO"),  # hung for ever
    (lambda d: hostile.h5_bomb(d, 1536 << 20), "weights declaring at most 1073741824 bytes"),  # 17.6 s, 6.8 GB in Keras
], ids=["lstm_4096", "embedding_125m", "time_2e6", "time_0", "fifo", "h5_bomb"])
def test_export_refuses_hostile_keras_files_in_a_fresh_process_fast_and_small(hostile_dir, tmp_path, build, needle):
    done, seconds, peak_mb = measured_cli("export", build(hostile_dir), "-o", tmp_path / "m.onnx", timeout=60)
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert done.returncode == 1 and len(errors) == 1 and needle in errors[0], done.stderr[-2000:]
    assert "Traceback" not in done.stderr and list(tmp_path.iterdir()) == []
    assert seconds < 5 and peak_mb < 300, (seconds, peak_mb)


def test_limit_flags_reach_the_check_and_raised_limits_load(hostile_dir, tmp_path):
    one_error(invoke("export", hostile.seed_keras(hostile_dir), "-o", tmp_path / "m.onnx", "--max-timesteps", 2),
              "Expected a fixed time axis of at most 2 steps (--max-timesteps)")
    one_error(invoke("export", hostile.seed_keras(hostile_dir), "-o", tmp_path / "m.onnx", "--max-params", 50),
              "Expected at most 50 parameters (--max-params). Received:")
    long = hostile.fixed_time(hostile_dir, 150_000)
    with pytest.raises(ModelLoadError, match="at most 100000 steps"):
        load_keras_model(long)
    assert load_keras_model(long, ResourceLimits().raised(max_timesteps=150_000)).inputs[0].shape[1] == 150_000
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("option, value, bound", [("--units", "100000", "1<=x<=4096"),
                                                  ("--features", "300000000", "1<=x<=65536"),
                                                  ("--layers", "5000", "1<=x<=64")])
def test_builder_options_far_out_of_range_are_refused_with_their_bounds(tmp_path, option, value, bound):
    # Before: TensorFlow's ResourceExhaustedError traceback after 13 s (units, features).
    result = invoke("export", "-o", tmp_path / "out", option, value)
    assert result.exit_code == 2 and bound in result.output and "Traceback" not in result.output
    with pytest.raises(InputError, match=r"Expected 1 <= units <= 4096\. Received: units=100000"):
        StackConfig(units=100_000)
    one_error(invoke("export", "-o", tmp_path / "out", "--timesteps", "100000000"),
              "Expected a fixed time axis of at most 100000 steps (--max-timesteps)")  # before: SIGSEGV
    one_error(invoke("export", "-o", tmp_path / "out", "--layers", 64, "--units", 4096, "--bidirectional", "concat"),
              "Expected at most 100000000 parameters (--max-params)")
    assert not (tmp_path / "out").exists()


def test_inspect_reads_no_external_data_it_does_not_show(tmp_path):
    # 1.5 GiB of external data no node uses (a sparse file): inspect took 3.2 GB before.
    unused = TensorProto(name="unused", data_type=TensorProto.FLOAT, dims=[384 << 20],
                         data_location=TensorProto.EXTERNAL)
    for key, value in (("location", "unused.bin"), ("offset", "0"), ("length", str(1536 << 20))):
        unused.external_data.add(key=key, value=value)
    with open(tmp_path / "unused.bin", "wb") as handle:
        handle.truncate(1536 << 20)
    model = _model([helper.make_node("Identity", ["x"], ["y"])], [_value("x", ["batch", 2])],
                   [_value("y", ["batch", 2])], [unused])
    onnx.save(model, str(tmp_path / "m.onnx"))
    done, seconds, peak_mb = measured_cli("inspect", tmp_path / "m.onnx")
    assert done.returncode == 0 and "dynamic axes: batch" in done.stdout, done.stderr[-1000:]
    assert peak_mb < 300, peak_mb


def _endless_loop(path: Path) -> Path:
    trip = helper.make_tensor("trip", TensorProto.INT64, [], [2**62])
    cond = helper.make_tensor("cond", TensorProto.BOOL, [], [True])
    body = helper.make_graph(
        [helper.make_node("Identity", ["c_in"], ["c_out"]), helper.make_node("Add", ["v_in", "v_in"], ["v_out"])],
        "body", [_value("i", [], TensorProto.INT64), _value("c_in", [], TensorProto.BOOL), _value("v_in", ["batch", 2])],
        [_value("c_out", [], TensorProto.BOOL), _value("v_out", ["batch", 2])])
    onnx.save(_model([helper.make_node("Loop", ["trip", "cond", "x"], ["y"], body=body)], [_value("x", ["batch", 2])],
                     [_value("y", ["batch", 2])], [trip, cond]), str(path))
    return path


def test_run_timeout_stops_a_loop_of_2_to_the_62(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((2, 2), np.float32))
    start = time.perf_counter()
    one_error(invoke("run", _endless_loop(tmp_path / "loop.onnx"), "--input", tmp_path / "x.npy", "--timeout", 1),
              "Expected a run that ends within 1 s (--timeout). Received: a run still going, stopped")
    assert time.perf_counter() - start < 30


@pytest.mark.parametrize("command", ["run", "bench"])
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_a_timeout_that_is_no_number_of_seconds_is_refused(tmp_path, command, value):
    """Before: click's FloatRange let them through, and the crafted Loop ran with no deadline at all."""
    np.save(tmp_path / "x.npy", np.ones((2, 2), np.float32))
    args = ["--input", tmp_path / "x.npy"] if command == "run" else []
    one_error(invoke(command, _endless_loop(tmp_path / "loop.onnx"), *args, "--timeout", value),
              f"Expected --timeout as a finite number of seconds > 0. Received: {value}", code=2)


# ------------------------------------------------------------------------ 2-4. feeds, outputs, one line


def test_a_zero_batch_is_one_line_not_an_abort(tmp_path):
    # Before: exit 134 (SIGABRT in ONNX Runtime), no Error line; tests/test_limits.py shows ORT still aborts.
    one_error(invoke("run", CASE1, "--input", hostile.zero_batch_npy(tmp_path)),
              "Expected input 'input' with every axis at least 1 (ONNX Runtime aborts the process")


def test_a_state_of_batch_1_beside_an_input_of_batch_2_is_refused(tmp_path):
    # ONNX Runtime broadcasts it without a word (an Add here, an LSTM's initial_h in an export).
    model = _model([helper.make_node("Add", ["x", "h"], ["y"])], [_value("x", ["batch", 2]), _value("h", ["batch", 2])],
                   [_value("y", ["batch", 2])])
    onnx.save(model, str(tmp_path / "m.onnx"))
    np.save(tmp_path / "x.npy", np.ones((2, 2), np.float32))
    np.save(tmp_path / "h.npy", np.ones((1, 2), np.float32))
    one_error(invoke("run", tmp_path / "m.onnx", "--input", f"x={tmp_path / 'x.npy'}", "--input", f"h={tmp_path / 'h.npy'}"),
              "Expected the same batch size (axis 0) in every input. Received: 'x' batch 2, 'h' batch 1")


def test_run_o_writes_every_output_whatever_its_name(tmp_path):
    names = ["allow_pickle", "file", "y"]  # before: one dropped ('wrote' all the same), or a TypeError
    model = _model([helper.make_node("Identity", ["x"], [n]) for n in names], [_value("x", ["batch", 2])],
                   [_value(n, ["batch", 2]) for n in names])
    onnx.save(model, str(tmp_path / "m.onnx"))
    np.save(tmp_path / "x.npy", np.arange(4, dtype=np.float32).reshape(2, 2))
    result = invoke("run", tmp_path / "m.onnx", "--input", tmp_path / "x.npy", "-o", tmp_path / "out.npz")
    assert result.exit_code == 0, result.output
    with np.load(tmp_path / "out.npz") as saved:
        assert sorted(saved.files) == sorted(names)
        assert all(np.array_equal(saved[n], np.arange(4, dtype=np.float32).reshape(2, 2)) for n in names)


def test_odd_arrays_and_models_are_one_line(tmp_path):
    np.savez(tmp_path / "objects.npz", input=np.array([None, 1.0], dtype=object))
    one_error(invoke("run", CASE1, "--input", tmp_path / "objects.npz"), "Expected numeric arrays in")
    np.save(tmp_path / "big.npy", np.zeros((1, 3, 1), ">f4"))
    one_error(invoke("run", CASE1, "--input", tmp_path / "big.npy"), "byte order (float32 (<f4)). Received: float32 (>f4)")
    model = _model([helper.make_node("SequenceConstruct", ["x"], ["s"])], [_value("x", ["batch", 2])],
                   [helper.make_tensor_sequence_value_info("s", TensorProto.FLOAT, None)])
    onnx.save(model, str(tmp_path / "seq.onnx"))
    np.save(tmp_path / "x.npy", np.ones((2, 2), np.float32))
    one_error(invoke("run", tmp_path / "seq.onnx", "--input", tmp_path / "x.npy"),
              "Expected a model whose inputs and outputs are tensors. Received: 's' of type sequence_type")


def test_control_characters_from_files_never_reach_the_terminal(tmp_path):
    name = "x\x1b[2J\x1b]0;pwned\x07"
    model = _model([helper.make_node("Identity", [name], ["out\u202e"])], [_value(name, [1])], [_value("out\u202e", [1])])
    model.metadata_props.add(key="lstm_onnx.note", value="\x1b[31mred")
    onnx.save(model, str(tmp_path / "m.onnx"))
    result = invoke("inspect", tmp_path / "m.onnx")
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\u202e" not in result.output and "\\x1b[2J" in result.output


@pytest.mark.parametrize("args, needle", [
    (["run", CASE1, "--input", "input=a.npy", "--input", "input=b.npy"], "Expected each input once in --input"),
    (["export", "-o", "out", "--output-name", "="], "Expected --output-name DEFAULT_NAME=NEW_NAME"),
    (["export", "-o", "out", "--atol", "abc"], "Expected --atol as VALUE or OUTPUT_NAME:VALUE"),
    (["export", "-o", "out", "--cell", "lstm,foo"], "Expected cell among"),
    (["verify", CASE1, "--keras", "m.keras", "--stream", "0"], "Expected --stream as a chunk size"),
])
def test_malformed_options_exit_2_in_one_line(tmp_path, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    one_error(invoke(*args), needle, code=2)  # before: exit 1 (or, for --input, the last one silently kept)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------- 4. verify --stream crafted metadata


@pytest.fixture(scope="module")
def streaming_pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stream")
    build_stack(StackConfig(layers=1, units=3, timesteps=None, features=2)).save(folder / "m.keras")
    result = invoke("export", folder / "m.keras", "-o", folder / "m.onnx", "--state-io")
    assert result.exit_code == 0, result.output
    return folder / "m.keras", folder / "m.onnx"


@pytest.mark.parametrize("key, value, needle", [
    ("state_map", "{not json", "Expected JSON in metadata lstm_onnx.state_map. Received: "),
    ("state_map", "[1, 2]", "Expected a JSON object in metadata lstm_onnx.state_map. Received: "),
    ("state_map", '{"lstm_1_initial_state_h": "nowhere"}', "mapping this model's state inputs to its outputs"),
    ("layers", "[1]", "Expected metadata lstm_onnx.layers as a list of records with a name"),
    ("layers", '[{"name": "lstm_1"}]', None),  # no "class": read as forward, and the stream still checks out
    ("layers", "{", "Expected JSON in metadata lstm_onnx.layers. Received: "),
])
def test_verify_stream_on_crafted_metadata_is_one_line(streaming_pair, tmp_path, key, value, needle):
    keras_path, onnx_path = streaming_pair
    model = onnx.load(str(onnx_path))
    entry = next(p for p in model.metadata_props if p.key == f"lstm_onnx.{key}")
    entry.value = value
    onnx.save(model, str(tmp_path / "crafted.onnx"))
    result = invoke("verify", tmp_path / "crafted.onnx", "--keras", keras_path, "--stream", 2)
    if needle is None:
        assert result.exit_code == 0, result.output
    else:
        one_error(result, needle)


# -------------------------------------------------------------------------- 5. all-or-nothing writes


def _folder_state(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_suite_export_on_a_full_disk_keeps_the_old_set(tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert invoke("export", "-o", out).exit_code == 0
    before = _folder_state(out)
    real, calls = fileio.write_all, []

    def disk_full_on_the_third_model(fd, data):
        calls.append(1)
        if len(calls) == 4:  # the journal, two models, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, data)

    monkeypatch.setattr(fileio, "write_all", disk_full_on_the_third_model)
    one_error(invoke("export", "-o", out, "--opset", 16), "No space left on device (ENOSPC); the folder keeps its previous")
    assert _folder_state(out) == before  # before: four new models beside the old manifest


def test_a_narrower_suite_replaces_the_whole_set(tmp_path):
    out = tmp_path / "out"
    assert invoke("export", "-o", out).exit_code == 0
    (out / "notes.txt").write_text("mine")
    assert invoke("export", "-o", out, "--return-state", "--no-return-sequences").exit_code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == ["case2_state.onnx", "manifest.json", "notes.txt"]
    assert [m["file"] for m in manifest["models"]] == ["case2_state.onnx"]


def test_triton_onto_a_file_leaves_no_onnx(hostile_dir, tmp_path):
    (tmp_path / "repo").write_text("a file")
    one_error(invoke("export", hostile.seed_keras(hostile_dir), "-o", tmp_path / "m.onnx", "--triton", tmp_path / "repo"),
              "Expected an output folder. Received:")  # before: NotADirectoryError, and m.onnx written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]


@contextlib.contextmanager
def _read_only_disk(path: Path):
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(path)], capture_output=True).returncode:
        pytest.skip("needs permission to mount a tmpfs (root) for a real read-only filesystem")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_writes_onto_a_read_only_filesystem_are_one_line(hostile_dir, tmp_path):
    with _read_only_disk(tmp_path / "ro") as disk:
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        one_error(invoke("export", "-o", disk / "out"), "Read-only file system (EROFS)")
        one_error(invoke("export", hostile.seed_keras(hostile_dir), "-o", disk / "m.onnx"), "(EROFS)")
        np.save(tmp_path / "x.npy", np.zeros((1, 3, 1), np.float32))
        one_error(invoke("run", CASE1, "--input", tmp_path / "x.npy", "-o", disk / "y.npz"), "(EROFS)")
        assert list(disk.iterdir()) == []


# ------------------------------------------------------------------------------ 6. naming what is refused


def test_refusals_name_what_keras_safe_mode_refused(hostile_dir):
    seed = hostile.seed_keras(hostile_dir)

    def layer(kind, config):
        def edit(c):
            c["config"]["layers"][1].update({"class_name": kind, "module": "keras.layers", "config": config})
        return edit

    def activation(c):
        c["config"]["layers"][1]["config"]["activation"] = {"module": "os", "class_name": "function",
                                                            "config": "system", "registered_name": "function"}

    cases = {"tfsm": (layer("TFSMLayer", {"name": "lstm_1", "filepath": "/tmp/x", "call_endpoint": "serve"}),
                      "a TFSMLayer layer loads an external SavedModel"),
             "lookup": (layer("StringLookup", {"name": "lstm_1", "vocabulary": "/etc/passwd"}),
                        "reads the vocabulary file '/etc/passwd' outside the archive"),
             "activation": (activation, "unknown custom object 'os.system'")}
    for name, (edit, needle) in cases.items():
        path = hostile.edit_config(seed, hostile_dir / f"{name}.keras", edit)
        with pytest.raises(ModelLoadError) as caught:
            load_keras_model(path)
        assert needle in str(caught.value) and "Lambda" not in str(caught.value), str(caught.value)
