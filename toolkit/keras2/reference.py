"""The original Keras 2 model as the parity reference, not its Keras 3 translation.

- A SavedModel folder: its serving signature, run by TensorFlow (`tf.saved_model.load`), after
  `check_graph_ops` has refused any op that is not pure computation. Stateful layers' state variables
  are zeroed before each case, as the export's zero default states are.
- An `.h5` or tf.keras `.keras` file: tf.keras itself, from the `tf-keras` package (Keras 2 on the same
  TensorFlow), loading the original file. `tf-keras` 2.21 requires the `tensorflow` distribution, which
  clashes with `tensorflow-cpu`; `scripts/setup_runtimes.sh` installs it with `--no-deps` beside
  tensorflow-cpu. A model with CuDNN layers (which run on GPUs only) is rebuilt by tf.keras with
  `LSTM`/`GRU` in their place and loads its weights through tf.keras' own CuDNN conversion.
  Without `tf-keras`, the reference is the Keras 3 translation, and the export says so.

Each reference is a `KerasRunner` over the translated model (same output names, roles and order), whose
`run` computes the original's outputs. `label` is what the report and the metadata call it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.errors import InputError
from toolkit.guard import safe_text
from toolkit.keras2.loader import Keras2Model
from toolkit.keras_runner import KerasRunner

TF_KERAS_HINT = "pip install --no-deps 'tf-keras==2.21.*' (scripts/setup_runtimes.sh does)"


class SignatureReference(KerasRunner):
    """A SavedModel's `serving_default` signature as the reference."""

    def __init__(self, loaded: Keras2Model):
        super().__init__(loaded.model, name="savedmodel-signature")
        import tensorflow as tf

        from toolkit.keras2.savedmodel import check_graph_ops
        from toolkit.limits import DEFAULT_LIMITS

        check_graph_ops(loaded.path, DEFAULT_LIMITS)  # again: this runner may be made for any folder
        self._object = tf.saved_model.load(str(loaded.path))
        self._signature = self._object.signatures["serving_default"]
        self._output_keys = keras2_output_names(loaded.translation.config)
        self._states = _state_variables(self._object, loaded.path)
        self.label = f"the SavedModel's serving signature, run by TensorFlow {tf.__version__}"

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import tensorflow as tf

        for variable in self._states:
            variable.assign(tf.zeros_like(variable))
        _, keyword = self._signature.structured_input_signature
        args = {key: tf.constant(feeds[key]) for key in keyword if key in feeds}
        try:
            result = self._signature(**args)
        except (tf.errors.OpError, TypeError, ValueError) as exc:
            raise InputError(f"Expected the SavedModel's signature to run on the parity inputs. Received: "
                             f"{type(exc).__name__}: {safe_text(str(exc).splitlines()[0] if str(exc) else '')[:200]}") from None
        missing = [key for key in self._output_keys if key not in result]
        if missing:
            raise InputError(f"Expected the signature's outputs {self._output_keys}. Received: {sorted(result)}")
        return dict(zip(self.output_names, (np.asarray(result[key]) for key in self._output_keys)))


class TfKerasReference(KerasRunner):
    """tf.keras (the `tf-keras` package) running the original `.h5` or `.keras` file."""

    def __init__(self, loaded: Keras2Model, tf_keras: Any):
        super().__init__(loaded.model, name="tf.keras")
        if loaded.translation.cudnn:
            # CuDNN layers run on GPUs only: tf.keras rebuilds the model with their CPU layers and converts
            # their weights itself when it loads them (its _convert_rnn_weights).
            self._original = tf_keras.models.model_from_json(json.dumps(_tf_keras_config(loaded.translation.config)))
            self._original.load_weights(str(loaded.path))
            how = "with CuDNN layers as LSTM/GRU and tf.keras' own weight conversion"
        else:
            self._original = tf_keras.models.load_model(str(loaded.path), compile=False)
            how = "loading the original file"
        self.label = f"tf.keras {tf_keras.__version__} {how}"

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = [feeds[t.name.split(":")[0]] for t in self._original.inputs]
        self._original.reset_states()
        outputs = self._original(args if len(args) > 1 else args[0], training=False)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        return dict(zip(self.output_names, (np.asarray(o) for o in outputs)))


class TranslationReference(KerasRunner):
    """The Keras 3 translation itself: the reference when tf-keras is not installed."""

    def __init__(self, loaded: Keras2Model, reason: str):
        super().__init__(loaded.model, name="keras")
        self.label = f"the Keras 3 translation, not tf.keras ({reason}: {TF_KERAS_HINT})"


def original_reference(loaded: Keras2Model) -> KerasRunner:
    """The reference for a Keras 2 file: its signature (SavedModel) or tf.keras (.h5, .keras)."""
    if loaded.format.kind == "savedmodel":
        return SignatureReference(loaded)
    try:
        import tf_keras
    except ImportError:
        return TranslationReference(loaded, "tf-keras is not installed")
    return TfKerasReference(loaded, tf_keras)


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


def _tf_keras_config(config: dict) -> dict:
    """The translated config as tf.keras reads it: Keras 3's InputLayer `batch_shape` back to Keras 2's name."""
    text = json.dumps(config).replace('"batch_shape"', '"batch_input_shape"')
    return json.loads(text)


def _state_variables(loaded: Any, folder: Path) -> list[Any]:
    """The state variables of stateful layers (`<layer>/keras_api/states/<i>` in the checkpoint)."""
    import tensorflow as tf

    keys = tf.train.load_checkpoint(str(folder / "variables" / "variables")).get_variable_to_shape_map()
    found = []
    for key in keys:
        path = key.split("/.ATTRIBUTES")[0].split("/")
        if "states" not in path:
            continue
        node = loaded
        for part in path:
            node = node[int(part)] if part.isdigit() else getattr(node, part, None)
            if node is None:
                break
        if node is not None and hasattr(node, "assign"):
            found.append(node)
    return found
