"""A private copy of a Keras 2 file or SavedModel folder, which every later step reads instead of the path.

Checking a path and then handing the same path to another reader (tf.keras, `tf.saved_model.load`,
TensorFlow's checkpoint reader) lets anyone who can write there swap the file in between: a checked
`.h5` becomes one with a Lambda layer, whose bytecode tf.keras' `.h5` loader runs. The copy lives in a
folder only this process's user can open (mode 0700), is made of regular files only (a FIFO would hang
TensorFlow's own open, a symlink could point anywhere), and is bounded in files and bytes before it is
made. Every check, the translation and the reference read the copy.

A folder is copied by descriptor, never by path: each entry is opened relative to its parent folder's
descriptor with `O_NOFOLLOW` (and `O_NONBLOCK`, so a FIFO cannot hang the open), and the opened file's
`st_dev`/`st_ino` must be those its `lstat` saw. Checking with `lstat` and then opening by path let a
local user who can write the folder swap `keras_metadata.pb` for a symlink to `/etc/shadow` in between
(3 and 5 copies of 300 held it).

The folder is named `lstm-onnx-keras2-<pid>-...`: an export ended by SIGKILL cannot remove its copy (up
to 2 GiB), so each new copy first removes those whose owner is dead, as Chromium profiles and `serve`
workspaces are; SIGTERM unwinds (`close_runners_on_sigterm`) and removes it at once.
"""

from __future__ import annotations

import os
import stat
import tempfile
import time
from pathlib import Path
from typing import BinaryIO

from toolkit.errors import ModelLoadError
from toolkit.fileio import remove_stale
from toolkit.options import ResourceLimits
from toolkit.process import close_runners_on_sigterm
from toolkit.safety.files import open_regular_file
from toolkit.text import safe_text

_CHUNK = 1 << 20
_MAX_DEPTH = 8
PREFIX = "lstm-onnx-keras2-"  # + the owning process id + "-": a dead owner's copy is removed
_STARTED: dict[str, float] = {}  # live copies' paths -> when each began (time.monotonic())
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


def copy_started(path: Path) -> float | None:
    """When the live private copy at `path` began (`time.monotonic()`): the export's first step, from which
    the stated 120 s count (`toolkit.runtimes.keras2_child`). None for any other path."""
    return _STARTED.get(str(path))


def remove_stale_copies(folder: Path | None = None) -> list[Path]:
    """Remove the private copies of exports whose lstm-onnx process is gone (SIGKILL); ours only."""
    return remove_stale((entry, PREFIX) for entry in Path(folder or tempfile.gettempdir()).glob(PREFIX + "*-*"))


class PrivateCopy:
    """The copy and the folder holding it; `close` removes both (so does garbage collection)."""

    def __init__(self, source: Path, limits: ResourceLimits):
        started = time.monotonic()
        remove_stale_copies()
        close_runners_on_sigterm()  # SIGTERM unwinds, so the `finally` that closes this copy runs
        self._folder = tempfile.TemporaryDirectory(prefix=f"{PREFIX}{os.getpid()}-")
        os.chmod(self._folder.name, 0o700)
        self.path = Path(self._folder.name) / (source.name or "model")
        self._budget = limits.max_total_bytes
        self._files = limits.max_members
        try:
            if source.is_dir() and not source.is_symlink():
                self._copy_folder(source)
            else:
                self._count(source)
                with open_regular_file(source, "a Keras 2 model file") as handle:
                    self._write(handle, source, self.path)
        except BaseException:
            self.close()
            raise
        _STARTED[str(self.path)] = started

    def close(self) -> None:
        _STARTED.pop(str(self.path), None)
        self._folder.cleanup()

    def _copy_folder(self, source: Path) -> None:
        try:
            fd = os.open(source, _OPEN_FLAGS | os.O_DIRECTORY)
        except OSError as exc:
            raise ModelLoadError(f"Expected a readable SavedModel folder. Received: {safe_text(str(source))!r} "
                                 f"({exc.strerror or 'unreadable'})") from None
        try:
            self._copy_tree(fd, source, self.path, 0)
        finally:
            os.close(fd)

    def _copy_tree(self, fd: int, source: Path, target: Path, depth: int) -> None:
        """Copy the folder open as `fd` (named `source` in messages) into `target`, entry by entry."""
        if depth > _MAX_DEPTH:
            raise ModelLoadError(f"Expected a SavedModel folder at most {_MAX_DEPTH} levels deep. Received: "
                                 f"{safe_text(str(source))!r} deeper")
        target.mkdir(mode=0o700)
        for name, seen in _listing(fd, source):
            where = source / name
            if not (stat.S_ISDIR(seen.st_mode) or stat.S_ISREG(seen.st_mode)):
                raise ModelLoadError(f"Expected only regular files and folders in a SavedModel. Received: "
                                     f"{safe_text(str(where))!r}, {_kind(seen.st_mode)}")
            if stat.S_ISREG(seen.st_mode):
                self._count(where)
            child = _open_as_seen(fd, name, seen, where)
            try:
                if stat.S_ISDIR(seen.st_mode):
                    self._copy_tree(child, where, target / name, depth + 1)
                else:
                    os.set_blocking(child, True)
                    with os.fdopen(child, "rb", closefd=False) as handle:
                        self._write(handle, where, target / name)
            finally:
                os.close(child)

    def _count(self, source: Path) -> None:
        self._files -= 1
        if self._files < 0:
            raise ModelLoadError(f"Expected a model of at most the --max-members limit of files. Received: "
                                 f"{safe_text(str(source))!r} and more")

    def _write(self, handle: BinaryIO, source: Path, target: Path) -> None:
        with open(target, "xb") as out:
            os.chmod(target, 0o600)
            while chunk := handle.read(_CHUNK):
                self._budget -= len(chunk)
                if self._budget < 0:
                    raise ModelLoadError("Expected a model of at most the --max-member-bytes total. Received: "
                                         f"{safe_text(str(source))!r} and the rest holding more")
                out.write(chunk)


def _listing(fd: int, source: Path) -> list[tuple[str, os.stat_result]]:
    """The entries of the folder open as `fd`, each with its `lstat`, by name."""
    listed = []
    with os.scandir(fd) as entries:
        for entry in entries:
            try:
                listed.append((entry.name, entry.stat(follow_symlinks=False)))
            except OSError as exc:  # removed or renamed since it was listed
                raise ModelLoadError(f"Expected SavedModel entries that stay as they are while copied. Received: "
                                     f"{safe_text(str(source / entry.name))!r} changed ({exc.strerror})") from None
    return sorted(listed, key=lambda item: item[0])


def _open_as_seen(dir_fd: int, name: str, seen: os.stat_result, where: Path) -> int:
    """`name` under `dir_fd`, opened without following a symlink, and only if it is still the file or
    folder `lstat` saw (same device and inode, same kind): a swap in between is refused."""
    flags = _OPEN_FLAGS | (os.O_DIRECTORY if stat.S_ISDIR(seen.st_mode) else 0)
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        raise ModelLoadError(f"Expected SavedModel entries that stay as they are while copied. Received: "
                             f"{safe_text(str(where))!r} changed ({exc.strerror or 'unreadable'})") from None
    opened = os.fstat(fd)
    if (opened.st_dev, opened.st_ino, stat.S_IFMT(opened.st_mode)) != (seen.st_dev, seen.st_ino, stat.S_IFMT(seen.st_mode)):
        os.close(fd)
        raise ModelLoadError(f"Expected SavedModel entries that stay as they are while copied. Received: "
                             f"{safe_text(str(where))!r} replaced while it was copied")
    return fd


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symlink"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"
