"""Text for one-line errors and terminals: names and metadata come from files written by strangers, so
control characters in them (ANSI escapes can rewrite what was printed before) are written out
(`safe_text`); an exception's first line (`first_line`), Keras' and TensorFlow's errors as one line
(`keras_reason`, `error_cause`), a dtype with its byte order (`dtype_text`).

Pure functions over strings, imported by every stage (this module imports nothing of `toolkit`).
"""

from __future__ import annotations

import re
import unicodedata

import numpy as np


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


def dtype_text(dtype: np.dtype) -> str:
    """`float32 (<f4)`: the name alone hides the byte order, so a big-endian array read 'float32 vs float32'."""
    dtype = np.dtype(dtype)
    return f"{dtype.name} ({dtype.str})"


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


def first_line(source: BaseException | str, limit: int = 300) -> str:
    """An exception's or a text's first line, at most `limit` characters: enough for a one-line error."""
    text = str(source).strip()
    if text:
        return text.splitlines()[0][:limit]
    return type(source).__name__ if isinstance(source, BaseException) else "no message"
