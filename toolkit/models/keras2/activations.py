"""Keras 2 activations whose meaning Keras 3 changed, kept with Keras 2's meaning for Keras 2 files.

Read from Keras 2's sources (standalone 2.0-2.3 `keras/activations.py` and `backend/*_backend.py`,
tf-keras 2.21 `tf_keras/src/activations.py` and `backend.py`) against Keras 3.15's:

- `hard_sigmoid`: Keras 2 is `clip(0.2x + 0.5, 0, 1)` (every backend: TensorFlow, Theano's
  `T.nnet.hard_sigmoid`, CNTK; tf.keras too). Keras 3 is `relu6(x + 3) / 6` (slope 1/6). Translated to
  `keras2_hard_sigmoid` below, which the lowering fuses as ONNX `HardSigmoid(alpha=0.2, beta=0.5)`
  (ONNX's default: exactly Keras 2's).
- Standalone Keras 2.0-2.2 defaults that tf.keras changed, for configs that leave them out (configs written
  by Keras itself always spell them out; hand-made or trimmed ones may not): `LSTM`/`GRU`
  `recurrent_activation` was `hard_sigmoid` until Keras 2.3.0 (then `sigmoid`), and `GRU` had no
  `reset_after` before 2.1.3 and defaulted it to False (tf.keras 2: True). Filled in by `keras2_defaults`.
- `LeakyReLU(alpha=...)`: Keras 3 names it `negative_slope` (same default 0.3, same function): renamed.
- `ThresholdedReLU(theta)` (`x if x > theta else 0`): gone from Keras 3; it is `ReLU(threshold=theta)`,
  which computes `x * (x > theta)`. Rewritten.
- Unchanged (same formula and defaults in both): `relu` (and the `ReLU` layer's `max_value`,
  `negative_slope`, `threshold`), `elu`/`ELU(alpha=1.0)`, `selu` (same two constants), `softplus`,
  `softsign`, `tanh`, `sigmoid`, `exponential`, `linear`, `softmax`/`Softmax(axis=-1)`, `swish` (Keras 3's
  `silu`, both `x * sigmoid(x)`), `gelu` (`approximate=False` by default in both), `mish`. Keras 2 has no
  `relu6`, `hard_silu` or `leaky_relu` activation by name, so no Keras 2 file names them.
- `unit_forget_bias` only sets the initial forget-gate bias: the stored weights replace it.
"""

from __future__ import annotations

from typing import Any

KERAS2_HARD_SIGMOID = "keras2_hard_sigmoid"
_PACKAGE = "lstm_onnx"
_REGISTERED = f"{_PACKAGE}>{KERAS2_HARD_SIGMOID}"
# Keras 2's hard_sigmoid as (ONNX activation, alpha, beta): ONNX HardSigmoid's defaults.
KERAS2_HARD_SIGMOID_ONNX = ("HardSigmoid", 0.2, 0.5)
ACTIVATION_KEYS = ("activation", "recurrent_activation")
# Standalone Keras < 2.3's defaults for keys a config may leave out.
_OLD_RECURRENT_DEFAULTS = {"LSTM": {"recurrent_activation": "hard_sigmoid"},
                           "GRU": {"recurrent_activation": "hard_sigmoid", "reset_after": False},
                           "LSTMCell": {"recurrent_activation": "hard_sigmoid"},
                           "GRUCell": {"recurrent_activation": "hard_sigmoid", "reset_after": False}}
# tf.keras' defaults for the same keys (what tf-keras assumes when a config leaves them out).
_TF_KERAS_DEFAULTS = {"GRU": {"reset_after": True}, "GRUCell": {"reset_after": True}}


def keras2_hard_sigmoid(x: Any) -> Any:
    """Keras 2's hard_sigmoid, `clip(0.2x + 0.5, 0, 1)`, computed as Keras 2 computes it (scale, shift, clip)."""
    import keras

    return keras.ops.clip(keras.ops.add(keras.ops.multiply(x, 0.2), 0.5), 0.0, 1.0)


def register() -> None:
    """Register Keras 2's activations with Keras 3 (once), under `lstm_onnx>`: a translated config names
    them, and Keras' wrappers (Bidirectional, TimeDistributed) re-serialize and rebuild their layers."""
    import keras

    if keras.saving.get_registered_object(_REGISTERED) is None:
        keras.saving.register_keras_serializable(package=_PACKAGE, name=KERAS2_HARD_SIGMOID)(keras2_hard_sigmoid)


def is_hard_sigmoid(value: Any) -> bool:
    """A serialized activation that names hard_sigmoid: a string, or the dict form tf.keras 2.13+'s
    `.keras` serializer writes for a built-in function."""
    if isinstance(value, dict):
        value = value.get("config") if value.get("class_name") == "function" else None
    return value == "hard_sigmoid"


def old_keras(version: str) -> bool:
    """Whether `version` is a standalone Keras before 2.3 (whose recurrent defaults differ from tf.keras')."""
    parts = version.split(".")
    try:
        return int(parts[0]) < 2 or (int(parts[0]) == 2 and int(parts[1]) < 3)
    except (ValueError, IndexError):
        return False


def keras2_defaults(kind: str, config: dict, version: str) -> list[str]:
    """Fill in the defaults a config leaves out with what the Keras that wrote it assumed (standalone
    Keras < 2.3, or tf.keras); returns `key=value` for each one filled in."""
    defaults = _OLD_RECURRENT_DEFAULTS if old_keras(version) else _TF_KERAS_DEFAULTS
    filled = []
    for key, value in defaults.get(kind, {}).items():
        if key not in config:
            config[key] = value
            filled.append(f"{key}={value!r}")
    return filled


def translate_activations(kind: str, config: dict) -> list[str]:
    """Keras 2 activation meanings as Keras 3 objects of the same meaning, in one layer's config (in place);
    returns a note for each change."""
    notes = []
    for key in ACTIVATION_KEYS:
        if is_hard_sigmoid(config.get(key)):
            # Keras 3's serialized form of a registered function (`register`): a string is looked up
            # among Keras 3's own activations only.
            config[key] = {"module": "builtins", "class_name": "function", "config": _REGISTERED,
                           "registered_name": "function"}
            notes.append(f"{key} hard_sigmoid kept as Keras 2's clip(0.2x + 0.5, 0, 1) (Keras 3's is relu6(x + 3) / 6)")
    if kind == "LeakyReLU" and "alpha" in config:
        config["negative_slope"] = config.pop("alpha")
    return notes


def thresholded_relu(entry: dict) -> str | None:
    """Keras 2's ThresholdedReLU(theta) as Keras 3's ReLU(threshold=theta), the same function."""
    if entry.get("class_name") != "ThresholdedReLU":
        return None
    config = entry["config"]
    config["threshold"] = float(config.pop("theta", 1.0))
    entry["class_name"] = "ReLU"
    return f"ThresholdedReLU {config.get('name')!r}: read as ReLU(threshold={config['threshold']})"
