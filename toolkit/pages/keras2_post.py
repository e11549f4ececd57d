"""The post's code path in Keras 2: its two-layer stack built with tf.keras the way the post builds it
(`Model(inputs=..., outputs=[...])`), saved as `.h5` as a Keras 2 user would, and exported by lstm-onnx
from that file. Weights are the builder's (`builder.set_deterministic_weights`' draws, in the same
variable order), so the numbers equal the Keras 3 build's. Needs tf-keras (`scripts/setup_runtimes.sh`)."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.errors import InputError
from toolkit.models.builder import INPUT_NAME, StackConfig


def tf_keras_module() -> Any:
    try:
        import tf_keras
    except ImportError:
        from toolkit.runtimes.keras2 import TF_KERAS_HINT

        raise InputError(f"Expected tf.keras (the tf-keras package) for the Keras 2 code path. Received: not "
                         f"installed; {TF_KERAS_HINT}") from None
    return tf_keras


def build_post_stack(config: StackConfig) -> Any:
    """The post's stack for `config`'s last-layer flags, in tf.keras, with the builder's weights."""
    k2 = tf_keras_module()
    inputs1 = k2.Input(shape=(config.timesteps, config.features), name=INPUT_NAME)
    lstm1, _state_h, _state_c = k2.layers.LSTM(config.units, return_sequences=True, return_state=True,
                                               name="lstm_1")(inputs1)
    lstm2 = k2.layers.LSTM(config.units, return_sequences=config.return_sequences,
                           return_state=config.return_state, name="lstm_2")(lstm1)
    outputs = list(lstm2) if isinstance(lstm2, (list, tuple)) else [lstm2]
    model = k2.Model(inputs=inputs1, outputs=outputs)
    rng = np.random.default_rng(config.seed)
    values = []
    for weight in model.get_weights():
        if weight.ndim == 1:
            values.append(rng.uniform(-0.5, 0.5, size=weight.shape))
        else:
            limit = np.sqrt(6.0 / (weight.shape[0] + weight.shape[-1]))
            values.append(rng.uniform(-limit, limit, size=weight.shape))
    model.set_weights([v.astype(np.float32) for v in values])
    return model


def export_post_stack_h5(config: StackConfig) -> tuple[Any, Any, Any]:
    """Build the tf.keras stack, save it as `.h5`, export that file: (export result, its tf.keras reference,
    the Keras 3 translation)."""
    from toolkit.export.exporter import export_model
    from toolkit.models.keras2.formats import keras2_format
    from toolkit.options import DEFAULT_LIMITS
    from toolkit.runtimes.keras2 import open_original

    model = build_post_stack(config)
    with tempfile.TemporaryDirectory(prefix="lstm-onnx-post-") as folder:
        path = Path(folder) / f"{config.name or 'post'}.h5"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tf.keras calls .h5 legacy: saving one is the point here
            model.save(path)
        loaded, reference = open_original(path, keras2_format(path), DEFAULT_LIMITS)
        result = export_model(loaded.model, source=dict(loaded.source, reference=reference.label), reference=reference,
                              seed=config.seed)
    return result, reference, loaded.model
