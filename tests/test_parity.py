"""The export's parity check, through its kept signature, on real Keras and ONNX Runtime."""

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from toolkit.checking.inputs import InputCase
from toolkit.checking.parity import check_parity
from toolkit.errors import InputError
from toolkit.export.exporter import export_model
from toolkit.models.builder import build_stack, variant_config
from toolkit.runtimes.onnxrt import OnnxRunner
from toolkit.runtimes.reference import ReferenceRunner
from toolkit.tolerance import Tolerance, Tolerances


@pytest.fixture(scope="module")
def exported():
    model = build_stack(variant_config("lstm"))
    return model, export_model(model)


def test_check_parity_reproduces_the_export_time_report(exported):
    model, result = exported
    runner = OnnxRunner(result.model)
    report = check_parity(model, runner, runner.output_names)
    assert report and report.to_json() == result.parity.to_json()
    assert [i.description for i in report.invariants()][:1] == ["lstm_2_sequence[:, -1] == lstm_2_state_h"]


def test_check_parity_takes_any_graph_runner_and_given_cases(exported):
    model, result = exported
    x = np.random.default_rng(5).standard_normal((3, 7, 4)).astype(np.float32)
    runner = ReferenceRunner(result.model)
    report = check_parity(model, runner, runner.output_names, cases=[InputCase("mine", {"input": x})])
    assert report and [c.label for c in report.cases] == ["mine"]
    assert {shape for s in report.summaries() for shape in s.shapes} >= {(3, 7, 8), (3, 8)}


def test_a_broken_export_fails_parity_and_names_its_outputs(exported):
    model, result = exported
    broken = onnx.ModelProto()
    broken.CopyFrom(result.model)
    last_lstm = [n for n in broken.graph.node if n.op_type == "LSTM"][-1]
    weights = next(t for t in broken.graph.initializer if t.name == last_lstm.input[1])
    weights.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weights) * 1.01, weights.name))
    runner = OnnxRunner(broken)
    report = check_parity(model, runner, runner.output_names)
    assert not report
    failing = {s.name for s in report.summaries() if not s}
    assert {"lstm_2_sequence", "lstm_2_state_h", "lstm_2_state_c"} <= failing
    assert "lstm_1_state_h" not in failing  # the first layer is untouched and still passes
    assert all("values outside tolerance" in line for line in report.failures() if "invariant" not in line)


def test_a_tolerance_for_an_unknown_output_is_refused_before_running(exported):
    model, result = exported
    with pytest.raises(InputError, match=r"Received unknown key\(s\): \['typo'\]"):
        check_parity(model, OnnxRunner(result.model), [o.name for o in result.model.graph.output],
                     Tolerances(per_output={"typo": Tolerance(1.0, 1.0)}))


def test_renamed_outputs_fail_on_names(exported):
    model, result = exported
    runner = OnnxRunner(result.model)
    report = check_parity(model, runner, ["renamed"] + runner.output_names[1:])
    assert not report and not report.names_match and report.failures()[0].startswith("output names: expected")
