"""Keras' own loading of a model file: the Keras release whose safe mode may load untrusted files
(`check_keras_version`), and why Keras refused a file, in one line a user can act on (`keras_load_failure`)."""

from __future__ import annotations

import re

from toolkit.errors import ModelLoadError

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
          "toolkit.export.exporter.export_model(model)")


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
                "If you trust it, import it, load the model yourself and call toolkit.export.exporter.export_model(model)")
    if "safe_mode" in text or "Lambda" in text:
        return f"refused by Keras safe mode: the file holds Python code (a Lambda layer or function). {_TRUST}"
    return f"{type(exc).__name__}: {(text.strip().splitlines() or [''])[0][:200]}"
