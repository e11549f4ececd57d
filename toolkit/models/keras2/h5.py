"""Keras 2 HDF5 model files (`.h5`, `.hdf5`): the architecture from `model_config`, the weights from
`model_weights`, read with h5py alone. Nothing in the file runs: the config is JSON, the weights are arrays.

Before any array is read, the file's objects are walked within bounds (`toolkit.safety.hdf5`: depth, count, no
link but ordinary ones, each object once), every dataset's declared size is checked against the resource
limits (an HDF5 dataset can declare any shape over a few stored bytes), and so are the config's size and
the parameters and activations it declares.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.errors import ModelLoadError
from toolkit.models.keras2.architecture import config_json, read_architecture
from toolkit.options import ResourceLimits
from toolkit.safety.files import open_regular_file
from toolkit.safety.hdf5 import H5Dataset, open_child, resolve_dataset, walk_datasets
from toolkit.safety.limits import check_declared_arrays
from toolkit.safety.weights_scan import DeclaredArray
from toolkit.text import safe_text

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
H5_SUFFIXES = (".h5", ".hdf5")
WHAT = "a Keras 2 model file (.h5)"


@dataclass(frozen=True)
class Keras2File:
    """What a Keras 2 file holds, whatever its format (`.h5` here, a SavedModel in `toolkit.models.keras2.savedmodel`):
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


def read_h5_model(path: str | Path, limits: ResourceLimits, architecture: Path | None = None) -> Keras2File:
    """Read a Keras 2 `.h5` model file within `limits`; refuse a weights-only file (unless its
    `architecture` file is given: `toolkit.models.keras2.architecture`) or a broken one.

    First of all, the file's objects are walked within `toolkit.safety.hdf5`'s bounds (depth, count, ordinary
    links only, each object once); then the config; then every dataset's declared size; then the weights
    the config's layers list, each dataset read once at most."""
    import h5py

    text = str(path)
    with open_regular_file(path, WHAT) as handle:
        try:
            file = h5py.File(handle, "r")
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"Expected {WHAT}. Received: {safe_text(text)!r} ({str(exc)[:120]})") from None
        with file:
            datasets = walk_datasets(file, text)
            config_text = _attr(file, "model_config", limits.max_config_bytes, text)
            config = _config(config_text, architecture, text, limits)
            check_declared_arrays(_declared(datasets), text, limits)
            group = h5py.Group(open_child(file.id, b"model_weights", "model_weights", text)) \
                if b"model_weights" in file.id else file
            if architecture is not None and "layer_names" not in group.attrs:
                raise ModelLoadError(f"Expected weights saved by Keras 1 or 2 (model.save_weights, with layer_names). "
                                     f"Received: {safe_text(text)!r} without them (Keras 3's .weights.h5 layout: "
                                     "export the model's .keras file instead)")
            weights = _layer_weights(group, text, _config_layer_names(config))
            # A weights file records who wrote it (Keras 2's save_weights); Keras 1's did not, its JSON may.
            return Keras2File(config={k: v for k, v in config.items() if k not in ("keras_version", "backend")},
                              weights=weights,
                              keras_version=_attr(file, "keras_version", 64, text) or _text(config, "keras_version") or "1",
                              backend=_attr(file, "backend", 64, text) or _text(config, "backend") or "unknown")


def _config(config_text: str | None, architecture: Path | None, path: str, limits: ResourceLimits) -> dict:
    """The model config: the file's own `model_config`, or the architecture file (JSON or YAML) beside a
    weights-only file."""
    if config_text is not None and architecture is not None:
        raise ModelLoadError(f"Expected a weights-only .h5 beside an architecture JSON or YAML. Received: {safe_text(path)!r} "
                             "holding its own model_config (export it without the JSON or YAML)")
    if config_text is None and architecture is None:
        raise ModelLoadError(f"Expected {WHAT} holding a model_config (a whole model). Received: "
                             f"{safe_text(path)!r} with weights only (model.save_weights; give its architecture JSON "
                             "or YAML as the model and this file as --weights)")
    if architecture is not None:
        return read_architecture(architecture, limits)
    return config_json(str(config_text), path)


def _text(config: dict, key: str) -> str | None:
    value = config.get(key)
    return value[:64] if isinstance(value, str) else None


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


def _declared(datasets: dict[int, H5Dataset]) -> list[DeclaredArray]:
    """Every dataset's declared and stored size; those under `model_weights` are the model's parameters."""
    elsewhere = [item.name for item in datasets.values() if item.elsewhere]
    if elsewhere:
        # External raw storage or a virtual dataset reads another file's bytes (any local file could end
        # up in the export's weights); Keras 3's own H5IOStore refuses them too.
        raise ModelLoadError(f"Expected weights stored in the .h5 itself. Received: dataset {elsewhere[0]!r} "
                             "stored in another file (HDF5 external or virtual storage)")
    return [DeclaredArray(item.name, item.declared_bytes, item.elements, item.stored_bytes,
                          item.name.startswith("model_weights/")) for item in datasets.values()]


def _config_layer_names(config: dict) -> set[str] | None:
    """The names of the model's top-level layers as the config declares them (None if it lists none)."""
    inner = config.get("config")
    layers = inner.get("layers") if isinstance(inner, dict) else inner  # Keras 2.0's Sequential: a bare list
    if not isinstance(layers, list):
        return None
    names = set()
    for layer in layers:
        if isinstance(layer, dict):
            own = layer.get("config") if isinstance(layer.get("config"), dict) else {}
            names.add(str(layer.get("name") or own.get("name")))
    return names


def _names(group: Any, key: str) -> list[str]:
    """A string-list attribute (`layer_names`, `weight_names`), which Keras 2 splits into chunks when long."""
    values = list(group.attrs.get(key, []))
    chunk = 0
    while f"{key}{chunk}" in group.attrs:
        values.extend(group.attrs[f"{key}{chunk}"])
        chunk += 1
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def _layer_weights(group: Any, path: str, config_layers: set[str] | None) -> dict[str, list[np.ndarray]]:
    """Each layer's arrays in its `weight_names` order (Keras 2's trainable + non-trainable order).

    Every listed layer and weight is resolved first (ordinary links only, `toolkit.safety.hdf5`), its layer
    checked against the config and its dataset's address against those already listed; only then is any
    array read. Each dataset is read once at most, so what is read stays within the declared sizes
    checked before."""
    import h5py

    listed: dict[str, list[Any]] = {}
    seen: dict[int, str] = {}
    layers = _names(group, "layer_names")
    if config_layers is not None and len(layers) > len(config_layers):
        raise ModelLoadError(f"Expected weights for at most the {len(config_layers)} layers the config declares. "
                             f"Received: {safe_text(path)!r} listing {len(layers)}")
    for layer in layers:
        if config_layers is not None and layer not in config_layers:
            raise ModelLoadError(f"Expected weights for the config's layers. Received: {safe_text(path)!r} listing "
                                 f"{safe_text(layer)!r}, which the config does not declare")
        found = layer.encode() in group.id and open_child(group.id, layer.encode(), layer, path)
        if not isinstance(found, h5py.h5g.GroupID):
            raise ModelLoadError(f"Expected weights for layer {safe_text(layer)!r}. Received: {safe_text(path)!r} "
                                 "without its group")
        layer_group = h5py.Group(found)
        listed[layer] = []
        for name in _names(layer_group, "weight_names"):
            resolved = resolve_dataset(layer_group, name, path)
            if resolved is None:
                raise ModelLoadError(f"Expected weight {safe_text(name)!r} of layer {safe_text(layer)!r}. "
                                     f"Received: {safe_text(path)!r} without it")
            item, address = resolved
            if address in seen:
                raise ModelLoadError(f"Expected each weight listed once. Received: {safe_text(path)!r} listing "
                                     f"{safe_text(seen[address])!r} again (layer {safe_text(layer)!r})")
            seen[address] = f"{layer}/{name}"
            if item.dtype.kind not in "fiub":
                raise ModelLoadError(f"Expected numeric weights. Received: {safe_text(path)!r} with "
                                     f"{safe_text(name)!r} of dtype {item.dtype}")
            listed[layer].append(item)
    return {layer: [np.asarray(item[()]) for item in items] for layer, items in listed.items()}
