"""Issue 26: each output's tolerance is decided once per command, in one home (`checking.loop.decided_tolerances`,
the only caller of `toolkit.tolerance.decide`), and that decision travels with the run: the parity check, a
stateful export's consecutive calls, `--runtimes`, every runtime of `verify` and its `--stream` all compare
at it. Before, `decide` ran twice per export and twice per verify (once by the command, once again inside
the comparison), three times with consecutive calls, four with `verify --stream`.

The real `decide` is wrapped with a counter (every module that holds it, so a call from anywhere counts);
the models, the export and the runtimes are real."""

from __future__ import annotations

import sys

import keras
import numpy as np
import pytest

from toolkit import tolerance
from toolkit.checking.verify import verify_export
from toolkit.export.exporter import export_model
from toolkit.models.builder import StackConfig, build_stack, set_deterministic_weights
from toolkit.speed.bench import bench
from toolkit.tolerance import FLOAT16_TOLERANCE, RNN_OP_TOLERANCE, Tolerances


@pytest.fixture
def decisions(monkeypatch):
    """Every result `decide` returns, in call order, wherever it is called from."""
    real = tolerance.decide
    made: list[Tolerances] = []

    def counted(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    for module in list(sys.modules.values()):
        if getattr(module, "__name__", "").startswith("toolkit") and getattr(module, "decide", None) is real:
            monkeypatch.setattr(module, "decide", counted)
    return made


def _tolerances_used(report) -> dict[str, set]:
    """Each output's tolerances over every case of a report (one, when it was decided once and not widened)."""
    used: dict[str, set] = {}
    for case in report.cases:
        for comparison in case.comparisons:
            used.setdefault(comparison.name, set()).add(comparison.tolerance)
    return used


def _stateful_state_io_model():
    """A stateful SimpleRNN (an ONNX RNN op: its own default tolerance) whose states carry over calls."""
    x = keras.Input(batch_shape=(2, None, 3), name="input")
    model = keras.Model(x, keras.layers.SimpleRNN(4, stateful=True, return_sequences=True, name="rnn")(x))
    set_deterministic_weights(model, 3)
    return model


def test_an_export_decides_each_outputs_tolerance_once(decisions):
    result = export_model(build_stack(StackConfig(return_state=True)), runtimes=("onnxruntime",))
    assert len(decisions) == 1
    decided = decisions[0]
    for report in [result.parity] + [r.report for r in result.proven]:
        used = _tolerances_used(report)
        assert set(used) == {o.name for o in result.outputs}
        assert all(found == {decided.for_output(name)} for name, found in used.items()), used


def test_a_stateful_export_and_its_verify_with_stream_decide_once_each(decisions, tmp_path):
    model = _stateful_state_io_model()
    result = export_model(model, state_io=True, tier="float16")
    assert result.parity.carried_calls(), "a stateful export is checked on consecutive calls too"
    assert len(decisions) == 1 and decisions[0].base == FLOAT16_TOLERANCE  # the tier's, wider than the RNN op's
    assert all(found == {FLOAT16_TOLERANCE} for found in _tolerances_used(result.parity).values())

    path = tmp_path / "stateful.onnx"
    result.save(path)
    keras_path = tmp_path / "stateful.keras"
    model.save(keras_path)
    decisions.clear()
    outcome = verify_export(path, keras_path, chunks=[1, 2], stream_length=5)
    assert outcome, outcome.report.failures()
    assert len(decisions) == 1 and decisions[0].base == FLOAT16_TOLERANCE  # the recorded tier, read back once
    reports = [r.report for r in outcome.report.runtimes] + [outcome.report.stream.against_keras,
                                                            outcome.report.stream.against_whole]
    assert all(found == {FLOAT16_TOLERANCE} for report in reports for found in _tolerances_used(report).values())


def test_a_users_default_is_never_decided_again(decisions, tmp_path):
    mine = Tolerances.parse(atol=["1e-4"])
    result = export_model(build_stack(StackConfig()), tolerances=mine)
    assert decisions == [] and all(found == {mine.base} for found in _tolerances_used(result.parity).values())


def test_bench_decides_once_for_every_form(decisions, tmp_path):
    x = keras.Input((None, 2), name="input")
    model = keras.Model(x, keras.layers.SimpleRNN(3, name="rnn")(x))
    set_deterministic_weights(model, 1)
    path = tmp_path / "rnn.onnx"
    export_model(model).save(path)
    decisions.clear()
    report = bench(path, batch=2, steps=5, runtimes=["onnxruntime"], threads=[1], budget_s=0.05, rounds=1)
    assert len(decisions) == 1 and decisions[0].base == RNN_OP_TOLERANCE
    assert report.tolerance == str(RNN_OP_TOLERANCE) and all(r.within for r in report.results)
    assert all(np.isfinite(r.max_abs) for r in report.results)
