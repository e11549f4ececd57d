"""State in, state out: streaming in chunks, stateful layers, and the state map."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from toolkit.checking.results import split_steps
from toolkit.checking.streaming import parse_chunks, stream_parity
from toolkit.cli import cli
from toolkit.errors import InputError
from toolkit.export.exporter import export_model
from toolkit.models.builder import StackConfig, build_stack, variant_config
from toolkit.onnxfile import metadata
from toolkit.runtimes.onnxrt import OnnxRunner

STREAMED = {
    "lstm": variant_config("lstm", all_states=False, return_state=False),
    "gru": variant_config("gru", all_states=False),
    "simple_rnn": variant_config("simple_rnn", all_states=False, return_sequences=False),
    "lstm_stack_3": StackConfig(layers=3, units=5, timesteps=None, features=2, return_sequences=True),
    "mixed_cells": variant_config("mixed_cells", all_states=False, return_state=False),
    "dense_head": variant_config("dense_head", all_states=False, return_state=False),
    "lstm_initial_state": variant_config("lstm_initial_state", all_states=False),
}


@pytest.fixture(scope="module", params=sorted(STREAMED))
def streamable(request):
    model = build_stack(STREAMED[request.param])
    return model, export_model(model, state_io=True)


def test_state_io_names_every_state_and_maps_it(streamable):
    model, result = streamable
    mapping = metadata.read_state_map(result.model)
    runner = OnnxRunner(result.model)
    assert set(mapping.values()) <= set(runner.output_names)
    assert all(name.endswith(("state_h", "state_c")) for name in mapping.values())
    recurrent = [layer for layer in model.layers if hasattr(layer, "cell")]
    states = sum(2 if type(layer).__name__ == "LSTM" else 1 for layer in recurrent)
    assert len(mapping) == states
    assert result.parity, result.parity.failures()


@pytest.mark.parametrize("chunks", [[1], [3], [2, 5, 1, 4]], ids=["1", "3", "uneven"])
def test_chunked_stream_equals_keras_on_the_whole_sequence(streamable, chunks):
    model, result = streamable
    report = stream_parity(model, result.model, chunks, length=13)
    assert report, report.against_keras.failures() + report.against_whole.failures()


def test_missing_states_are_zeros_and_fed_states_are_used():
    model = build_stack(StackConfig(layers=1, units=3, timesteps=None, features=2, return_state=True))
    runner = OnnxRunner(export_model(model, state_io=True).model)
    x = np.ones((2, 4, 2), np.float32)
    zeros = {"lstm_1_initial_state_h": np.zeros((2, 3), np.float32), "lstm_1_initial_state_c": np.zeros((2, 3), np.float32)}
    default = runner.run({"input": x})
    fed_zeros = runner.run({"input": x, **zeros})
    fed_ones = runner.run({"input": x, **{k: v + 1 for k, v in zeros.items()}})
    assert all(np.array_equal(default[k], fed_zeros[k]) for k in default)
    assert not np.allclose(default["lstm_1_state_c"], fed_ones["lstm_1_state_c"])


@pytest.mark.parametrize("variant", ["bidirectional_concat", "lstm_go_backwards"])
def test_backward_layers_refuse_to_stream_with_the_reason(variant):
    model = build_stack(variant_config(variant, all_states=False))
    result = export_model(model, state_io=True)
    assert result.parity
    with pytest.raises(InputError, match="need the whole sequence"):
        stream_parity(model, result.model, [2])


def test_stateful_layers_export_as_state_io_with_a_note():
    import keras

    x = keras.Input(batch_shape=(2, None, 3), name="x")
    y = keras.layers.LSTM(4, stateful=True, return_sequences=True, name="stateful_lstm")(x)
    model = keras.Model(x, y, name="stateful")
    result = export_model(model)
    assert result.parity, result.parity.failures()
    assert [e.onnx_op for e in result.lowering] == ["LSTM"]
    assert result.warnings == ()
    assert any("stateful=True" in n and "state inputs" in n for n in result.notes)
    mapping = metadata.read_state_map(result.model)
    assert mapping == {"stateful_lstm_initial_state_h": "stateful_lstm_state_h",
                       "stateful_lstm_initial_state_c": "stateful_lstm_state_c"}
    report = stream_parity(model, result.model, [1, 2], length=7, batch=2)
    assert report, report.against_keras.failures()


def test_chunk_parsing():
    assert parse_chunks("3") == [3] and parse_chunks("1,4,2") == [1, 4, 2]
    assert split_steps(7, [3]) == [(0, 3), (3, 6), (6, 7)]
    assert split_steps(7, [1, 4]) == [(0, 1), (1, 5), (5, 6), (6, 7)]
    for bad in ["0", "a", "", "2,-1"]:
        with pytest.raises(InputError, match="Expected --stream"):
            parse_chunks(bad)


def test_export_state_io_and_verify_stream_cli(tmp_path):
    model = build_stack(StackConfig(layers=2, units=4, timesteps=None, features=2, cell="gru", return_sequences=True))
    keras_file = tmp_path / "gru.keras"
    model.save(keras_file)
    result = CliRunner().invoke(cli, ["export", str(keras_file), "--state-io"])
    assert result.exit_code == 0, result.output
    streamed = CliRunner().invoke(cli, ["verify", str(tmp_path / "gru.onnx"), "--keras", str(keras_file),
                                       "--stream", "1,3,2", "--json"])
    assert streamed.exit_code == 0, streamed.output
    payload = json.loads(streamed.output)
    assert payload["stream"]["passed"] and payload["stream"]["chunks"] == [1, 3, 2]
    plain = tmp_path / "plain.onnx"
    CliRunner().invoke(cli, ["export", str(keras_file), "-o", str(plain)])
    refused = CliRunner().invoke(cli, ["verify", str(plain), "--keras", str(keras_file), "--stream", "2"])
    assert refused.exit_code == 1 and "Expected an export made with --state-io" in refused.output


def test_state_outputs_take_per_output_tolerances():
    from toolkit.tolerance import Tolerances

    model = build_stack(StackConfig(layers=1, units=3, timesteps=None, features=2))
    result = export_model(model, state_io=True, tolerances=Tolerances.parse(atol=["lstm_1_state_c:1e-5"]))
    assert result.parity


def test_inspect_lists_state_inputs_as_optional(tmp_path):
    from toolkit.onnxfile.model import inspect_model

    path = export_model(build_stack(StackConfig(layers=1, timesteps=None)), state_io=True).save(tmp_path / "s.onnx")
    described = inspect_model(path).to_json()
    assert [i["name"] for i in described["inputs"]] == ["input"]
    assert [i["name"] for i in described["optional_inputs"]] == ["lstm_1_initial_state_h", "lstm_1_initial_state_c"]
    text = CliRunner().invoke(cli, ["inspect", str(path)]).output
    assert "lstm_1_initial_state_h  float32  (batch, 2)  optional (zeros)" in text
