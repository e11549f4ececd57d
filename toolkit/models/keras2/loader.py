"""A Keras 2 model file as a Keras 3 model: read, translated, built in safe mode, weights assigned.

The three formats Keras 2 wrote (`toolkit.models.keras2.formats` tells them apart):
- `.h5`: `model_config` + `model_weights` (`toolkit.models.keras2.h5`);
- a SavedModel folder with `keras_metadata.pb` (`toolkit.models.keras2.savedmodel`);
- a tf.keras 2.13+ `.keras` zip, whose `metadata.json` says `keras_version` 2.x: the same archive
  checks as Keras 3 files (`toolkit.safety.limits`), its config translated, its weights loaded by Keras 3's
  own reader (the two write the same weight layout).
Each is built from the translated config by Keras 3's legacy deserializer under safe mode, so a class
name Keras does not know is refused, never imported.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit.errors import LstmOnnxError, ModelLoadError
from toolkit.models.keras2.formats import Keras2Format
from toolkit.models.keras2.nodes import mask_calls_with_initial_states
from toolkit.models.keras2.translate import Translation, check_modules, translate_model_config
from toolkit.options import ResourceLimits
from toolkit.safety.budget import count_config
from toolkit.safety.files import open_regular_file
from toolkit.safety.limits import check_budget, inspect_keras_handle
from toolkit.safety.private import PrivateCopy
from toolkit.safety.shapes import check_model_budget
from toolkit.text import first_line, safe_text


@dataclass
class Keras2Model:
    """A Keras 2 file's model, built in Keras 3, with what the export records about its origin. `path` is
    the private copy every reader uses (`toolkit.safety.private`); `close` removes it."""

    model: Any
    path: Path
    format: Keras2Format
    keras_version: str
    backend: str
    translation: Translation
    original: Path
    original_config: dict
    copy: PrivateCopy | None = field(default=None, repr=False)
    # A tf.keras `.keras` saved on Windows: its weights with '/' paths, beside the private copy (the
    # reference loads them; tf.keras cannot load the file as written).
    windows_weights: Path | None = None

    @property
    def source(self) -> dict[str, Any]:
        """The metadata's `source`: the file, its format and the Keras that wrote it."""
        label = "Keras 3 HDF5 (.h5)" if written_by_keras3(self.keras_version) else self.format.label
        name = self.original.name if self.format.architecture is None else \
            f"{self.format.architecture.name} + {self.original.name}"
        return {"keras_file": name, "keras_model": self.model.name, "format": label,
                "keras_version": self.keras_version, "backend": self.backend,
                "translated": list(self.translation.changes)}

    def close(self) -> None:
        if self.copy is not None:
            self.copy.close()


def load_keras2_model(path: str | Path, fmt: Keras2Format, limits: ResourceLimits) -> Keras2Model:
    """Read, translate and build a Keras 2 model file of format `fmt`, from a private copy of it. Anything
    the file makes fail on the way is one `ModelLoadError` line naming the file."""
    original = Path(path)
    copy = PrivateCopy(original, limits)
    try:
        return _load_copy(copy, original, fmt, limits)
    except LstmOnnxError as exc:
        copy.close()
        # The readers name the file they read, the private copy: the user knows the path they gave.
        raise type(exc)(str(exc).replace(str(copy.path), str(original))) from None
    except (Exception, RecursionError) as exc:  # noqa: BLE001 - a hostile file reaches Keras/h5py/TF in many ways
        copy.close()
        raise ModelLoadError(f"Expected a Keras 2 model lstm-onnx can read. Received: {safe_text(str(original))!r}: "
                             f"{type(exc).__name__}: {safe_text(first_line(exc, 200))}") from None


def _load_copy(copy: PrivateCopy, original: Path, fmt: Keras2Format, limits: ResourceLimits) -> Keras2Model:
    source = copy.path
    if fmt.kind in ("h5", "savedmodel"):
        from toolkit.models.keras2.h5 import read_h5_model
        from toolkit.models.keras2.savedmodel import read_keras_savedmodel

        saved = read_h5_model(source, limits, fmt.architecture) if fmt.kind == "h5" else \
            read_keras_savedmodel(source, limits)
        translation = _translate(saved.config, original, limits, saved.keras_version)
        model = build_model(translation, original, limits)
        _assign(model, saved.weights, translation, original)
        return Keras2Model(model, source, fmt, saved.keras_version, saved.backend, translation, original, saved.config, copy)
    return _load_tf_keras_archive(source, original, fmt, limits, copy)


def written_by_keras3(keras_version: str) -> bool:
    """An `.h5` Keras 3 wrote (`model.save("x.h5")`, its legacy format): its config is Keras 3's own, with
    Keras 3's meanings (hard_sigmoid among them), so it is read as Keras 3 reads it, untranslated."""
    return keras_version.startswith("3.")


def _translate(config: dict, source: Path, limits: ResourceLimits, keras_version: str) -> Translation:
    if written_by_keras3(keras_version):
        check_modules(config, str(source))
        translation = Translation(json.loads(json.dumps(config)), keras_version=keras_version)
        translation.note(f"written by Keras {keras_version}: read as Keras 3 reads it (no Keras 2 translation)")
        check_budget(count_config(translation.config), str(source), limits)
        return translation
    translation = translate_model_config(config, str(source), keras_version)
    check_budget(count_config(translation.config), str(source), limits)
    return translation


def _assign(model: Any, weights: dict, translation: Translation, source: Path) -> None:
    from toolkit.models.keras2.weights import assign_weights

    assign_weights(model, weights, translation.cudnn, str(source))


def build_model(translation: Translation, source: Path, limits: ResourceLimits) -> Any:
    """The translated config built by Keras 3's legacy deserializer in safe mode (no code is loaded)."""
    import keras
    from keras.src.legacy.saving import saving_options, saving_utils
    from keras.src.saving import serialization_lib

    from toolkit.models.keras2.activations import register
    from toolkit.models.loading import check_keras_version, keras_load_failure

    check_keras_version(keras.__version__)
    register()
    try:
        with saving_options.keras_option_scope(use_legacy_config=True), serialization_lib.SafeModeScope(True):
            model = saving_utils.model_from_config(json.loads(json.dumps(translation.config)))
    except Exception as exc:  # noqa: BLE001 - Keras raises ValueError, TypeError, KeyError... for a config it cannot build
        raise ModelLoadError(f"Expected a Keras 2 model Keras 3 can build. Received: {safe_text(str(source))!r}: "
                             f"{keras_load_failure(exc)}") from None
    if not isinstance(model, keras.Model):
        raise ModelLoadError(f"Expected a Keras model. Received: {safe_text(str(source))!r} holding a "
                             f"{type(model).__name__}")
    model, masked = mask_calls_with_initial_states(model)
    for name in masked:
        translation.note(f"layer {name!r}: called with initial states on a masked sequence: the mask passed as "
                         "tf.keras passes it (Keras 3 would not)")
    # What the built model computes (Keras' own shapes), as for a Keras 3 file: padding, repeats, long axes.
    check_model_budget(model, str(source), limits)
    return model


def _load_tf_keras_archive(source: Path, original: Path, fmt: Keras2Format, limits: ResourceLimits,
                           copy: PrivateCopy) -> Keras2Model:
    """A `.keras` zip written by tf.keras 2.13+: checked as any archive, translated, weights by Keras 3."""
    with open_regular_file(source) as handle:
        inspect_keras_handle(handle, str(original), limits)  # members, sizes, config budget, weights' declared sizes
        with zipfile.ZipFile(handle) as archive:
            config = json.loads(archive.read("config.json"))
            weights = archive.read("model.weights.h5") if "model.weights.h5" in archive.namelist() else None
    translation = _translate(config, original, limits, fmt.keras_version)
    model = build_model(translation, original, limits)
    if weights is None:
        raise ModelLoadError(f"Expected a .keras archive holding model.weights.h5. Received: {safe_text(str(source))!r} "
                             "without it")
    weights, windows = _windows_paths(weights)
    _load_archive_weights(model, weights, original)
    fixed = None
    if windows:
        fixed = source.with_name("model.weights.h5")
        fixed.write_bytes(weights)
        translation.note("weights saved on Windows ('layers\\lstm\\cell'): their paths read with '/' (no Keras "
                         "loads them as written)")
    return Keras2Model(model, source, fmt, fmt.keras_version, "tensorflow", translation, original, config, copy, fixed)


def _windows_paths(data: bytes) -> tuple[bytes, bool]:
    """tf.keras 2.13-2.15 joined a `.keras` archive's weight paths with `os.path.join`: saved on Windows,
    its groups are named 'layers\\lstm\\cell' and no Keras finds them. The same datasets under '/' paths
    (each read once: `inspect_keras_handle` checked their declared sizes), and whether any was renamed."""
    import h5py

    with h5py.File(io.BytesIO(data), "r") as file:
        if not any("\\" in key for key in file.keys()):
            return data, False
        items: dict[str, Any] = {}  # path -> array, or None for a group (an empty `vars` is looked up too)
        file.visititems(lambda name, item: items.__setitem__(
            name.replace("\\", "/"), item[()] if isinstance(item, h5py.Dataset) else None))
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as out:
        for name, value in items.items():
            if value is None:
                out.require_group(name)
            else:
                out.create_dataset(name, data=value)
    return buffer.getvalue(), True


def _load_archive_weights(model: Any, data: bytes, source: Path) -> None:
    """tf.keras 2.13+ and Keras 3 store weights at the same paths (`layers/lstm/cell/vars/0`): Keras 3's reader
    walks the model, and every variable it did not fill is a refusal, not a silent initializer value."""
    from keras.src.saving import saving_lib

    store = saving_lib.H5IOStore(io.BytesIO(data), mode="r")
    failed: set[int] = set()
    errors: dict[int, Any] = {}
    try:
        saving_lib._load_state(model, weights_store=store, assets_store=None, inner_path="",
                               visited_saveables=set(), failed_saveables=failed, error_msgs=errors)
    finally:
        store.close()
    if errors:
        layer, exc = next(iter(errors.values()))
        raise ModelLoadError(f"Expected weights for every layer. Received: {safe_text(str(source))!r}: layer "
                             f"{safe_text(getattr(layer, 'name', '?'))!r}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
