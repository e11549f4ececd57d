#!/usr/bin/env bash
# The wheel job (.ci/run calls it): lstm-onnx as a user who never clones it gets it. Builds the sdist and,
# from it, the wheel; checks what each holds (the sdist: every file the tests need; the wheel: the package
# data, py.typed, top_level `toolkit`, no node_modules); installs the wheel with [export] into a second
# fresh venv outside the clone; runs `lstm-onnx setup --runtimes all` there (npm packages into a private
# cache folder, so the install itself is exercised); then, from an empty folder outside the clone:
# export, verify of every export in every runtime, explain --html, and a Keras 2 .h5 made with tf_keras
# exported and verified against tf.keras. pip's cache is reused (nothing is downloaded twice).
#   scripts/wheel_check.sh        (PYTHON=python3.x to pick the interpreter of the new venv)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/lstm-onnx-wheel.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
START=$SECONDS
say() { echo "wheel_check: $* ($((SECONDS - START)) s)"; }
fail() { echo "wheel_check: FAILED: $*" >&2; exit 1; }
unset PYTHONPATH  # nothing of the clone may be imported: only the installed wheel
export PIP_DISABLE_PIP_VERSION_CHECK=1

"$PYTHON" -m venv "$WORK/venv"
VENV="$WORK/venv/bin"
"$VENV/pip" install --quiet --upgrade pip "setuptools>=77"

# The sdist, built from the clone (it writes only the ignored lstm_onnx.egg-info there), then the wheel
# from the sdist, as `python -m build` does: a file the sdist lacks fails the wheel too.
(cd "$ROOT" && "$VENV/python" -c "import sys; from setuptools.build_meta import build_sdist; build_sdist(sys.argv[1])" \
  "$WORK/dist" >"$WORK/sdist.log" 2>&1) || { tail -n 20 "$WORK/sdist.log" >&2; fail "building the sdist"; }
SDIST=$(ls "$WORK"/dist/*.tar.gz)
"$VENV/pip" wheel --quiet --no-deps --wheel-dir "$WORK/dist" "$SDIST"
WHEEL=$(ls "$WORK"/dist/*.whl)
"$VENV/python" - "$ROOT" "$SDIST" "$WHEEL" <<'PY' || fail "the sdist or the wheel lacks files (above)"
import sys, tarfile, zipfile
from pathlib import Path

root, sdist, wheel = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
skip = ("__pycache__", ".hypothesis", "node_modules", ".pytest_cache")
with tarfile.open(sdist) as tar:
    held = {"/".join(name.split("/")[1:]) for name in tar.getnames()}
needed = {str(p.relative_to(root)) for top in ("tests", "scripts", "exported", "toolkit") for p in (root / top).rglob("*")
          if p.is_file() and not any(part in skip for part in p.parts) and p.suffix not in (".pyc", ".tmp")}
needed |= {"pyproject.toml", "README.md", "MANIFEST.in"}
missing = sorted(needed - held)
stray = sorted(name for name in held if "node_modules" in name)
with zipfile.ZipFile(wheel) as whl:
    names = set(whl.namelist())
    top = next(whl.read(n).decode().split() for n in names if n.endswith(".dist-info/top_level.txt"))
for path in ("toolkit/py.typed", "toolkit/__init__.pyi", "toolkit/runtimes/js/harness.mjs", "toolkit/runtimes/js/protocol.mjs",
             "toolkit/runtimes/js/page.html", "toolkit/runtimes/js/package.json", "toolkit/runtimes/js/package-lock.json",
             "toolkit/pages/lesson.js", "toolkit/pages/lesson.css", "toolkit/pages/lesson.html"):
    if path not in names:
        missing.append(f"wheel: {path}")
stray += sorted(n for n in names if "node_modules" in n or n.startswith(("tests/", "scripts/")))
if top != ["toolkit"]:
    missing.append(f"wheel top_level.txt: expected ['toolkit'], found {top}")
for line in missing[:20] + [f"must not ship: {s}" for s in stray[:20]]:
    print("wheel_check:", line, file=sys.stderr)
print(f"wheel_check: sdist holds the {len(needed)} files the tests need; wheel {len(names)} files, top_level {top}")
sys.exit(1 if missing or stray else 0)
PY
say "built $(basename "$SDIST") and $(basename "$WHEEL")"

"$VENV/pip" install --quiet "$WHEEL[export]"
say "installed the wheel with [export]"
mkdir "$WORK/empty"
cd "$WORK/empty"
export LSTM_ONNX_JS_DIR="$WORK/js"  # setup really installs the npm packages (npm's own cache is reused)
version=$("$VENV/lstm-onnx" --version)
echo "$version"
case "$version" in *"$WORK/venv/"*) ;; *) fail "expected toolkit imported from the new venv, got: $version" ;; esac
"$VENV/lstm-onnx" setup --runtimes all
say "setup"
"$VENV/lstm-onnx" export >export.log || { cat export.log; fail "lstm-onnx export"; }
for model in exported/*.onnx; do
  "$VENV/lstm-onnx" verify "$model" --runtimes all >verify.log || { cat verify.log; fail "verify $model --runtimes all"; }
  tail -n 1 verify.log | sed "s|^|$model: |"
done
say "export, verify --runtimes all"
"$VENV/lstm-onnx" explain --html lesson.html >explain.log || { cat explain.log; fail "explain --html"; }
[ -s lesson.html ] || fail "explain --html wrote no lesson.html"
say "explain --html"
TF_CPP_MIN_LOG_LEVEL=3 "$VENV/python" - <<'PY' 2>/dev/null
import numpy as np
import tf_keras as k2

inputs = k2.Input((5, 3))
x = k2.layers.LSTM(4, return_sequences=True)(inputs)
outputs = k2.layers.GRU(3, return_state=True)(x)
model = k2.Model(inputs, list(outputs))
model.set_weights([np.random.default_rng(i).uniform(-0.5, 0.5, w.shape).astype(w.dtype)
                   for i, w in enumerate(model.get_weights())])
model.save("keras2.h5")
PY
"$VENV/lstm-onnx" export keras2.h5 -o keras2.onnx >keras2.log || { cat keras2.log; fail "export keras2.h5"; }
"$VENV/lstm-onnx" verify keras2.onnx --keras keras2.h5 >>keras2.log || { cat keras2.log; fail "verify keras2.onnx"; }
tail -n 2 keras2.log
say "Keras 2 .h5 exported and verified: wheel job passed"
