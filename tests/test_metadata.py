"""The lstm_onnx.* metadata: typed writers over one place that writes (sorted keys, compact JSON), and typed
readers, on real exports."""

import re
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


def _record(**changes):
    fields = dict(source={"builder": {"units": 2}}, inputs=[{"name": "x"}], outputs=[{"name": "y"}],
                  parity={"passed": True}, versions={"lstm_onnx": "1"}, options=ExportOptions(tier="int8", opset=18))
    return metadata.ExportRecord(**{**fields, **changes})


def test_writer_sorts_keys_and_writes_compact_sorted_json():
    model = _bare_model()
    model.metadata_props.add(key="stale", value="dropped")
    metadata.write_metadata(model, _record(parity={"b": 1, "a": [1, 2]}))
    assert [(p.key, p.value) for p in model.metadata_props] == [
        ("lstm_onnx.inputs", '[{"name":"x"}]'), ("lstm_onnx.opset", "18"), ("lstm_onnx.options",
         '{"converter":"lstm-onnx","padding":"right","propagate_nan":false,"state_io":false,"tier":"int8"}'),
        ("lstm_onnx.outputs", '[{"name":"y"}]'), ("lstm_onnx.parity", '{"a":[1,2],"b":1}'),
        ("lstm_onnx.source", '{"builder":{"units":2}}'), ("lstm_onnx.versions", '{"lstm_onnx":"1"}')]
    assert metadata.read_tier(model) == "int8" and metadata.read_opset(model) == 18


def test_the_record_writes_layers_and_states_only_where_it_has_them():
    model = _bare_model()
    metadata.write_metadata(model, _record(layers=[{"name": "lstm"}], state_map={"h0": "h"},
                                           state_inputs=[{"name": "h0", "dtype": "float32", "shape": ["batch", 2]}]))
    assert metadata.read_layers(model) == [{"name": "lstm"}] and metadata.read_state_map(model) == {"h0": "h"}
    assert metadata.read_state_inputs(model) == ["h0"]
    metadata.write_metadata(model, _record())
    assert metadata.read_layers(model) == [] and metadata.read_state_map(model) == {}
    assert metadata.metadata_value(model, metadata.STATE_INPUTS) is None


def test_the_state_inputs_and_session_writers_keep_every_other_entry():
    model = _bare_model()
    metadata.write_metadata(model, _record())
    before = [(p.key, p.value) for p in model.metadata_props]
    metadata.write_state_inputs(model, ["h0", "c0"])
    defaults = metadata.SessionDefaults("onnxruntime", threads=2, batch=1, steps=100, stream=False, us=12.5)
    metadata.write_session_defaults(model, defaults)
    after = [(p.key, p.value) for p in model.metadata_props]
    assert [entry for entry in after if entry in before] == before and len(after) == len(before) + 2
    assert [p.key for p in model.metadata_props] == sorted(p.key for p in model.metadata_props)
    assert metadata.read_state_inputs(model) == ["h0", "c0"] and metadata.read_session_defaults(model) == defaults


def test_no_module_but_metadata_writes_metadata_props():
    """The one writer: every other module goes through its typed writers (a regex over the source, which
    the no-import-of-internals rule cannot see)."""
    root = Path(__file__).resolve().parent.parent / "toolkit"
    writes = re.compile(r"metadata_props\.(add|append|extend)|ClearField\([\"']metadata_props|\bwrite_entries\(")
    found = [str(path.relative_to(root)) for path in root.rglob("*.py")
             if writes.search(path.read_text()) and path != root / "onnxfile" / "metadata.py"]
    assert found == []


def test_the_tier_is_read_back_by_one_function():
    root = Path(__file__).resolve().parent.parent / "toolkit"
    readers = [str(path.relative_to(root)) for path in root.rglob("*.py")
               if re.search(r"\.get\([\"']tier[\"']", path.read_text())]
    assert readers == []
    model = _bare_model()
    assert metadata.read_tier(model) == "float32"
    metadata.write_entries(model, {metadata.OPTIONS: '{"tier": "bfloat8"}'})
    with pytest.raises(InputError, match=r"^Expected a precision tier among .* Received: 'bfloat8'$"):
        metadata.read_tier(model)


def test_readers_give_defaults_for_a_file_without_metadata():
    model = _bare_model()
    assert metadata.read_options(model) == ExportOptions()
    assert metadata.read_state_map(model) == {} and metadata.read_layers(model) == []
    assert metadata.read_outputs(model) == [] and metadata.read_parity(model) == {}
    assert metadata.read_opset(model) == 17


def test_unreadable_json_is_an_input_error():
    model = _bare_model()
    metadata.write_entries(model, {metadata.LAYERS: "{not json"})
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
    metadata.write_entries(model, {key: text})
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
    metadata.write_entries(model, {key: text})
    onnx_file = tmp_path / "tampered.onnx"
    onnx_file.write_bytes(model.SerializeToString())
    result = CliRunner().invoke(cli, [*command, str(onnx_file), "--keras", str(keras_file)])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    line = result.output.strip()
    assert "\n" not in line and f"metadata lstm_onnx.{key}" in line and "Received: " in line
