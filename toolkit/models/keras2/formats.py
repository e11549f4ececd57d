"""Which Keras wrote a model path: a Keras 2 format (`.h5`, a SavedModel folder, a tf.keras `.keras` zip) or
Keras 3's `.keras`. Decided from the file's own bytes and records, not its name alone, and without
importing Keras or TensorFlow (the check runs before any of them)."""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

from toolkit.errors import InputError
from toolkit.models.keras2.architecture import ARCHITECTURE_SUFFIXES, architecture_kind
from toolkit.models.keras2.h5 import H5_SUFFIXES, is_hdf5
from toolkit.text import safe_text

SAVED_MODEL_PB = "saved_model.pb"
KERAS_METADATA_PB = "keras_metadata.pb"
_MAX_METADATA_JSON = 1 << 16


@dataclass(frozen=True)
class Keras2Format:
    """A model path's format: `kind` is h5, savedmodel (with Keras metadata), module (a SavedModel without
    it: a `tf.Module` with a serving signature) or keras (tf.keras 2.13+'s zip)."""

    kind: str
    keras_version: str = ""
    # A weights-only `.h5` (`model.save_weights`) comes with its architecture file (`model.to_json()` or
    # `model.to_yaml()`), the pair Keras 1 and 2 tutorials published: the config is read from that file
    # (`toolkit.models.keras2.architecture`), the weights from the .h5.
    architecture: Path | None = None

    @property
    def architecture_kind(self) -> str:
        """'JSON' or 'YAML' for a pair's architecture file, '' for a whole-model file."""
        return "" if self.architecture is None else architecture_kind(self.architecture).upper()

    @property
    def label(self) -> str:
        if self.architecture is not None:
            return f"Keras 2 architecture {self.architecture_kind} + HDF5 weights"
        return {"h5": "Keras 2 HDF5 (.h5)", "savedmodel": "tf.keras SavedModel", "module": "SavedModel (tf.Module)",
                "keras": "tf.keras .keras"}[self.kind]


def architecture_and_weights(architecture: Path, weights: Path) -> Keras2Format:
    """The format of an architecture file (`model.to_json()` or `model.to_yaml()`) with its weights-only `.h5`;
    refused in one line unless the first names a `.json`, `.yml` or `.yaml` file and the second an HDF5 file."""
    if architecture.suffix.lower() not in ARCHITECTURE_SUFFIXES or not architecture.is_file():
        raise InputError(f"Expected an architecture JSON file (model.to_json()) or YAML file (model.to_yaml()) "
                         f"beside --weights. Received: {safe_text(str(architecture))!r}")
    if not is_hdf5(weights):
        raise InputError(f"Expected --weights to name an HDF5 weights file (model.save_weights). Received: "
                         f"{safe_text(str(weights))!r}")
    return Keras2Format("h5", architecture=architecture)


def model_source(path: Path, weights: Path | None = None) -> tuple[Path, Keras2Format | None]:
    """What to read for a model path given by a user (export's MODEL, verify's --keras): the file the readers
    copy and open, and its Keras 2 format (None: a Keras 3 file). With `weights`, `path` is an architecture
    JSON or YAML and the file read is the weights `.h5`; one without them is refused in one line."""
    if weights is not None:
        return weights, architecture_and_weights(path, weights)
    if path.suffix.lower() in ARCHITECTURE_SUFFIXES:
        raise InputError(f"Expected --weights with an architecture {architecture_kind(path).upper()} (its "
                         f"model.save_weights .h5). Received: {safe_text(str(path))!r} alone")
    return path, keras2_format(path)


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
