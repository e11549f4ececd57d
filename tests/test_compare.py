import math

import numpy as np
import pytest

from toolkit.checking.results import ParityReport, compare_arrays, compare_case
from toolkit.errors import InputError
from toolkit.tolerance import DEFAULT_TOLERANCE, Tolerance, Tolerances


def test_default_tolerance_is_at_least_as_tight_as_tf2onnx_keras_lstm_tests():
    assert DEFAULT_TOLERANCE.atol <= 1e-6 and DEFAULT_TOLERANCE.rtol <= 1e-5


def test_equal_arrays_pass_with_zero_error():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    result = compare_arrays("y", a, a.copy(), DEFAULT_TOLERANCE)
    assert result and result.max_abs == 0 and result.max_rel == 0


def test_error_beyond_tolerance_fails_and_reports_max_errors():
    expected = np.array([1.0, 2.0], dtype=np.float32)
    actual = np.array([1.0, 2.001], dtype=np.float32)
    result = compare_arrays("y", expected, actual, DEFAULT_TOLERANCE)
    assert not result
    assert result.max_abs == pytest.approx(0.001, rel=1e-3)
    assert result.max_rel == pytest.approx(0.0005, rel=1e-3)
    assert "1 of 2 values outside tolerance" in str(result)
    assert compare_arrays("y", expected, actual, Tolerance(atol=2e-3, rtol=0))


def test_shape_mismatch_fails():
    result = compare_arrays("y", np.zeros((1, 2)), np.zeros((2, 1)), DEFAULT_TOLERANCE)
    assert not result and "shape mismatch" in result.reason


def test_nan_and_inf_must_match_in_place():
    expected = np.array([np.nan, np.inf, 1.0])
    assert compare_arrays("y", expected, expected.copy(), DEFAULT_TOLERANCE)
    moved = np.array([1.0, np.inf, np.nan])
    result = compare_arrays("y", expected, moved, DEFAULT_TOLERANCE)
    assert not result and math.isinf(result.max_abs)


def test_report_requires_matching_names_and_every_case():
    a = np.ones((1, 2), np.float32)
    tol = Tolerances()
    good = compare_case("c", [a], {"y": a}, ["y"], tol)
    assert ParityReport(("y",), ("y",), (good,))
    assert not ParityReport(("y",), ("z",), (good,))
    assert not ParityReport(("y",), ("y",), ())
    bad = compare_case("c", [a], {"y": a + 1}, ["y"], tol)
    report = ParityReport(("y",), ("y",), (good, bad))
    assert not report and report.failures()[0].startswith("[c] y")
    assert report.to_json()["outputs"][0]["passed"] is False


def test_tolerance_parsing_default_and_per_output():
    tol = Tolerances.parse(atol=["1e-4", "state_c:1e-3"], rtol=["state_c:0.01"])
    assert tol.default == Tolerance(atol=1e-4, rtol=1e-5)
    assert tol.for_output("state_c") == Tolerance(atol=1e-3, rtol=0.01)
    assert tol.for_output("other") == tol.default


@pytest.mark.parametrize("raw", ["abc", "-1", "x:nan", "x:"])
def test_bad_tolerance_values_are_refused(raw):
    with pytest.raises(InputError, match="Expected --atol"):
        Tolerances.parse(atol=[raw])


def test_unknown_tolerance_key_is_refused():
    with pytest.raises(InputError, match=r"Received unknown key\(s\): \['stat_h'\]"):
        Tolerances.parse(atol=["stat_h:1e-3"]).check_names(["state_h"])
