"""The lstm_onnx.* metadata: one writer (sorted keys, compact JSON) and typed readers, on real exports."""

from pathlib import Path

import pytest
from onnx import TensorProto, helper

from toolkit.errors import InputError
from toolkit.export.exporter import export_model
from toolkit.export.suite import read_manifest
from toolkit.models.builder import StackConfig, build_stack
from toolkit.onnxfile import metadata
from toolkit.onnxfile.model import load_onnx
from toolkit.options import ExportOptions

EXPORTED = Path(__file__).resolve().parent.parent / "exported"


def _bare_model():
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    return helper.make_model(graph)


def test_writer_sorts_keys_and_writes_compact_sorted_json():
    model = _bare_model()
    model.metadata_props.add(key="stale", value="dropped")
    metadata.write_metadata(model, {metadata.OPSET: "17", metadata.OPTIONS: {"b": 1, "a": [1, 2]}})
    assert [(p.key, p.value) for p in model.metadata_props] == [
        ("lstm_onnx.opset", "17"), ("lstm_onnx.options", '{"a":[1,2],"b":1}')]


def test_readers_give_defaults_for_a_file_without_metadata():
    model = _bare_model()
    assert metadata.read_options(model) == ExportOptions()
    assert metadata.read_state_map(model) == {} and metadata.read_layers(model) == []
    assert metadata.read_outputs(model) == [] and metadata.read_parity(model) == {}
    assert metadata.read_opset(model) == 17


def test_unreadable_json_is_an_input_error():
    model = _bare_model()
    metadata.write_metadata(model, {metadata.LAYERS: "{not json"})
    with pytest.raises(InputError, match=r"Expected JSON in metadata lstm_onnx.layers. Received: '\{not json'"):
        metadata.read_layers(model)


@pytest.mark.parametrize("entry", read_manifest(EXPORTED)["models"], ids=lambda e: e["case"])
def test_readers_on_the_committed_exports(entry):
    model = load_onnx(EXPORTED / entry["file"])
    assert metadata.read_options(model) == ExportOptions()
    assert metadata.read_output_names(model) == [o["name"] for o in entry["outputs"]]
    assert metadata.read_outputs(model) == entry["outputs"]
    assert metadata.read_parity(model) == entry["parity"]
    assert metadata.read_source(model) == {"builder": entry["config"]}
    assert [layer["name"] for layer in metadata.read_layers(model)] == ["lstm_1", "lstm_2"]
    assert metadata.read_versions(model)["lstm_onnx"] and metadata.read_state_map(model) == {}


def test_state_map_and_options_of_a_state_io_export():
    result = export_model(build_stack(StackConfig(layers=1, timesteps=None)), ExportOptions(state_io=True, padding="left"))
    assert metadata.read_options(result.model) == ExportOptions(state_io=True, padding="left")
    state_map = metadata.read_state_map(result.model)
    inputs = {v.name for v in result.model.graph.input}
    outputs = {v.name for v in result.model.graph.output}
    assert state_map and set(state_map) <= inputs and set(state_map.values()) <= outputs
    assert set(state_map.values()) == {"lstm_1_state_h", "lstm_1_state_c"}


@pytest.mark.parametrize("reader, key, text", [
    (metadata.read_layers, metadata.LAYERS, '{"name": "lstm"}'),  # an object where a list belongs
    (metadata.read_outputs, metadata.OUTPUTS, '[{"role": "last"}]'),  # a record without a name
    (metadata.read_output_names, metadata.OUTPUTS, "[3]"),
    (metadata.read_state_map, metadata.STATE_MAP, '["a", "b"]'),
    (metadata.read_state_map, metadata.STATE_MAP, '{"a": 1}'),
    (metadata.read_options, metadata.OPTIONS, "[]"),
    (metadata.read_parity, metadata.PARITY, '"passed"'),
    (metadata.read_opset, metadata.OPSET, "seventeen"),
])
def test_every_reader_refuses_bad_metadata_in_one_line_naming_the_key(reader, key, text):
    model = _bare_model()
    metadata.write_metadata(model, {key: text})
    with pytest.raises(InputError, match=rf"^Expected .*metadata lstm_onnx\.{key}.* Received: ") as info:
        reader(model)
    assert "\n" not in str(info.value)


@pytest.fixture(scope="module")
def saved_state_io(tmp_path_factory):
    """A small --state-io export and its .keras file, for the checks that read metadata from a file."""
    folder = tmp_path_factory.mktemp("metadata")
    model = build_stack(StackConfig(layers=1, timesteps=None))
    keras_file = folder / "model.keras"
    model.save(keras_file)
    return keras_file, export_model(model, state_io=True).model


@pytest.mark.parametrize("command, key, text", [
    (["verify"], metadata.OUTPUTS, "{oops"),  # verify once fell back to the default names, silently
    (["verify"], metadata.OUTPUTS, '[{"role": "last"}]'),
    (["verify"], metadata.OPTIONS, '["padding"]'),  # and read non-object options as none
    (["verify", "--stream", "2"], metadata.STATE_MAP, "{oops"),  # streaming had its own message
    (["verify", "--stream", "2"], metadata.LAYERS, '{"a": 1}'),
])
def test_verify_and_streaming_refuse_bad_metadata_like_the_readers(saved_state_io, tmp_path, command, key, text):
    from click.testing import CliRunner

    from toolkit.cli import cli

    keras_file, proto = saved_state_io
    model = type(proto)()
    model.CopyFrom(proto)
    entries = {p.key.removeprefix("lstm_onnx."): p.value for p in model.metadata_props}
    metadata.write_metadata(model, {**entries, key: text})
    onnx_file = tmp_path / "tampered.onnx"
    onnx_file.write_bytes(model.SerializeToString())
    result = CliRunner().invoke(cli, [*command, str(onnx_file), "--keras", str(keras_file)])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    line = result.output.strip()
    assert "\n" not in line and f"metadata lstm_onnx.{key}" in line and "Received: " in line
