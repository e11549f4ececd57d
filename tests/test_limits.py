"""Issue 13: bounded resources on hostile files, feeds checked before ONNX Runtime, all-or-nothing writes.

Every hostile file is built here (tests/hostile.py) from a real Keras model, edited the way an attacker
would edit it. Costs that matter (seconds, peak memory) are measured in a fresh process.
"""

from __future__ import annotations

import contextlib
import errno
import inspect
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import hostile
import numpy as np
import pytest

from toolkit import fileio
from toolkit.errors import InputError, ModelLoadError, OutputError
from toolkit.export.fileset import write_file_set
from toolkit.fileio import JOURNAL, atomic_output, recover, save_npz
from toolkit.options import ResourceLimits
from toolkit.runtimes.feeds import check_batch, check_feed_array, check_feed_arrays, check_feed_dtype, check_input_names
from toolkit.safety.budget import count_config
from toolkit.safety.limits import inspect_keras_file
from toolkit.text import safe_text

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}", TF_CPP_MIN_LOG_LEVEL="3")


@pytest.fixture(scope="module")
def hostile_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("hostile")


# --------------------------------------------------------------------------------- counting parameters


def _models():
    import keras

    x = keras.Input((7, 3), name="x")
    functional = keras.Model(x, keras.layers.Dense(2)(keras.layers.Bidirectional(keras.layers.GRU(4))(
        keras.layers.LSTM(5, return_sequences=True)(x))))
    both = keras.Input((6, 2), name="y")
    backward = keras.layers.LSTM(3, go_backwards=True, return_sequences=True)
    explicit = keras.Model(both, keras.layers.Bidirectional(keras.layers.LSTM(3, return_sequences=True),
                                                            backward_layer=backward, merge_mode="sum")(both))
    sequential = keras.Sequential([
        keras.Input((None,), dtype="int32"), keras.layers.Embedding(100, 8), keras.layers.Conv1D(6, 3, padding="same"),
        keras.layers.TimeDistributed(keras.layers.Dense(4)), keras.layers.LayerNormalization(),
        keras.layers.GRU(5, reset_after=False, return_sequences=True), keras.layers.SimpleRNN(6, use_bias=False),
        keras.layers.BatchNormalization(), keras.layers.Dense(3)])
    cells = keras.Sequential([keras.Input((5, 3)), keras.layers.RNN(keras.layers.LSTMCell(7)), keras.layers.Dense(3)])
    inner = keras.Sequential([keras.Input((4, 3)), keras.layers.LSTM(3, return_sequences=True)], name="inner")
    z = keras.Input((4, 3))
    nested = keras.Model(z, keras.layers.GRU(2)(inner(z)))
    return {"functional": functional, "explicit_backward": explicit, "sequential": sequential, "cells": cells,
            "nested": nested}


@pytest.mark.parametrize("name", ["functional", "explicit_backward", "sequential", "cells", "nested"])
def test_parameters_counted_from_the_config_equal_keras_count(tmp_path, name):
    model = _models()[name]
    path = tmp_path / f"{name}.keras"
    model.save(path)
    report = inspect_keras_file(path)
    assert report.params == model.count_params()
    assert report.members == 3 and report.layers >= len(model.layers)


def test_a_trained_model_counts_its_parameters_not_its_optimizer_variables(tmp_path):
    import keras

    model = keras.Sequential([keras.Input((4, 2)), keras.layers.LSTM(3), keras.layers.BatchNormalization(),
                              keras.layers.Dense(1)])
    model.compile("adam", "mse", metrics=["mae"])
    model.fit(np.ones((8, 4, 2)), np.ones((8, 1)), verbose=0)
    model.save(tmp_path / "trained.keras")  # model.weights.h5 holds Adam's two slots per variable too
    assert inspect_keras_file(tmp_path / "trained.keras").params == model.count_params() == 88


def test_a_real_model_passes_and_its_report_says_what_was_counted(hostile_dir):
    report = inspect_keras_file(hostile.seed_keras(hostile_dir))
    assert (report.params, report.longest_fixed_time, report.largest_activation) == (72, 3, 6)


# ---------------------------------------------------------------------------------------- hostile files

HOSTILE = {
    "lstm_4096": (lambda d: hostile.lstm_units(d, 4096), r"weights for the 67141672 parameters"),
    "embedding_125m": (lambda d: hostile.embedding_rows(d, 125_000_000), r"at most 100000000 parameters \(--max-params\)"),
    "weights_bomb": (lambda d: hostile.weights_bomb(d, 256 << 20), r"compression ratio of at most 100 .* \(1029x\)"),
    "config_bomb": (lambda d: hostile.big_config(d, 200 << 20), r"compression ratio .* member 'config.json'"),
    "time_2e6": (lambda d: hostile.fixed_time(d, 2_000_000), r"fixed time axis of at most 100000 .* declares 2000000"),
    "time_1e8": (lambda d: hostile.fixed_time(d, 100_000_000), r"declares 100000000 at layer 'lstm_2'"),
    "time_0": (lambda d: hostile.fixed_time(d, 0), r"every declared axis >= 1 .* \[None, 0, 2\]"),
    "dev_zero": (hostile.dev_zero, r"a regular file\. Received: .* which is a character device"),
    "fifo": (hostile.fifo, r"a regular file\. Received: .* which is a FIFO"),
    "h5_bomb_2g": (lambda d: hostile.h5_bomb(d, 2 << 30),
                   r"weights declaring at most 1073741824 bytes .* declares 2147483904 in 6 datasets"),
    "h5_bomb_512m": (lambda d: hostile.h5_bomb(d, 512 << 20),
                     r"stored at a ratio of at most 100 .* dataset 'layers/lstm/cell/vars/0' declares 536870912 bytes "
                     r"and stores 0"),
    "members": (lambda d: hostile.many_members(d, 5000), r"at most 1000 archive members\. Received: .* declares 5003"),
    # Keras 3.15 loads model.weights.npz too, and reads npz's __root__ without its own bomb guard.
    "npz_bomb_2g": (lambda d: hostile.npz_bomb(d, 2 << 30),
                    r"weights declaring at most 1073741824 bytes .* declares 21474\d{5} in 6 datasets"),
    "npz_bomb_512m": (lambda d: hostile.npz_bomb(d, 512 << 20, "layers/lstm_1/cell.npy"),
                      r"ratio of at most 100 .* dataset 'layers/lstm_1/cell.npy' declares 536870912 bytes and stores"),
    # EinsumDense used to count no parameters: 2e8 passed --max-params and Keras allocated 4.66 GB.
    "einsum_2e8": (lambda d: hostile.einsum_lie(d, 25_000_000),
                   r"at most 100000000 parameters \(--max-params\)\. Received: .* declares 200\d{6} in"),
    # Issue 25, F5: 6,000 nested groups in model.weights.h5 (900 KB) took 31-58 s in h5py's walk by path.
    "weights_deep_6000": (lambda d: hostile.keras_deep(d, 6_000),
                          r"HDF5 groups nested at most 32 levels deep\. Received: '.*:model.weights.h5' nests deeper"),
    # F4 in a .keras: Keras never writes a link; Keras' own reader would follow one per variable.
    "weights_soft_link": (lambda d: hostile.keras_linked(d),
                          r"ordinary \(hard\) link.* has a soft link at 'layers/lstm_1/cell/vars/1'"),
    # F6: a fixed batch of 4,000,000 (21 KB) escaped the per-sample count and cost 8.46 GB.
    "batch_4e6": (lambda d: hostile.fixed_batch(d, 4_000_000),
                  r"values per sample in one layer \(--max-activation\), a fixed batch counted whole\. Received: "
                  r".* declares 256000000 at layer .lstm. \(LSTM\)"),
}

MEASURE = textwrap.dedent("""
    import json, resource, sys, time
    start = time.perf_counter()
    from toolkit.errors import ModelLoadError
    from toolkit.safety.limits import inspect_keras_file
    try:
        inspect_keras_file(sys.argv[1]); outcome = "accepted"
    except ModelLoadError as exc:
        outcome = str(exc)
    # VmHWM, not ru_maxrss: Linux carries the parent's high-water mark (pytest with TensorFlow, ~1 GB)
    # across fork and exec into the child's ru_maxrss, while VmHWM belongs to this process's memory alone.
    hwm = [line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")]
    peak = int(hwm[0]) / 1024 if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": time.perf_counter() - start, "outcome": outcome, "peak_mb": peak,
                      "tensorflow": "tensorflow" in sys.modules}))
""")


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_files_are_refused_fast_and_small_before_keras(hostile_dir, case):
    build, message = HOSTILE[case]
    path = build(hostile_dir)
    # A fresh process, so the peak memory is the inspection's own (Python + numpy is about 40 MB);
    # the timeout turns a hang (the FIFO, before this fix) into a failure instead of a stuck suite.
    done = subprocess.run([sys.executable, "-c", MEASURE, str(path)], capture_output=True, text=True, env=ENV,
                          timeout=60, check=True)
    measured = json.loads(done.stdout)
    assert measured["outcome"] != "accepted"
    assert re.search(message, measured["outcome"]), measured["outcome"]
    assert measured["outcome"].startswith("Expected ") and "\n" not in measured["outcome"]
    assert measured["seconds"] < 3 and measured["peak_mb"] < 200, measured
    assert not measured["tensorflow"]


def test_an_npz_weights_file_is_counted_and_loads_through_the_check(hostile_dir):
    report = inspect_keras_file(hostile.seed_npz_keras(hostile_dir))
    assert (report.params, report.members) == (72, 3)


def test_parameters_the_weights_declare_count_whatever_the_config_says(hostile_dir):
    import h5py

    seed = hostile.seed_keras(hostile_dir)
    weights = hostile_dir / "extra.h5"
    weights.write_bytes(zipfile.ZipFile(seed).read("model.weights.h5"))
    with h5py.File(weights, "r+") as h5:  # an array no config layer accounts for (real data, ratio 1)
        h5.create_dataset("layers/extra/vars/0", data=np.random.default_rng(0).random(1000, np.float32))
    path = hostile.rewrite(seed, hostile_dir / "extra.keras", {"model.weights.h5": weights.read_bytes()})
    assert inspect_keras_file(path).params == 1072
    with pytest.raises(ModelLoadError, match=r"at most 500 parameters \(--max-params\)\. .* declares 1072 in the arrays"):
        inspect_keras_file(path, ResourceLimits(max_params=500))


def test_kinds_whose_weights_cannot_be_counted_are_refused(hostile_dir):
    def rename(config: dict) -> None:
        config["config"]["layers"][1]["class_name"] = "GroupQueryAttention"
    path = hostile.edit_config(hostile.seed_keras(hostile_dir), hostile_dir / "gqa.keras", rename)
    with pytest.raises(ModelLoadError, match=r"layer kinds whose parameters lstm-onnx can bound .* \(GroupQueryAttention\)"):
        inspect_keras_file(path)


@pytest.mark.parametrize("build", [
    lambda k: k.layers.EinsumDense("abc,cd->abd", output_shape=(5, 7), bias_axes="d"),
    lambda k: k.layers.EinsumDense("...b,bc->...c", output_shape=6, bias_axes="c"),
    lambda k: k.layers.EinsumDense("abc,cde->abde", output_shape=(5, 3, 4), bias_axes="de"),
    lambda k: k.layers.PReLU(shared_axes=[1]), lambda k: k.layers.DepthwiseConv1D(3, depth_multiplier=2),
    lambda k: k.layers.SeparableConv1D(4, 3, depth_multiplier=2), lambda k: k.layers.GroupNormalization(groups=2),
    lambda k: k.layers.RMSNormalization(), lambda k: k.layers.Bidirectional(k.layers.LSTM(3)),
])
def test_more_kinds_are_counted_as_keras_counts_them(tmp_path, build):
    import keras

    x = keras.Input((5, 8))
    model = keras.Model(x, build(keras)(x))
    model.save(tmp_path / "m.keras")
    assert inspect_keras_file(tmp_path / "m.keras").params == model.count_params() > 0
    config = json.loads(zipfile.ZipFile(tmp_path / "m.keras").read("config.json"))
    assert count_config(config).params == model.count_params()  # the config alone, not the weights' arrays


def test_limits_can_be_raised_and_reject_nonsense(hostile_dir):
    path = hostile.fixed_time(hostile_dir, 2_000_000)
    assert inspect_keras_file(path, ResourceLimits().raised(max_timesteps=2_000_000)).longest_fixed_time == 2_000_000
    assert ResourceLimits().raised(max_params=None) == ResourceLimits()
    with pytest.raises(ModelLoadError, match=r"Expected max_params > 0. Received: max_params=0"):
        ResourceLimits().raised(max_params=0)
    with pytest.raises(ModelLoadError, match=r"Expected a resource limit among .* Received: 'max_cats'"):
        ResourceLimits().raised(max_cats=1)


def _config_edit(hostile_dir: Path, name: str, text: bytes) -> Path:
    return hostile.rewrite(hostile.seed_keras(hostile_dir), hostile_dir / f"{name}.keras", {"config.json": text})


@pytest.mark.parametrize("name, text, message", [
    ("deep", b"[" * 100_000 + b"]" * 100_000, r"config.json holding JSON\. Received: .*RecursionError"),
    ("digits", b'{"units": ' + b"9" * 5000 + b"}", r"config.json holding JSON\. Received: .*ValueError: Exceeds the limit"),
    ("not_utf8", b'{"name": "\xff"}', r"config.json holding JSON"),
    ("a_list", b"[1, 2]", r"config.json holding a JSON object\. Received: .* holds a list"),
    ("stored_17mb", b'{"pad": "' + b" " * (17 << 20) + b'"}', r"config.json of at most 16777216 bytes"),
])
def test_malformed_configs_are_refused_in_one_line(hostile_dir, name, text, message):
    with pytest.raises(ModelLoadError, match=message) as caught:
        inspect_keras_file(_config_edit(hostile_dir, name, text))
    assert "\n" not in str(caught.value)


def test_odd_values_in_a_config_count_as_nothing_rather_than_crash():
    layers = [{"class_name": "LSTM", "config": {"units": units}, "build_config": {"input_shape": shape}}
              for units, shape in [("many", [None, 3, 1]), (float("nan"), [None, "x", 1]), (True, None),
                                   (1e300, [None, 3, 1e400]), (-5, [None, 3, 1])]]
    budget = count_config({"class_name": "Sequential", "config": {"layers": layers}})
    assert budget.layers == 6
    # 1e300 units would be refused by the parameter limit; a negative count is not a count.
    assert budget.params > 10**300


@pytest.mark.parametrize("name, data, message", [
    ("empty", b"", r"has no zip directory"),
    ("text", b"this is not a zip archive", r"has no zip directory"),
    ("truncated", None, r"Expected a \.keras file \(a zip archive\)"),
])
def test_broken_archives_are_refused(hostile_dir, name, data, message):
    path = hostile_dir / f"{name}.keras"
    if data is None:
        data = hostile.seed_keras(hostile_dir).read_bytes()[: -300]
        data = data[:1000] + data[-200:]
    path.write_bytes(data)
    with pytest.raises(ModelLoadError, match=message):
        inspect_keras_file(path)


def test_deflated_weights_are_inspected_in_memory_only_when_small(hostile_dir):
    seed = hostile.seed_keras(hostile_dir)
    weights = zipfile.ZipFile(seed).read("model.weights.h5")
    small = hostile.rewrite(seed, hostile_dir / "deflated.keras", {}, compress={"model.weights.h5": zipfile.ZIP_DEFLATED})
    assert inspect_keras_file(small).params == 72
    padded = weights + os.urandom(65 << 20)  # HDF5 ignores bytes after its end of file
    big = hostile.rewrite(seed, hostile_dir / "deflated_big.keras", {"model.weights.h5": padded},
                          compress={"model.weights.h5": zipfile.ZIP_DEFLATED})
    with pytest.raises(ModelLoadError, match=r"model.weights.h5 stored uncompressed, as Keras writes it"):
        inspect_keras_file(big)


def test_duplicate_members_and_missing_weights_are_refused(hostile_dir):
    seed = hostile.seed_keras(hostile_dir)
    twice = hostile.rewrite(seed, hostile_dir / "twice.keras", {})
    with zipfile.ZipFile(twice, "a") as archive, pytest.warns(UserWarning, match="Duplicate name"):
        archive.writestr("config.json", b"{}")
    with pytest.raises(ModelLoadError, match=r"each archive member once\. Received: .* repeats \['config.json'\]"):
        inspect_keras_file(twice)
    bare = hostile.rewrite(seed, hostile_dir / "bare.keras", {"model.weights.h5": None})
    with pytest.raises(ModelLoadError, match=r"holding its weights \(model.weights.h5\)\. Received: .* has none"):
        inspect_keras_file(bare)


def test_missing_folder_and_symlinked_files(hostile_dir, tmp_path):
    with pytest.raises(ModelLoadError, match=r"Received: .*nowhere.keras' \(no such file\)"):
        inspect_keras_file(tmp_path / "nowhere.keras")
    with pytest.raises(ModelLoadError, match=r"which is a folder"):
        inspect_keras_file(tmp_path)
    link = tmp_path / "link.keras"
    link.symlink_to(hostile.seed_keras(hostile_dir))
    assert inspect_keras_file(link).params == 72  # a symlink to a regular file is fine


# ------------------------------------------------------------------------------------------------ feeds


def test_onnx_runtime_really_aborts_on_an_empty_batch(tmp_path):
    """Why the check exists: ORT 1.32 kills the process (SIGABRT) on case1_sequences.onnx with batch 0."""
    feed = hostile.zero_batch_npy(tmp_path)
    script = ("import sys, numpy as np, onnxruntime as ort\n"
              "s = ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])\n"
              "s.run(None, {'input': np.load(sys.argv[2])})\n")
    done = subprocess.run([sys.executable, "-c", script, str(ROOT / "exported/case1_sequences.onnx"), str(feed)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGABRT, (done.returncode, done.stderr[-500:])
    with pytest.raises(InputError, match=r"Expected input 'input' with every axis at least 1 .* Received: shape \(0, 3, 1\)"):
        check_feed_arrays({"input": np.load(feed)})


@pytest.mark.parametrize("shape", [(0, 3, 1), (2, 0, 1), (2, 3, 0)])
def test_empty_axes_are_refused(shape):
    with pytest.raises(InputError, match=r"aborts the process on an empty batch or time axis"):
        check_feed_array("x", np.zeros(shape, np.float32))


def test_a_batch_mismatch_between_inputs_is_refused():
    feeds = {"input": np.zeros((2, 3, 1), np.float32), "lstm_1_initial_state_h": np.zeros((1, 2), np.float32)}
    with pytest.raises(InputError, match=r"same batch size .* Received: 'input' batch 2, 'lstm_1_initial_state_h' batch 1"):
        check_feed_arrays(feeds, batched=list(feeds))
    assert check_batch(feeds, ["input"]).size == 2  # inputs without a batch axis are not compared
    assert check_batch({"a": np.zeros((3, 1)), "b": np.zeros((3,))}, ["a", "b"]).size == 3


def test_object_and_big_endian_arrays_are_refused_with_their_byte_order():
    with pytest.raises(InputError, match=r"numeric array\. Received: dtype object \(\|O\)"):
        check_feed_array("x", np.array([[1.0], None], dtype=object))
    big = np.zeros((1, 3, 1), ">f4")
    with pytest.raises(InputError, match=r"byte order \(float32 \(<f4\)\)\. Received: float32 \(>f4\)"):
        check_feed_array("x", big)
    with pytest.raises(InputError, match=r"dtype float32 \(<f4\) in this machine's byte order\. Received: float32 \(>f4\)"):
        check_feed_dtype("x", big, np.float32)
    with pytest.raises(InputError, match=r"dtype float32\. Received: dtype float64"):
        check_feed_dtype("x", np.zeros(1), np.float32)
    check_feed_dtype("x", np.zeros(1, np.float32), np.float32)


def test_safe_text_escapes_what_a_terminal_would_obey():
    assert safe_text("out\x1b[2J\x1b]0;pwned\x07") == "out\\x1b[2J\\x1b]0;pwned\\x07"
    assert safe_text("a\u202eb\x00c\nd\u2028") == "a\\u202eb\\x00c\\x0ad\\u2028"
    assert safe_text("lstm_2_état_状态") == "lstm_2_état_状态"
    assert safe_text("x" * 10, limit=4) == "xxxx...(+6 chars)"


def test_a_repeated_input_name_is_refused():
    check_input_names(["a=x.npy", "b=y.npy", "z.npz"])
    with pytest.raises(InputError, match=r"each input once .* Received: 'a=x.npy' and 'a=y.npy'"):
        check_input_names(["a=x.npy", "a=y.npy"])


# ---------------------------------------------------------------------------------------------- .npz


NAMES = ["allow_pickle", "file", "a/b:0", "", "x.npy", "état", "args", "kwds"]


def test_npz_keeps_every_output_whatever_its_name(tmp_path):
    arrays = {name: np.full((2, i + 1), i, np.float32) for i, name in enumerate(NAMES)}
    with pytest.raises(TypeError):  # what `run -o` did: np.savez takes `file` as its own argument
        np.savez(tmp_path / "old.npz", **arrays)
    if "allow_pickle" in inspect.signature(np.savez).parameters:  # numpy 2: savez takes it as its own keyword
        np.savez(tmp_path / "old.npz", **{"allow_pickle": arrays["allow_pickle"], "y": arrays["file"]})
        assert "allow_pickle" not in np.load(tmp_path / "old.npz").files  # ... and silently dropped this one
    save_npz(tmp_path / "out.npz", arrays)
    with np.load(tmp_path / "out.npz", allow_pickle=False) as loaded:
        assert sorted(loaded.files) == sorted(NAMES)
        for name, array in arrays.items():
            np.testing.assert_array_equal(loaded[name], array)
    assert "out.npz" in [p.name for p in tmp_path.iterdir()] and not list(tmp_path.glob(".*.tmp"))  # no temporaries


def test_npz_refusals_leave_the_old_file(tmp_path):
    target = tmp_path / "out.npz"
    target.write_bytes(b"old")
    with pytest.raises(InputError, match=r"Expected numeric outputs"):
        save_npz(target, {"a": np.zeros(2), "b": np.array([None], dtype=object)})
    with pytest.raises(OutputError, match=r"Expected a file path to write\. Received: .* which is a folder"):
        save_npz(tmp_path, {"a": np.zeros(2)})
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.npz"]


# ------------------------------------------------------------------------------------------ file sets


def _files(tag: str, count: int = 4) -> dict[str, bytes]:
    files = {f"case{i}.onnx": f"{tag}-{i}".encode() * (i + 1) for i in range(count)}
    files["manifest.json"] = json.dumps({"tag": tag}).encode()
    return files


def _state(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_set_replaces_the_old_one_and_drops_stale_files(tmp_path):
    write_file_set(tmp_path, _files("old", 5) | {"notes.txt": b"mine"})
    result = write_file_set(tmp_path, _files("new", 3), remove=["case3.onnx", "case4.onnx"])
    assert _state(tmp_path) == _files("new", 3) | {"notes.txt": b"mine"}
    assert [p.name for p in result.removed] == ["case3.onnx", "case4.onnx"]


def test_a_failing_write_leaves_the_old_set_whole(tmp_path, monkeypatch):
    write_file_set(tmp_path, _files("old"))
    calls = []
    real = fileio.write_all

    def disk_full_on_the_third_file(fd, data):
        calls.append(1)
        if len(calls) == 4:  # the journal, then two models, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, data)

    monkeypatch.setattr(fileio, "write_all", disk_full_on_the_third_file)
    with pytest.raises(OutputError, match=r"^Expected a writable destination\. Received: .*No space left on device "
                                          r"\(ENOSPC\); the folder keeps its previous files$"):
        write_file_set(tmp_path, _files("new"))
    assert _state(tmp_path) == _files("old")  # no temporary, no journal, no new file


@contextlib.contextmanager
def _tmpfs(path: Path, size: str):
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True).returncode:
        pytest.skip("needs permission to mount a small tmpfs (root), for a real full or read-only disk")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_a_really_full_disk_leaves_the_old_set_whole(tmp_path):
    with _tmpfs(tmp_path / "small", "256k") as disk:
        write_file_set(disk, _files("old"))
        big = {name: os.urandom(64 << 10) for name in _files("new")}
        with pytest.raises(OutputError, match=r"No space left on device \(ENOSPC\); the folder keeps its previous"):
            write_file_set(disk, big)
        assert _state(disk) == _files("old")


def test_a_read_only_filesystem_gives_one_line_and_changes_nothing(tmp_path):
    with _tmpfs(tmp_path / "ro", "1m") as disk:
        write_file_set(disk, _files("old"))
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        with pytest.raises(OutputError, match=r"Read-only file system \(EROFS\)"):
            write_file_set(disk, _files("new"))
        with pytest.raises(OutputError, match=r"Read-only file system \(EROFS\)"):
            save_npz(disk / "out.npz", {"a": np.zeros(1)})
        assert _state(disk) == _files("old")


KILLED = textwrap.dedent("""
    import os, signal, sys, json
    from toolkit import fileio
    from toolkit.export import fileset
    where, folder = sys.argv[1], sys.argv[2]
    files = {f"case{i}.onnx": f"new-{i}".encode() * (i + 1) for i in range(4)}
    files["manifest.json"] = json.dumps({"tag": "new"}).encode()
    count = []
    if where == "writing":
        real = fileio.write_all
        def write(fd, data):
            count.append(1)
            if len(count) == 4:
                os.kill(os.getpid(), signal.SIGKILL)
            real(fd, data)
        fileio.write_all = write
    else:
        real = os.replace
        def replace(src, dst):
            if str(dst).endswith(".onnx"):
                count.append(1)
                if len(count) == 3:
                    os.kill(os.getpid(), signal.SIGKILL)
            real(src, dst)
        fileset.os.replace = replace
    fileset.write_file_set(folder, files)
""")


@pytest.mark.parametrize("where, expected", [("writing", "old"), ("switching", "new")])
def test_kill_9_is_undone_or_finished_by_the_next_writer(tmp_path, where, expected):
    write_file_set(tmp_path, _files("old"))
    done = subprocess.run([sys.executable, "-c", KILLED, where, str(tmp_path)], env=ENV, capture_output=True, timeout=60)
    assert done.returncode == -signal.SIGKILL
    left = _state(tmp_path)
    assert JOURNAL in left and any(".lstm-onnx-" in name for name in left)  # what a killed run leaves
    with fileio.folder_lock(tmp_path):
        recovery = recover(tmp_path)
    assert _state(tmp_path) == _files(expected)
    assert recovery.finished if expected == "new" else recovery.removed


@pytest.mark.parametrize("where, expected", [("writing", "old"), ("switching", "new")])
def test_a_single_file_write_after_a_kill_9_leaves_no_mixed_folder(tmp_path, where, expected):
    """Issue 18: a kill -9 just after the commit left 2 new models, 2 old ones and the old manifest, and a
    single-file write into the folder left it so. Now any write finishes (or undoes) the switch first."""
    write_file_set(tmp_path, _files("old"))
    done = subprocess.run([sys.executable, "-c", KILLED, where, str(tmp_path)], env=ENV, capture_output=True, timeout=60)
    assert done.returncode == -signal.SIGKILL
    mixed = _state(tmp_path)
    assert JOURNAL in mixed
    if where == "switching":  # the window the issue measured: new and old models side by side
        assert mixed["case0.onnx"] == _files("new")["case0.onnx"] and mixed["case3.onnx"] == _files("old")["case3.onnx"]
    fileio.atomic_write_bytes(tmp_path / "single.onnx", b"single")
    assert _state(tmp_path) == _files(expected) | {"single.onnx": b"single"}


def test_a_damaged_or_hostile_journal_only_removes_our_temporaries(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    folder = tmp_path / "set"
    write_file_set(folder, _files("old"))
    (folder / JOURNAL).write_text(json.dumps({"format": "lstm-onnx file set 1", "state": "commit",
                                              "moves": [["../outside.txt", "case0.onnx"]], "removes": ["../outside.txt"]}))
    (folder / ".case1.onnx.lstm-onnx-0123456789abcdef.tmp").write_bytes(b"half")
    write_file_set(folder, _files("new"))
    assert _state(folder) == _files("new") and outside.read_text() == "keep"


def test_names_must_stay_inside_the_folder(tmp_path):
    for name in ["../x.onnx", "/etc/x", "a/./b", ""]:
        with pytest.raises(InputError, match=r"Expected a file name inside the output folder"):
            write_file_set(tmp_path, {name: b"x"})
    write_file_set(tmp_path, {"repo/model/1/model.onnx": b"m", "repo/model/config.pbtxt": b"c"})
    assert _state(tmp_path) == {"repo/model/1/model.onnx": b"m", "repo/model/config.pbtxt": b"c"}


def test_a_file_where_the_folder_goes_is_one_line(tmp_path):
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(OutputError, match=r"Expected an output folder\. Received: .*taken', which is a file"):
        write_file_set(tmp_path / "taken", _files("new"))
    with pytest.raises(OutputError, match=r"Expected a writable destination\. Received: .*case0.onnx.*"):
        (tmp_path / "d" / "case0.onnx").mkdir(parents=True)
        write_file_set(tmp_path / "d", _files("new"))
    assert not [p for p in (tmp_path / "d").iterdir() if p.name != "case0.onnx"]


def test_atomic_output_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"good")
    with pytest.raises(RuntimeError), atomic_output(target) as handle:
        handle.write(b"half")
        raise RuntimeError("interrupted")
    assert target.read_bytes() == b"good" and [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_a_single_write_removes_a_killed_runs_leftovers(tmp_path):
    """Under the folder lock every temporary of ours is a killed writer's: a live one holds the lock."""
    mine = tmp_path / ".model.onnx.lstm-onnx-0123456789abcdef.tmp"
    other = tmp_path / ".other.onnx.lstm-onnx-0123456789abcdef.tmp"
    mine.write_bytes(b"half")
    other.write_bytes(b"half")
    fileio.atomic_write_bytes(tmp_path / "model.onnx", b"whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_the_hdf5_walk_is_bounded_in_objects_and_refuses_every_link_keras_never_writes(tmp_path):
    """Issue 25, F4/F5: the one walk both HDF5 readers use (`toolkit.safety.hdf5`) bounds the object count before
    it opens a group's members, and refuses a group linked into its own subtree (a cycle by hard link), an
    external link (another file's object) and a soft link; a Keras-written file passes."""
    import h5py

    from toolkit.safety.hdf5 import walk_datasets

    def walk(build, **bounds):
        path = tmp_path / "walk.h5"
        with h5py.File(path, "w") as f:
            build(f)
        with h5py.File(path, "r") as f:
            return walk_datasets(f, "w.h5", **bounds)

    def wide(f):
        for index in range(60):
            f.create_group(f"g{index}").create_dataset("x", data=np.zeros(2))

    assert len(walk(wide)) == 60
    with pytest.raises(ModelLoadError, match=r"at most 100 HDF5 groups and datasets\. Received: 'w.h5' holds more"):
        walk(wide, max_objects=100)
    cases = {
        "cycle": (lambda f: f.create_group("a/b").__setitem__("up", f["a"]), "linked elsewhere too"),
        "external": (lambda f: f.__setitem__("x", h5py.ExternalLink("/etc/passwd", "/")), "has an external link at 'x'"),
        "soft": (lambda f: f.__setitem__("x", h5py.SoftLink("/nowhere")), "has a soft link at 'x'"),
        "deep": (lambda f: f.create_group("/".join("g" * 5)), "nested at most 3 levels deep"),
    }
    for build, message in cases.values():
        with pytest.raises(ModelLoadError, match=message):
            walk(build, max_depth=3)
