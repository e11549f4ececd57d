"""Files opened as regular files only: a path that is a FIFO would hang `open()` forever, `/dev/zero` reads
until memory runs out; both are refused before a byte is read."""

from __future__ import annotations

import errno
import os
import stat
from typing import BinaryIO

from toolkit.errors import ModelLoadError
from toolkit.text import safe_text


def open_regular_file(path: str | os.PathLike[str], what: str = "a Keras model file (.keras)") -> BinaryIO:
    """Open a regular file for reading without ever blocking; refuse FIFOs, devices, sockets and folders.

    `stat` first (no side effects, unlike opening a device), then open with O_NONBLOCK and check the
    descriptor again, so a path swapped for a FIFO in between cannot hang the process.
    """
    text = str(path)
    try:
        mode = os.stat(text).st_mode
    except OSError as exc:
        reason = "no such file" if exc.errno == errno.ENOENT else exc.strerror or "unreadable"
        raise ModelLoadError(f"Expected {what}. Received: {safe_text(text)!r} ({reason})") from None
    _require_regular(text, mode, what)
    try:
        fd = os.open(text, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise ModelLoadError(f"Expected a readable {what}. Received: {safe_text(text)!r} "
                             f"({exc.strerror or 'unreadable'})") from None
    try:
        _require_regular(text, os.fstat(fd).st_mode, what)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


_FILE_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _require_regular(path: str, mode: int, what: str) -> None:
    if stat.S_ISREG(mode):
        return
    kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")
    raise ModelLoadError(f"Expected {what}, a regular file. Received: {safe_text(path)!r}, which is {kind}")
