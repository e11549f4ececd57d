"""export_stacks: one ExportOptions value for a family of stacks, all-or-nothing writes, its JSON."""

import json

import pytest

from toolkit.errors import InputError
from toolkit.export.suite import MANIFEST_NAME, export_stacks, read_manifest
from toolkit.models.builder import StackConfig, stack_configs
from toolkit.onnxfile.metadata import read_options
from toolkit.options import ExportOptions
from toolkit.tolerance import Tolerances


def test_result_knows_its_json_and_its_table_rows(seed_suite):
    payload = seed_suite.to_json()
    assert payload["passed"] is True and payload["written"] == [str(p) for p in seed_suite.written]
    assert [m["file"] for m in payload["models"]] == [e.file for e in seed_suite.entries]
    first = payload["models"][0]
    assert list(first) == ["file", "sha256", "fused_ops", "warnings", "notes", "parity"]
    assert first["fused_ops"] == {"LSTM": 2} and first["parity"]["passed"] is True
    assert [name for name, _ in seed_suite.items] == [e.file for e in seed_suite.entries]
    assert [name for name, _ in seed_suite.exported] == [e.config.name for e in seed_suite.entries]
    assert seed_suite.warnings == [] and json.dumps(payload)


def test_manifest_matches_the_entries(seed_suite):
    manifest = read_manifest(seed_suite.out_dir)
    assert manifest["opset"] == 17
    assert [m["sha256"] for m in manifest["models"]] == [e.result.sha256 for e in seed_suite.entries]


def test_one_options_value_reaches_every_stack(tmp_path):
    options = ExportOptions(padding="left", output_names={"lstm_2_state_h": "h"},
                            tolerances=Tolerances.parse(atol=["h:1e-5"]))
    suite = export_stacks(stack_configs(return_sequences=False), tmp_path, options, write=False)
    assert [e.file for e in suite.entries] == ["case2_state.onnx", "case4_last.onnx"]
    assert [o.name for o in suite.entries[0].result.outputs] == ["lstm_2_last", "h", "lstm_2_state_c"]
    assert all(read_options(e.result.model) == ExportOptions(padding="left") for e in suite.entries)
    assert suite.written == [] and list(tmp_path.iterdir()) == []  # write=False writes nothing


@pytest.mark.parametrize("call,message", [
    (lambda out: export_stacks([], out), "Expected at least one stack configuration. Received: none"),
    (lambda out: export_stacks([StackConfig()], out, output_names=["a"]),
     "Expected output names as a mapping DEFAULT=NEW for several stacks. Received: ['a']"),
    (lambda out: export_stacks([StackConfig()], out, output_names={"nope": "a"}),
     "Expected --output-name keys among the outputs ['lstm_2_last']. Received unknown key(s): ['nope']"),
    (lambda out: export_stacks([StackConfig()], out, tolerances=Tolerances.parse(atol=["nope:1"])),
     "Expected tolerance keys among the outputs ['lstm_2_last']. Received unknown key(s): ['nope']"),
    (lambda out: export_stacks([StackConfig()], out, opset=13), "Expected --opset between 14 and 18. Received: 13"),
], ids=["no-configs", "name-list", "unknown-rename", "unknown-tolerance", "opset"])
def test_bad_requests_are_refused_before_anything_is_written(tmp_path, call, message):
    with pytest.raises(InputError) as caught:
        call(tmp_path / "out")
    assert str(caught.value) == message
    assert not (tmp_path / "out").exists()


def test_a_file_in_place_of_the_folder_is_refused(tmp_path):
    target = tmp_path / "taken"
    target.write_text("x")
    with pytest.raises(InputError, match="Expected an output folder"):
        export_stacks([StackConfig()], target)
    assert not (tmp_path / MANIFEST_NAME).exists()
