"""The committed exported/ folder: hashes, loading in ONNX Runtime, parity with a fresh Keras build,
and byte-for-byte reproduction in a fresh process."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from toolkit.checking.parity import check_parity
from toolkit.export.suite import read_manifest
from toolkit.fileio import sha256_hex
from toolkit.models.builder import SEED_INPUT, StackConfig, build_stack
from toolkit.onnxfile.metadata import read_options
from toolkit.runtimes.onnxrt import OnnxRunner
from toolkit.tolerance import Tolerances

EXPORTED = Path(__file__).resolve().parent.parent / "exported"
MANIFEST = read_manifest(EXPORTED)
ENTRIES = MANIFEST["models"]


def test_manifest_lists_the_posts_four_cases():
    assert [e["case"] for e in ENTRIES] == ["case1_sequences", "case2_state", "case3_sequences_state", "case4_last"]
    assert sorted(p.name for p in EXPORTED.glob("*.onnx")) == sorted(e["file"] for e in ENTRIES)
    assert MANIFEST["opset"] == 17


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e["case"])
def test_committed_file_matches_its_manifest_entry(entry):
    data = (EXPORTED / entry["file"]).read_bytes()
    assert sha256_hex(data) == entry["sha256"]
    runner = OnnxRunner(EXPORTED / entry["file"])
    assert runner.output_names == [o["name"] for o in entry["outputs"]]
    assert [list(t.shape) for t in runner.outputs] == [o["shape"] for o in entry["outputs"]]
    assert entry["parity"]["passed"] is True


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e["case"])
def test_committed_file_matches_a_fresh_keras_build(entry):
    model = build_stack(StackConfig(**entry["config"]))
    runner = OnnxRunner(EXPORTED / entry["file"])
    padding = read_options(runner.model).padding  # the side the file was exported for
    report = check_parity(model, runner, [o["name"] for o in entry["outputs"]], Tolerances(), padding_side=padding)
    assert report, report.failures()
    assert report.cases[0].label.startswith("seed")
    out = runner.run({"input": np.repeat(SEED_INPUT, 6, axis=0)})  # another batch than traced
    assert all(v.shape[0] == 6 for v in out.values())


REEXPORT = """
import json, sys, tempfile
from toolkit.models.builder import stack_configs
from toolkit.export.suite import export_stacks
with tempfile.TemporaryDirectory() as out:
    suite = export_stacks(stack_configs(), out)
    print(json.dumps({e.file: e.result.sha256 for e in suite.entries}))
"""


@pytest.mark.slow
def test_reexport_in_a_fresh_process_gives_the_committed_bytes():
    """If this fails after a TensorFlow/tf2onnx/onnx upgrade, regenerate with `lstm-onnx export`."""
    done = subprocess.run([sys.executable, "-c", REEXPORT], capture_output=True, text=True, check=True)
    fresh = json.loads(done.stdout.strip().splitlines()[-1])
    assert fresh == {e["file"]: e["sha256"] for e in ENTRIES}
