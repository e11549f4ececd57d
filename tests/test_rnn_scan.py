"""`onnxruntime-scan`: a SimpleRNN export run in ONNX Runtime with each RNN op rewritten as MatMul + Scan at
open (toolkit/runtimes/rnn_scan.py), on real Keras 3 models exported by lstm-onnx: its outputs equal Keras'
at the export's tolerance and the RNN op's within 1e-5; a model it does not rewrite gets one line saying why.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from test_cli import NO_TF

from toolkit.checking.inputs import InputCase
from toolkit.checking.loop import compare_runners, decided_tolerances
from toolkit.cli import cli
from toolkit.errors import InputError
from toolkit.export.exporter import export_model
from toolkit.models.builder import build_stack, variant_config
from toolkit.onnxfile.metadata import SessionDefaults, write_session_defaults
from toolkit.runtimes.keras import KerasRunner
from toolkit.runtimes.onnxrt import OnnxRunner
from toolkit.runtimes.registry import RUNTIMES, open_runner, runtimes_named
from toolkit.runtimes.rnn_scan import as_scan, problem
from toolkit.speed.bench import bench
from toolkit.tolerance import Tolerances

SCAN = "onnxruntime-scan"
# Two SimpleRNN layers with sequences and states (every layer's), and one layer whose Y nothing reads and
# whose op has no B (use_bias=False): each output of the op and each optional input, present or not.
CONFIGS = {"stack": {"layers": 2}, "last_no_bias": {"layers": 1, "return_sequences": False, "use_bias": False}}


def _export(folder: Path, variant: str, state_io: bool, stem: str = "", **overrides) -> tuple[object, onnx.ModelProto, Path]:
    keras_model = build_stack(variant_config(variant, units=6, features=3, **overrides))
    model = export_model(keras_model, state_io=state_io).model
    path = folder / f"{stem or variant}_{int(state_io)}.onnx"
    path.write_bytes(model.SerializeToString())
    return keras_model, model, path


@pytest.fixture(scope="module", params=[(c, s) for c in CONFIGS for s in (False, True)],
                ids=lambda p: f"{p[0]}-{'state_io' if p[1] else 'zeros'}")
def simple_rnn(request, tmp_path_factory):
    config, state_io = request.param
    return (*_export(tmp_path_factory.mktemp("scan"), "simple_rnn", state_io, **CONFIGS[config]), state_io)


def _cases(model: onnx.ModelProto, steps: int = 9, states: bool = False) -> list[InputCase]:
    """Batch 1 and batch 3 (one session, a dynamic batch), with random initial states where asked."""
    rng = np.random.default_rng(7)
    cases = []
    for batch in (1, 3):
        feeds = {"input": rng.standard_normal((batch, steps, 3)).astype(np.float32)}
        if states:
            feeds.update({i.name: rng.standard_normal((batch, 6)).astype(np.float32) for i in model.graph.input[1:]})
        cases.append(InputCase(f"batch {batch}", feeds))
    return cases


def test_every_rnn_op_becomes_matmul_and_scan_and_the_file_stays_as_it_is(simple_rnn):
    _, model, path = simple_rnn[:3]
    before = path.read_bytes()
    with RUNTIMES[SCAN].open(path, onnx.load(str(path))) as runner:
        ops = Counter(n.op_type for n in runner.model.graph.node)
        layers = Counter(n.op_type for n in model.graph.node)["RNN"]
        assert ops["RNN"] == 0 and ops["Scan"] == layers >= 1 and ops["MatMul"] == layers
        onnx.checker.check_model(runner.model, full_check=True)
        assert [o.name for o in runner.model.graph.output] == [o.name for o in model.graph.output]
    assert path.read_bytes() == before and onnx.load(str(path)) == model  # neither file nor proto changed
    weights = {t.name for t in model.graph.initializer if t.name.startswith("RNN_")}
    assert weights and not weights & {t.name for t in as_scan(model).graph.initializer}  # the op's copies dropped


def test_the_scan_form_computes_keras_numbers_and_the_rnn_ops_within_1e_5(simple_rnn):
    keras_model, model, path, state_io = simple_rnn
    names = [o.name for o in model.graph.output]
    tolerances = decided_tolerances(Tolerances(), model, keras_model)
    with RUNTIMES[SCAN].open(path, model) as scan, OnnxRunner(model) as fused:
        report = compare_runners(KerasRunner(keras_model), [scan], _cases(model), tolerances,
                                 names[: len(keras_model.outputs)])[SCAN]
        assert report, report.failures()
        for case in _cases(model, steps=40, states=state_io):
            expected, found = fused.run(case.feeds), scan.run(case.feeds)
            for name in names:
                assert found[name].shape == expected[name].shape
                assert np.abs(found[name] - expected[name]).max() < 1e-5, (case.name, name)
        if state_io:  # the fed states were used, not zeros (2 steps: a SimpleRNN soon forgets its start)
            short = _cases(model, steps=2, states=True)[1].feeds
            fed, zeros = scan.run(short), scan.run({"input": short["input"]})
            assert not np.allclose(zeros[names[0]], fed[names[0]], atol=1e-3)


def test_verify_and_run_take_the_scan_runtime(simple_rnn, tmp_path):
    keras_model, model, path, _ = simple_rnn
    keras_path = tmp_path / "model.keras"
    keras_model.save(keras_path)
    done = CliRunner().invoke(cli, ["verify", str(path), "--keras", str(keras_path), "--runtimes", SCAN, "--json"])
    assert done.exit_code == 0, done.output
    payload = json.loads(done.output[done.output.index("{"):])
    assert payload["passed"] and payload["runtimes"][SCAN]["status"] == "pass"
    x = np.random.default_rng(2).standard_normal((3, 5, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    ran = subprocess.run([sys.executable, "-c", NO_TF, "run", str(path), "--input", str(tmp_path / "x.npy"),
                          "--runtime", SCAN, "-o", str(tmp_path / "out.npz")], capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip().splitlines()[-1] == "HEAVY:"  # `run` with the rewrite imports no TensorFlow
    expected = OnnxRunner(model).run({"input": x})
    with np.load(tmp_path / "out.npz") as saved:
        assert all(np.abs(saved[n] - expected[n]).max() < 1e-5 for n in expected)
    with open_runner(path, SCAN) as runner:
        assert runner.name == SCAN and "Scan" in {n.op_type for n in runner.model.graph.node}
    recorded = onnx.load(str(path))  # `bench --record` found the rewrite fastest: `run` opens it by default
    write_session_defaults(recorded, SessionDefaults(SCAN, 1, 32, 100, False, 1629.0))
    onnx.save(recorded, tmp_path / "recorded.onnx")
    with open_runner(tmp_path / "recorded.onnx") as runner:
        assert runner.name == SCAN and runner.session.get_session_options().intra_op_num_threads == 1


NOT_REWRITTEN = {  # case: (variant, overrides, the problem)
    "lstm": ("lstm", {}, "no RNN op to rewrite as Scan (onnxruntime-scan rewrites SimpleRNN's fused RNN op; its recurrent "
                 "ops are LSTM)"),
    "bidirectional_simple_rnn": ("simple_rnn", {"bidirectional": "concat"},
                                 "RNN 'RNN_0' runs bidirectional (a Bidirectional or go_backwards layer); "
                                 "onnxruntime-scan rewrites forward RNN ops only"),
    "simple_rnn_masking": ("simple_rnn_masking", {}, "RNN 'RNN_0' is fed sequence_lens (a masked layer); "
                                                     "onnxruntime-scan rewrites RNN ops without it only"),
    "simple_rnn_relu": ("simple_rnn_relu", {}, "RNN 'RNN_0' uses the activation Relu; onnxruntime-scan rewrites Tanh only"),
}


@pytest.fixture(scope="module")
def not_rewritten(tmp_path_factory):
    folder = tmp_path_factory.mktemp("not_scan")
    return {case: _export(folder, variant, False, case, layers=1, **overrides)[2]
            for case, (variant, overrides, _) in NOT_REWRITTEN.items()}


@pytest.mark.parametrize("case", sorted(NOT_REWRITTEN))
def test_a_model_the_rewrite_does_not_compute_gets_one_line_why(not_rewritten, case, tmp_path):
    path = not_rewritten[case]
    expected = NOT_REWRITTEN[case][2]
    assert problem(onnx.load(str(path))) == expected
    with pytest.raises(InputError, match="^Expected a model onnxruntime-scan rewrites. Received: "):
        as_scan(onnx.load(str(path)))
    np.save(tmp_path / "x.npy", np.zeros((1, 4, 3), np.float32))  # refused at open, before the feeds are read
    refused = CliRunner().invoke(cli, ["run", str(path), "--input", str(tmp_path / "x.npy"), "--runtime", SCAN])
    assert refused.exit_code == 1 and "Traceback" not in refused.output
    assert refused.output.strip() == (f"Error: Expected a model onnxruntime-scan computes correctly. Received: "
                                      f"{path.name}: {expected}")


def test_a_hand_made_rnn_at_opset_11_is_rewritten_with_axes_as_attributes():
    """Squeeze/Unsqueeze take axes as an attribute below opset 13: a file the exporter never writes (it
    writes 14 to 18), but one `onnxruntime-scan` may be given. Random weights, initial_h fed, Y and Y_h."""
    rng = np.random.default_rng(0)
    hidden, features = 5, 3
    weights = [onnx.numpy_helper.from_array(rng.uniform(-0.5, 0.5, shape).astype(np.float32), name) for name, shape in
               (("W", (1, hidden, features)), ("R", (1, hidden, hidden)), ("B", (1, 2 * hidden)))]
    node = onnx.helper.make_node("RNN", ["X", "W", "R", "B", "", "h0"], ["Y", "Y_h"], hidden_size=hidden)
    value = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph([node], "g", [value("X", onnx.TensorProto.FLOAT, ["T", "B", features]),
                                                 value("h0", onnx.TensorProto.FLOAT, [1, "B", hidden])],
                                   [value("Y", onnx.TensorProto.FLOAT, None), value("Y_h", onnx.TensorProto.FLOAT, None)],
                                   weights)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 11)])
    model.ir_version = 7
    rewritten = as_scan(model)
    squeezes = [n for n in rewritten.graph.node if n.op_type in ("Squeeze", "Unsqueeze")]
    assert squeezes and all(len(n.input) == 1 and n.attribute[0].name == "axes" for n in squeezes)
    feeds = {"X": rng.standard_normal((30, 2, features)).astype(np.float32),
             "h0": rng.standard_normal((1, 2, hidden)).astype(np.float32)}
    expected, found = OnnxRunner(model).run(feeds), OnnxRunner(rewritten).run(feeds)
    assert all(np.abs(found[n] - expected[n]).max() < 1e-5 and found[n].shape == expected[n].shape for n in expected)


FAST = {"budget_s": 0.05, "rounds": 2, "threads": (1,), "runtimes": ["onnxruntime", SCAN]}


def test_bench_times_the_scan_form_beside_the_rnn_op(simple_rnn):
    report = bench(simple_rnn[2], batch=2, steps=6, **FAST)
    forms = {r.label: r for r in report.results}
    assert list(forms) == ["onnxruntime float32 x1", "onnxruntime-scan float32 x1"]
    scan = forms["onnxruntime-scan float32 x1"]
    assert scan.median_ms > 0 and scan.within and scan.max_abs < 1e-5 and not scan.problem


def test_all_leaves_the_rewrite_out_and_bench_lists_it_as_not_valid_where_it_is(not_rewritten):
    assert SCAN not in [r.name for r in runtimes_named(["all"])]  # `--target all` would refuse every LSTM
    assert RUNTIMES[SCAN].timed and RUNTIMES[SCAN].engine == SCAN and RUNTIMES[SCAN].package == "onnxruntime"
    lstm = bench(not_rewritten["lstm"], batch=2, steps=6, **FAST)
    assert lstm.results[1].median_ms is None and lstm.results[1].problem == NOT_REWRITTEN["lstm"][2]
    assert f"not valid: onnxruntime-scan float32: {NOT_REWRITTEN['lstm'][2]}" in lstm.text()


def test_the_bench_command_lists_the_scan_form_from_the_registry(simple_rnn):
    _, _, path, _ = simple_rnn
    done = CliRunner().invoke(cli, ["bench", str(path), "--threads", "1", "--seconds", "0.1", "--batch", "2", "--steps",
                                    "5", "--json"])
    assert done.exit_code == 0, done.output
    forms = {f["label"]: f for f in json.loads(done.output)["forms"]}
    scan = forms["onnxruntime-scan float32 x1"]  # no --runtimes: every timed runtime of the registry
    assert scan["median_ms"] > 0 and scan["within_tolerance"] and scan["problem"] is None


def test_weights_that_are_not_float32_constants_get_one_line_why(simple_rnn):
    model = simple_rnn[1]
    doubled, fed = onnx.ModelProto(), onnx.ModelProto()
    doubled.CopyFrom(model)
    fed.CopyFrom(model)
    r = next(t for t in doubled.graph.initializer if t.name == "RNN_0_R")
    r.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(r).astype(np.float64), r.name))
    assert problem(doubled) == "RNN 'RNN_0': its R is double; onnxruntime-scan rewrites float32 RNN ops only"
    fed.graph.input.append(onnx.helper.make_tensor_value_info("RNN_0_W", onnx.TensorProto.FLOAT, None))
    assert problem(fed) == ("RNN 'RNN_0': its W is not a constant (an initializer no feed replaces); onnxruntime-scan "
                            "folds its weights")
    assert problem(model) is None
