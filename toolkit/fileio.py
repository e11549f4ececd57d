"""Writing files whole or not at all.

A converter runs in CI pipelines and is interrupted: a half-written `.onnx` that loads as garbage later
is worse than no file. Everything lstm-onnx writes goes through `atomic_write_bytes`: the bytes go to a
temporary file in the destination folder (same filesystem, so the rename is atomic) and replace the
destination only once they are complete and flushed. The temporary file is created private (0600);
before the rename it gets the mode a plain `open()` would have given, `0o666 & ~umask`, so a Triton
container running as another user can read a model repository written under the default umask.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


def _umask() -> int:
    """The process umask: from /proc on Linux (a read); elsewhere by setting it and putting it back at
    once, which another thread creating a file at that instant could notice."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    current = os.umask(0o022)
    os.umask(current)
    return current


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write `data` to `path` atomically; return the path written."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), 0o666 & ~_umask())
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        # Leave nothing behind: the destination keeps its old content (or stays absent).
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
