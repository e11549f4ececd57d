#!/usr/bin/env bash
# Installs what the cross-runtime checks need besides the Python packages (those come from pyproject's
# extras): a thin call of `lstm-onnx setup` (toolkit/runtimes/install.py), so a clone and an installed wheel take
# one path. It installs onnxruntime-node / onnxruntime-web from npm at the versions
# toolkit/runtimes/js/package-lock.json pins (into the per-user cache ~/.cache/lstm-onnx/js), Debian's
# headless Chromium and nginx (apt-get; nginx fronts `lstm-onnx serve`), and tf.keras (the tf-keras package, `--no-deps` beside tensorflow-cpu), the
# reference Keras 2 .h5/.keras exports are checked against. Idempotent and quiet: a runtime already there
# is skipped; a failing step says why in one line and exits non-zero.
#   scripts/setup_runtimes.sh            (run as root, or with password-less sudo, for apt-get)
#   PYTHON=/path/to/python scripts/setup_runtimes.sh   (default: .venv/bin/python, else python3)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
exec "$PYTHON" -m toolkit.cli setup --runtimes tf-keras,chromium,nginx,node,web
