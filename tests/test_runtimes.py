"""The runtimes an export deploys to, run for real: onnxruntime-node and onnxruntime-web (WASM) under
Node, onnxruntime-web in headless Chromium, and OpenVINO (f32, and its default precision as a tier).

Each computes the committed seed exports to Keras' numbers at the default tolerances; OpenVINO's
`problem` names each defect it was measured with (and only those: a model it does not flag must match);
every runner's `close()` leaves no process, server or profile behind. Nothing is skipped for a missing
package: `lstm-onnx setup` (scripts/setup_runtimes.sh) installs them all (README, .ci/run).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import run_as_nobody

from toolkit.checking.inputs import InputCase
from toolkit.checking.loop import compare_runners
from toolkit.checking.parity import check_parity
from toolkit.checking.results import compare_arrays
from toolkit.checking.streaming import StreamingRunner
from toolkit.errors import InputError, RuntimeFailure
from toolkit.export.exporter import export_model
from toolkit.export.suite import read_manifest
from toolkit.models.builder import StackConfig, build_stack, variant_config
from toolkit.onnxfile.metadata import metadata_value
from toolkit.process import LineProcess, live_group_members
from toolkit.runtimes import chromium, js
from toolkit.runtimes import openvino as ov_runtime
from toolkit.runtimes.base import open_or_failed
from toolkit.runtimes.keras import KerasRunner
from toolkit.runtimes.onnxrt import OnnxRunner
from toolkit.runtimes.registry import RUNTIMES, runtimes_named
from toolkit.runtimes.wire import decode_tensor, encode_tensor
from toolkit.tolerance import Tolerances

EXPORTED = Path(__file__).resolve().parent.parent / "exported"
ENTRIES = read_manifest(EXPORTED)["models"]
# The f32 runtimes that must compute Keras' numbers; openvino-bf16 is a tier of its own (below).
EXACT = ["onnxruntime-node", "onnxruntime-web", "chromium", "openvino"]
PROCESS_RUNTIMES = ["onnxruntime-node", "onnxruntime-web", "chromium"]


@pytest.fixture(scope="module")
def seed_models():
    """The Keras stack of each committed seed export, built fresh from its manifest config."""
    return {entry["case"]: build_stack(StackConfig(**entry["config"])) for entry in ENTRIES}


def _open(runtime: str, path: Path):
    return RUNTIMES[runtime].open(path, onnx.load(str(path)))


def _export(tmp_path: Path, name: str, **overrides) -> tuple[object, object, Path]:
    """A small real export of a builder variant, written to disk: (keras model, export result, path)."""
    keras_model = build_stack(variant_config(name, units=4, features=3, **overrides))
    result = export_model(keras_model)
    path = tmp_path / f"{name}.onnx"
    path.write_bytes(result.model.SerializeToString())
    return keras_model, result, path


def test_verify_registers_every_deploy_runtime_and_all_leaves_out_the_tiers():
    deploy = ["onnxruntime-node", "onnxruntime-web", "chromium", "openvino", "openvino-bf16"]
    assert [name for name in RUNTIMES if name in deploy] == deploy
    assert all(runtime.name == name for name, runtime in RUNTIMES.items())
    everything = [r.name for r in runtimes_named(["all"])]
    tiers = {"openvino-bf16", "onnxruntime-int8", "onnxruntime-float16"}
    assert {n for n, r in RUNTIMES.items() if r.tier} == tiers
    # A rewrite for some exports only (SimpleRNN's RNN op as Scan) is run where named, never in `all`.
    assert {n for n, r in RUNTIMES.items() if r.named_alone} == {"onnxruntime-scan"}
    assert everything == [n for n in RUNTIMES if n not in tiers | {"onnxruntime-scan"}]
    assert {"onnxruntime", "reference", "onnxruntime-node", "onnxruntime-web", "chromium", "openvino"} <= set(everything)
    with pytest.raises(InputError, match="or all. Received: \\['nodejs'\\]"):
        runtimes_named(["nodejs"])


def test_importing_the_runtimes_loads_neither_tensorflow_nor_openvino():
    code = ("import sys, toolkit.checking.loop, toolkit.runtimes.js, toolkit.runtimes.chromium, toolkit.runtimes.openvino; "
            "print(sorted(m for m in ('tensorflow', 'keras', 'openvino') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "int64", "int32", "bool", "uint8"])
def test_wire_form_round_trips(dtype):
    array = (np.arange(24).reshape(2, 3, 4) % 3).astype(dtype)
    spec = encode_tensor("x", array)
    back = decode_tensor(spec)
    assert back.dtype == array.dtype and back.shape == array.shape and np.array_equal(back, array)


@pytest.mark.parametrize("runtime", PROCESS_RUNTIMES)
def test_float16_crosses_the_wire_form_both_ways(runtime, tmp_path):
    """The one wire form carries float16 as its uint16 bits (a SavedModel signature's tensors travel in it
    too): an Identity model gives back exactly what it was fed, the largest finite float16 included."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "f16",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["batch", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["batch", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path = tmp_path / "f16.onnx"
    onnx.save(model, str(path))
    x = np.array([[1.5, -2.25, 65504.0], [1e-4, 3.0, -0.5]], np.float16)
    with _open(runtime, path) as runner:
        y = runner.run({"x": x})["y"]
    assert y.dtype == np.float16 and np.array_equal(y, x)


@pytest.mark.parametrize("runtime", EXACT)
@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e["case"])
def test_runtime_computes_the_seed_exports_to_keras_numbers(runtime, entry, seed_models):
    path = EXPORTED / entry["file"]
    names = [o["name"] for o in entry["outputs"]]
    with _open(runtime, path) as runner:
        assert runner.output_names == names
        report = check_parity(seed_models[entry["case"]], runner, names, Tolerances())
        assert report, report.failures()
        # And against ONNX Runtime in Python, on a batch no parity case uses.
        feeds = {"input": np.random.default_rng(5).standard_normal((6, 3, 1)).astype(np.float32)}
        ours = runner.run(feeds)
    reference = OnnxRunner(path).run(feeds)
    for name in names:
        assert compare_arrays(name, reference[name], ours[name], Tolerances().base), name


def test_openvino_runs_f32_and_its_default_tier_keeps_the_plugins_precision():
    import openvino

    path = EXPORTED / ENTRIES[0]["file"]
    with _open("openvino", path) as exact, _open("openvino-bf16", path) as tier:
        assert exact.precision == "<Type: 'float32'>"
        assert tier.precision == str(openvino.Core().get_property("CPU", "INFERENCE_PRECISION_HINT"))
        feeds = {"input": np.random.default_rng(1).standard_normal((4, 3, 1)).astype(np.float32)}
        reference = OnnxRunner(path).run(feeds)
        name = exact.output_names[0]
        error = float(np.abs(tier.run(feeds)[name] - reference[name]).max())
    if tier.precision == str(openvino.Type.bf16):  # this CPU computes bf16 by default: measured 5e-4 here
        assert error > Tolerances().base.atol * 10


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e["case"])
def test_openvino_finds_no_problem_in_an_unmasked_export(entry):
    assert ov_runtime.problem(onnx.load(str(EXPORTED / entry["file"]))) is None


def test_openvino_flags_a_masked_export_and_really_computes_it_wrong(tmp_path):
    keras_model, result, path = _export(tmp_path, "lstm_embedding_mask", layers=1)
    problem = ov_runtime.problem(result.model)
    assert problem and "ignores sequence_lens in a forward LSTM" in problem
    with _open("openvino", path) as runner:
        report = check_parity(keras_model, runner, [o.name for o in result.outputs], Tolerances())
    assert not report  # the rule is there because OpenVINO's numbers are wrong, not as a precaution
    assert max(s.max_abs for s in report.summaries()) > 0.01


def test_openvino_passes_a_masked_bidirectional_gru_it_computes_right(tmp_path):
    keras_model, result, path = _export(tmp_path, "gru", layers=1, masking="embedding", bidirectional="concat")
    assert ov_runtime.problem(result.model) is None
    with _open("openvino", path) as runner:
        report = check_parity(keras_model, runner, [o.name for o in result.outputs], Tolerances())
    assert report, report.failures()


def test_openvino_flags_hard_sigmoid_which_it_refuses(tmp_path):
    _, result, path = _export(tmp_path, "lstm_hard_sigmoid", layers=1)
    assert "refuses the activation HardSigmoid in LSTM" in ov_runtime.problem(result.model)
    with pytest.raises(RuntimeFailure, match="Unsupported activation function"):
        _open("openvino", path)


def _reduction(op_type: str, opset: int) -> onnx.ModelProto:
    from onnx import TensorProto, helper

    inputs, initializers, attributes = ["x"], [], {"keepdims": 1}
    if opset >= 18:
        inputs.append("axes")
        initializers.append(helper.make_tensor("axes", TensorProto.INT64, [1], [-1]))
    else:
        attributes["axes"] = [-1]
    graph = helper.make_graph([helper.make_node(op_type, inputs, ["y"], **attributes)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 5, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


@pytest.mark.parametrize("op_type,opset,flagged", [("ReduceL1", 17, True), ("ReduceLogSumExp", 14, True),
                                                   ("ReduceL1", 18, False), ("ReduceMax", 17, False)])
def test_openvino_reduction_rule_matches_what_openvino_computes(tmp_path, op_type, opset, flagged):
    model = _reduction(op_type, opset)
    assert (ov_runtime.problem(model) is not None) == flagged
    path = tmp_path / "reduce.onnx"
    path.write_bytes(model.SerializeToString())
    x = np.random.default_rng(2).standard_normal((4, 5, 3)).astype(np.float32)
    want = OnnxRunner(model).run({"x": x})["y"]
    with _open("openvino", path) as runner:
        got = runner.run({"x": x})["y"]
    assert (got.shape != want.shape) == flagged  # OpenVINO reduces over every axis: (1, 1, 1)


@pytest.mark.parametrize("runtime", PROCESS_RUNTIMES)
def test_close_leaves_no_process_behind(runtime):
    runner = _open(runtime, EXPORTED / ENTRIES[0]["file"])
    pid = runner.pid
    assert live_group_members(pid), "the runtime's process should run while the runner is open"
    port = runner.server.server_address[1] if runtime == "chromium" else None
    profile = Path(runner.profile) if runtime == "chromium" else None
    runner.close()
    runner.close()  # idempotent
    assert live_group_members(pid) == []
    assert not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    if port is not None:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        assert not profile.exists()
    with pytest.raises(InputError, match="after close"):
        runner.run({"input": np.zeros((1, 3, 1), np.float32)})


@pytest.mark.parametrize("runtime", PROCESS_RUNTIMES)
def test_a_runtimes_error_is_one_line_and_the_runner_survives_it(runtime):
    with _open(runtime, EXPORTED / ENTRIES[0]["file"]) as runner:
        wrong = {"input": np.zeros((1, 3, 1), np.float64)}
        with pytest.raises(InputError, match="Expected input 'input' of dtype float32. Received: dtype float64"):
            runner.run(wrong)  # the contract checks feeds before any runtime sees them
        with pytest.raises(RuntimeFailure, match=r"^Expected a run in .*Received its error: .*double") as caught:
            runner._run(wrong, 60)  # past the checks: the runtime's own error, as one line
        assert "\n" not in str(caught.value)
        assert runner.run({"input": np.zeros((1, 3, 1), np.float32)})


def test_a_missing_node_is_a_one_line_error_that_says_what_to_install(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(InputError, match="Expected Node.js 20.*lstm-onnx setup --runtimes node,web"):
        _open("onnxruntime-node", EXPORTED / ENTRIES[0]["file"])
    with pytest.raises(InputError, match="Expected a headless Chromium"):
        _open("chromium", EXPORTED / ENTRIES[0]["file"])


def test_a_model_a_js_runtime_cannot_load_is_a_one_line_error(tmp_path):
    broken = onnx.load(str(EXPORTED / ENTRIES[0]["file"]))
    broken.graph.node[0].op_type = "NoSuchOp"
    path = tmp_path / "broken.onnx"
    path.write_bytes(broken.SerializeToString())
    with pytest.raises(RuntimeFailure, match="^Expected onnxruntime-node to load broken.onnx"):
        js.NodeRunner(path, broken, "onnxruntime-node")
    assert chromium.BROWSERS[0] == "chromium-headless-shell"


# ------------------------------------------------------------ the state form every runtime honours

STATE_RUNTIMES = ["onnxruntime", "onnxruntime-node", "onnxruntime-web", "chromium", "openvino"]


@pytest.fixture(scope="module")
def state_io_stack(tmp_path_factory):
    """A --state-io export of an LSTM -> GRU stack (variable length), written to disk."""
    keras_model = build_stack(variant_config("lstm", cell="lstm,gru", layers=2, units=4, features=3))
    result = export_model(keras_model, state_io=True)
    path = tmp_path_factory.mktemp("state_io") / "lstm_gru.onnx"
    path.write_bytes(result.model.SerializeToString())
    return keras_model, result, path


def test_state_inputs_are_plain_graph_inputs_with_their_shapes_in_the_metadata(state_io_stack):
    _, result, _ = state_io_stack
    model = result.model
    states = ["lstm_1_initial_state_h", "lstm_1_initial_state_c", "gru_2_initial_state_h"]
    assert [v.name for v in model.graph.input] == ["input"] + states
    assert not {t.name for t in model.graph.initializer} & set(states)  # no default a runtime would trip on
    recorded = json.loads(metadata_value(model, "state_inputs"))
    assert recorded == [{"name": name, "dtype": "float32", "shape": ["batch", 4]} for name in states]
    assert set(json.loads(metadata_value(model, "state_map"))) == set(states)


LOAD = "import onnxruntime as ort, sys; ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])"


def _load_log(path: Path) -> str:
    """What ONNX Runtime prints while loading a model with its default log level (warnings included)."""
    return subprocess.run([sys.executable, "-c", LOAD, str(path)], capture_output=True, text=True, check=True).stderr


def test_loading_a_state_io_export_prints_no_onnx_runtime_warning(state_io_stack, tmp_path):
    _, result, path = state_io_stack
    assert _load_log(path) == ""
    # The old form (a same-name zeros initializer per state) warned on every load: the check would see it.
    old = onnx.ModelProto()
    old.CopyFrom(result.model)
    old.graph.initializer.append(onnx.numpy_helper.from_array(np.zeros((1, 4), np.float32), "gru_2_initial_state_h"))
    (tmp_path / "old.onnx").write_bytes(old.SerializeToString())
    assert "appears in graph inputs" in _load_log(tmp_path / "old.onnx")


@pytest.mark.parametrize("runtime", STATE_RUNTIMES)
def test_every_runtime_lists_and_uses_a_fed_state(runtime, state_io_stack):
    _, result, path = state_io_stack
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 5, 3)).astype(np.float32)
    state = {"gru_2_initial_state_h": rng.standard_normal((2, 4)).astype(np.float32)}
    reference = OnnxRunner(result.model)
    with _open(runtime, path) as runner:
        zeros, fed = runner.run({"input": x}), runner.run({"input": x, **state})
    assert not np.allclose(zeros["gru_2_sequence"], fed["gru_2_sequence"], atol=1e-3)  # the state was used
    expected = reference.run({"input": x, **state})
    for name in result.model.graph.output:
        assert compare_arrays(name.name, expected[name.name], fed[name.name], Tolerances().base), name.name


@pytest.mark.parametrize("runtime", STATE_RUNTIMES)
def test_a_state_io_stack_streams_in_uneven_chunks_to_keras(runtime, state_io_stack):
    keras_model, result, path = state_io_stack
    x = np.random.default_rng(4).standard_normal((3, 13, 3)).astype(np.float32)
    keras_names = [o.name for o in result.outputs][: len(keras_model.outputs)]
    with _open(runtime, path) as runner:
        streamed = StreamingRunner(runner, (3, 1, 5))  # feeds each chunk's states back through the state map
        report = compare_runners(KerasRunner(keras_model), [streamed], [InputCase("13 steps", {"input": x})],
                                 Tolerances(), keras_names)[streamed.name]
    assert report, report.failures()


# ------------------------------------------------------------ verify --runtimes and export --target


@pytest.fixture(scope="module")
def saved_variants(tmp_path_factory):
    """.keras files of small variants (built once), keyed by variant name."""
    folder = tmp_path_factory.mktemp("variants")
    paths = {}
    for name in ("lstm", "lstm_embedding_mask"):
        path = folder / f"{name}.keras"
        build_stack(variant_config(name, layers=1, units=4, features=3)).save(path)
        paths[name] = path
    return paths


@pytest.mark.slow
def test_verify_all_compares_every_runtime_with_keras_and_names_why_openvino_is_not_valid(saved_variants, tmp_path):
    from click.testing import CliRunner

    from toolkit.cli import cli

    onnx_file = tmp_path / "masked.onnx"
    exported = CliRunner().invoke(cli, ["export", str(saved_variants["lstm_embedding_mask"]), "-o", str(onnx_file)])
    assert exported.exit_code == 0, exported.output
    result = CliRunner().invoke(cli, ["verify", str(onnx_file), "--keras", str(saved_variants["lstm_embedding_mask"]),
                                      "--runtimes", "all", "--json"])
    payload = json.loads(result.output[result.output.index("{"):])
    statuses = {name: r["status"] for name, r in payload["runtimes"].items()}
    assert statuses == {"onnxruntime": "pass", "onnxruntime-extended": "pass", "onnxruntime-basic": "pass",
                        "onnxruntime-disabled": "pass", "reference": "not valid", "onnxruntime-node": "pass",
                        "onnxruntime-web": "pass", "chromium": "pass", "openvino": "not valid"}
    openvino_entry = payload["runtimes"]["openvino"]
    assert "ignores sequence_lens" in openvino_entry["reason"]
    node_entry = payload["runtimes"]["onnxruntime-node"]
    assert [o["status"] for o in node_entry["outputs"]] == ["pass"] * len(node_entry["outputs"]) != []
    text = CliRunner().invoke(cli, ["verify", str(onnx_file), "--keras", str(saved_variants["lstm_embedding_mask"]),
                                    "--runtimes", "openvino,onnxruntime-node"]).output
    assert "not valid: openvino ignores sequence_lens" in text


def test_export_refuses_before_writing_a_model_a_target_computes_wrong(saved_variants, tmp_path):
    from click.testing import CliRunner

    from toolkit.cli import cli

    masked, plain = saved_variants["lstm_embedding_mask"], saved_variants["lstm"]
    refused = CliRunner().invoke(cli, ["export", str(masked), "-o", str(tmp_path / "m.onnx"), "--target",
                                       "onnxruntime,openvino"])
    assert refused.exit_code == 1 and "Traceback" not in refused.output
    assert "Expected a model every --target runtime computes right. Received: not valid in openvino: openvino " \
           "ignores sequence_lens" in refused.output
    assert list(tmp_path.iterdir()) == []
    kept = CliRunner().invoke(cli, ["export", str(masked), "-o", str(tmp_path / "m.onnx"), "--target", "onnxruntime-web"])
    assert kept.exit_code == 0 and (tmp_path / "m.onnx").is_file()
    written = CliRunner().invoke(cli, ["export", str(plain), "-o", str(tmp_path / "p.onnx"), "--target", "all"])
    assert written.exit_code == 0 and (tmp_path / "p.onnx").is_file()
    unknown = CliRunner().invoke(cli, ["export", str(plain), "-o", str(tmp_path / "q.onnx"), "--target", "tvm"])
    # A malformed option, refused before the build (exit 2, as click's own).
    assert unknown.exit_code == 2 and "Expected runtimes among" in unknown.output and not (tmp_path / "q.onnx").exists()


def test_a_runtime_that_refuses_a_model_fails_in_verify_with_its_reason_and_the_others_go_on(tmp_path):
    good_path = EXPORTED / ENTRIES[1]["file"]
    broken = onnx.load(str(good_path))
    broken.graph.node[0].op_type = "NoSuchOp"  # a real refusal: onnxruntime-node cannot load it
    broken_path = tmp_path / "broken.onnx"
    broken_path.write_bytes(broken.SerializeToString())
    refused = open_or_failed("onnxruntime-node", RUNTIMES["onnxruntime-node"].open, broken_path, broken)
    names = [o["name"] for o in ENTRIES[1]["outputs"]]
    case = InputCase("batch 2", {"input": np.random.default_rng(6).standard_normal((2, 3, 1)).astype(np.float32)})
    with _open("onnxruntime-web", good_path) as web:
        reports = compare_runners(OnnxRunner(good_path), [refused, web], [case], Tolerances(), names)
    assert reports["onnxruntime-web"]
    assert not reports["onnxruntime-node"]
    assert "Expected onnxruntime-node to load broken.onnx" in reports["onnxruntime-node"].failures()[0]


# ------------------------------------------------------------ fixes: bf16 tier, stale answers, killed runs, mailbox


def test_the_bf16_tier_is_not_valid_where_openvino_runs_f32():
    import openvino

    path = EXPORTED / ENTRIES[0]["file"]
    f32_core = openvino.Core()  # what the plugin defaults to on a CPU without bf16 instructions
    f32_core.set_property("CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    assert ov_runtime.bf16_problem(f32_core) == "this CPU runs OpenVINO in f32"
    with pytest.raises(RuntimeFailure, match="Expected openvino-bf16 to compute in bf16. Received: this CPU runs"):
        ov_runtime.OpenVinoRunner(path, onnx.load(str(path)), "openvino-bf16",
                                  properties={"INFERENCE_PRECISION_HINT": "f32"})
    default_bf16 = openvino.Core().get_property("CPU", "INFERENCE_PRECISION_HINT") == openvino.Type.bf16
    assert (RUNTIMES["openvino-bf16"].problem(onnx.load(str(path))) is None) == default_bf16


@pytest.mark.parametrize("runtime", PROCESS_RUNTIMES)
def test_after_a_timeout_a_late_answer_is_never_taken_for_the_next_one(runtime):
    # 50000 rows: decoding, running and encoding them takes the runtime far longer than 1 ms (a small
    # batch can come back within the timeout when this test's thread is descheduled on a loaded machine).
    feeds = {"input": np.zeros((50_000, 3, 1), np.float32)}
    with _open(runtime, EXPORTED / ENTRIES[0]["file"]) as runner:
        with pytest.raises(RuntimeFailure, match="within 0.001 s"):
            runner.run(feeds, timeout=1e-3)  # the runtime answers later: that answer must not be used
        time.sleep(1.0)
        with pytest.raises(RuntimeFailure, match="answer in step. Received: no trustworthy answer since a request"):
            runner.run({"input": np.ones((1, 3, 1), np.float32)})


def test_a_line_that_is_not_json_is_a_one_line_runtime_failure():
    child = LineProcess([sys.executable, "-c", "import sys; sys.stdin.readline(); print('Segfault\\nat 0x0', flush=True)"],
                        "fake-runtime")
    try:
        with pytest.raises(RuntimeFailure, match=r"^Expected a JSON object line from fake-runtime. Received: .Segf") as caught:
            child.ask({"feeds": []}, timeout=30)
        assert "\n" not in str(caught.value)
    finally:
        child.stop()


KILLED_VERIFY = """
import contextlib, sys
from pathlib import Path
import onnx
from toolkit.runtimes.registry import RUNTIMES
path = Path(sys.argv[1])
with contextlib.ExitStack() as stack:  # as verify_runtimes holds its runners
    runners = [stack.enter_context(RUNTIMES[name].open(path, onnx.load(str(path))))
               for name in ("chromium", "onnxruntime-node")]
    print(runners[0].pid, runners[1].pid, runners[0].profile, flush=True)
    sys.stdin.read()
"""


def _gone(pids: list[int], seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not any(live_group_members(pid) for pid in pids):
            return True
        time.sleep(0.2)
    return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_killed_verify_leaves_no_browser_node_or_profile_behind(sig):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    verify = subprocess.Popen([sys.executable, "-c", KILLED_VERIFY, str(EXPORTED / ENTRIES[0]["file"])], env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        browser, node, profile = verify.stdout.readline().split()
        assert live_group_members(int(browser)) and live_group_members(int(node)) and Path(profile).is_dir()
        verify.send_signal(sig)
        verify.wait(60)
        assert _gone([int(browser), int(node)]), "a child outlived the killed verify"
        if sig == signal.SIGTERM:  # closed by the runners: nothing is left
            assert not Path(profile).exists()
        else:  # SIGKILL runs no code: the next start removes the dead run's profile
            assert Path(profile).is_dir() and Path(profile) in chromium.remove_stale_profiles()
            assert not Path(profile).exists()
    finally:
        if verify.poll() is None:
            verify.kill()
            verify.wait()


def _post(url: str, path: str, token: str | None) -> int:
    headers = {"Content-Type": "application/json", **({chromium.TOKEN_HEADER: token} if token is not None else {})}
    request = urllib.request.Request(url.split("?")[0].rstrip("/") + path, data=b'{"outputs": []}', headers=headers)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_chromium_mailbox_refuses_requests_without_the_runs_token():
    with _open("chromium", EXPORTED / ENTRIES[0]["file"]) as runner:
        assert "token=" in runner.url and runner.mailbox.token in runner.url
        assert runner.mailbox.token not in Path(f"/proc/{runner.pid}/cmdline").read_text()
        assert _post(runner.url, "/result", None) == 403
        assert _post(runner.url, "/result", "forged") == 403
        assert _post(runner.url, "/ready", "") == 403
        assert runner.mailbox.answers.empty()  # nothing forged reached the runner
        out = runner.run({"input": np.ones((2, 3, 1), np.float32)})
        assert list(out) == runner.output_names


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("runuser"), reason="runs the attacker as another user (root)")
def test_another_user_can_neither_forge_a_browser_result_nor_fetch_the_model():
    """Issue 18, before: the token was on Chromium's command line (readable in /proc), `/model.onnx` was
    served to anyone, and a POST was read whole before its token was checked."""
    with _open("chromium", EXPORTED / ENTRIES[0]["file"]) as runner:
        seen = run_as_nobody("browser", runner.server.server_address[1])
        assert seen["uid"] != os.getuid()
        assert runner.mailbox.token not in seen["tokens_seen"], "the run's token is readable in /proc"
        assert seen["model"] == seen["page"] == seen["next"] == seen["forge"] == 403, seen
        assert set(seen.get("forge_with_seen_token", [])) <= {403}
        assert seen["flood"] in (403, "ConnectionResetError", "BrokenPipeError"), seen["flood"]
        assert runner.mailbox.answers.empty()  # nothing forged reached the runner
        out = runner.run({"input": np.ones((2, 3, 1), np.float32)})
        assert list(out) == runner.output_names


def test_the_chromium_mailbox_bounds_a_body_before_reading_it():
    with _open("chromium", EXPORTED / ENTRIES[0]["file"]) as runner:
        connection = http.client.HTTPConnection(*runner.server.server_address[:2], timeout=10)
        connection.putrequest("POST", "/result")
        connection.putheader(chromium.TOKEN_HEADER, runner.mailbox.token)
        connection.putheader("Content-Length", str(chromium.MAX_BODY + 1))
        connection.endheaders()
        assert connection.getresponse().status == 413  # answered from the headers: no body was sent
        connection.close()
        assert runner.mailbox.answers.empty()


def test_chromium_that_fails_to_start_says_so_and_leaves_nothing(tmp_path, monkeypatch):
    not_executable = tmp_path / "chromium"
    not_executable.write_text("")
    monkeypatch.setattr(chromium, "browser_binary", lambda: str(not_executable))
    mine = f"{chromium.PROFILE_PREFIX}{os.getpid()}-*"
    before, threads = set(Path(tempfile.gettempdir()).glob(mine)), threading.active_count()
    with pytest.raises(RuntimeFailure, match="^Expected Chromium to start. Received: .*chromium failed to start: "
                                             "Permission denied"):
        _open("chromium", EXPORTED / ENTRIES[0]["file"])
    assert set(Path(tempfile.gettempdir()).glob(mine)) == before
    assert threading.active_count() == threads  # the mailbox server was shut down


def test_node_keeps_an_initializer_listed_as_input(tmp_path):
    weight = onnx.numpy_helper.from_array(np.full((1, 3), 2.0, np.float32), "W")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Add", ["x", "W"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 3]),
         onnx.helper.make_tensor_value_info("W", onnx.TensorProto.FLOAT, [1, 3])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 3])], [weight])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "weight_input.onnx"
    path.write_bytes(model.SerializeToString())
    with _open("onnxruntime-node", path) as runner:
        assert runner.run({"x": np.ones((1, 3), np.float32)})["y"].tolist() == [[3.0, 3.0, 3.0]]
