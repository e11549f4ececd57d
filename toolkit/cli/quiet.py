"""The CLI's quiet stderr: TensorFlow, absl, tf2onnx and ONNX Runtime print lines a user did not ask for
(absl's "WARNING: All log messages before absl::InitializeLog() ...", oneDNN's "I0000 ... port.cc", ORT's
initializer warnings, tf2onnx's `WARNING:root:`). The CLI runs each command inside `quiet_stderr` unless
`-v` is given; library code never calls it (it changes process-wide streams).
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import warnings
from collections.abc import Iterator
from typing import Any

import click

from toolkit.progress import Progress, TerminalProgress


class _Discard(io.TextIOBase):
    """A text stream that drops what is written (and stays open for log handlers made meanwhile)."""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        return len(text)


_ERR: Any = None  # where the tool's own stderr lines go while `quiet_stderr` holds stderr


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """While a command runs, drop what TensorFlow, absl, tf2onnx and ONNX Runtime write to stderr: their
    C++ lines on file descriptor 2 (at import and later, when a kernel library loads), Python warnings
    and log records (through `sys.stderr`). The tool's own lines (`echo_err`) reach the real stderr;
    click prints errors after the command returns, when everything is restored. `-v` skips this."""
    global _ERR
    original = sys.stderr
    original.flush()
    saved_fd = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    # The real stderr is file descriptor 2 unless a test runner swapped sys.stderr for its own stream.
    own = open(saved_fd, "w", closefd=False, encoding="utf-8", errors="backslashreplace") \
        if _fileno(original) == 2 else original
    _ERR, sys.stderr = own, _Discard()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        own.flush()
        sys.stderr, _ERR = original, None
        os.dup2(saved_fd, 2)
        os.close(saved_fd)


def _fileno(stream: Any) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError and a ValueError
        return None


def echo_err(text: str) -> None:
    """One of the tool's own stderr lines (a warning, a note): shown also while stderr is quiet."""
    if _ERR is not None:
        click.echo(text, file=_ERR)
    else:
        click.echo(text, err=True)


def real_stderr() -> Any:
    """The stream the tool's own stderr output goes to (the real stderr, also while it is quiet)."""
    return _ERR if _ERR is not None else sys.stderr


def progress_for(as_json: bool = False) -> Progress:
    """The CLI's progress: a bar on stderr when it is a terminal and the output is not JSON; else none."""
    stream = real_stderr()
    return TerminalProgress(stream) if not as_json and stream.isatty() else Progress()
