"""Keras 1 and 2's `model.to_yaml()` beside `model.save_weights("w.h5")`: exported and verified through the CLI
(`MODEL.yml --weights W.h5`), equal to tf.keras; a hostile YAML, a YAML that is not a Keras model config and
mixed-up pairs refused in one line, writing nothing and running nothing. The pair is made by real tf.keras in
this test run (`scripts/make_keras2_models.py --only yaml_pair json_pair`), written as Keras 2's `to_yaml` wrote
it: `yaml.dump(model._updated_config())`, shapes tagged `!!python/tuple`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from test_keras2 import check_against_tf_keras

from toolkit.errors import ModelLoadError
from toolkit.models.keras2.architecture import read_architecture
from toolkit.onnxfile.metadata import read_source
from toolkit.options import DEFAULT_LIMITS

ROOT = Path(__file__).resolve().parents[1]
OUTPUTS = ["dense_y_output"]

# The CLI in a child, reporting its exit code, output and which heavy modules it imported.
CLI = """
import sys
from click.testing import CliRunner
from toolkit.cli import cli
result = CliRunner().invoke(cli, sys.argv[1:])
heavy = sorted(m for m in ("tensorflow", "keras", "tf2onnx", "tf_keras") if m in sys.modules)
print(result.output, end="")
print("EXIT:%d HEAVY:%s" % (result.exit_code, ",".join(heavy)))
"""


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    """The YAML pairs (Keras 2's and Keras 1.2.2's) and the JSON pair (for mixing them up), made by real
    tf.keras in a subprocess."""
    out = tmp_path_factory.mktemp("yaml_pairs")
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_keras2_models.py"), str(out),
                           "--only", "yaml_pair", "json_pair", "keras1"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def cli(folder: Path, *args: str, timeout: int = 600) -> tuple[int, list[str], str]:
    """(exit code, output lines, heavy modules imported) of `lstm-onnx ARGS` run in `folder`."""
    done = subprocess.run([sys.executable, "-c", CLI, *args], cwd=folder, capture_output=True, text=True,
                          timeout=timeout)
    *lines, last = done.stdout.splitlines()
    assert last.startswith("EXIT:"), done.stdout[-2000:] + done.stderr[-2000:]
    code, heavy = last[len("EXIT:"):].split(" HEAVY:")
    return int(code), lines, heavy


def test_the_yaml_holds_the_config_to_json_wrote(pairs):
    """`!!python/tuple` read as the list `to_json` writes: the YAML's config is the JSON's, value for value."""
    text = (pairs / "yaml_pair.yml").read_text()
    assert "!!python/tuple" in text
    assert read_architecture(pairs / "yaml_pair.yml", DEFAULT_LIMITS) == json.loads((pairs / "yaml_pair.json").read_text())
    # the tutorials' form, `f.write(yaml.dump(model.to_yaml()))`: the same YAML inside one string
    assert read_architecture(pairs / "yaml_pair_tutorial.yml", DEFAULT_LIMITS) == \
        read_architecture(pairs / "yaml_pair.yml", DEFAULT_LIMITS)


@pytest.mark.parametrize("yml, name, outputs, fused", [
    ("yaml_pair.yml", "yaml_pair", OUTPUTS, {"LSTM": 1, "GRU": 1}),
    ("yaml_pair_tutorial.yml", "yaml_pair", OUTPUTS, {"LSTM": 1, "GRU": 1}),
    # Keras 1.2.2's to_yaml: Keras 1 argument names (Dropout's `p` among them), per-gate weights
    ("keras1_recurrent.yml", "keras1_recurrent", ["dense_1_output"], {"LSTM": 2, "GRU": 1, "RNN": 1}),
])
def test_a_yaml_pair_exports_and_verifies_through_the_cli_equal_to_tf_keras(pairs, tmp_path, yml, name, outputs,
                                                                            fused):
    out, weights = tmp_path / "pair.onnx", f"{name}_weights.h5"
    code, lines, _ = cli(pairs, "export", yml, "--weights", weights, "-o", str(out), "--json")
    assert code == 0 and out.is_file(), lines
    result = json.loads("\n".join(lines))
    assert result["fused_ops"] == fused and result["parity"]["passed"]
    assert [o["name"] for o in result["parity"]["outputs"]] == outputs
    model = onnx.load(out)
    check_against_tf_keras(model, pairs, name, outputs)  # tf.keras' predict on the model that wrote it
    source = read_source(model)
    assert source["keras_file"] == f"{yml} + {weights}"
    assert source["format"] == "Keras 2 architecture YAML + HDF5 weights"
    assert "from the architecture YAML's config and the weights file" in source["reference"]
    code, lines, _ = cli(pairs, "verify", str(out), "--keras", yml, "--weights", weights)
    assert code == 0 and any("PASS" in line for line in lines), lines


WMGRAY_AXIS = "!!python/object/apply:tensorflow.python.training.tracking.data_structures.ListWrapper"
HOSTILE = {
    "os_system": ('!!python/object/apply:os.system ["touch {marker}"]\n', "!!python/object/apply:os.system"),
    "nested_popen": ("class_name: Sequential\nconfig:\n  layers:\n  - class_name: LSTM\n    config:\n      units: "
                     '!!python/object/new:subprocess.Popen [["touch", "{marker}"]]\n',
                     "!!python/object/new:subprocess.Popen"),
    "inside_the_string": (None, "!!python/object/apply:os.system"),  # the tutorials' YAML-in-a-string form
    # what tf.keras 2.4's to_yaml wrote for BatchNormalization's axis (WMGray/Emotion-analysis-6's lstm.yml)
    "tf_keras_24_listwrapper": (f"class_name: Sequential\nconfig:\n  axis: {WMGRAY_AXIS}\n  - - 1\n", WMGRAY_AXIS),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_yaml_is_refused_in_one_line_before_anything_runs(pairs, tmp_path, case):
    marker = tmp_path / "ran"
    text, tag = HOSTILE[case]
    if text is None:
        import yaml

        text = yaml.dump(HOSTILE["os_system"][0].format(marker=marker))
    (tmp_path / "model.yml").write_text(text.format(marker=marker))
    out = tmp_path / "out.onnx"
    code, lines, heavy = cli(tmp_path, "export", "model.yml", "--weights", str(pairs / "yaml_pair_weights.h5"),
                             "-o", str(out))
    assert code == 1 and len(lines) == 1, lines
    assert lines[0].startswith("Error: Expected an architecture YAML (model.to_yaml()) holding plain data")
    assert f"with the tag {tag}" in lines[0] and "refused before anything was built" in lines[0]
    assert heavy == "" and not marker.exists() and not out.exists()  # refused before TensorFlow was imported


NOT_KERAS = {
    "a_mapping": ("name: hello\nitems: [1, 2]\n", "holding a Keras model config (class_name, config). Received: "
                                                  "'model.yml' with keys name, items"),
    "a_list": ("- 1\n- 2\n", "holding a Keras model config (a mapping). Received: 'model.yml' holding a list"),
    "a_string": ("just some text\n", "holding a Keras model config (a mapping). Received: 'model.yml' holding a str"),
    "not_yaml": ("class_name: [unclosed\n", "Expected an architecture YAML (model.to_yaml()). Received: 'model.yml' ("),
    "an_alias_bomb": ("a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
        f"{n}: &{n} [{', '.join(['*' + p] * 9)}]\n" for p, n in zip("abcdefg", "bcdefgh"))
        + "class_name: Sequential\nconfig: [*h, *h]\n", "values and 64 levels once its aliases are expanded"),
    "keras3": ("class_name: Sequential\nconfig: {}\nkeras_version: 3.8.0\n", "written by Keras 1 or 2. Received: "
                                                                          "'model.yml' from Keras 3.8.0"),
    # Nested merges of one anchor grew tenfold a level in PyYAML before 6.0.4 (hours at 9 levels): refused.
    "a_merge_key_bomb": ("a0: &a0 {k: 1}\n" + "".join(f"a{n}: &a{n} {{<<: [{', '.join([f'*a{n - 1}'] * 10)}]}}\n"
                                                      for n in range(1, 9)) + "class_name: Sequential\nconfig: *a8\n",
                         "with a merge key << (Keras never wrote one) (line 2): refused before anything was built"),
    "too_large": ("class_name: Sequential\nconfig: [" + "0," * (2 * 1024 * 1024 + 1) + "0]\n",
                  "Expected an architecture YAML (model.to_yaml()) of at most 4194304 bytes. Received: 'model.yml' is larger"),
}


@pytest.mark.parametrize("case", sorted(NOT_KERAS))
def test_a_yaml_that_is_not_a_keras_model_config_is_refused_in_one_line(pairs, tmp_path, monkeypatch, case):
    text, expected = NOT_KERAS[case]
    (tmp_path / "model.yml").write_text(text)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError, match="Expected an architecture YAML") as refused:
        read_architecture(Path("model.yml"), DEFAULT_LIMITS)
    assert expected in str(refused.value) and "\n" not in str(refused.value)
    out = tmp_path / "out.onnx"
    code, lines, heavy = cli(tmp_path, "export", "model.yml", "--weights", str(pairs / "yaml_pair_weights.h5"),
                             "-o", str(out))
    assert code == 1 and len(lines) == 1 and expected in lines[0], lines
    assert heavy == "" and not out.exists()


@pytest.mark.parametrize("args, expected", [
    (["export", "yaml_pair.yml"], "Expected --weights with an architecture YAML (its model.save_weights .h5)"),
    (["export", "yaml_pair.yml", "--weights", "json_pair_weights.h5"],
     "listing 'lstm', which the config does not declare"),
    (["export", "json_pair.json", "--weights", "yaml_pair_weights.h5"],
     "listing 'embedding_y', which the config does not declare"),
    (["export", "yaml_pair.yml", "--weights", "yaml_pair.h5"], "holding its own model_config"),
    (["export", "yaml_pair_weights.h5", "--weights", "yaml_pair.yml"],
     "Expected an architecture JSON file (model.to_json()) or YAML file (model.to_yaml()) beside --weights"),
    (["export", "yaml_pair.yml", "--weights", "yaml_pair_tutorial.yml"],
     "Expected --weights to name an HDF5 weights file"),
    (["verify", "yaml_pair.onnx", "--keras", "yaml_pair.yml"], "Expected --weights with an architecture YAML"),
])
def test_mixed_up_yaml_pairs_are_refused_in_one_line_and_write_nothing(pairs, tmp_path, args, expected):
    out = tmp_path / "out.onnx"
    code, lines, _ = cli(pairs, *args, *(["-o", str(out)] if args[0] == "export" else []))
    assert code == 1 and len(lines) == 1 and lines[0].startswith("Error: Expected") and expected in lines[0], lines
    assert not out.exists()
