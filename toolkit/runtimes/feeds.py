"""Checks on untrusted files, feeds and names that must hold before any heavy library sees them.

Pure functions over paths, numpy arrays and strings (no ONNX Runtime, no TensorFlow), so the runner, the
verifier and the CLI share one version of each check:

- `open_regular_file`: a path that is a FIFO would hang `open()` forever, `/dev/zero` reads until memory
  runs out; both are refused before a byte is read.
- `check_feed_arrays`: ONNX Runtime 1.32 aborts the whole process (SIGABRT, exit 134) on a batch or time
  axis of 0; object arrays and non-native byte orders reach it as confusing errors; a state of batch 1
  beside an input of batch 2 is broadcast silently. Each is refused with a one-line `InputError`.
- `check_feed_bytes`, `check_threads`: a feed over `MAX_FEED_BYTES` (bench's `--batch 1000000 --steps
  1000000` was a MemoryError traceback) and more intra-op threads than `max_threads()` (2000 turned
  0.3 s into 20 s) are refused with the bound stated.
- `safe_text`: names and metadata come from files written by strangers; control characters in them would
  reach the user's terminal raw (ANSI escapes can rewrite what was printed before).
"""

from __future__ import annotations

import errno
import os
import re
import stat
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from toolkit.errors import InputError, ModelLoadError, OptionError

# The most bytes one input may hold: far above any recurrent model's batch, far below a machine's memory.
MAX_FEED_BYTES = 1 << 30


def max_threads() -> int:
    """The most intra-op threads a runtime is given: 4 per core (more only contend for the cores)."""
    return 4 * (os.cpu_count() or 1)


def check_threads(threads: Sequence[int], option: str = "--threads") -> tuple[int, ...]:
    """Thread counts within 1..max_threads(); an `OptionError` stating the bound otherwise."""
    bound = max_threads()
    wrong = [n for n in threads if not 1 <= n <= bound]
    if wrong:
        raise OptionError(f"Expected {option} between 1 and {bound} (4 per core on this machine's "
                          f"{os.cpu_count() or 1}). Received: {wrong[0]}")
    return tuple(threads)


def check_feed_bytes(name: str, shape: Sequence[int], dtype: np.dtype) -> None:
    """An input of this shape and dtype fits `MAX_FEED_BYTES` (checked before it is allocated)."""
    size = int(np.prod([int(d) for d in shape], dtype=object)) * np.dtype(dtype).itemsize
    if size > MAX_FEED_BYTES:
        raise InputError(f"Expected input {safe_text(name)!r} of at most {MAX_FEED_BYTES >> 30} GiB. Received: shape "
                         f"{tuple(int(d) for d in shape)} {np.dtype(dtype).name}, {size / 2**30:.3g} GiB")


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


# ------------------------------------------------------------------------------------------------ text


def safe_text(text: object, limit: int | None = 400, keep: str = "") -> str:
    """`text` fit for a terminal: control and format characters (ANSI escapes, bidi overrides, NUL, line
    breaks) written as `\\x1b`, `\\u202e`, ...; characters in `keep` (say a newline) stay; cut to
    `limit` characters with a marker (None: no cut)."""
    value = str(text)
    cut = limit is not None and len(value) > limit
    out = []
    for char in value[:limit] if cut else value:
        if char not in keep and unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"):
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(char)
    return "".join(out) + (f"...(+{len(value) - limit} chars)" if cut else "")


# ----------------------------------------------------------------------------------------------- feeds


def dtype_text(dtype: np.dtype) -> str:
    """`float32 (<f4)`: the name alone hides the byte order, so a big-endian array read 'float32 vs float32'."""
    dtype = np.dtype(dtype)
    return f"{dtype.name} ({dtype.str})"


def check_feed_dtype(name: str, array: np.ndarray, want: np.dtype) -> None:
    """Refuse an array whose dtype, byte order included, is not the input's."""
    want = np.dtype(want)
    if array.dtype == want:
        return
    if array.dtype.newbyteorder("=") == want.newbyteorder("=") and array.dtype.kind not in "OUSV":
        raise InputError(
            f"Expected input {safe_text(name)!r} of dtype {dtype_text(want.newbyteorder('='))} in this machine's "
            f"byte order. Received: {dtype_text(array.dtype)}; convert with array.astype('{want.newbyteorder('=').str}')"
        )
    raise InputError(f"Expected input {safe_text(name)!r} of dtype {want.name}. Received: dtype {array.dtype.name}")


def check_feed_array(name: str, array: object) -> np.ndarray:
    """One feed: a numeric ndarray in native byte order with no empty axis; returned as is."""
    if not isinstance(array, np.ndarray):
        raise InputError(f"Expected input {safe_text(name)!r} as a numpy array. Received: {type(array).__name__}")
    if array.dtype.hasobject or array.dtype.kind in "OUSVMm":
        raise InputError(f"Expected input {safe_text(name)!r} as a numeric array. Received: dtype "
                         f"{dtype_text(array.dtype)}")
    if not array.dtype.isnative:
        raise InputError(f"Expected input {safe_text(name)!r} in this machine's byte order "
                         f"({dtype_text(array.dtype.newbyteorder('='))}). Received: {dtype_text(array.dtype)}; "
                         f"convert with array.astype('{array.dtype.newbyteorder('=').str}')")
    if 0 in array.shape:
        raise InputError(
            f"Expected input {safe_text(name)!r} with every axis at least 1 (ONNX Runtime aborts the process on an "
            f"empty batch or time axis). Received: shape {array.shape}"
        )
    check_feed_bytes(name, array.shape, array.dtype)
    return array


def check_feed_shape(name: str, array: np.ndarray, shape: Sequence[int | str | None], shape_text: str) -> None:
    """Rank and fixed dims of one feed against the input's declared shape (`shape_text` as the user reads it)."""
    if array.ndim != len(shape):
        raise InputError(f"Expected input {safe_text(name)!r} of rank {len(shape)} with shape {shape_text}. "
                         f"Received: shape {array.shape}")
    for axis, (want, got) in enumerate(zip(shape, array.shape)):
        if isinstance(want, int) and want != got:
            raise InputError(f"Expected input {safe_text(name)!r} with shape {shape_text} (axis {axis} = {want}). "
                             f"Received: shape {array.shape}")


@dataclass(frozen=True)
class BatchCheck:
    """The batch size the feeds agree on, and which inputs carried it."""

    size: int | None
    inputs: tuple[str, ...]


def check_batch(feeds: Mapping[str, np.ndarray], batched: Sequence[str]) -> BatchCheck:
    """Every input in `batched` (those whose axis 0 is the model's batch axis) has the same axis-0 size.

    ONNX Runtime's LSTM broadcasts an initial state of batch 1 over an input of batch 2 without a word,
    which gives numbers for a batch the caller never described.
    """
    sizes = {name: int(feeds[name].shape[0]) for name in batched if name in feeds and feeds[name].ndim >= 1}
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{safe_text(name)!r} batch {size}" for name, size in sizes.items())
        raise InputError(f"Expected the same batch size (axis 0) in every input. Received: {listed}")
    size = next(iter(sizes.values()), None)
    return BatchCheck(size=size, inputs=tuple(sizes))


def check_feed_arrays(feeds: Mapping[str, object], batched: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """All feeds through `check_feed_array`, then `check_batch` over `batched`."""
    checked = {name: check_feed_array(name, array) for name, array in feeds.items()}
    check_batch(checked, batched)
    return checked


def check_input_names(specs: Sequence[str]) -> None:
    """`--input NAME=FILE` given twice for one NAME is refused, not resolved by keeping the last."""
    seen: dict[str, str] = {}
    for spec in specs:
        name, sep, _ = spec.partition("=")
        if not sep:
            continue
        if name in seen:
            raise InputError(f"Expected each input once in --input NAME=FILE. Received: {safe_text(seen[name])!r} "
                             f"and {safe_text(spec)!r}")
        seen[name] = spec


_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # Keras prints the cause of a layer's failure in bold


def keras_reason(exc: BaseException) -> str:
    """One line of what Keras said: its 'Exception encountered when calling X.call().' names the layer,
    and the next non-blank line (bold with ANSI codes) says what failed, so both are kept."""
    return _reason_of([line.strip() for line in _ANSI.sub("", str(exc)).splitlines() if line.strip()],
                      type(exc).__name__)


def _reason_of(lines: list[str], fallback: str) -> str:
    if len(lines) > 1 and lines[0].startswith("Exception encountered when calling"):
        lines = [f"{lines[0]} {lines[1]}"]
    return safe_text(lines[0] if lines else fallback, limit=300)


# The line of a traced function's error that names the exception raised inside it ("    ValueError: ...").
_RAISED = re.compile(r"^(\w+(?:\.\w+)*(?:Error|Exception)): ?(.*)$")


def error_cause(exc: BaseException) -> str:
    """`Type: why` in one line. An error raised while TensorFlow traced a function reads "in user code:",
    then the frames, then the exception raised inside: that exception is the cause, not the first line."""
    lines = [line.strip() for line in _ANSI.sub("", str(exc)).splitlines() if line.strip()]
    name = type(exc).__name__
    if lines and lines[0] == "in user code:":
        for index, line in enumerate(lines):
            raised = _RAISED.match(line)
            if raised:
                name, lines = raised.group(1), [raised.group(2), *lines[index + 1:]]
                break
    return f"{name}: {_reason_of(lines, '(no message)')}"


# Keras releases whose safe mode has the published fixes: 3.9 (CVE-2025-1550), 3.11 (CVE-2025-8747,
# CVE-2025-9906), 3.11.3 (CVE-2025-9905, .h5), 3.13.2 (CVE-2026-1462), 3.14 (archive path traversal).
MIN_KERAS = (3, 14)


def check_keras_version(version: str) -> None:
    """Refuse to load untrusted files with a Keras whose safe mode is known to be bypassable."""
    parts = []
    for piece in version.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    if tuple(parts) < MIN_KERAS:
        raise ModelLoadError(
            f"Expected Keras >= {'.'.join(map(str, MIN_KERAS))} to load model files (earlier safe modes have "
            f"published bypasses). Received: Keras {version}"
        )


_TRUST = ("If you trust it, load it with keras.saving.load_model(path, safe_mode=False) and call "
          "toolkit.exporter.export_model(model)")


def keras_load_failure(exc: Exception) -> str:
    """Say why Keras refused a file, naming what it refused, and what the user can do if they trust it."""
    text = str(exc)
    external = re.search(r"Requested the deserialization of a `(\w+)`", text)
    if external:
        return f"refused by Keras safe mode: a {external.group(1)} layer loads an external SavedModel. {_TRUST}"
    vocabulary = re.search(r"vocabulary file outside of the model archive.*Vocabulary file: '([^']*)'", text, re.S)
    if vocabulary:
        return (f"refused by Keras safe mode: a lookup layer (StringLookup, IntegerLookup, ...) reads the vocabulary "
                f"file {vocabulary.group(1)!r} outside the archive. {_TRUST}")
    function = re.search(r"'class_name': 'function', 'config': '([^']+)'", text)
    module = re.search(r"'module': '([^']+)', 'class_name': 'function'", text)
    unknown = re.search(r"Could not locate (?:class|function) '([^']+)'", text)
    if unknown or function:
        name = function.group(1) if function else unknown.group(1)
        qualified = f"{module.group(1)}.{name}" if module and function else name
        return (f"unknown custom object {qualified!r}; lstm-onnx never imports code named by a model file. "
                "If you trust it, import it, load the model yourself and call toolkit.exporter.export_model(model)")
    if "safe_mode" in text or "Lambda" in text:
        return f"refused by Keras safe mode: the file holds Python code (a Lambda layer or function). {_TRUST}"
    return f"{type(exc).__name__}: {(text.strip().splitlines() or [''])[0][:200]}"
