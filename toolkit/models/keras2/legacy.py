"""Keras 2.0-2.x layer config forms and argument ranges that Keras 3 refuses, in the form Keras 3 builds.

- Layers that do nothing at inference (noise, dropout): Keras 2 accepted any non-negative `stddev`/`rate`
  (a Keras 2.1 model trained with `GaussianNoise(stddev=1.5)`), Keras 3 only [0, 1], and Keras 3's
  `SpatialDropout*` take no `noise_shape`/`trainable`. The value is brought into Keras 3's range: the
  layer stays the identity it is at inference, and the note says so.
- Keras 1 argument names that Keras 2.0's own legacy interfaces still read (`output_dim`, `init`,
  `border_mode`, `filter_length`, `pool_length`, ...): renamed when they mean the same thing; those with
  no Keras 2 meaning at inference (initializers, regularizers) dropped.
- Keras 1 / 2.0 `Merge(mode=...)`: the merge layer of the same function (`concat` -> Concatenate, `sum` ->
  Add, ...); a mode given as a Python function or `cos` is refused in one line.
- `BatchNormalization(mode=0)` (Keras 1) is today's; another mode computed batch statistics: refused.
- Keras 2.0's `Embedding(dtype="int32")`: the layer's dtype was its input's; its table is float (the
  stored weights are float32). Keras 3 (and tf.keras 2.21) would draw the table's initializer in int32 and
  fail, so the layer computes in float32, as Keras 2.0 did.
"""

from __future__ import annotations

from toolkit.errors import UnsupportedModelError
from toolkit.text import safe_text

# Layers that are the identity at inference, and the argument Keras 3 bounds to [0, 1].
_NOISE_RANGES = {"GaussianNoise": "stddev", "GaussianDropout": "rate", "AlphaDropout": "rate", "Dropout": "rate",
                 "SpatialDropout1D": "rate", "SpatialDropout2D": "rate", "SpatialDropout3D": "rate"}
# Arguments Keras 3's SpatialDropout layers do not take (no effect at inference).
_SPATIAL_DROPPED = ("noise_shape", "trainable")
# Keras 1 argument names -> Keras 2's, per layer (same meaning).
_KERAS1_NAMES = {
    "Dense": {"output_dim": "units", "bias": "use_bias"},
    "Conv1D": {"nb_filter": "filters", "filter_length": "kernel_size", "subsample_length": "strides",
               "border_mode": "padding", "atrous_rate": "dilation_rate", "bias": "use_bias"},
    "MaxPooling1D": {"pool_length": "pool_size", "stride": "strides", "border_mode": "padding"},
    "AveragePooling1D": {"pool_length": "pool_size", "stride": "strides", "border_mode": "padding"},
    "Embedding": {},
    "BatchNormalization": {},
    # Keras 1's noise layers: Dropout(p), GaussianNoise(sigma) (BUPTLdy/Sentiment-Analysis' to_yaml pair)
    **{kind: {"p": "rate"} for kind in ("Dropout", "SpatialDropout1D", "GaussianDropout")},
    "GaussianNoise": {"sigma": "stddev"},
    # Keras 2.0's `legacy_recurrent_support` (keras/legacy/interfaces.py) read these as Keras 2's.
    **{kind: {"output_dim": "units", "inner_activation": "recurrent_activation", "dropout_W": "dropout",
              "dropout_U": "recurrent_dropout"} for kind in ("LSTM", "GRU", "SimpleRNN")},
}
# Layers whose Keras 1 `input_dim` (and `input_length`) was the shape of their input.
_KERAS1_INPUT_DIM = ("LSTM", "GRU", "SimpleRNN", "Conv1D", "Dense")
_KERAS1_CLASSES = {"Convolution1D": "Conv1D", "AtrousConvolution1D": "Conv1D"}
# Keras 1 arguments with no meaning at inference (initial values, training penalties and constraints).
_KERAS1_DROPPED = ("init", "inner_init", "W_regularizer", "U_regularizer", "b_regularizer", "W_constraint",
                   "U_constraint", "b_constraint", "beta_init", "gamma_init", "mode",
                   # recurrent: initial values, and Keras 1's choice of matmul layout (same function)
                   "forget_bias_init", "consume_less")
# Keras 1 arguments of one layer only, with no meaning at inference: Embedding's `dropout` dropped whole rows of
# the table in training only (`K.in_train_phase(W * B, W)`); Keras 2.0's legacy interface dropped it too.
_KERAS1_DROPPED_BY_KIND = {"Embedding": ("dropout",)}
_MERGE_MODES = {"concat": "Concatenate", "sum": "Add", "mul": "Multiply", "ave": "Average", "max": "Maximum",
                "dot": "Dot"}


def legacy_layer(entry: dict, source: str) -> str | None:
    """One layer's Keras 2.0-2.x form as Keras 3 builds it, in place; a note when something changed."""
    kind = entry.get("class_name")
    config = entry["config"]
    name = safe_text(str(config.get("name")))
    if kind in _KERAS1_CLASSES:
        kind = entry["class_name"] = _KERAS1_CLASSES[kind]
    if kind == "Merge":
        return _merge(entry, name, source)
    if kind in _NOISE_RANGES:  # Keras 1's names first: `p` is the rate _noise brings into range
        return "; ".join(filter(None, (keras1_arguments(entry), _noise(kind, config, name)))) or None
    if kind == "BatchNormalization" and config.get("mode", 0) != 0:
        raise UnsupportedModelError(f"Expected BatchNormalization with Keras 2's meaning. Received: "
                                    f"{safe_text(source)!r} with layer {name!r} mode={config['mode']!r} (Keras 1's "
                                    "batch-statistics modes are not supported; re-save it with Keras 2 mode 0)")
    # Keras 1's `input_dtype="int32"` becomes the dtype first: on an Embedding it was its input's dtype too.
    keras1 = keras1_arguments(entry)
    if kind == "Embedding" and str(config.get("dtype", "float32")).startswith(("int", "uint")):
        config["dtype"] = "float32"
        note = f"Embedding {name!r}: dtype=int32 (its input's, Keras 1 and 2.0) read as float32, the table's dtype"
        return "; ".join(filter(None, (keras1, note)))
    return keras1


def keras1_arguments(entry: dict) -> str | None:
    """A layer's Keras 1 argument names as Keras 2's, in place (what Keras 2.0's legacy interfaces did when
    they read a Keras 1 config); a note when something changed. tf.keras 2.21 no longer reads them, so its
    reference of a Keras 1 file is built with this correction too."""
    config = entry["config"]
    moved = _keras1_input(str(entry.get("class_name")), config)
    return _keras1_names(str(entry.get("class_name")), config, safe_text(str(config.get("name"))), moved)


def _keras1_input(kind: str, config: dict) -> list[str]:
    """Keras 1's `input_dtype` as the dtype, and the `input_dim`/`input_length` its recurrent, Conv1D and Dense
    layers repeated in their configs dropped: a first layer's shape is its `batch_input_shape`, which Keras 1's
    Layer.get_config always wrote beside them, and a later or wrapped layer's came from its input (Keras 2.0's
    legacy interfaces turned them into an `input_shape` that only a first layer reads)."""
    moved = [key for key in ("input_dtype", "input_dim", "input_length") if key in config]
    if "input_dtype" in config:
        config.setdefault("dtype", config.pop("input_dtype"))
    if kind not in _KERAS1_INPUT_DIM:  # Embedding's input_dim is its vocabulary, input_length its own argument
        return [key for key in moved if key == "input_dtype"]
    config.pop("input_dim", None)
    config.pop("input_length", None)
    return moved


def _keras1_names(kind: str, config: dict, name: str, moved: list[str]) -> str | None:
    renamed = [old for old in _KERAS1_NAMES.get(kind, {}) if old in config]
    for old in renamed:
        config[_KERAS1_NAMES[kind][old]] = config.pop(old)
    dropped = [key for key in _KERAS1_DROPPED + _KERAS1_DROPPED_BY_KIND.get(kind, ())
               if key in config and kind in _KERAS1_NAMES]
    for key in dropped:
        config.pop(key)
    if kind == "Conv1D" and config.get("padding") == "full":
        raise UnsupportedModelError(f"Expected Conv1D padding 'valid', 'same' or 'causal'. Received: layer {name!r} "
                                    "with Keras 1's border_mode='full' (not supported)")
    if not renamed and not dropped and not moved:
        return None
    return f"{kind} {name!r}: Keras 1 arguments {renamed + dropped + moved} read as Keras 2's"


def _noise(kind: str, config: dict, name: str) -> str | None:
    """A noise or dropout layer's argument brought into Keras 3's range: it is the identity at inference."""
    key = _NOISE_RANGES[kind]
    changed = []
    if kind.startswith("SpatialDropout"):
        changed = [arg for arg in _SPATIAL_DROPPED if config.pop(arg, None) is not None]
    value = config.get(key)
    if isinstance(value, (int, float)) and not 0 <= value <= 1:
        config[key] = min(max(float(value), 0.0), 1.0)
        changed.append(f"{key}={value!r} as {config[key]}")
    if not changed:
        return None
    return f"{kind} {name!r}: {', '.join(changed)} (Keras 3's range; the layer does nothing at inference)"


def _merge(entry: dict, name: str, source: str) -> str:
    """Keras 1 / 2.0 `Merge(mode=...)` as the merge layer of the same function."""
    config = entry["config"]
    mode = config.get("mode", "sum")
    target = _MERGE_MODES.get(mode) if isinstance(mode, str) else None
    if target is None or config.get("mode_type", "raw") != "raw":
        raise UnsupportedModelError(f"Expected a Merge layer with mode concat, sum, mul, ave, max or dot. Received: "
                                    f"{safe_text(source)!r} with layer {name!r} mode={safe_text(repr(mode)[:40])} "
                                    "(not supported)")
    new: dict = {"name": config.get("name"), "trainable": config.get("trainable", True)}
    if target == "Concatenate":
        new["axis"] = config.get("concat_axis", -1)
    elif target == "Dot":
        new["axes"] = config.get("dot_axes", -1)
    entry["class_name"], entry["config"] = target, new
    if "module" in entry:
        entry["module"] = "keras.layers"
    return f"Merge {name!r}: mode {mode!r} read as {target}"
