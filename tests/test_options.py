"""ExportOptions: one value, checked once, whose JSON is the metadata's `lstm_onnx.options`."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from toolkit.errors import InputError
from toolkit.onnxfile.metadata import metadata_value
from toolkit.onnxfile.model import load_onnx
from toolkit.options import CONVERTERS, DEFAULT_OPSET, MAX_OPSET, MIN_OPSET, PADDING_SIDES, ExportOptions
from toolkit.tolerance import Tolerances

EXPORTED = Path(__file__).resolve().parent.parent / "exported"


def test_defaults_are_the_documented_ones():
    options = ExportOptions()
    assert (options.opset, options.converter, options.padding) == (DEFAULT_OPSET, "lstm-onnx", "right")
    assert not (options.propagate_nan or options.state_io or options.require_fused)
    assert options.output_names is None and options.tolerances == Tolerances()
    assert DEFAULT_OPSET == 17 and (MIN_OPSET, MAX_OPSET) == (14, 18)
    assert CONVERTERS == ("lstm-onnx", "tf2onnx") and PADDING_SIDES == ("right", "left")


@pytest.mark.parametrize("changes,message", [
    ({"opset": 12}, "Expected --opset between 14 and 18. Received: 12"),
    ({"opset": "17"}, "Expected --opset between 14 and 18. Received: '17'"),
    ({"padding": "middle"}, "Expected padding in ['right', 'left']. Received: 'middle'"),
    ({"converter": "onnxmltools"}, "Expected converter in ['lstm-onnx', 'tf2onnx']. Received: 'onnxmltools'"),
    ({"converter": "tf2onnx", "state_io": True}, "Expected --converter lstm-onnx with --state-io. Received: --converter tf2onnx"),
    ({"state_io": "yes"}, "Expected state_io True or False. Received: state_io='yes'"),
    ({"tolerances": 1e-5}, "Expected tolerances as a Tolerances. Received: float"),
], ids=["opset-low", "opset-text", "padding", "converter", "state-io-tf2onnx", "flag-type", "tolerances"])
def test_bad_options_are_one_line_input_errors(changes, message):
    with pytest.raises(InputError) as caught:
        ExportOptions(**changes)
    assert str(caught.value) == message


def test_replace_checks_again_and_refuses_unknown_options():
    options = ExportOptions().replace(padding="left", opset=18)
    assert (options.padding, options.opset) == ("left", 18)
    assert ExportOptions().replace() == ExportOptions()
    with pytest.raises(InputError, match=r"Expected export options among .*Received unknown option\(s\): \['paddin'\]"):
        ExportOptions().replace(paddin="left")
    with pytest.raises(InputError, match="Expected padding in"):
        options.replace(padding="up")


@pytest.mark.parametrize("options", [
    ExportOptions(), ExportOptions(padding="left", propagate_nan=True), ExportOptions(state_io=True, opset=15),
    ExportOptions(converter="tf2onnx"),
], ids=["default", "left-nan", "state-io", "tf2onnx"])
def test_json_round_trips(options):
    data = json.loads(json.dumps(options.to_json()))
    assert ExportOptions.from_json(data, opset=options.opset) == options
    assert set(data) == {"converter", "propagate_nan", "state_io", "padding"}


@pytest.mark.parametrize("path", sorted(EXPORTED.glob("*.onnx")), ids=lambda p: p.stem)
def test_json_is_exactly_what_committed_exports_record(path):
    recorded = metadata_value(load_onnx(path), "options")
    assert recorded == json.dumps(ExportOptions().to_json(), sort_keys=True, separators=(",", ":"))


def test_from_json_refuses_what_it_does_not_know():
    with pytest.raises(InputError, match=r"Received unknown key\(s\): \['colour'\]"):
        ExportOptions.from_json({"colour": "red"})
    with pytest.raises(InputError, match="Expected export options as a JSON object"):
        ExportOptions.from_json(["right"])
    assert ExportOptions.from_json({}) == ExportOptions()  # an export older than a recorded option


def test_importing_options_and_the_cli_pulls_in_no_tensorflow():
    code = ("import sys, toolkit.options, toolkit.cli; "
            "print(sorted(m for m in ('tensorflow', 'keras', 'tf2onnx') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
