#!/usr/bin/env bash
# Installs what the cross-runtime checks need besides the Python packages (those come from pyproject's
# extras): Debian's headless Chromium, Debian's nginx (serve's front), onnxruntime-node / onnxruntime-web
# from npm at the versions toolkit/runtimes/js/package-lock.json pins, and tf.keras (the tf-keras package), the reference that
# Keras 2 .h5/.keras exports are checked against. Idempotent and quiet: a step whose result is already
# there is skipped; a failing step prints its log and exits non-zero.
#   scripts/setup_runtimes.sh            (run as root, or with sudo available, for apt-get)
#   PYTHON=/path/to/python scripts/setup_runtimes.sh   (default: .venv/bin/python, else python3)
set -euo pipefail
cd "$(dirname "$0")/.."
JS_DIR=toolkit/runtimes/js
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT

quietly() {  # run a command with its output in $LOG; show the log only when it fails
  if ! "$@" >"$LOG" 2>&1; then
    echo "setup_runtimes: failed: $*" >&2
    tail -n 40 "$LOG" >&2
    exit 1
  fi
}

# tf-keras 2.21 declares `tensorflow` as a dependency, which would install a second TensorFlow beside
# tensorflow-cpu (same import name, files overwriting each other). Its real needs are all met by
# tensorflow-cpu 2.21, so it is installed without dependencies, pinned to the TensorFlow minor.
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
if ! "$PYTHON" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('tf_keras') is None)" 2>/dev/null; then
  quietly "$PYTHON" -m pip install --no-deps --quiet "tf-keras==2.21.*"
fi

if ! command -v chromium-headless-shell >/dev/null 2>&1 && ! command -v chromium >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  quietly $SUDO apt-get update -qq
  quietly env DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium-headless-shell
fi

# nginx: `lstm-onnx serve`'s front (toolkit/serve_proxy.py). serve runs it as its own child with a generated
# config; the package's system service is not used (Debian's policy may not even start it here).
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  quietly $SUDO apt-get update -qq
  quietly env DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nginx
fi

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "setup_runtimes: Expected Node.js 20 or later with npm on PATH. Received: none" >&2
  exit 1
fi

# npm ci wipes node_modules and reinstalls: skip it while the installed tree is the locked one.
STAMP="$JS_DIR/node_modules/.lstm-onnx-lock.sha256"
WANT=$(sha256sum "$JS_DIR/package-lock.json" | cut -d' ' -f1)
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  # onnxruntime-node's install script would download from a host this project cannot reach; its CPU
  # binary ships inside the npm package, so skipping the script loses nothing.
  quietly env ONNXRUNTIME_NODE_INSTALL=skip npm ci --prefix "$JS_DIR" --no-audit --no-fund --loglevel=error
  echo "$WANT" >"$STAMP"
fi
