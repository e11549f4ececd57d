"""Keras 2 models (tf.keras 2.21 via the tf-keras package) saved as .h5, SavedModel folders and tf.keras .keras
files: exported fused, named by role, within tolerance of tf.keras' own recorded outputs, byte-reproducible;
hostile ones refused in one line before anything runs. The models are made by real tf.keras in this test
run, by `scripts/make_keras2_models.py`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from conftest import assert_close

from toolkit.cli import cli
from toolkit.errors import InputError, ModelLoadError, UnsupportedModelError
from toolkit.export.exporter import export_keras_model
from toolkit.models.keras2.formats import keras2_format
from toolkit.onnxfile.metadata import read_source
from toolkit.onnxfile.model import LOOP_OPS, count_ops
from toolkit.options import DEFAULT_LIMITS
from toolkit.runtimes.onnxrt import OnnxRunner
from toolkit.tolerance import Tolerances, decide

ROOT = Path(__file__).resolve().parents[1]

# model -> (graph outputs in Keras' order, fused ops)
EXPECTED = {
    "post_case3": (["lstm_1_sequence", "lstm_1_state_h", "lstm_1_state_c"], {"LSTM": 2}),
    "sequential_lstm": (["dense_output"], {"LSTM": 1}),
    "embedding_gru": (["dense_output"], {"GRU": 1}),
    "bidirectional_states": (["bidirectional_sequence", "bidirectional_forward_state_h", "bidirectional_forward_state_c",
                              "bidirectional_backward_state_h", "bidirectional_backward_state_c"], {"LSTM": 1}),
    "masking_simple_rnn": (["time_distributed_output"], {"RNN": 1}),
    "gru_reset_before": (["gru_1_last", "gru_1_state_h"], {"GRU": 2}),
    "stateful_lstm": (["dense_output", "lstm_state_h", "lstm_state_c"], {"LSTM": 1}),
    "mixed_stack": (["time_distributed_output"], {"GRU": 1, "LSTM": 1}),
    "nested_encoder": (["time_distributed_output"], {"GRU": 1, "LSTM": 1}),
    "classic_text": (["dense_output"], {"LSTM": 1}),
    "float64_input": (["dense_output"], {"LSTM": 1}),
    "float64_layers": (["dense_output"], {"GRU": 1, "LSTM": 1}),
}
FORMATS = {"h5": "{}.h5", "savedmodel": "{}_savedmodel", "keras": "{}.keras"}
GPU_ERA = {"cudnn_lstm": (["cu_dnnlstm_sequence", "cu_dnnlstm_state_h", "cu_dnnlstm_state_c"], {"LSTM": 1}),
           "cudnn_gru": (["dense_output"], {"GRU": 1}),
           "keras22_lstm": (["lstm_1_sequence", "lstm_1_state_h", "lstm_1_state_c"], {"LSTM": 2})}


@pytest.fixture(scope="session")
def keras2_models(tmp_path_factory) -> Path:
    """Every Keras 2 model, made by real tf.keras in a subprocess (tf-keras and Keras 3 stay apart)."""
    out = tmp_path_factory.mktemp("keras2_models")
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_keras2_models.py"), str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def recorded(folder: Path, name: str) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
    """The inputs tf.keras was run on when the model was made, and its outputs."""
    data = np.load(folder / f"{name}.reference.npz")
    feeds = {key.split(":", 1)[1]: data[key] for key in data.files if key.startswith("input:")}
    outputs = [data[key] for key in sorted((k for k in data.files if k.startswith("output:")),
                                           key=lambda k: int(k.split(":")[1]) if k.split(":")[1].isdigit() else k)]
    return feeds, outputs


def check_against_tf_keras(proto, folder: Path, name: str, names: list[str]) -> None:
    """ONNX Runtime on tf.keras' recorded inputs equals tf.keras' recorded outputs, output by output."""
    feeds, expected = recorded(folder, name)
    runner = OnnxRunner(proto)
    dtypes = {value.name: onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type) for value in proto.graph.input}
    actual = runner.run({name: value.astype(dtypes[name]) for name, value in feeds.items()})  # float ids -> int32
    # The project's policy: SimpleRNN's ONNX RNN op gets compare.RNN_OP_TOLERANCE (its measured reason there).
    tolerances = decide(Tolerances(), count_ops(runner.model))
    for output, value in zip(names, expected):
        assert_close(actual[output], value, output, tolerances)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_keras2_model_exports_fused_named_and_exact(keras2_models, name, fmt):
    path = keras2_models / FORMATS[fmt].format(name)
    result = export_keras_model(path, keras2_models / f"{name}_{fmt}.onnx")
    names, fused = EXPECTED[name]
    assert result.parity, result.parity
    assert [o.name for o in result.outputs][: len(names)] == names
    assert result.fused_ops == fused
    assert not any(result.op_counts.get(op) for op in LOOP_OPS)
    assert not result.warnings
    check_against_tf_keras(result.model, keras2_models, name, names)
    source = read_source(result.model)
    assert source["format"] == keras2_format(path).label
    reference = "serving signature" if fmt == "savedmodel" else "tf.keras 2.21"
    assert reference in source["reference"]
    assert source["keras_version"].startswith("2.")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(GPU_ERA))
def test_gpu_era_and_standalone_keras_files(keras2_models, name):
    """CuDNNLSTM/CuDNNGRU (tf.keras' own weight conversion is the reference) and a Keras 2.2-layout file."""
    result = export_keras_model(keras2_models / f"{name}.h5", keras2_models / f"{name}.onnx")
    names, fused = GPU_ERA[name]
    assert result.parity and result.fused_ops == fused and not result.warnings
    assert [o.name for o in result.outputs] == names
    check_against_tf_keras(result.model, keras2_models, name, names)
    source = read_source(result.model)
    if name.startswith("cudnn"):
        assert "CuDNN" in source["reference"] and any("CuDNN" in change for change in source["translated"])
    else:
        assert source["keras_version"] == "2.2.4"


def test_cudnn_gru_biases_are_the_ops_input_and_recurrent_biases(keras2_models):
    """CuDNNGRU's two bias vectors land in the GRU op's B as [Wb; Rb], not summed."""
    import h5py
    import onnx.numpy_helper

    result = export_keras_model(keras2_models / "cudnn_gru.h5", keras2_models / "cudnn_gru.onnx")
    with h5py.File(keras2_models / "cudnn_gru.h5") as f:
        bias = np.asarray(f["model_weights/cu_dnngru/cu_dnngru/bias:0"])
    gru = next(node for node in result.model.graph.node if node.op_type == "GRU")
    initializers = {t.name: onnx.numpy_helper.to_array(t) for t in result.model.graph.initializer}
    onnx_bias = initializers[gru.input[3]].reshape(-1)
    units = 4
    # Keras z, r, h and ONNX z, r, h: same gate order, so the halves are cuDNN's input and recurrent biases.
    np.testing.assert_array_equal(np.sort(onnx_bias[: 3 * units]), np.sort(bias[: 3 * units]))
    np.testing.assert_array_equal(np.sort(onnx_bias[3 * units:]), np.sort(bias[3 * units:]))


@pytest.mark.slow
def test_keras2_exports_are_byte_reproducible_in_a_fresh_process(keras2_models, tmp_path):
    for entry in ("post_case3.h5", "bidirectional_states_savedmodel", "embedding_gru.keras", "lambda_affine_savedmodel"):
        here = export_keras_model(keras2_models / entry, tmp_path / "here.onnx")
        target = tmp_path / f"{entry}.onnx"
        done = subprocess.run([sys.executable, "-m", "toolkit.cli", "export", str(keras2_models / entry), "-o", str(target)],
                              capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert done.returncode == 0, done.stderr[-2000:]
        assert target.read_bytes() == here.data, entry


@pytest.mark.slow
def test_module_savedmodel_goes_through_tf2onnx_named_by_its_signature(keras2_models):
    result = export_keras_model(keras2_models / "module_lstm", keras2_models / "module.onnx")
    assert result.parity
    assert [o.name for o in result.outputs] == ["cell", "encoded", "hidden"]
    assert [i.name for i in result.inputs] == ["signal"]
    assert not any("Identity" in o.name or ":" in o.name for o in result.outputs)
    feeds, expected = recorded(keras2_models, "module_lstm")
    actual = OnnxRunner(result.model).run(feeds)
    for name, value in zip(["cell", "encoded", "hidden"], expected):
        assert_close(actual[name], value, name)
    dims = [d.dim_param for d in result.model.graph.input[0].type.tensor_type.shape.dim]
    assert dims[:2] == ["batch", "time"]
    # fused or said so: never a silent Loop
    assert result.fused or result.warnings


def cli_export(path: Path, out: Path):
    return CliRunner().invoke(cli, ["export", str(path), "-o", str(out)])


def test_lambda_h5_is_refused_in_one_line_before_anything_runs(keras2_models, tmp_path):
    out = tmp_path / "lambda.onnx"
    done = cli_export(keras2_models / "lambda.h5", out)
    assert done.exit_code != 0
    lines = done.output.strip().splitlines()
    assert len(lines) == 1 and "Lambda layer" in lines[0] and "Traceback" not in done.output
    assert not out.exists()


def test_savedmodel_that_writes_a_file_is_refused_before_it_runs(keras2_models, tmp_path):
    target = Path("/tmp/lstm_onnx_pwned.txt")
    target.unlink(missing_ok=True)
    out = tmp_path / "w.onnx"
    done = cli_export(keras2_models / "writes_file", out)
    assert done.exit_code != 0
    assert len(done.output.strip().splitlines()) == 1 and "'WriteFile'" in done.output
    assert not target.exists() and not out.exists()
    # named by the folder the user gave, not by lstm-onnx's deleted private copy of it
    assert repr(str(keras2_models / "writes_file")) in done.output and "lstm-onnx-keras2-" not in done.output


def test_checkpoint_ops_are_refused_wherever_the_loader_can_reach_them(keras2_models):
    """SaveV2 writes files. Allowed only in functions nothing in the object graph reaches (TensorFlow's own
    saver); decided by reachability, so neither a call into the saver nor a signature pointed straight at
    a function named like the saver gets through."""
    from toolkit.models.keras2.savedmodel import _roots, read_saved_model, refused_ops

    def fresh():
        return read_saved_model(keras2_models / "post_case3_savedmodel", DEFAULT_LIMITS)

    assert refused_ops(fresh()) == {}
    proto = fresh()
    library = proto.meta_graphs[0].graph_def.library
    saver = next(f.signature.name for f in library.function if f.signature.name.startswith("__inference__traced_save"))
    roots = _roots(proto.meta_graphs[0])
    serving = next(f for f in library.function if f.signature.name in roots)
    call = serving.node_def.add(name="evil", op="StatefulPartitionedCall")
    call.attr["f"].func.name = saver
    assert "SaveV2" in refused_ops(proto)
    proto = fresh()
    graph = proto.meta_graphs[0].object_graph_def
    method = next(node for node in graph.nodes if node.WhichOneof("kind") == "function" and node.function.concrete_functions)
    method.function.concrete_functions[0] = saver  # the object graph runs the saver-named function directly
    assert "SaveV2" in refused_ops(proto)
    proto = fresh()
    proto.meta_graphs[0].object_graph_def.ClearField("nodes")  # TF1's format: its loader runs the top-level graph
    assert refused_ops(proto)


def test_h5_datasets_are_bounded_before_they_are_read(keras2_models, tmp_path):
    """A dataset may declare any shape over a few stored bytes; the declared size is refused first."""
    import h5py

    bomb = tmp_path / "bomb.h5"
    bomb.write_bytes((keras2_models / "post_case3.h5").read_bytes())
    with h5py.File(bomb, "r+") as f:
        f["model_weights"].create_dataset("huge", shape=(40_000, 40_000), dtype="float32", chunks=(1000, 1000))
    with pytest.raises(ModelLoadError, match="max-member-bytes"):
        export_keras_model(bomb, tmp_path / "bomb.onnx")
    with pytest.raises(ModelLoadError, match="max-params"):
        export_keras_model(keras2_models / "post_case3.h5", tmp_path / "x.onnx", limits=DEFAULT_LIMITS.raised(max_params=10))


def test_savedmodel_variables_are_bounded_before_they_are_read(keras2_models, tmp_path):
    with pytest.raises(ModelLoadError, match="max-params"):
        export_keras_model(keras2_models / "post_case3_savedmodel", tmp_path / "x.onnx",
                           limits=DEFAULT_LIMITS.raised(max_params=10))


def test_weights_only_h5_and_custom_classes_are_refused_in_one_line(keras2_models, tmp_path):
    import h5py

    weights_only = tmp_path / "weights.h5"
    with h5py.File(weights_only, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(ModelLoadError, match="weights only"):
        export_keras_model(weights_only, tmp_path / "a.onnx")
    custom = tmp_path / "custom.h5"
    custom.write_bytes((keras2_models / "post_case3.h5").read_bytes())
    with h5py.File(custom, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        config["config"]["layers"][1]["class_name"] = "MyLSTM"
        f.attrs["model_config"] = json.dumps(config)
    with pytest.raises((ModelLoadError, UnsupportedModelError), match="MyLSTM"):
        export_keras_model(custom, tmp_path / "b.onnx")


def test_keras2_formats_are_told_apart_without_keras(keras2_models, saved_models):
    assert keras2_format(keras2_models / "post_case3.h5").kind == "h5"
    assert keras2_format(keras2_models / "post_case3_savedmodel").kind == "savedmodel"
    assert keras2_format(keras2_models / "module_lstm").kind == "module"
    assert keras2_format(keras2_models / "post_case3.keras").kind == "keras"
    assert keras2_format(saved_models["sequential"]) is None  # Keras 3's own .keras


@pytest.mark.slow
def test_explain_takes_the_posts_keras2_code_path():
    """The post's stack built with tf.keras, saved as .h5 and exported from it: same numbers as the Keras 3
    build (the builder's weights), the post's equalities hold, and tf.keras is the reference."""
    from toolkit.pages.explain import explain

    keras3 = explain()
    keras2 = explain(keras2=True)
    assert all(case.all_hold for case in keras2)
    for old, new in zip(keras3, keras2):
        assert [o.name for o in old.outputs] == [o.name for o in new.outputs]
        for a, b in zip(old.outputs, new.outputs):
            assert_close(b.keras, a.keras, a.name)
            assert_close(b.onnx, b.keras, a.name)


def test_module_savedmodel_refuses_options_it_cannot_honour(keras2_models, tmp_path):
    """--state-io and tiers need lstm-onnx's lowering (layer configs): refused in one line, not ignored."""
    for flags in (["--state-io"], ["--quantize", "int8"]):
        done = CliRunner().invoke(cli, ["export", str(keras2_models / "module_lstm"), "-o", str(tmp_path / "m.onnx"), *flags])
        assert done.exit_code != 0 and "tf.Module" in done.output and "Traceback" not in done.output
        assert not (tmp_path / "m.onnx").exists()


def test_module_savedmodel_variables_are_bounded_before_tensorflow_loads_them(keras2_models, tmp_path):
    with pytest.raises(ModelLoadError, match="max-params"):
        export_keras_model(keras2_models / "module_lstm", tmp_path / "m.onnx", limits=DEFAULT_LIMITS.raised(max_params=10))


@pytest.mark.slow
def test_verify_checks_a_keras2_export_against_the_original(keras2_models, tmp_path):
    out = tmp_path / "bi.onnx"
    export_keras_model(keras2_models / "bidirectional_states_savedmodel", out).save(out)
    done = CliRunner().invoke(cli, ["verify", str(out), "--keras", str(keras2_models / "bidirectional_states_savedmodel"),
                                    "--runtimes", "onnxruntime,openvino", "--json"])
    assert done.exit_code == 0, done.output
    report = json.loads(done.output)
    assert "serving signature" in report["reference"]
    done = CliRunner().invoke(cli, ["verify", str(out), "--keras", str(keras2_models / "bidirectional_states.h5")])
    assert done.exit_code == 0 and "parity reference: tf.keras 2.21" in done.output


def test_h5_weights_stored_in_another_file_are_refused(keras2_models, tmp_path):
    """HDF5 external storage would copy any local file into the export's weights."""
    import h5py

    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(8, dtype=np.float32).tobytes())
    crafted = tmp_path / "external.h5"
    crafted.write_bytes((keras2_models / "post_case3.h5").read_bytes())
    with h5py.File(crafted, "r+") as f:
        group = f["model_weights/lstm/lstm/lstm_cell"]
        del group["bias:0"]
        group.create_dataset("bias:0", shape=(8,), dtype="float32", external=[(str(secret), 0, 32)])
    with pytest.raises(ModelLoadError, match="stored in another file"):
        export_keras_model(crafted, tmp_path / "x.onnx")


def test_a_weight_listed_twice_is_refused_before_it_is_read_twice(keras2_models, tmp_path):
    import h5py

    crafted = tmp_path / "twice.h5"
    crafted.write_bytes((keras2_models / "post_case3.h5").read_bytes())
    with h5py.File(crafted, "r+") as f:
        group = f["model_weights/lstm"]
        names = list(group.attrs["weight_names"])
        group.attrs["weight_names"] = names + names
    with pytest.raises(ModelLoadError, match="listed once"):
        export_keras_model(crafted, tmp_path / "x.onnx")


def test_a_tf_keras_archive_naming_a_foreign_module_is_refused(keras2_models, tmp_path):
    """tf.keras' loader imports the module a .keras config names; only Keras' own are accepted."""
    import zipfile

    crafted = tmp_path / "foreign.keras"
    with zipfile.ZipFile(keras2_models / "post_case3.keras") as source, zipfile.ZipFile(crafted, "w") as out:
        for info in source.infolist():
            data = source.read(info.filename)
            if info.filename == "config.json":
                config = json.loads(data)
                config["module"] = "this"
                data = json.dumps(config).encode()
            out.writestr(info, data)
    with pytest.raises(UnsupportedModelError, match="naming module 'this'"):
        export_keras_model(crafted, tmp_path / "x.onnx")


def test_savedmodel_folder_with_a_fifo_is_refused_without_hanging(keras2_models, tmp_path):
    import shutil

    folder = tmp_path / "fifo_savedmodel"
    shutil.copytree(keras2_models / "post_case3_savedmodel", folder)
    (folder / "variables" / "variables.index").unlink()
    os.mkfifo(folder / "variables" / "variables.index")
    with pytest.raises(ModelLoadError, match="a FIFO"):
        export_keras_model(folder, tmp_path / "x.onnx")


def test_keras_metadata_with_a_varint_where_text_belongs_is_one_line(keras2_models, tmp_path):
    """bytes(<varint>) would allocate that many bytes: a 10-byte file must not cost gigabytes."""
    import shutil

    folder = tmp_path / "meta_savedmodel"
    shutil.copytree(keras2_models / "post_case3_savedmodel", folder)
    record = bytes([0x18]) + bytes([0x80, 0x80, 0x80, 0x80, 0x10])  # field 3 as a varint of 2**32
    (folder / "keras_metadata.pb").write_bytes(bytes([0x0A, len(record)]) + record)
    with pytest.raises(ModelLoadError, match="keras_metadata.pb"):
        export_keras_model(folder, tmp_path / "x.onnx")


def test_the_reference_reads_the_checked_copy_not_the_path(keras2_models, tmp_path):
    """Swapping the file after the check (for one with a Lambda layer) changes nothing: every reader
    after the check reads lstm-onnx's private copy."""
    from toolkit.models.keras2.loader import load_keras2_model
    from toolkit.runtimes.keras2 import original_reference

    path = tmp_path / "victim.h5"
    path.write_bytes((keras2_models / "post_case3.h5").read_bytes())
    loaded = load_keras2_model(path, keras2_format(path), DEFAULT_LIMITS)
    path.write_bytes((keras2_models / "lambda.h5").read_bytes())
    reference = original_reference(loaded)
    loaded.close()
    assert not any(type(layer).__name__ == "Lambda" for layer in reference._original.layers)
    assert not loaded.path.exists()


def test_dict_outputs_and_broken_configs_are_one_line(keras2_models, tmp_path):
    import h5py

    for change, needle in ((lambda c: c["config"].__setitem__("output_layers", {"a": ["lstm_1", 0, 0]}), "dict outputs"),
                           (lambda c: c["config"].__setitem__("layers", 5), "not a list")):
        crafted = tmp_path / "broken.h5"
        crafted.write_bytes((keras2_models / "post_case3.h5").read_bytes())
        with h5py.File(crafted, "r+") as f:
            config = json.loads(f.attrs["model_config"])
            change(config)
            f.attrs["model_config"] = json.dumps(config)
        done = cli_export(crafted, tmp_path / "x.onnx")
        assert done.exit_code != 0 and needle in done.output and len(done.output.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_signature_that_never_ends_is_stopped_in_one_line(tmp_path):
    """Pure computation passes the op allowlist and may still loop forever: the graph runs in a child
    process that is stopped past its time bound, with one line, and nothing is written."""
    import toolkit.runtimes.keras2_child as child

    script = tmp_path / "make.py"
    script.write_text(
        "import sys, tensorflow as tf\n"
        "class Forever(tf.Module):\n"
        "    @tf.function(input_signature=[tf.TensorSpec((None, 3, 1), tf.float32, name='x')])\n"
        "    def serve(self, x):\n"
        "        i = tf.constant(0)\n"
        "        i = tf.while_loop(lambda i: i >= 0, lambda i: (i + 1) % 7, [i])\n"
        "        return {'y': x * tf.cast(i, tf.float32)}\n"
        "m = Forever()\n"
        "tf.saved_model.save(m, sys.argv[1], signatures={'serving_default': m.serve})\n")
    folder = tmp_path / "forever"
    subprocess.run([sys.executable, str(script), str(folder)], check=True, capture_output=True, timeout=300)
    previous, child.CALL_SECONDS = child.CALL_SECONDS, 5.0  # the default 120 s, shortened for the test
    try:
        with pytest.raises(Exception, match="stopped, it ran past 5 s"):
            export_keras_model(folder, tmp_path / "forever.onnx")
    finally:
        child.CALL_SECONDS = previous
    assert not (tmp_path / "forever.onnx").exists()


# ------------------------------------------------------------------- red team, round 4 (issue 25)

READ_BOUNDED = """
import json, resource, sys, time
# Bounds for the measured reader itself, so that a regression fails here instead of taking the machine:
# 2 GiB of address space (this process needs about 140 MB), 60 s of CPU.
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
resource.setrlimit(resource.RLIMIT_CPU, (60, 60))
start = time.perf_counter()
from toolkit.errors import ModelLoadError
from toolkit.models.keras2.h5 import read_h5_model
from toolkit.options import DEFAULT_LIMITS
try:
    read_h5_model(sys.argv[1], DEFAULT_LIMITS); outcome = "accepted"
except ModelLoadError as exc:
    outcome = str(exc)
hwm = [int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")][0]
print(json.dumps({"seconds": time.perf_counter() - start, "outcome": outcome, "peak_mb": hwm / 1024}))
"""


def read_h5_in_a_bounded_process(path: Path) -> dict:
    """`read_h5_model` on `path` in a fresh process under an address-space and CPU limit: its outcome,
    seconds and peak resident memory (the kernel's VmHWM of that process)."""
    import os

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", READ_BOUNDED, str(path)], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


@pytest.mark.parametrize("kind", ["soft", "hard"])
def test_h5_weights_linked_many_times_are_refused_before_any_read(keras2_models, tmp_path, kind):
    """F4: 4,000 links to one 1 MiB dataset listed as weights read it 4,000 times (4.7 GB). Links are
    refused in the bounded walk, before the config is parsed or any array read."""
    import hostile

    path = hostile.h5_linked_weights(keras2_models / "post_case3.h5", tmp_path / f"{kind}.h5", 4000, kind)
    assert path.stat().st_size < 2 << 20
    measured = read_h5_in_a_bounded_process(path)
    expected = {"soft": "has a soft link at 'model_weights/", "hard": "to an object linked elsewhere too (a hard link)"}
    assert measured["outcome"].startswith("Expected ") and expected[kind] in measured["outcome"], measured
    assert len(measured["outcome"].splitlines()) == 1
    assert measured["peak_mb"] < 200 and measured["seconds"] < 10, measured
    genuine = read_h5_in_a_bounded_process(keras2_models / "post_case3.h5")
    assert genuine["outcome"] == "accepted" and genuine["peak_mb"] < 200, genuine


def test_h5_weights_are_resolved_by_address_and_checked_against_the_config(keras2_models, tmp_path):
    """A weight listed under two spellings resolves to one address: refused before it is read twice; more
    layers than the config declares, or one it does not declare, are refused before any array is read."""
    import h5py

    from toolkit.models.keras2.h5 import read_h5_model

    crafted = tmp_path / "aliases.h5"
    crafted.write_bytes((keras2_models / "post_case3.h5").read_bytes())
    with h5py.File(crafted, "r+") as f:
        group = f["model_weights/lstm"]
        names = [str(n if isinstance(n, str) else n.decode()) for n in group.attrs["weight_names"]]
        group.attrs["weight_names"] = np.array([*names, names[0].replace("/", "//")], dtype="S")  # another spelling
    with pytest.raises(ModelLoadError, match="Expected each weight listed once"):
        read_h5_model(crafted, DEFAULT_LIMITS)
    crafted.write_bytes((keras2_models / "post_case3.h5").read_bytes())
    with h5py.File(crafted, "r+") as f:
        weights = f["model_weights"]
        layers = [str(n if isinstance(n, str) else n.decode()) for n in weights.attrs["layer_names"]]
        weights.attrs["layer_names"] = np.array([*layers, "ghost"], dtype="S")
    with pytest.raises(ModelLoadError, match="weights for at most the 3 layers the config declares. Received: .* listing 4"):
        read_h5_model(crafted, DEFAULT_LIMITS)
    with h5py.File(crafted, "r+") as f:
        f["model_weights"].attrs["layer_names"] = np.array([*layers[:-1], "ghost"], dtype="S")
    with pytest.raises(ModelLoadError, match="listing 'ghost', which the config does not declare"):
        read_h5_model(crafted, DEFAULT_LIMITS)


def test_deeply_nested_h5_groups_are_refused_fast(keras2_models, tmp_path):
    """F5: 10,000 nested groups (a 1.5 MB file) took 159-268 s in the walk by path; refused at 32 levels."""
    import hostile

    path = hostile.h5_deep(keras2_models / "post_case3.h5", tmp_path / "deep.h5", 10_000)
    measured = read_h5_in_a_bounded_process(path)
    assert "HDF5 groups nested at most 32 levels deep" in measured["outcome"], measured
    assert measured["seconds"] < 5 and measured["peak_mb"] < 200, measured


@pytest.mark.slow
def test_a_savedmodel_reference_has_one_deadline_for_all_its_calls(tmp_path):
    """F8: each call within its own bound, yet the calls together past the child's whole deadline: stopped
    at that deadline, in one line. The loop is measured first, so the test holds on any machine."""
    import time

    import hostile

    import toolkit.runtimes.keras2_child as child

    folder = hostile.spinning_savedmodel(tmp_path, 300_000)
    feeds = {"x": np.zeros((1, 3, 1), np.float32)}
    signature = child.SignatureChild(folder)
    try:
        start = time.monotonic()
        signature.run(feeds)
        call = time.monotonic() - start
        previous = child.CALL_SECONDS, child.TOTAL_SECONDS
        child.CALL_SECONDS, child.TOTAL_SECONDS = 4 * call, 2.5 * call  # one call fits; three do not
        signature.deadline = time.monotonic() + child.TOTAL_SECONDS
        try:
            signature.run(feeds)
            signature.run(feeds)
            with pytest.raises(InputError, match=r"stopped, it ran past [\d.]+ s in all \(load and every call\)"):
                signature.run(feeds)
        finally:
            child.CALL_SECONDS, child.TOTAL_SECONDS = previous
        assert time.monotonic() - start < 5 * call + 5
    finally:
        signature.close()


GROWING = """
import sys, tensorflow as tf
class Grow(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec((None, 3, 1), tf.float32, name='x')])
    def serve(self, x):
        rows = tf.shape(x)[0] * 768  # 768 MiB of float32 per batch row: the shape comes from the feed
        return {'y': x * tf.reduce_sum(tf.fill(tf.stack([rows, 262144]), 1.0))}
m = Grow()
tf.saved_model.save(m, sys.argv[1], signatures={'serving_default': m.serve})
"""


@pytest.mark.slow
def test_a_savedmodel_signature_past_the_memory_limit_is_stopped_in_one_line(tmp_path, monkeypatch):
    """The child's resident memory is measured while each answer is awaited: a signature that fills 1.5 GB
    is stopped past the limit (lowered here to 1 GiB; TensorFlow alone holds about 0.5 GB), in one line."""
    import time

    import toolkit.runtimes.keras2_child as child

    folder = tmp_path / "grow"
    subprocess.run([sys.executable, "-c", GROWING, str(folder)], check=True, capture_output=True, timeout=300)
    monkeypatch.setattr(child, "MAX_RSS_BYTES", 1 << 30)
    signature = child.SignatureChild(folder)
    try:
        start = time.monotonic()
        with pytest.raises(InputError, match=r"'grow': stopped, it grew past 1024 MiB of memory$") as caught:
            signature.run({"x": np.ones((2, 3, 1), np.float32)})
        assert "\n" not in str(caught.value) and time.monotonic() - start < 30
        assert not Path(f"/proc/{signature.process.pid}").exists() or signature.process.poll() is not None
    finally:
        signature.close()


@pytest.mark.slow
def test_a_savedmodel_export_stops_at_the_reference_deadline(tmp_path, monkeypatch):
    """F8 through the export: the child's deadline covers its load too (lowered here to 3 s, below what
    loading TensorFlow alone takes), and counts from the export's start; one line, nothing written."""
    import time

    import hostile

    import toolkit.runtimes.keras2_child as child

    folder = hostile.spinning_savedmodel(tmp_path, 300_000)
    monkeypatch.setattr(child, "TOTAL_SECONDS", 3.0)
    start = time.monotonic()
    with pytest.raises(InputError, match=r"stopped, it ran past 3 s in all"):
        export_keras_model(folder, tmp_path / "spin.onnx")
    assert time.monotonic() - start < 60 and not (tmp_path / "spin.onnx").exists()
    # Counted from the export's start (its private copy), not the child's: the steps before count too.
    monkeypatch.setattr(child, "TOTAL_SECONDS", 90.0)
    monkeypatch.setattr(child, "EXPORT_SECONDS", 1.0)
    with pytest.raises(InputError, match=r"'spin_300000': stopped, it ran past 1 s from the export's start"):
        export_keras_model(folder, tmp_path / "spin.onnx")
    assert not (tmp_path / "spin.onnx").exists()


def test_a_racing_local_user_cannot_get_a_symlink_target_into_the_private_copy(tmp_path):
    """F9: `nobody`, who can write the SavedModel folder, swaps `keras_metadata.pb` between a regular file
    and a symlink to a root-only secret while lstm-onnx copies the folder again and again. Before, 3-5 copies
    of 300 held the secret; now every entry is opened by descriptor with O_NOFOLLOW and checked against its
    `lstat`: a copy holds the genuine file or is refused in one line."""
    import os
    import shutil
    import tempfile
    import threading

    from conftest import run_as_nobody

    from toolkit.safety.private import PrivateCopy

    secret = tmp_path / "secret"
    secret.write_bytes(b"root-only secret " * 8)
    secret.chmod(0o600)
    folder = Path(tempfile.mkdtemp(prefix="lstm-onnx-victim-"))
    try:
        (folder / "variables").mkdir()
        (folder / "variables" / "variables.index").write_bytes(b"index")
        (folder / "saved_model.pb").write_bytes(b"graph")
        (folder / "keras_metadata.pb").write_bytes(b"genuine keras metadata")
        folder.chmod(0o777)  # writable by the other user: the attack's premise
        answer: dict = {}
        swapper = threading.Thread(target=lambda: answer.update(run_as_nobody("swap", folder, "keras_metadata.pb",
                                                                               secret, 4.0)))
        swapper.start()
        copies, refused, leaked = 0, [], 0
        while swapper.is_alive():
            try:
                copy = PrivateCopy(folder, DEFAULT_LIMITS)
            except ModelLoadError as exc:
                refused.append(str(exc))
                continue
            leaked += b"secret" in (copy.path / "keras_metadata.pb").read_bytes()
            copies += 1
            copy.close()
        swapper.join()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert answer["uid"] != os.getuid() and answer["swaps"] > 100, answer
    assert leaked == 0 and copies + len(refused) > 100, (copies, len(refused))
    assert refused and all(len(message.splitlines()) == 1 and message.startswith("Expected ") for message in refused)
    print(f"{answer['swaps']} swaps; {copies} copies, all genuine; {len(refused)} refused")


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
def test_a_killed_export_leaves_no_private_copy_behind(keras2_models, tmp_path, monkeypatch, sig):
    """F11: the private copy (up to 2 GiB) of an export ended by a signal. SIGTERM unwinds and removes it at
    once; SIGKILL cannot, so the next copy removes the copies of dead owners, as Chromium profiles and serve
    workspaces are removed. A live owner's copy is left alone."""
    import os
    import signal
    import tempfile
    import time

    from toolkit.safety.private import PrivateCopy

    temp = tmp_path / "tmp"
    temp.mkdir()
    env = dict(os.environ, TMPDIR=str(temp), PYTHONPATH=str(ROOT))
    export = subprocess.Popen([sys.executable, "-m", "toolkit.cli", "export", str(keras2_models / "post_case3.h5"),
                               "-o", str(tmp_path / "x.onnx")], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not list(temp.glob(f"lstm-onnx-keras2-{export.pid}-*/post_case3.h5")) and export.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        export.send_signal(getattr(signal, sig))
        _, err = export.communicate(timeout=60)
    finally:
        if export.poll() is None:
            export.kill()
            export.wait()
    left = list(temp.glob("lstm-onnx-keras2-*"))
    if sig == "SIGTERM":
        assert export.returncode == 128 + signal.SIGTERM and b"Traceback" not in err, err[-2000:]
        assert left == []
        return
    assert export.returncode == -signal.SIGKILL and len(left) == 1  # what a SIGKILL leaves
    mine = temp / f"lstm-onnx-keras2-{os.getpid()}-alive"  # a running owner's copy: kept
    mine.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    PrivateCopy(keras2_models / "post_case3.h5", DEFAULT_LIMITS).close()
    assert list(temp.glob("lstm-onnx-keras2-*")) == [mine]


# ------------------------------------------------------------------ Lambda layers of SavedModels, float64

LAMBDAS = {"lambda_affine": (["lstm_sequence", "lstm_state_h", "lstm_state_c"], {"LSTM": 1}),
           "lambda_tf_ops": (["dense_1_output"], {"GRU": 1})}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(LAMBDAS))
def test_savedmodel_lambda_is_converted_from_its_traced_graph(keras2_models, name, tmp_path, monkeypatch):
    """The Lambda's traced TensorFlow graph, converted by tf2onnx, between fused recurrent ops; its Python
    function (which creates the marker file whenever it runs) never runs."""
    marker = tmp_path / "lambda_ran"
    monkeypatch.setenv("LSTM_ONNX_LAMBDA_MARKER", str(marker))
    result = export_keras_model(keras2_models / f"{name}_savedmodel", tmp_path / f"{name}.onnx")
    names, fused = LAMBDAS[name]
    assert result.parity and not result.warnings
    assert [o.name for o in result.outputs] == names
    assert result.fused_ops == fused and not any(result.op_counts.get(op) for op in LOOP_OPS)
    check_against_tf_keras(result.model, keras2_models, name, names)
    assert "serving signature" in read_source(result.model)["reference"]
    assert not marker.exists()


@pytest.mark.slow
def test_the_lambda_marker_shows_a_python_run(keras2_models, tmp_path):
    """The control for the test above: tf.keras' own loader rebuilds the Lambda from its bytecode, and
    calling it creates the marker."""
    marker = tmp_path / "lambda_ran"
    code = ("import sys, numpy as np, tf_keras\n"
            "m = tf_keras.models.load_model(sys.argv[1])\n"
            "m(np.ones((1, 4), np.int32))\n")
    done = subprocess.run([sys.executable, "-c", code, str(keras2_models / "lambda_affine_savedmodel")], timeout=300,
                          capture_output=True, text=True, env={**os.environ, "LSTM_ONNX_LAMBDA_MARKER": str(marker)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert marker.exists()


def test_a_lambda_with_an_op_outside_the_allowlist_is_refused_naming_it(keras2_models, tmp_path):
    out = tmp_path / "p.onnx"
    done = cli_export(keras2_models / "lambda_prints_savedmodel", out)
    assert done.exit_code != 0 and "Traceback" not in done.output
    lines = done.output.strip().splitlines()
    assert len(lines) == 1 and "Lambda layer 'lambda" in lines[0] and "op 'PrintV2'" in lines[0]
    assert "rewrite the Lambda" in lines[0] and not out.exists()


@pytest.mark.slow
def test_a_lambda_tf2onnx_cannot_convert_is_refused_naming_the_op(keras2_models, tmp_path):
    out = tmp_path / "l2.onnx"
    done = cli_export(keras2_models / "lambda_l2loss_savedmodel", out)
    assert done.exit_code != 0 and "Traceback" not in done.output and len(done.output.strip().splitlines()) == 1
    assert "Lambda layer 'lambda" in done.output and "op 'L2Loss'" in done.output and "rewrite the Lambda" in done.output
    assert not out.exists()


def test_a_lambda_in_an_h5_stays_refused(keras2_models, tmp_path):
    done = cli_export(keras2_models / "lambda_affine.h5", tmp_path / "l.onnx")
    assert done.exit_code != 0 and len(done.output.strip().splitlines()) == 1
    assert "Lambda layer 'lambda'" in done.output and "bytecode" in done.output


@pytest.mark.slow
@pytest.mark.parametrize("name", ["float64_input", "float64_layers"])
def test_float64_savedmodel_keeps_its_input_dtype_and_casts_where_keras_does(keras2_models, name, tmp_path):
    """A float64 input keeps its dtype; a float32 layer reads it cast (Keras' autocast), a float64 layer
    runs as a float32 op between Casts (ONNX Runtime's CPU LSTM/GRU run float only), and says so."""
    result = export_keras_model(keras2_models / f"{name}_savedmodel", tmp_path / f"{name}.onnx")
    assert result.parity
    graph = result.model.graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    output = onnx.TensorProto.DOUBLE if name == "float64_layers" else onnx.TensorProto.FLOAT
    assert graph.output[0].type.tensor_type.elem_type == output
    inferred = onnx.shape_inference.infer_shapes(result.model).graph
    types = {v.name: v.type.tensor_type.elem_type for v in list(inferred.value_info) + list(graph.input)}
    for node in graph.node:
        if node.op_type in ("LSTM", "GRU"):
            assert types[node.input[0]] == onnx.TensorProto.FLOAT
    notes = " ".join(result.notes)
    assert ("float32 LSTM between Casts" in notes) == (name == "float64_layers")
# ------------------------------------------------------------------ Keras 2 meanings (issues 24 and 25)
# Files in forms older Keras wrote (`save_old_forms`): model -> (graph outputs, fused ops, what the
# reference label says). Their recorded outputs are tf.keras' predict on the model before its config was
# rewritten into the older form, i.e. the meaning the older Keras gave the file.
OLD_FORMS = {
    "keras20_recurrent": (["dense_1_output", "time_distributed_output"], {"LSTM": 1, "GRU": 2, "RNN": 1},
                          "Keras 2.0.8's defaults recurrent_activation='hard_sigmoid', reset_after=False filled in"),
    "keras20_embedding": (["dense_output"], {"LSTM": 2, "GRU": 1}, "tf.keras cannot build the file as written"),
    "seq2seq": (["dense_output", "decoder_state_h", "decoder_state_c", "rnn_decoder_last"], {"LSTM": 2, "RNN": 1},
                "from the file's config and weights"),
    "seq2seq_kwargs": (["dense_output", "decoder_state_h", "decoder_state_c", "rnn_decoder_last"],
                       {"LSTM": 2, "RNN": 1}, "from the file's config and weights"),
    "state_inputs": (["dense_output"], {"LSTM": 1, "GRU": 1}, "from the file's config and weights"),
    "masked_decoder": (["dense_output"], {"LSTM": 2}, "from the file's config and weights"),
    # Keras 1.2's layout: Sequential as a list, output_dim/inner_activation/dropout_W..., per-gate weights
    "keras1_recurrent": (["dense_1_output"], {"LSTM": 2, "GRU": 1, "RNN": 1},
                         "LSTM 'lstm_1': Keras 1 arguments ['output_dim', 'inner_activation'"),
}


@pytest.mark.parametrize("name", sorted(OLD_FORMS))
def test_older_keras_forms_export_fused_named_and_equal_to_the_original(keras2_models, name):
    """Keras 2's hard_sigmoid (and the recurrent defaults of Keras 2.0-2.2), GaussianNoise(1.5), Keras 2.0's
    int32 Embedding and Merge, seq2seq decoders given their encoder's states (as one node of three tensors,
    or as tf.keras 2.0-2.3's kwargs) and initial states that are model inputs: written, fused, named, and
    equal to tf.keras' predict on the original."""
    result = export_keras_model(keras2_models / f"{name}.h5", keras2_models / f"{name}.onnx")
    names, fused, label = OLD_FORMS[name]
    assert result.parity and not result.warnings
    assert [o.name for o in result.outputs] == names
    assert result.fused_ops == fused and not any(result.op_counts.get(op) for op in LOOP_OPS)
    check_against_tf_keras(result.model, keras2_models, name, names)
    assert label in read_source(result.model)["reference"]


def test_keras2_hard_sigmoid_is_fused_with_onnx_defaults_and_keras3s_would_be_wrong(keras2_models):
    """Every hard_sigmoid of the Keras 2.0.8 file is HardSigmoid(0.2, 0.5) in the ONNX ops; Keras 3's
    relu6(x + 3) / 6 in the same places differs from tf.keras by far more than any tolerance."""
    import keras

    from toolkit.models.keras2.activations import keras2_hard_sigmoid
    from toolkit.models.keras2.loader import load_keras2_model

    path = keras2_models / "keras20_recurrent.h5"
    result = export_keras_model(path, keras2_models / "hs.onnx")
    for node in result.model.graph.node:
        if node.op_type in ("LSTM", "GRU", "RNN"):
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            hard = [i for i, op in enumerate(attrs["activations"]) if op == b"HardSigmoid"]
            assert hard and all(abs(attrs["activation_alpha"][i] - 0.2) < 1e-7 for i in range(len(hard)))
    loaded = load_keras2_model(path, keras2_format(path), DEFAULT_LIMITS)
    loaded.close()
    swapped = 0
    for layer in loaded.model._flatten_layers():
        owner = getattr(layer, "cell", layer)  # a recurrent layer's activations are its cell's
        for attr in ("activation", "recurrent_activation"):
            if getattr(owner, attr, None) is keras2_hard_sigmoid:
                setattr(owner, attr, keras.activations.hard_sigmoid)
                swapped += 1
    assert swapped >= 8  # LSTM, 2 GRU x 2, SimpleRNN x 2 directions x 2, Dense x 2, Activation
    feeds, expected = recorded(keras2_models, "keras20_recurrent")
    wrong = loaded.model.predict(feeds["signal"], verbose=0)
    assert max(float(np.max(np.abs(w - e))) for w, e in zip(wrong, expected)) > 1e-3


def test_keras3_hard_sigmoid_keeps_keras3s_meaning(tmp_path):
    """A Keras 3 model's hard_sigmoid is still relu6(x + 3) / 6: HardSigmoid(alpha=1/6)."""
    import keras

    from toolkit.export.exporter import export_model

    x = keras.Input((3, 2))
    model = keras.Model(x, keras.layers.LSTM(2, recurrent_activation="hard_sigmoid")(x))
    lstm = next(n for n in export_model(model).model.graph.node if n.op_type == "LSTM")
    alphas = next(onnx.helper.get_attribute_value(a) for a in lstm.attribute if a.name == "activation_alpha")
    assert abs(alphas[0] - 1 / 6) < 1e-7


@pytest.mark.parametrize("name, needle", [
    ("time_major", "LSTM 'lstm' time_major=True"),
    ("conv_lstm", "ConvLSTM2D layer 'conv_lstm2d' (convolutional recurrent layers are not supported"),
])
def test_keras2_forms_lstm_onnx_does_not_export_are_refused_in_one_line(keras2_models, tmp_path, name, needle):
    out = tmp_path / f"{name}.onnx"
    done = cli_export(keras2_models / f"{name}.h5", out)
    assert done.exit_code != 0 and "Traceback" not in done.output
    lines = done.output.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], done.output
    assert not out.exists()


def test_without_tf_keras_a_keras2_file_is_refused_never_checked_against_its_translation(keras2_models, tmp_path):
    """tf_keras hidden from the import system (no mock of TensorFlow): one line saying how to install it."""
    out = tmp_path / "x.onnx"
    hide = ("import sys; sys.modules['tf_keras'] = None; sys.argv[0] = 'lstm-onnx'; "
            "from toolkit.cli import cli; cli()")
    done = subprocess.run([sys.executable, "-c", hide, "export", str(keras2_models / "keras20_recurrent.h5"),
                           "-o", str(out)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() + done.stdout.splitlines() if line.strip()]
    message = next(line for line in lines if "tf-keras" in line)
    assert 'pip install --no-deps "tf-keras==2.21.*"' in message and "lstm-onnx setup --runtimes tf-keras" in message
    assert "Traceback" not in done.stderr and not out.exists()


@pytest.mark.slow
def test_stream_and_carried_calls_of_a_keras2_file_run_against_the_original(keras2_models, tmp_path):
    """verify --stream compares with tf.keras on the original and says so; tf.keras carries a stateful
    model's states from call to call, as the export's consecutive calls are checked against."""
    from toolkit.runtimes.keras2 import load_reference

    out = tmp_path / "s.onnx"
    source = keras2_models / "masking_simple_rnn.h5"
    export_keras_model(source, out, state_io=True).save(out)
    done = CliRunner().invoke(cli, ["verify", str(out), "--keras", str(source), "--stream", "2"])
    assert done.exit_code == 0, done.output
    assert "vs tf.keras]" in done.output and "vs keras]" not in done.output
    reference = load_reference(keras2_models / "stateful_lstm.h5", DEFAULT_LIMITS)
    feeds, _ = recorded(keras2_models, "stateful_lstm")
    carrying = reference.carrying()
    first, second = carrying.run(feeds), carrying.run(feeds)
    assert_close(first[reference.output_names[0]], reference.run(feeds)[reference.output_names[0]])
    assert float(np.max(np.abs(first[reference.output_names[0]] - second[reference.output_names[0]]))) > 1e-4
    # The export's own consecutive calls: tf.keras carries them for an .h5; a SavedModel's signature zeroes
    # its states on every call, so those calls are the translation's, and their labels say so.
    h5 = export_keras_model(keras2_models / "stateful_lstm.h5", tmp_path / "h5.onnx").parity.carried_calls()
    saved = export_keras_model(keras2_models / "stateful_lstm_savedmodel", tmp_path / "sm.onnx").parity.carried_calls()
    assert len(h5) == len(saved) == 3 and all(h5) and all(saved)
    assert not any("translation" in call.label for call in h5)
    assert all("vs the Keras 3 translation (the SavedModel's serving signature" in call.label for call in saved)


def test_an_h5_written_by_keras3_keeps_keras3s_meaning_against_keras3s_own_loader(tmp_path):
    """Keras 3's legacy .h5 is routed by its keras_version: no Keras 2 translation (its hard_sigmoid is
    Keras 3's, HardSigmoid alpha 1/6), and the reference is Keras 3's own loader on the file."""
    import keras

    x = keras.Input((4, 3), name="x")
    seq, h, c = keras.layers.LSTM(3, recurrent_activation="hard_sigmoid", return_sequences=True, return_state=True)(x)
    model = keras.Model(x, [seq, h, c])
    rng = np.random.default_rng(3)
    model.set_weights([rng.uniform(-2, 2, w.shape).astype("float32") for w in model.get_weights()])
    path = tmp_path / "keras3.h5"
    model.save(path)
    result = export_keras_model(path, tmp_path / "keras3.onnx")
    assert result.parity and result.fused_ops == {"LSTM": 1}
    source = read_source(result.model)
    assert "own loader on the file (written by Keras 3." in source["reference"]
    assert source["format"] == "Keras 3 HDF5 (.h5)"
    lstm = next(n for n in result.model.graph.node if n.op_type == "LSTM")
    alphas = next(onnx.helper.get_attribute_value(a) for a in lstm.attribute if a.name == "activation_alpha")
    assert abs(alphas[0] - 1 / 6) < 1e-7
    feeds = {"x": rng.uniform(-3, 3, (2, 4, 3)).astype("float32")}
    actual = OnnxRunner(result.model).run(feeds)
    for name, expected in zip([o.name for o in result.outputs], model.predict(feeds["x"], verbose=0)):
        assert_close(actual[name], expected, name)


def test_a_tf_keras_archive_saved_on_windows_loads_its_weights_by_their_paths(keras2_models, tmp_path):
    """tf.keras 2.13-2.15 on Windows wrote weight groups named 'layers\\lstm\\cell': read with '/', exact
    against tf.keras' recorded outputs, and the reference label says tf.keras cannot load it as written."""
    import io
    import zipfile

    import h5py

    def windows_name(name: str) -> str:  # 'layers/lstm/cell/vars/0' -> 'layers\\lstm\\cell/vars/0'
        head, vars_, tail = name.partition("/vars")
        return head.replace("/", "\\") + vars_ + tail

    def windows(data: bytes) -> bytes:
        items: dict = {}
        with h5py.File(io.BytesIO(data), "r") as f:
            f.visititems(lambda name, item: items.__setitem__(
                windows_name(name), item[()] if isinstance(item, h5py.Dataset) else None))
        out = io.BytesIO()
        with h5py.File(out, "w") as f:
            for name, value in items.items():
                f.require_group(name) if value is None else f.create_dataset(name, data=value)
        return out.getvalue()

    crafted = tmp_path / "windows.keras"
    with zipfile.ZipFile(keras2_models / "post_case3.keras") as source, zipfile.ZipFile(crafted, "w") as out:
        for info in source.infolist():
            data = source.read(info.filename)
            out.writestr(info, windows(data) if info.filename == "model.weights.h5" else data)
    with zipfile.ZipFile(crafted) as archive, h5py.File(io.BytesIO(archive.read("model.weights.h5"))) as f:
        assert any("\\" in key for key in f.keys())
    names, _ = EXPECTED["post_case3"]
    result = export_keras_model(crafted, tmp_path / "windows.onnx")
    assert result.parity and result.fused_ops == {"LSTM": 2}
    check_against_tf_keras(result.model, keras2_models, "post_case3", names)
    assert "Windows paths" in read_source(result.model)["reference"]


# ------------------------------------------------- architecture JSON + weights-only .h5 (Keras 1 and 2 pairs)
@pytest.mark.parametrize("name, outputs, fused", [("json_pair", ["dense_output"], {"LSTM": 1, "GRU": 1}),
                                                  ("keras1_recurrent", ["dense_1_output"], {"LSTM": 2, "GRU": 1, "RNN": 1}),
                                                  ("keras1_embedding", ["timedistributed_1_output"], {"GRU": 1}),
                                                  ("bidirectional_first", ["dense_output"], {"LSTM": 1, "GRU": 1})])
def test_an_architecture_json_with_its_weights_exports_equal_to_the_original(keras2_models, name, outputs, fused):
    """The pair Keras 1 and 2 tutorials published (`model.to_json()` + `model.save_weights`): the config from
    the JSON, the weights from the .h5 (Keras 1's per-gate arrays joined), checked against tf.keras'
    model_from_json + load_weights, and equal to tf.keras' predict on the model that wrote them."""
    result = export_keras_model(keras2_models / f"{name}.json", keras2_models / f"{name}.onnx",
                                weights=keras2_models / f"{name}_weights.h5")
    assert result.parity and [o.name for o in result.outputs] == outputs and result.fused_ops == fused
    check_against_tf_keras(result.model, keras2_models, name, outputs)
    source = read_source(result.model)
    assert source["keras_file"] == f"{name}.json + {name}_weights.h5"
    assert "architecture JSON and the weights file" in source["reference"]


def test_a_first_bidirectional_whose_input_shape_tf_keras_wrote_on_the_wrapped_layer_exports(keras2_models):
    """tf.keras saves `Bidirectional(LSTM(..., input_shape=s))` first in a Sequential with the shape inside the
    wrapped layer's config only; Keras 3's LSTM refuses it there, so it is read as the wrapper's input shape."""
    result = export_keras_model(keras2_models / "bidirectional_first.h5", keras2_models / "bidirectional_first.onnx")
    assert result.parity and result.fused_ops == {"LSTM": 1, "GRU": 1}
    check_against_tf_keras(result.model, keras2_models, "bidirectional_first", ["dense_output"])


@pytest.mark.parametrize("args, expected", [
    (["json_pair.json"], "Expected --weights with an architecture JSON"),
    (["--weights", "json_pair_weights.h5"], "Expected --weights with MODEL"),
    (["json_pair_weights.h5"], "with weights only (model.save_weights; give its architecture JSON"),
    (["json_pair.json", "--weights", "json_pair.h5"], "holding its own model_config"),
    (["json_pair_weights.h5", "--weights", "json_pair_weights.h5"], "Expected an architecture JSON file"),
    (["json_pair.json", "--weights", "json_pair.json"], "Expected --weights to name an HDF5 weights file"),
])
def test_json_and_weights_mistakes_are_one_line_and_write_nothing(keras2_models, tmp_path, args, expected):
    out = tmp_path / "out.onnx"
    done = subprocess.run([sys.executable, "-m", "toolkit.cli", "export", *args, "-o", str(out)], cwd=keras2_models,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and expected in done.stderr, done.stderr[-500:]
    assert len(done.stderr.strip().splitlines()) == 1 and not out.exists()


def test_a_keras3_json_and_weights_pair_is_refused_naming_the_keras_file_instead(tmp_path):
    import keras

    model = keras.Sequential([keras.Input((5, 3)), keras.layers.LSTM(4), keras.layers.Dense(2)])
    (tmp_path / "arch.json").write_text(model.to_json())
    model.save_weights(tmp_path / "w.weights.h5")
    with pytest.raises(ModelLoadError, match="Keras 3's .weights.h5 layout: export the model's .keras file"):
        export_keras_model(tmp_path / "arch.json", tmp_path / "x.onnx", weights=tmp_path / "w.weights.h5")


def test_verify_takes_an_architecture_json_with_its_weights(keras2_models, tmp_path):
    """`verify --keras model.json --weights w.h5` checks an export against tf.keras' model_from_json +
    load_weights, in ONNX Runtime and Node; --weights without --keras, and a JSON alone, are one line."""
    from toolkit.checking.verify import verify_export

    out = tmp_path / "pair.onnx"
    export_keras_model(keras2_models / "json_pair.json", out, weights=keras2_models / "json_pair_weights.h5").save(out)
    outcome = verify_export(out, keras2_models / "json_pair.json", ["onnxruntime", "onnxruntime-node"],
                            weights=keras2_models / "json_pair_weights.h5")
    assert outcome and "architecture JSON and the weights file" in outcome.reference
    with pytest.raises(InputError, match="Expected --weights with --keras"):
        verify_export(out, None, weights=keras2_models / "json_pair_weights.h5")
    with pytest.raises(InputError, match="Expected --weights with an architecture JSON"):
        verify_export(out, keras2_models / "json_pair.json")
