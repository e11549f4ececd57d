"""Recurrent Keras models other people trained and published (issue 24), exported as a user would.

Each entry of tests/published/manifest.json is exported with `lstm-onnx export FILE --json` in a child process
(scripts/published_models.py --child lstm-onnx, the harness that writes docs/published-models.md), and must be:
written, fused (no Loop/Scan, a fused op per recurrent layer), every output named by role, and equal to the
original (tf.keras, Keras 3 or the SavedModel's signature) at 1e-4 + 1e-4*|ref| on inputs of the model's own
kind. Entries whose cause is not fixed yet carry it in the manifest's "expect" field and are strict xfails, so
a fix shows up as a failure to update the manifest.

The files are not in git. Without the corpus folder ($LSTM_ONNX_CORPUS, else corpus/ in the repo root) these
tests are skipped with one reason; the manifest checks below run everywhere.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "published_models.py"
FORMATS = {"keras2-h5", "tfkeras-h5", "keras3-h5", "savedmodel", "keras3-keras", "tfkeras-keras", "json-weights-h5",
           "yaml-weights-h5"}


def _harness():
    spec = importlib.util.spec_from_file_location("published_models", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


HARNESS = _harness()
ENTRIES = HARNESS.load_manifest()
CORPUS = HARNESS.corpus_root()
ABSENT = (f"the published-model corpus is absent ({CORPUS}): set $LSTM_ONNX_CORPUS to its folder or put it at "
          f"corpus/ in the repo root; tests/published/manifest.json lists the files and tests/published/README.md "
          f"says how to bring them back")


def _param(entry: dict):
    marks = [pytest.mark.slow]
    if entry["expect"] != "pass":
        marks.append(pytest.mark.xfail(strict=True, reason=entry["expect"]))
    return pytest.param(entry, id=entry["slug"], marks=marks)


def _export_row(slug: str, tmp_path: Path) -> dict:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--child", "lstm-onnx", "--slug", slug, "--work", str(tmp_path)],
                          capture_output=True, text=True, timeout=HARNESS.CHILD_TIMEOUT_S,
                          env=HARNESS.child_env())
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 0 and lines, f"the harness crashed: {proc.stderr[-2000:]}"
    return json.loads(lines[-1])


@pytest.mark.skipif(not CORPUS.is_dir(), reason=ABSENT)
@pytest.mark.parametrize("entry", [_param(e) for e in ENTRIES])
def test_published_model_exports_fused_named_and_equal(entry, tmp_path):
    assert HARNESS.sha_ok(entry), (f"{entry['slug']}: a file is missing or differs from its sha256 under {CORPUS}; "
                                   f"bring it back from {entry['repo']} at {entry['commit']} (tests/published/README.md)")
    row = _export_row(entry["slug"], tmp_path)
    assert row["written"], f"refused: {row['error']}"
    assert row["fused"], f"not fused: {row['ops']}"
    assert row["named"], f"outputs not named by role: {row['outputs']}"
    assert row["equal"], (f"differs from {row.get('reference')}: max abs {row.get('max_abs')}, max rel "
                          f"{row.get('max_rel')} {row.get('note', '')}")


def test_manifest_lists_at_least_thirty_recurrent_models_with_their_sources():
    assert len(ENTRIES) >= 30
    assert len({e["slug"] for e in ENTRIES}) == len(ENTRIES)
    for entry in ENTRIES:
        assert re.fullmatch(r"[0-9a-f]{40}", entry["commit"]), entry["slug"]
        assert entry["format"] in FORMATS, entry["slug"]
        assert entry["recurrent_layers"], entry["slug"]
        assert entry["license"] and entry["expect"], entry["slug"]
        assert entry["input"]["kind"] in {"token ids", "float features", "padded rows (Masking)"}, entry["slug"]
        for item in entry["files"]:
            assert re.fullmatch(r"[0-9a-f]{64}", item["sha256"]) and item["bytes"] > 0, entry["slug"]
        # a pair (model.to_json() or to_yaml() + model.save_weights) names both of its files; a whole-model file
        # no weights
        pair = {entry["model"], entry["weights"]} if entry["format"].endswith("-weights-h5") else set()
        assert pair <= {item["local"] for item in entry["files"]} and bool(pair) == ("weights" in entry), entry["slug"]


def test_manifest_covers_the_formats_issue_24_names():
    formats = {e["format"] for e in ENTRIES}
    assert {"keras2-h5", "tfkeras-h5", "savedmodel", "keras3-keras"} <= formats
    layers = {layer for e in ENTRIES for layer in e["recurrent_layers"]}
    assert {"LSTM", "GRU", "SimpleRNN"} <= layers
