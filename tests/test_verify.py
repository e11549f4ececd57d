"""Verification from symmetric runners: the registry, the comparison loop, the runners as peers."""

import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import assert_close

from toolkit.checking.inputs import InputCase
from toolkit.checking.loop import compare_runners
from toolkit.checking.results import RuntimeReport, VerifyReport
from toolkit.checking.verify import verify_runtimes
from toolkit.cli import cli
from toolkit.errors import InputError
from toolkit.export.exporter import export_keras_file
from toolkit.models.builder import build_stack, variant_config
from toolkit.runtimes import registry
from toolkit.runtimes.base import Runner
from toolkit.runtimes.keras import KerasRunner, keras_outputs
from toolkit.runtimes.onnxrt import ORT_LEVELS, OnnxRunner
from toolkit.runtimes.reference import ReferenceRunner
from toolkit.runtimes.registry import RUNTIMES, Runtime, register
from toolkit.tolerance import Tolerances


class FixedRunner(Runner):
    """A tiny fake runner for the comparison logic only: returns fixed arrays plus an offset."""

    def __init__(self, name, values, offset=0.0):
        super().__init__(None, name)
        self.values, self.offset, self.calls = values, offset, 0

    def _run(self, feeds, timeout):
        self.calls += 1
        return {k: v + self.offset for k, v in self.values.items()}


VALUES = {"a": np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3), "b": np.ones((2,), np.float32)}
CASES = [InputCase("one", {"x": np.zeros(1)}), InputCase("two", {"x": np.ones(1)})]


def test_compare_runners_keys_results_by_runner_and_is_truthy_only_when_passing():
    reference = FixedRunner("keras", VALUES)
    good, bad = FixedRunner("good", VALUES), FixedRunner("bad", VALUES, offset=1e-3)
    reports = compare_runners(reference, [good, bad], CASES, Tolerances(), ["a", "b"])
    assert list(reports) == ["good", "bad"] and reference.calls == 2 and good.calls == bad.calls == 2
    assert reports["good"] and not reports["bad"]
    assert [c.label for c in reports["bad"].cases] == ["one", "two"]
    summary = {s.name: s for s in reports["bad"].summaries()}
    assert summary["a"].max_abs == pytest.approx(1e-3, rel=1e-3) and not summary["a"]
    assert any("[one] a (2, 3)" in line for line in reports["bad"].failures())


def test_compare_runners_keys_a_mapping_by_its_labels_and_passes_the_deadline():
    # bench: one runtime at two thread counts shares a runner name; each form keeps its own report.
    class Deadlined(FixedRunner):
        def _run(self, feeds, timeout):
            self.timeouts = [*getattr(self, "timeouts", []), timeout]
            return super()._run(feeds, timeout)

    one, two = Deadlined("onnxruntime", VALUES), Deadlined("onnxruntime", VALUES, offset=1e-3)
    reports = compare_runners(FixedRunner("keras", VALUES), {"x1": one, "x2": two}, CASES, Tolerances(), ["a", "b"],
                              timeout=7.5)
    assert list(reports) == ["x1", "x2"] and reports["x1"] and not reports["x2"]
    assert one.timeouts == two.timeouts == [7.5, 7.5]


def test_compare_runners_checks_expected_names_and_runs_invariants():
    seen = []

    def invariants(actual):
        seen.append(sorted(actual))
        return []

    reports = compare_runners(FixedRunner("keras", VALUES), [FixedRunner("r", VALUES)], CASES[:1], Tolerances(),
                              ["a", "b"], expected_names=["a", "renamed"], invariants=invariants)
    assert not reports["r"] and not reports["r"].names_match and seen == [["a", "b"]]
    assert "output names: expected ['a', 'renamed'], got ['a', 'b']" in reports["r"].failures()


def test_runtime_report_status_truthiness_and_json():
    passing = compare_runners(FixedRunner("k", VALUES), [FixedRunner("r", VALUES)], CASES, Tolerances(), ["a", "b"])["r"]
    ok, not_valid = RuntimeReport("r", passing), RuntimeReport("other", None, "it lacks the op")
    assert ok and ok.status == "pass" and not not_valid and not_valid.status == "not valid"
    assert not_valid.not_valid == "it lacks the op"
    data = ok.to_json()
    assert data["status"] == "pass" and data["runtime"] == "r" and all(o["status"] == "pass" for o in data["outputs"])
    assert not_valid.to_json() == {"runtime": "other", "status": "not valid", "reason": "it lacks the op",
                                   "skipped": "it lacks the op"}
    both = VerifyReport("m.onnx", (ok, not_valid))
    assert both and set(both.to_json()["runtimes"]) == {"r", "other"}
    alone = VerifyReport("m.onnx", (not_valid,))
    assert not alone and alone.failures() == ["every requested runtime was skipped: nothing was compared"]
    single = VerifyReport("m.onnx", (ok,)).to_json()
    assert single["passed"] and single["names_match"] and "runtimes" in single  # the report at the top level


@pytest.fixture(scope="module")
def saved_lstm(tmp_path_factory):
    folder = tmp_path_factory.mktemp("verify")
    keras_file, onnx_file = folder / "lstm.keras", folder / "lstm.onnx"
    build_stack(variant_config("lstm")).save(keras_file)
    export_keras_file(keras_file, onnx_file)
    return keras_file, onnx_file


def test_an_unknown_runtime_is_one_line_listing_the_valid_ones(saved_lstm):
    keras_file, onnx_file = saved_lstm
    with pytest.raises(InputError, match=r"Expected runtimes among \['onnxruntime', .*'reference', .*'openvino'.*\] or all. "
                                         r"Received: \['onnxruntime', 'tvm'\]"):
        verify_runtimes(onnx_file, keras_file, ["onnxruntime", "tvm"])
    result = CliRunner().invoke(cli, ["verify", str(onnx_file), "--keras", str(keras_file), "--runtimes", "tvm"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip().count("\n") == 0 and "'reference'" in result.output


def test_a_runtime_whose_problem_gives_a_reason_is_not_valid_not_passed(saved_lstm, monkeypatch):
    keras_file, onnx_file = saved_lstm
    monkeypatch.setattr(registry, "RUNTIMES", dict(RUNTIMES))

    def never_open(path, model):
        raise AssertionError("a runtime the model is not valid in must not be opened")

    register(Runtime("picky", lambda model: "picky refuses LSTM", never_open))  # adding a runtime: one line
    reports = verify_runtimes(onnx_file, keras_file, ["onnxruntime", "picky"])
    assert [r.status for r in reports] == ["pass", "not valid"] and not reports[1]
    assert reports[1].report is None and reports[1].not_valid == "picky refuses LSTM"
    result = CliRunner().invoke(cli, ["verify", str(onnx_file), "--keras", str(keras_file), "--runtimes", "picky"])
    assert result.exit_code == 1 and "not valid: picky refuses LSTM" in result.output
    assert "FAIL: every requested runtime was skipped" in result.output


def test_a_registered_runtime_is_run_and_compared(saved_lstm, monkeypatch):
    keras_file, onnx_file = saved_lstm
    monkeypatch.setattr(registry, "RUNTIMES", dict(RUNTIMES))
    opened = []

    def open_basic(path, model):
        opened.append(path)
        return OnnxRunner(model, optimization_level=ORT_LEVELS["onnxruntime-basic"], name="mine")

    register(Runtime("mine", lambda model: None, open_basic))
    result = CliRunner().invoke(cli, ["verify", str(onnx_file), "--keras", str(keras_file),
                                      "--runtimes", "onnxruntime,mine"])
    assert result.exit_code == 0, result.output
    assert opened == [onnx_file] and "lstm.onnx [mine]" in result.output and result.output.endswith("PASS\n")


def test_keras_and_onnx_runners_are_peers_with_the_same_interface(saved_lstm):
    keras_file, onnx_file = saved_lstm
    feeds = {"input": np.random.default_rng(0).standard_normal((2, 6, 4)).astype(np.float32)}
    keras = KerasRunner(keras_file)
    with OnnxRunner(onnx_file) as ort_runner, ReferenceRunner(onnx_file) as reference:
        outputs = {r.name: r.run(feeds) for r in (keras, ort_runner, reference)}
    assert not issubclass(ReferenceRunner, OnnxRunner) and not issubclass(OnnxRunner, ReferenceRunner)
    assert list(outputs["keras"]) == list(outputs["onnxruntime"]) == list(outputs["reference"])
    for name, expected in outputs["keras"].items():
        assert_close(outputs["onnxruntime"][name], expected)
        assert_close(outputs["reference"][name], expected)
    assert [v.shape for v in keras_outputs(keras.model, feeds)] == [v.shape for v in outputs["keras"].values()]
    keras.close()
    keras.close()  # idempotent


def test_a_runtime_missing_on_the_machine_is_an_input_error(saved_lstm):
    with pytest.raises(InputError, match="Expected execution providers among"):
        OnnxRunner(saved_lstm[1], providers=("NoSuchExecutionProvider",))


def test_importing_verify_leaves_tensorflow_out():
    code = ("import sys; import toolkit.checking.loop, toolkit.checking.report; "
            "print(sorted(m for m in ('tensorflow', 'keras', 'tf2onnx') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_a_stateful_rnn_of_stacked_cells_exports_and_passes(tmp_path):
    """Keras' own `RNN.reset_state` fails on a stack of cells ('ListWrapper' object has no attribute
    'assign'); the parity check zeroes each state variable itself, so the model exports."""
    import keras

    x = keras.Input((5, 3), batch_size=2, name="x")
    y = keras.layers.RNN([keras.layers.LSTMCell(4), keras.layers.GRUCell(2)], stateful=True,
                         return_sequences=True, name="rnn")(x)
    keras_file, onnx_file = tmp_path / "stacked.keras", tmp_path / "stacked.onnx"
    keras.Model(x, y).save(keras_file)
    result = CliRunner().invoke(cli, ["export", str(keras_file), "-o", str(onnx_file)])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "rnn_sequence" in result.output and onnx_file.exists()


def test_keras_failing_to_compute_the_reference_is_one_line_naming_the_model():
    import keras
    import tensorflow as tf

    from toolkit.export.exporter import export_model

    class FailsEagerly(keras.layers.Layer):
        """Traces fine (what tf2onnx converts), fails when Keras runs it eagerly for the parity reference."""

        def call(self, inputs):
            if tf.executing_eagerly():
                raise NotImplementedError("no eager kernel here\nsecond line")
            return inputs

    x = keras.Input((None, 3), name="x")
    y = FailsEagerly(name="odd")(keras.layers.LSTM(2, return_sequences=True, name="lstm")(x))
    model = keras.Model(x, y, name="failing")
    with pytest.raises(InputError) as info:
        export_model(model)
    message = str(info.value)
    assert message.startswith("Expected a model Keras can run for the reference outputs. Received: Keras failed "
                               "running 'failing': NotImplementedError: ")
    assert "no eager kernel here" in message and "\n" not in message and "second line" not in message


def test_a_second_timed_runtime_with_the_same_engine_and_precision_is_refused(monkeypatch):
    """bench labels its forms `<engine> <precision> x<threads>`: two such runtimes shared one row and one
    timing (a throwaway `onnxruntime-parallel` showed ONNX Runtime's 0.035 ms for its own 2.7 ms)."""
    monkeypatch.setattr(registry, "RUNTIMES", dict(RUNTIMES))
    with pytest.raises(ValueError, match=r"Received: 'mine-timed' as onnxruntime float32, as 'onnxruntime' is"):
        register(Runtime("mine-timed", lambda model: None, lambda path, model: None, timed=True))
    assert "mine-timed" not in registry.RUNTIMES
    register(Runtime("mine-timed", lambda model: None, lambda path, model: None, timed=True,
                     engine="mine"))  # an engine of its own: a row of its own
    register(Runtime("onnxruntime-untimed", lambda model: None, lambda path, model: None))  # not timed: no row


def test_every_runner_writes_only_its_own_run():
    """The contract's `run` (feeds checked, deadline, closed runners refused) is never overridden: each
    runner, the references and the wrapping ones included, writes `_run`."""
    import importlib
    import pkgutil

    import toolkit.checking
    import toolkit.runtimes

    for package in (toolkit.runtimes, toolkit.checking):
        for info in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{package.__name__}.{info.name}")
    runners = set()
    todo = [Runner]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub not in runners and sub.__module__.startswith("toolkit."):
                runners.add(sub)
                todo.append(sub)
    names = {cls.__name__ for cls in runners}
    assert {"SignatureRunner", "StatefulKerasRunner", "SignatureReference", "OnnxRunner", "CarryingRunner"} <= names
    assert sorted(cls.__name__ for cls in runners if "run" in vars(cls)) == []
