"""The measurement behind `toolkit.tolerance.ROUNDING_FACTOR`: on char-RNN-shaped models with weights at a
trained model's scale (logits in the tens), how far ONNX Runtime's float32 export is from Keras' float32 run,
against how far Keras' float32 run is from the same model in float64 (`toolkit.checking.rounding`).

    .venv/bin/python scripts/rounding_scan.py

Prints one row per model: the output's scale, |ort - keras32|, |keras32 - keras64|, their ratio, and the
tolerance the export was checked at. ROUNDING_FACTOR must stay well above the worst ratio.
"""

from __future__ import annotations

import numpy as np

VOCAB = 80


def char_rnn(kind: str, units: int, steps: int, seed: int = 0):
    import keras

    layer = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU, "rnn": keras.layers.SimpleRNN}[kind]
    ids = keras.Input((steps,), dtype="int32", name="ids")
    h = keras.layers.Embedding(VOCAB, 64)(ids)
    h = layer(units, return_sequences=True, name=f"{kind}_1")(h)
    h = layer(units, name=f"{kind}_2")(h)
    model = keras.Model(ids, keras.layers.Dense(VOCAB, name="logits")(h), name=f"{kind}{units}x{steps}")
    rng = np.random.default_rng(seed)
    # Logit kernels drawn 25/sqrt(fan_in) and the rest 3/sqrt(fan_in) (0.6x for SimpleRNN's recurrent kernel,
    # which diverges otherwise): logits of 20-60, as published char-RNNs have.
    model.set_weights([rng.normal(0, (25 if w.ndim == 2 and w.shape[-1] == VOCAB else 3)
                                  * (0.6 if kind == "rnn" and w.ndim == 2 and w.shape == (units, units) else 1.0)
                                  / np.sqrt(w.shape[0]), w.shape).astype("float32") for w in model.get_weights()])
    return model


def main() -> None:
    from toolkit.checking.rounding import RoundingProbe
    from toolkit.export.exporter import export_model
    from toolkit.runtimes.onnxrt import OnnxRunner

    print(f"{'model':<16} {'scale':>7} {'ort-k32':>9} {'k32-k64':>9} {'ratio':>6}  tolerance")
    for kind in ("lstm", "gru", "rnn"):
        for units, steps in ((128, 50), (256, 200)):
            model = char_rnn(kind, units, steps)
            feeds = {"ids": np.random.default_rng(1).integers(0, VOCAB, (4, steps)).astype("int32")}
            result = export_model(model)
            name = result.outputs[0].name
            ort = OnnxRunner(result.model).run(feeds)[name]
            k32 = np.asarray(model(feeds["ids"]))
            noise = RoundingProbe(model, [name]).measure(feeds)[name]
            diff = float(np.abs(ort - k32).max())
            print(f"{model.name:<16} {np.abs(k32).max():7.3g} {diff:9.3g} {noise:9.3g} {diff / noise:6.2f}  "
                  f"{result.parity.summaries()[0].tolerance}")


if __name__ == "__main__":
    main()
