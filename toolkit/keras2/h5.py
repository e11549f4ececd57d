"""Keras 2 HDF5 model files (`.h5`, `.hdf5`): the architecture from `model_config`, the weights from
`model_weights`, read with h5py alone. Nothing in the file runs: the config is JSON, the weights are arrays.

Before any array is read, every dataset's declared size is checked against the resource limits (an HDF5
dataset can declare any shape over a few stored bytes), and so are the config's size and the parameters
and activations it declares.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.errors import ModelLoadError
from toolkit.guard import open_regular_file, safe_text
from toolkit.limits import ResourceLimits, check_declared_arrays
from toolkit.weights_scan import DeclaredArray

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
H5_SUFFIXES = (".h5", ".hdf5")
WHAT = "a Keras 2 model file (.h5)"


@dataclass(frozen=True)
class Keras2File:
    """What a Keras 2 file holds, whatever its format (`.h5` here, a SavedModel in `toolkit.keras2.savedmodel`):
    its model config, each layer's weights in Keras 2's order, and who wrote it."""

    config: dict
    weights: dict[str, list[np.ndarray]]
    keras_version: str
    backend: str


def is_hdf5(path: Path) -> bool:
    """Whether `path` is a regular file starting with HDF5's signature (a FIFO is never opened blocking)."""
    try:
        with open_regular_file(path, WHAT) as handle:
            return handle.read(8) == HDF5_SIGNATURE
    except (ModelLoadError, OSError):
        return False


def read_h5_model(path: str | Path, limits: ResourceLimits) -> Keras2File:
    """Read a Keras 2 `.h5` model file within `limits`; refuse a weights-only file or a broken one."""
    import h5py

    text = str(path)
    with open_regular_file(path, WHAT) as handle:
        try:
            file = h5py.File(handle, "r")
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"Expected {WHAT}. Received: {safe_text(text)!r} ({str(exc)[:120]})") from None
        with file:
            config_text = _attr(file, "model_config", limits.max_config_bytes, text)
            if config_text is None:
                raise ModelLoadError(f"Expected {WHAT} holding a model_config (a whole model). Received: "
                                     f"{safe_text(text)!r} with weights only (model.save_weights)")
            check_declared_arrays(_declared(file), text, limits)
            config = _json(config_text, text)
            weights = _layer_weights(file["model_weights"] if "model_weights" in file else file, text, limits)
            return Keras2File(config=config, weights=weights,
                           keras_version=_attr(file, "keras_version", 64, text) or "1",
                           backend=_attr(file, "backend", 64, text) or "unknown")


def _attr(file: Any, name: str, limit: int, path: str) -> str | None:
    value = file.attrs.get(name)
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    value = str(value)
    if len(value) > limit:
        raise ModelLoadError(f"Expected a {name} of at most {limit} bytes. Received: {safe_text(path)!r} with "
                             f"{len(value)}")
    return value


def _json(text: str, path: str) -> dict:
    try:
        config = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ModelLoadError(f"Expected model_config holding JSON. Received: {safe_text(path)!r} "
                             f"({type(exc).__name__}: {str(exc)[:120]})") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"Expected model_config holding a JSON object. Received: {safe_text(path)!r} with "
                             f"a {type(config).__name__}")
    return config


def _declared(file: Any) -> list[DeclaredArray]:
    """Every dataset's declared and stored size; those under `model_weights` are the model's parameters."""
    import h5py

    arrays: list[DeclaredArray] = []
    elsewhere: list[str] = []

    def visit(name: str, item: Any) -> None:
        if isinstance(item, h5py.Dataset):
            if item.external or item.is_virtual:
                elsewhere.append(name)
            arrays.append(DeclaredArray(name, item.size * item.dtype.itemsize, int(item.size),
                                        item.id.get_storage_size(), name.startswith("model_weights/")))

    file.visititems(visit)
    if elsewhere:
        # External raw storage or a virtual dataset reads another file's bytes (any local file could end
        # up in the export's weights); Keras 3's own H5IOStore refuses them too.
        raise ModelLoadError(f"Expected weights stored in the .h5 itself. Received: dataset {elsewhere[0]!r} "
                             "stored in another file (HDF5 external or virtual storage)")
    return arrays


def _names(group: Any, key: str) -> list[str]:
    """A string-list attribute (`layer_names`, `weight_names`), which Keras 2 splits into chunks when long."""
    values = list(group.attrs.get(key, []))
    chunk = 0
    while f"{key}{chunk}" in group.attrs:
        values.extend(group.attrs[f"{key}{chunk}"])
        chunk += 1
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def _layer_weights(group: Any, path: str, limits: ResourceLimits) -> dict[str, list[np.ndarray]]:
    """Each layer's arrays in its `weight_names` order (Keras 2's trainable + non-trainable order). Each
    dataset is read once at most, so what is read stays within what the declared sizes were checked for."""
    import h5py

    weights: dict[str, list[np.ndarray]] = {}
    seen: set[str] = set()
    for layer in _names(group, "layer_names"):
        if layer not in group or not isinstance(group[layer], h5py.Group):
            raise ModelLoadError(f"Expected weights for layer {safe_text(layer)!r}. Received: {safe_text(path)!r} "
                                 "without its group")
        layer_group = group[layer]
        arrays = []
        for name in _names(layer_group, "weight_names"):
            item = layer_group.get(name)
            if not isinstance(item, h5py.Dataset):
                raise ModelLoadError(f"Expected weight {safe_text(name)!r} of layer {safe_text(layer)!r}. "
                                     f"Received: {safe_text(path)!r} without it")
            if item.name in seen:
                raise ModelLoadError(f"Expected each weight listed once. Received: {safe_text(path)!r} listing "
                                     f"{safe_text(item.name)!r} again (layer {safe_text(layer)!r})")
            seen.add(item.name)
            if item.dtype.kind not in "fiub":
                raise ModelLoadError(f"Expected numeric weights. Received: {safe_text(path)!r} with {safe_text(item.name)!r} "
                                     f"of dtype {item.dtype}")
            arrays.append(np.asarray(item[()]))
        weights[layer] = arrays
    return weights
