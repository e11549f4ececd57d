"""pytriton's Triton build: where its files are, and the environment its Python-backend stub needs.

`lstm-onnx serve` (`toolkit.deploy.serve`) runs this `tritonserver` 2.51 itself. Two facts of the environment
are handled here, not left to the user:

- The stub links `libpython3.X.so.1.0` and takes the first one the loader finds (Debian's, on this
  machine's image); under another build of the same Python (the venv's pyenv 3.11.7) it mixes that
  library with the interpreter's standard library and the model fails to load (pytriton issue #51:
  `'_thread.RLock' object has no attribute '_recursion_count'`). The server gets `LD_LIBRARY_PATH`
  starting with the running interpreter's own `LIBDIR`.
- The stub finds its Python environment (numpy, onnxruntime) through the first `python3` on `PATH`,
  so the server's `PATH` starts with this interpreter's folder (pytriton does the same).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from toolkit.errors import InputError


@dataclass(frozen=True)
class TritonDistribution:
    """The files of nvidia-pytriton's Triton build that a server needs."""

    server: Path
    libs: Path
    backend_files: tuple[Path, ...]
    stub: Path


def triton_distribution() -> TritonDistribution:
    spec = importlib.util.find_spec("pytriton")  # located, not imported: pytriton's import is slow
    if spec is None or spec.origin is None:
        raise InputError("Expected nvidia-pytriton installed for serve (pip install -e '.[serve]'). Received: no pytriton")
    root = Path(spec.origin).parent
    dist = root / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    libs = root.parent / "nvidia_pytriton.libs"  # a wheel install; an editable one keeps them in the package
    found = TritonDistribution(
        server=dist / "bin" / "tritonserver",
        libs=libs if libs.is_dir() else dist / "external_libs",
        backend_files=(dist / "backends" / "python" / "libtriton_python.so",
                       dist / "backends" / "python" / "triton_python_backend_utils.py"),
        stub=dist / "python_backend_stubs" / version / "triton_python_backend_stub",
    )
    missing = [p for p in (found.server, found.libs, found.stub, *found.backend_files) if not p.exists()]
    if missing:
        raise InputError(f"Expected pytriton's Triton build for Python {version}. Received: missing {missing[0]}")
    return found


def server_environment(dist: TritonDistribution, base: dict[str, str] | None = None) -> dict[str, str]:
    """The server's environment: this interpreter's libpython and Python first (see the module doc)."""
    env = dict(os.environ if base is None else base)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    lib_path = [p for p in (libdir, str(dist.libs), env.get("LD_LIBRARY_PATH", "")) if p]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(lib_path)
    env["PATH"] = os.pathsep.join(p for p in (str(Path(sys.executable).parent), env.get("PATH", "")) if p)
    return env
