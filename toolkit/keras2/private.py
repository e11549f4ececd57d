"""A private copy of a Keras 2 file or SavedModel folder, which every later step reads instead of the path.

Checking a path and then handing the same path to another reader (tf.keras, `tf.saved_model.load`,
TensorFlow's checkpoint reader) lets anyone who can write there swap the file in between: a checked
`.h5` becomes one with a Lambda layer, whose bytecode tf.keras' `.h5` loader runs. The copy lives in a
folder only this process's user can open (mode 0700), is made of regular files only (a FIFO would hang
TensorFlow's own open, a symlink could point anywhere), and is bounded in files and bytes before it is
made. Every check, the translation and the reference read the copy.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from toolkit.errors import ModelLoadError
from toolkit.guard import open_regular_file, safe_text
from toolkit.limits import ResourceLimits

_CHUNK = 1 << 20
_MAX_DEPTH = 8


class PrivateCopy:
    """The copy and the folder holding it; `close` removes both (so does garbage collection)."""

    def __init__(self, source: Path, limits: ResourceLimits):
        self._folder = tempfile.TemporaryDirectory(prefix="lstm-onnx-keras2-")
        os.chmod(self._folder.name, 0o700)
        self.path = Path(self._folder.name) / (source.name or "model")
        self._budget = limits.max_total_bytes
        self._files = limits.max_members
        try:
            if source.is_dir() and not source.is_symlink():
                self._copy_tree(source, self.path, 0)
            else:
                self._copy_file(source, self.path)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self._folder.cleanup()

    def _copy_tree(self, source: Path, target: Path, depth: int) -> None:
        if depth > _MAX_DEPTH:
            raise ModelLoadError(f"Expected a SavedModel folder at most {_MAX_DEPTH} levels deep. Received: "
                                 f"{safe_text(str(source))!r} deeper")
        target.mkdir(mode=0o700)
        for entry in sorted(os.scandir(source), key=lambda e: e.name):
            mode = entry.stat(follow_symlinks=False).st_mode
            if stat.S_ISDIR(mode):
                self._copy_tree(Path(entry.path), target / entry.name, depth + 1)
            elif stat.S_ISREG(mode):
                self._copy_file(Path(entry.path), target / entry.name)
            else:
                raise ModelLoadError(f"Expected only regular files and folders in a SavedModel. Received: "
                                     f"{safe_text(entry.path)!r}, {_kind(mode)}")

    def _copy_file(self, source: Path, target: Path) -> None:
        self._files -= 1
        if self._files < 0:
            raise ModelLoadError(f"Expected a model of at most the --max-members limit of files. Received: "
                                 f"{safe_text(str(source))!r} and more")
        with open_regular_file(source, "a Keras 2 model file") as handle, open(target, "xb") as out:
            os.chmod(target, 0o600)
            while chunk := handle.read(_CHUNK):
                self._budget -= len(chunk)
                if self._budget < 0:
                    raise ModelLoadError("Expected a model of at most the --max-member-bytes total. Received: "
                                         f"{safe_text(str(source))!r} and the rest holding more")
                out.write(chunk)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symlink"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"
