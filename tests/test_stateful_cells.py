"""Stateful layers over cells with no fused op carry their states: never an export with frozen zeros.

The cells are Keras' own test cells (`keras/src/layers/rnn/rnn_test.py`: `OneStateRNNCell`,
`TwoStatesRNNCell`, weights all ones), and the expected values are the ones Keras' tests hard-code
(`test_statefulness_single_state`, `test_statefulness_two_states`, `test_go_backwards`). Before issue 20
such a layer fell back to tf2onnx, which froze its states as zeros: the first call was right, the second
was 442 where Keras gives 3978, and the export's own check (one call per case) passed.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from keras_cells import keras_cells

from toolkit.checking.carry import CALLS, CarryingRunner, call_cases
from toolkit.checking.loop import compare_with_keras
from toolkit.checking.verify import verify_runtimes
from toolkit.export.exporter import export_model
from toolkit.onnxfile.metadata import METADATA_PREFIX, STATE_MAP, read_state_inputs, read_state_map
from toolkit.onnxfile.model import count_ops
from toolkit.runtimes.keras import KerasRunner, StatefulKerasRunner
from toolkit.runtimes.onnxrt import OnnxRunner
from toolkit.tolerance import Tolerances

RTOL, ATOL = 1e-5, 1e-6


def _cell(kind: str):
    import keras

    one, two = keras_cells()
    if kind == "one":
        return one(2)
    if kind == "two":
        return two(2)
    if kind == "stacked":
        return keras.layers.StackedRNNCells([one(3), two(2)])
    assert kind == "stacked_with_builtin"
    return keras.layers.StackedRNNCells([keras.layers.GRUCell(3), one(2)])


def _stateful_model(kind: str, batch: int, shape=(2, 3), **flags):
    import keras

    x = keras.Input(shape, batch_size=batch, name="x")
    return keras.Model(x, keras.layers.RNN(_cell(kind), stateful=True, name="rnn", **flags)(x))


def _calls(result, sequences) -> list[dict[str, np.ndarray]]:
    """The export run on consecutive calls, carrying its states through its state map, as deploy code would."""
    runner = CarryingRunner(OnnxRunner(result.model), read_state_map(result.model))
    return [runner.run({"x": x}) for x in sequences]


def test_one_state_second_call_is_keras_hard_coded_45():
    """rnn_test.py, test_statefulness_single_state: ones (1, 2, 3) twice gives [[45, 45]] (the first, 9)."""
    result = export_model(_stateful_model("one", 1, return_state=True))
    assert result.parity
    first, second = _calls(result, [np.ones((1, 2, 3), np.float32)] * 2)
    np.testing.assert_allclose(first["rnn_last"], [[9.0, 9.0]])
    np.testing.assert_allclose(second["rnn_last"], [[45.0, 45.0]])
    np.testing.assert_allclose(second["rnn_state_h"], [[45.0, 45.0]])


def test_two_states_second_call_is_keras_hard_coded_90():
    """rnn_test.py, test_statefulness_two_states: output [[90, 90]], states [[45, 45]] and [[45, 45]]."""
    result = export_model(_stateful_model("two", 1, return_state=True))
    assert result.parity
    assert list(read_state_inputs(result.model)) == ["rnn_initial_state_0", "rnn_initial_state_1"]
    assert read_state_map(result.model) == {"rnn_initial_state_0": "rnn_state_0", "rnn_initial_state_1": "rnn_state_1"}
    second = _calls(result, [np.ones((1, 2, 3), np.float32)] * 2)[1]
    np.testing.assert_allclose(second["rnn_last"], [[90.0, 90.0]])
    np.testing.assert_allclose(second["rnn_state_0"], [[45.0, 45.0]])
    np.testing.assert_allclose(second["rnn_state_1"], [[45.0, 45.0]])


def test_second_call_of_batch_two_is_keras_hard_coded_3978():
    """rnn_test.py, test_go_backwards (its stateful half): arange(24) as (2, 3, 4), called twice, gives
    [[954, 954], [3978, 3978]] for the output and the state; tf2onnx's frozen zeros gave 442 for 3978."""
    result = export_model(_stateful_model("one", 2, shape=(3, 4), return_state=True))
    assert result.parity
    sequence = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    second = _calls(result, [sequence, sequence])[1]
    np.testing.assert_allclose(second["rnn_last"], [[954.0, 954.0], [3978.0, 3978.0]])
    np.testing.assert_allclose(second["rnn_state_h"], [[954.0, 954.0], [3978.0, 3978.0]])


@pytest.mark.parametrize("kind", ["one", "two", "stacked", "stacked_with_builtin"])
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("flags", [{}, {"return_sequences": True, "return_state": True}, {"go_backwards": True}],
                         ids=["last", "sequence_state", "backwards"])
def test_three_calls_carried_through_the_state_map_match_keras(kind, batch, flags):
    """Alone and stacked, batch 1 (which tf2onnx refused) and 2: exact on three calls in a row, and the
    export's own check ran those three calls."""
    model = _stateful_model(kind, batch, **flags)
    result = export_model(model)
    assert result.parity, result.parity.failures()
    labels = [case.label for case in result.parity.cases]
    assert [label.split(",")[0] for label in labels[-CALLS:]] == [f"call {i} of {CALLS}" for i in (1, 2, 3)]
    assert count_ops(result.model)["Loop"] == 1  # a custom cell stays a Loop, and says so
    assert any("not fused" in w for w in result.warnings)
    carried = read_state_map(result.model)
    assert carried and all(name in {i.name for i in result.model.graph.input} for name in carried)
    keras = StatefulKerasRunner(model)
    cases = call_cases(model, seed=5, padding_side="right")
    report = compare_with_keras(keras, [CarryingRunner(OnnxRunner(result.model), carried)], result.model,
                                [o.name for o in result.outputs], Tolerances(), cases)["onnxruntime"]
    assert report, report.failures()


def test_stateful_keras_is_a_runner_like_the_others():
    """`StatefulKerasRunner` runs through the contract's `run` (its own `_run` only): Keras' hard-coded 9
    then 45 on consecutive calls, the timeout taken, and a closed runner refused like any other."""
    from toolkit.errors import InputError

    keras = StatefulKerasRunner(_stateful_model("one", 1))
    assert "run" not in type(keras).__dict__ and "_run" in type(keras).__dict__
    ones = {"x": np.ones((1, 2, 3), np.float32)}
    np.testing.assert_allclose(keras.run(ones)["rnn_last"], [[9.0, 9.0]])
    np.testing.assert_allclose(keras.run(ones, timeout=30)["rnn_last"], [[45.0, 45.0]])
    keras.close()
    with pytest.raises(InputError, match=r"^Expected an open keras runner\. Received: run\(\) after close\(\)$"):
        keras.run(ones)


def test_the_carried_calls_catch_frozen_states():
    """Fed zeros on every call (what a frozen-state file does), the second call no longer matches Keras."""
    model = _stateful_model("one", 2, shape=(3, 4))
    result = export_model(model)
    cases = call_cases(model, seed=0, padding_side="right")
    frozen = CarryingRunner(OnnxRunner(result.model), {})
    report = compare_with_keras(StatefulKerasRunner(model), [frozen], result.model,
                                [o.name for o in result.outputs], Tolerances(), cases)["onnxruntime"]
    assert [bool(case) for case in report.cases] == [True, False, False]


def test_state_io_gives_a_custom_cell_state_inputs_too():
    """--state-io on a stateless custom-cell layer: its states are inputs and outputs, as a fused layer's."""
    import keras

    x = keras.Input((None, 3), name="x")
    model = keras.Model(x, keras.layers.RNN(_cell("two"), name="rnn")(x))
    result = export_model(model, state_io=True)
    assert result.parity
    assert read_state_map(result.model) == {"rnn_initial_state_0": "rnn_state_0", "rnn_initial_state_1": "rnn_state_1"}
    rng = np.random.default_rng(0)
    states = {name: rng.standard_normal((2, 2)).astype(np.float32) for name in read_state_map(result.model)}
    feeds = {"x": rng.standard_normal((2, 4, 3)).astype(np.float32)}
    got = OnnxRunner(result.model).run({**feeds, **states})
    want = model.get_layer("rnn")(feeds["x"], initial_state=list(states.values()))
    np.testing.assert_allclose(got["rnn_last"], np.asarray(want), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["gru", "bidirectional_lstm"])
def test_a_stateful_layer_with_an_activation_onnx_lacks_carries_its_states(bidirectional):
    """A built-in layer that cannot be fused (silu) takes the same path as a custom cell, a Bidirectional
    one too (each direction's states carried)."""
    import keras

    x = keras.Input((4, 3), batch_size=2, name="x")
    if bidirectional:
        layer = keras.layers.Bidirectional(keras.layers.LSTM(3, activation="silu", stateful=True), name="rec")
        roles = ["forward_state_h", "forward_state_c", "backward_state_h", "backward_state_c"]
    else:
        layer, roles = keras.layers.GRU(3, activation="silu", stateful=True, name="rec"), ["state_h"]
    result = export_model(keras.Model(x, layer(x)))
    assert result.parity, result.parity.failures()
    assert read_state_map(result.model) == {f"rec_initial_{role}": f"rec_{role}" for role in roles}
    assert len(result.parity.cases) == 2 + CALLS


@pytest.mark.parametrize("kind", ["one", "stacked"])
def test_verify_runs_the_carried_calls_of_a_stateful_custom_cell(kind, tmp_path):
    """`verify` (not only export) runs the three carried calls, in every in-process ONNX Runtime asked for."""
    model = _stateful_model(kind, 2, return_sequences=True)
    path = export_model(model).save(tmp_path / "model.onnx")
    reports = verify_runtimes(path, KerasRunner(model), ["onnxruntime", "onnxruntime-disabled"])
    for runtime in reports:
        assert runtime, runtime.report.failures()
        assert [case.label.split(",")[0] for case in runtime.report.carried_calls()] == ["call 1 of 3", "call 2 of 3",
                                                                                         "call 3 of 3"]
        assert runtime.to_json()["carried_calls"] == {"calls": CALLS, "passed": True}


def _stateful_lstm(tmp_path):
    import keras

    x = keras.Input((4, 3), batch_size=2, name="x")
    model = keras.Model(x, keras.layers.LSTM(3, stateful=True, name="rec")(x))
    model.save(tmp_path / "model.keras")
    return model


@pytest.mark.parametrize("broken", ["swapped", "removed"])
def test_verify_catches_a_file_that_does_not_carry_its_states(broken, tmp_path):
    """A stateful LSTM's file whose state map feeds c where h belongs, or that has none (a frozen-state
    file): each call alone is right (the cases from zero states pass), the second and third calls are not,
    and the CLI says so and exits 1."""
    from click.testing import CliRunner

    from toolkit.cli import cli

    model = _stateful_lstm(tmp_path)
    result = export_model(model)
    good = result.save(tmp_path / "good.onnx")
    passed = CliRunner().invoke(cli, ["verify", str(good), "--keras", str(tmp_path / "model.keras")])
    assert passed.exit_code == 0, passed.output
    assert "3 consecutive calls, states carried through lstm_onnx.state_map: pass" in passed.output
    assert read_state_map(result.model) == {"rec_initial_state_h": "rec_state_h", "rec_initial_state_c": "rec_state_c"}
    proto = result.model
    entry = next(p for p in proto.metadata_props if p.key == METADATA_PREFIX + STATE_MAP)
    if broken == "swapped":
        entry.value = json.dumps({"rec_initial_state_h": "rec_state_c", "rec_initial_state_c": "rec_state_h"})
    else:
        proto.metadata_props.remove(entry)
    onnx.save(proto, tmp_path / "broken.onnx")
    failed = CliRunner().invoke(cli, ["verify", str(tmp_path / "broken.onnx"), "--keras", str(tmp_path / "model.keras"),
                                      "--json"])
    assert failed.exit_code == 1, failed.output
    assert json.loads(failed.output)["carried_calls"] == {"calls": CALLS, "passed": False}
    carried = verify_runtimes(tmp_path / "broken.onnx", KerasRunner(model))[0].report.carried_calls()
    assert [bool(case) for case in carried] == [True, False, False]
    assert all(("no lstm_onnx.state_map" in case.label) == (broken == "removed") for case in carried)


def test_tf2onnx_alone_freezes_a_stateful_layer_and_its_check_says_so(tmp_path):
    """`--converter tf2onnx` writes no state inputs: its file passed a one-call check with frozen zero
    states. Now its calls 2 and 3 fail, and nothing is written."""
    from click.testing import CliRunner

    from toolkit.cli import cli

    _stateful_lstm(tmp_path)
    done = CliRunner().invoke(cli, ["export", str(tmp_path / "model.keras"), "-o", str(tmp_path / "m.onnx"),
                                    "--converter", "tf2onnx"])
    assert done.exit_code != 0 and not (tmp_path / "m.onnx").exists(), done.output
    assert ("each call from zero states matches Keras, call 2 of 3, call 3 of 3 do not: the file has no "
            "lstm_onnx.state_map, so nothing carries its stateful layers' states (frozen states)") in done.output
    assert "--atol" not in done.output  # no tolerance is the fix
