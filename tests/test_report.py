"""Rendering: the parity table, a runtime's "not valid" row, verify's text, inspect's and run's text."""

import numpy as np

from toolkit.checking.report import (
    PARITY_HEADERS,
    description_text,
    outputs_text,
    parity_rows,
    parity_table,
    runtime_rows,
    verify_text,
)
from toolkit.checking.results import ParityReport, RuntimeReport, VerifyReport, compare_case
from toolkit.onnxfile.model import inspect_model
from toolkit.tolerance import Tolerances

EXPECTED = [np.full((2, 3), 2.0, np.float32), np.ones((2,), np.float32)]


def _report(offset: float = 0.0, names=("x_last", "x_state_h")) -> ParityReport:
    actual = {"x_last": EXPECTED[0] + offset, "x_state_h": EXPECTED[1]}
    case = compare_case("random batch 2", EXPECTED, actual, ["x_last", "x_state_h"], Tolerances())
    return ParityReport(tuple(names), ("x_last", "x_state_h"), (case,))


def test_parity_rows_show_errors_tolerance_and_result():
    rows = parity_rows("m.onnx", _report(offset=0.5))
    assert rows[0] == ["m.onnx", "x_last", "(2, 3)", "5.00e-01", "2.50e-01", "1e-06/1e-05", "FAIL"]
    assert rows[1][-1] == "PASS"
    renamed = parity_rows("m.onnx", _report(names=("x_last", "other")))
    assert renamed[-1][:2] == ["m.onnx", "(names)"] and renamed[-1][-1] == "FAIL"
    text = parity_table([("m.onnx", _report())])
    assert text.splitlines()[0].split() == "model output shapes max abs max rel atol/rtol result".split()
    assert len(PARITY_HEADERS) == 7 and text.count("PASS") == 2


def test_a_not_valid_runtime_is_a_row_with_its_reason():
    assert runtime_rows("m.onnx [reference]", RuntimeReport("reference", None, "no sequence_lens")) == [
        ["m.onnx [reference]", "(all)", "", "", "", "", "not valid: no sequence_lens"]]
    assert runtime_rows("m.onnx", RuntimeReport("onnxruntime", _report())) == parity_rows("m.onnx", _report())


def test_verify_text_labels_runtimes_and_ends_with_the_verdict():
    one = verify_text(VerifyReport("m.onnx", (RuntimeReport("onnxruntime", _report()),)))
    assert one.splitlines()[2].startswith("m.onnx  ") and one.endswith("\nPASS")
    several = verify_text(VerifyReport("m.onnx", (RuntimeReport("onnxruntime", _report(offset=0.5)),
                                                  RuntimeReport("reference", None, "no sequence_lens"))))
    lines = several.splitlines()
    assert lines[2].startswith("m.onnx [onnxruntime]") and "not valid: no sequence_lens" in lines[4]
    assert "reference: skipped: no sequence_lens" in lines
    assert lines[-1].startswith("FAIL: [random batch 2] x_last (2, 3): max_abs=0.5")


def test_description_and_outputs_text(seed_suite):
    text = description_text(inspect_model(seed_suite.out_dir / "case3_sequences_state.onnx"))
    assert "lstm_2_state_c" in text and "recurrent ops: LSTM x2" in text and "dynamic axes: batch" in text
    shown = outputs_text({"y": np.arange(4, dtype=np.float32).reshape(2, 2)})
    assert shown.splitlines() == ["y  float32 (2, 2)", "  [[0. 1.]", "   [2. 3.]]"]
