"""Which Keras wrote a model path: a Keras 2 format (`.h5`, a SavedModel folder, a tf.keras `.keras` zip) or
Keras 3's `.keras`. Decided from the file's own bytes and records, not its name alone, and without
importing Keras or TensorFlow (the check runs before any of them)."""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

from toolkit.models.keras2.h5 import H5_SUFFIXES, is_hdf5

SAVED_MODEL_PB = "saved_model.pb"
KERAS_METADATA_PB = "keras_metadata.pb"
_MAX_METADATA_JSON = 1 << 16


@dataclass(frozen=True)
class Keras2Format:
    """A model path's format: `kind` is h5, savedmodel (with Keras metadata), module (a SavedModel without
    it: a `tf.Module` with a serving signature) or keras (tf.keras 2.13+'s zip)."""

    kind: str
    keras_version: str = ""

    @property
    def label(self) -> str:
        return {"h5": "Keras 2 HDF5 (.h5)", "savedmodel": "tf.keras SavedModel", "module": "SavedModel (tf.Module)",
                "keras": "tf.keras .keras"}[self.kind]


def keras2_format(path: Path) -> Keras2Format | None:
    """The Keras 2 format of `path`, or None for anything else (a Keras 3 `.keras` file among them)."""
    if path.is_dir():
        if not (path / SAVED_MODEL_PB).is_file():
            return None
        return Keras2Format("savedmodel" if (path / KERAS_METADATA_PB).is_file() else "module")
    if path.suffix.lower() in H5_SUFFIXES or is_hdf5(path):
        return Keras2Format("h5")  # one that is not HDF5 after all is refused by the reader, saying so
    if path.suffix == ".keras" and path.is_file():
        version = _archive_keras_version(path)
        if version.startswith("2."):
            return Keras2Format("keras", version)
    return None


def _archive_keras_version(path: Path) -> str:
    """`metadata.json`'s keras_version in a `.keras` zip ('' when unreadable: Keras 3's loader says why)."""
    try:
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo("metadata.json")
            if info.file_size > _MAX_METADATA_JSON:
                return ""
            with archive.open(info) as member:
                data = json.loads(member.read(_MAX_METADATA_JSON))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, RuntimeError, NotImplementedError, EOFError):
        return ""
    version = data.get("keras_version") if isinstance(data, dict) else None
    return version if isinstance(version, str) else ""
