"""The original Keras 2 model as the parity reference, not its Keras 3 translation.

- A SavedModel folder: its serving signature, run by TensorFlow (`tf.saved_model.load`), after
  `check_graph_ops` has refused any op that is not pure computation. Stateful layers' state variables
  are zeroed before each case, as the export's zero default states are.
- An `.h5` or tf.keras `.keras` file: tf.keras itself, from the `tf-keras` package (Keras 2 on the same
  TensorFlow), loading the original file. `tf-keras` 2.21 requires the `tensorflow` distribution, which
  clashes with `tensorflow-cpu`; `scripts/setup_runtimes.sh` installs it with `--no-deps` beside
  tensorflow-cpu. A model with CuDNN layers (which run on GPUs only) is rebuilt by tf.keras with
  `LSTM`/`GRU` in their place and loads its weights through tf.keras' own CuDNN conversion.
  Without `tf-keras` a `.h5` or `.keras` file is refused: a translation is never its own proof (a wrong
  translation would pass against itself). Where tf.keras cannot build the file as written (Keras 2.0's
  `Embedding(dtype="int32")`, Keras 1's `Merge`), it builds it with only that corrected, and the label
  says which correction and that tf.keras cannot run the file as written.

Each reference is a `KerasRunner` over the translated model (same output names, roles and order), whose
`run` computes the original's outputs. `label` is what the report and the metadata call it.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.errors import LstmOnnxError, ModelLoadError
from toolkit.models.keras2.loader import Keras2Model, written_by_keras3
from toolkit.models.keras2.translate import CUDNN_CLASSES, config_dicts
from toolkit.runtimes.keras import KerasRunner, keras_outputs
from toolkit.runtimes.signature import signature_outputs
from toolkit.text import first_line, safe_text

TF_KERAS_HINT = ("install it: pip install --no-deps \"tf-keras==2.21.*\" (or lstm-onnx setup --runtimes tf-keras, "
                 "or scripts/setup_runtimes.sh)")


class SignatureReference(KerasRunner):
    """A SavedModel's `serving_default` signature as the reference, run by TensorFlow in a child process
    bounded in time and memory (`toolkit.runtimes.keras2_child`); stateful layers' states zeroed before each case."""

    def __init__(self, loaded: Keras2Model):
        super().__init__(loaded.model, name="savedmodel-signature")
        import tensorflow as tf

        from toolkit.runtimes.keras2_child import SignatureChild

        # `loaded.path` is the private copy whose graph `read_keras_savedmodel` checked against the op
        # allowlist; nobody else can write it, so the child loads exactly what was checked.
        self._child = SignatureChild(loaded.path)
        from toolkit.models.keras2.traced_lambda import attach_source

        attach_source(loaded.model, self._child)  # a Lambda's placeholder is converted from its trace by this child
        self._output_keys = keras2_output_names(loaded.translation.config)
        self.label = f"the SavedModel's serving signature, run by TensorFlow {tf.__version__}"

    def _run(self, feeds: dict[str, np.ndarray], timeout: float) -> dict[str, np.ndarray]:
        inputs = [name for name, _, _ in self._child.spec["inputs"]]
        return dict(zip(self.output_names, signature_outputs(self._child, feeds, inputs, self._output_keys)))

    def _stop(self) -> None:  # the runner contract's close
        child = getattr(self, "_child", None)
        if child is not None:
            child.close()


class Keras3H5Reference(KerasRunner):
    """An `.h5` written by Keras 3: Keras 3's own legacy-h5 loader (`load_model_from_hdf5`, safe mode) reads
    the private copy, independently of lstm-onnx's reading of it (its weight assignment included)."""

    def __init__(self, loaded: Keras2Model):
        super().__init__(loaded.model, name="keras")
        import keras
        from keras.src.legacy.saving.legacy_h5_format import load_model_from_hdf5

        self._original = load_model_from_hdf5(str(loaded.path), compile=False, safe_mode=True)
        self.label = f"Keras {keras.__version__}'s own loader on the file (written by Keras {loaded.keras_version})"

    def _run(self, feeds: dict[str, np.ndarray], timeout: float) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, keras_outputs(self._original, feeds)))

    def carrying(self) -> KerasRunner:
        """The original's stateful layers keep their states from call to call (`toolkit.checking.carry`)."""
        from toolkit.runtimes.keras import StatefulKerasRunner

        return StatefulKerasRunner(self._original)


class TfKerasReference(KerasRunner):
    """tf.keras (the `tf-keras` package) computing the original model from the file's checked config and
    weights: the model is built from the config lstm-onnx read and checked (no Lambda, Keras' own modules
    only: tf.keras' loader would import any module a `.keras` config names), and tf.keras' own weight
    loader reads the private copy (the checked bytes, not a path someone could swap)."""

    def __init__(self, loaded: Keras2Model, tf_keras: Any):
        super().__init__(loaded.model, name="tf.keras")
        config, filled, corrected = reference_config(loaded.original_config, loaded.translation.keras_version)
        how = {"": "from the file's config and weights",
               "JSON": "from the architecture JSON and the weights file (model_from_json, load_weights)",
               # tf.keras 2.6+ reads no YAML (model_from_yaml raises): the config the YAML holds, as read
               # by lstm-onnx's safe reader, is built as tf.keras builds a JSON one
               "YAML": "from the architecture YAML's config and the weights file (model_from_json of the config "
                       "to_yaml wrote, load_weights)"}[loaded.format.architecture_kind]
        if loaded.translation.cudnn:
            # CuDNN layers run on GPUs only: tf.keras builds their CPU layers and converts their weights
            # itself when it loads them (its _convert_rnn_weights).
            _cudnn_as_cpu(config)
            how = "with CuDNN layers as LSTM/GRU and tf.keras' own weight conversion"
        if filled:
            how += f" (Keras {loaded.translation.keras_version}'s defaults {', '.join(filled)} filled in)"
        if corrected:
            how = (f"{how}, with only {'; '.join(corrected)}: tf.keras cannot build the file as written, so the "
                   "reference is tf.keras from the file's stored weights and this corrected config")
        self._carry = False  # each call from zero states, as the export's independent cases
        self._original = tf_keras.models.model_from_json(json.dumps(config))
        if loaded.windows_weights is not None:
            how += (", its weights' Windows paths ('layers\\lstm') read as 'layers/lstm': tf.keras cannot load "
                    "the file as written, so the reference is tf.keras with the file's stored weights")
        self._original.load_weights(str(loaded.windows_weights or loaded.path))
        self.label = f"tf.keras {tf_keras.__version__} {how}"

    def _run(self, feeds: dict[str, np.ndarray], timeout: float) -> dict[str, np.ndarray]:
        if not self._carry:
            self._original.reset_states()
        args = [feeds[t.name.split(":")[0]] for t in self._original.inputs]
        outputs = self._original(args if len(args) > 1 else args[0], training=False)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        return dict(zip(self.output_names, (np.asarray(o) for o in outputs)))

    def carrying(self) -> TfKerasReference:
        """The same original whose stateful layers keep their states from call to call (zeroed once, now):
        the reference of a stateful export's consecutive calls (`toolkit.checking.carry`)."""
        carried = copy.copy(self)
        carried._carry = True
        self._original.reset_states()
        return carried


def original_reference(loaded: Keras2Model) -> KerasRunner:
    """The reference for a Keras 2 file: its signature (SavedModel) or tf.keras (.h5, .keras). What the
    file makes TensorFlow or tf.keras fail on is one line naming the file."""
    try:
        if loaded.format.kind == "savedmodel":
            return SignatureReference(loaded)
        if written_by_keras3(loaded.keras_version):
            return Keras3H5Reference(loaded)
        try:
            import tf_keras
        except ImportError:
            raise ModelLoadError(f"Expected tf.keras (the tf-keras package) to check a Keras 2 file against the "
                                 f"original, never against its own translation. Received: "
                                 f"{safe_text(str(loaded.original))!r} and tf-keras not installed; "
                                 f"{TF_KERAS_HINT}") from None
        return TfKerasReference(loaded, tf_keras)
    except LstmOnnxError:
        raise
    except Exception as exc:  # noqa: BLE001 - tf.keras and TensorFlow raise anything on a file they refuse
        runtime = "TensorFlow" if loaded.format.kind == "savedmodel" else "tf.keras"
        why = safe_text(first_line(exc, 200))
        raise ModelLoadError(f"Expected the original model to load in {runtime} as the parity reference. Received: "
                             f"{safe_text(str(loaded.original))!r}: {type(exc).__name__}: {why}") from None


def open_original(path: Path, fmt: Any, limits: Any) -> tuple[Keras2Model, KerasRunner]:
    """A Keras 2 file read and translated (`load_keras2_model`) and its original as the parity reference;
    the private copy is removed once the reference has read what it needs. Close the reference after use
    (a SavedModel's signature runs in a child process)."""
    from toolkit.models.keras2.loader import load_keras2_model

    loaded = load_keras2_model(path, fmt, limits)
    try:
        return loaded, original_reference(loaded)
    finally:
        loaded.close()


def load_reference(path: str | Path, limits: Any, weights: str | Path | None = None) -> KerasRunner:
    """The parity reference for a model file: a Keras 3 file's model, or a Keras 2 file's original (its
    translation is the reference's `model`, which the input cases are made from). With `weights`, `path`
    is an architecture JSON or YAML and `weights` its weights-only `.h5`."""
    from toolkit.models.keras2.formats import model_source
    from toolkit.models.keras3 import load_keras_model

    read, fmt = model_source(Path(path), None if weights is None else Path(weights))
    if fmt is None or fmt.kind == "module":
        return KerasRunner(load_keras_model(read, limits))
    return open_original(read, fmt, limits)[1]


def keras2_output_names(config: dict) -> list[str]:
    """A Keras 2 model's output names, as tf.keras makes them unique (`lstm`, `lstm_1`, `lstm_2`): the keys
    of its SavedModel signature's outputs."""
    inner = config.get("config", {})
    if config.get("class_name") == "Sequential":
        return [inner["layers"][-1]["config"]["name"]]
    layers = inner.get("output_layers", [])
    layers = [layers] if layers and isinstance(layers[0], str) else layers
    names: list[str] = []
    counts: dict[str, int] = {}
    for entry in layers:
        base = proposal = entry[0]
        while proposal in names:
            counts[base] = counts.get(base, 1)
            proposal = f"{base}_{counts[base]}"
            counts[base] += 1
        names.append(proposal)
    return names


def reference_config(config: dict, keras_version: str) -> tuple[dict, list[str], list[str]]:
    """The file's config as tf.keras 2.21 builds the original: the defaults the Keras that wrote it assumed
    filled in where the config leaves them out (`keras2_defaults`), and what tf.keras cannot build at all
    corrected (Keras 2.0's integer Embedding dtype, Keras 1's Merge and argument names). Returns the config, the defaults
    filled in and the corrections (empty: the file as written)."""
    from toolkit.models.keras2.activations import keras2_defaults
    from toolkit.models.keras2.legacy import keras1_arguments, legacy_layer

    result = json.loads(json.dumps(config))
    filled: list[str] = []
    corrected: list[str] = []
    for item in config_dicts(result):
        inner = item.get("config")
        kind = item.get("class_name")
        if isinstance(kind, str) and isinstance(inner, dict):
            keras1 = keras1_arguments(item)  # before the defaults: Keras 1 named recurrent_activation otherwise
            corrected += [keras1] if keras1 else []
            filled += [f for f in keras2_defaults(kind, inner, keras_version) if f not in filled]
            if kind == "Merge" or (kind == "Embedding" and str(inner.get("dtype", "")).startswith(("int", "uint"))):
                corrected.append(str(legacy_layer(item, "reference")))
    return result, filled, corrected


def _cudnn_as_cpu(config: dict) -> None:
    """CuDNNLSTM/CuDNNGRU (GPU-only) as the CPU layers tf.keras loads their weights into, converting them
    itself (its `_convert_rnn_weights`): LSTM(tanh, sigmoid), GRU(reset_after=True, tanh, sigmoid)."""
    for item in config_dicts(config):
        inner = item.get("config")
        if item.get("class_name") in CUDNN_CLASSES and isinstance(inner, dict):
            item["class_name"] = CUDNN_CLASSES[item["class_name"]]
            inner.update(activation="tanh", recurrent_activation="sigmoid")
            if item["class_name"] == "GRU":
                inner["reset_after"] = True
