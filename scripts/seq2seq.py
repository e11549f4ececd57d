"""The keras.io character-level seq2seq model, exported with lstm-onnx and decoded in ONNX Runtime.

    python scripts/seq2seq.py                 # build, export, decode both ways, time one decoder step
    python scripts/seq2seq.py decode ENCODER.onnx DECODER.onnx INPUTS.npy   # ONNX Runtime only, no TensorFlow

The model is keras.io's "Character-level recurrent sequence-to-sequence model" (an encoder
`LSTM(return_state=True)`, a decoder `LSTM(return_sequences=True, return_state=True)` started from the
encoder's states, a softmax `Dense`), untrained: weights are drawn from a seed, which is enough to check
that ONNX Runtime decodes the same tokens as Keras. The inference encoder and the single-step decoder
are exported as keras.io builds them; greedy decoding then runs in a process that never imports
TensorFlow, as a deploy machine would.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

NUM_ENCODER_TOKENS = 12
NUM_DECODER_TOKENS = 14
LATENT_DIM = 64
START, STOP = 0, 1  # keras.io uses "\t" and "\n" as the decoder's start and stop characters
MAX_DECODER_STEPS = 20


def build(latent_dim: int = LATENT_DIM, seed: int = 0) -> tuple[Any, Any, Any]:
    """keras.io's training model, and its inference encoder and decoder (sharing the weights)."""
    import keras

    from toolkit.models.builder import set_deterministic_weights

    encoder_inputs = keras.Input(shape=(None, NUM_ENCODER_TOKENS), name="encoder_inputs")
    encoder = keras.layers.LSTM(latent_dim, return_state=True, name="encoder")
    _, state_h, state_c = encoder(encoder_inputs)
    encoder_states = [state_h, state_c]
    decoder_inputs = keras.Input(shape=(None, NUM_DECODER_TOKENS), name="decoder_inputs")
    decoder_lstm = keras.layers.LSTM(latent_dim, return_sequences=True, return_state=True, name="decoder_lstm")
    decoder_outputs, _, _ = decoder_lstm(decoder_inputs, initial_state=encoder_states)
    decoder_dense = keras.layers.Dense(NUM_DECODER_TOKENS, activation="softmax", name="decoder_dense")
    training = keras.Model([encoder_inputs, decoder_inputs], decoder_dense(decoder_outputs), name="seq2seq")
    set_deterministic_weights(training, seed)
    # Untrained weights leave the softmax dominated by its bias (the same token every step). A sharper,
    # bias-free head makes the decoded tokens depend on the states, so the comparison means something.
    kernel, bias = decoder_dense.get_weights()
    decoder_dense.set_weights([kernel * 12.0, np.zeros_like(bias)])
    for layer in (encoder, decoder_lstm):  # livelier recurrences: tokens change along the sequence
        layer.set_weights([w * 3.0 for w in layer.get_weights()])

    encoder_model = keras.Model(encoder_inputs, encoder_states, name="seq2seq_encoder")
    state_input_h = keras.Input(shape=(latent_dim,), name="decoder_state_input_h")
    state_input_c = keras.Input(shape=(latent_dim,), name="decoder_state_input_c")
    outputs, h, c = decoder_lstm(decoder_inputs, initial_state=[state_input_h, state_input_c])
    decoder_model = keras.Model([decoder_inputs, state_input_h, state_input_c], [decoder_dense(outputs), h, c],
                                name="seq2seq_decoder")
    return training, encoder_model, decoder_model


def export(encoder_model: Any, decoder_model: Any, folder: Path) -> tuple[Path, Path]:
    from toolkit.export.exporter import export_model

    paths = []
    for model, name in ((encoder_model, "encoder.onnx"), (decoder_model, "decoder.onnx")):
        result = export_model(model)
        paths.append(result.save(folder / name))  # refuses a model that failed parity
    return paths[0], paths[1]


def one_hot(token: int, size: int) -> np.ndarray:
    x = np.zeros((1, 1, size), np.float32)
    x[0, 0, token] = 1.0
    return x


def input_sequences(count: int, length: int = 7, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, NUM_ENCODER_TOKENS, size=(count, length))
    return np.eye(NUM_ENCODER_TOKENS, dtype=np.float32)[tokens]


def decode_keras(encoder_model: Any, decoder_model: Any, sequence: np.ndarray) -> list[int]:
    """keras.io's `decode_sequence`, with `predict` as in the tutorial."""
    states = encoder_model.predict(sequence, verbose=0)
    target = one_hot(START, NUM_DECODER_TOKENS)
    decoded: list[int] = []
    while len(decoded) < MAX_DECODER_STEPS:
        probabilities, h, c = decoder_model.predict([target] + list(states), verbose=0)
        token = int(np.argmax(probabilities[0, -1, :]))
        if token == STOP:
            break
        decoded.append(token)
        target, states = one_hot(token, NUM_DECODER_TOKENS), [h, c]
    return decoded


def decode_onnx(encoder_path: Path, decoder_path: Path, sequence: np.ndarray) -> list[int]:
    """The same loop in ONNX Runtime, by output name: no TensorFlow."""
    from toolkit.runtimes.onnxrt import OnnxRunner

    encoder, decoder = OnnxRunner(encoder_path), OnnxRunner(decoder_path)
    states = encoder.run({"encoder_inputs": sequence})
    h, c = states["encoder_state_h"], states["encoder_state_c"]
    target = one_hot(START, NUM_DECODER_TOKENS)
    decoded: list[int] = []
    while len(decoded) < MAX_DECODER_STEPS:
        out = decoder.run({"decoder_inputs": target, "decoder_state_input_h": h, "decoder_state_input_c": c})
        token = int(np.argmax(out["decoder_dense_output"][0, -1, :]))
        if token == STOP:
            break
        decoded.append(token)
        target, h, c = one_hot(token, NUM_DECODER_TOKENS), out["decoder_lstm_state_h"], out["decoder_lstm_state_c"]
    return decoded


def decode_in_fresh_process(encoder_path: Path, decoder_path: Path, sequences: np.ndarray) -> list[list[int]]:
    with tempfile.TemporaryDirectory() as folder:
        inputs = Path(folder) / "inputs.npy"
        np.save(inputs, sequences)
        done = subprocess.run([sys.executable, __file__, "decode", str(encoder_path), str(decoder_path), str(inputs)],
                              capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def median_ms(fn: Any, repeats: int = 50) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def decoder_step_latency(decoder_model: Any, decoder_path: Path) -> dict[str, float]:
    """One decoder step (batch 1): Keras predict, a direct Keras call, ONNX Runtime."""
    from toolkit.runtimes.onnxrt import OnnxRunner

    target = one_hot(START, NUM_DECODER_TOKENS)
    h = np.zeros((1, LATENT_DIM), np.float32)
    runner = OnnxRunner(decoder_path)
    feeds = {"decoder_inputs": target, "decoder_state_input_h": h, "decoder_state_input_c": h}
    return {
        "keras_predict_ms": median_ms(lambda: decoder_model.predict([target, h, h], verbose=0), 20),
        "keras_call_ms": median_ms(lambda: decoder_model([target, h, h], training=False)),
        "onnxruntime_ms": median_ms(lambda: runner.session.run(None, feeds), 200),
    }


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    _, encoder_model, decoder_model = build()
    out = ROOT / "scripts" / "results" / "seq2seq"
    encoder_path, decoder_path = export(encoder_model, decoder_model, out)
    sequences = input_sequences(8)
    keras_tokens = [decode_keras(encoder_model, decoder_model, s[None]) for s in sequences]
    onnx_tokens = decode_in_fresh_process(encoder_path, decoder_path, sequences)
    for k, o in zip(keras_tokens, onnx_tokens):
        print(f"keras {k}\nonnx  {o}  {'same' if k == o else 'DIFFERENT'}")
    latency = decoder_step_latency(decoder_model, decoder_path)
    print(json.dumps(latency, indent=2))
    same = sum(k == o for k, o in zip(keras_tokens, onnx_tokens))
    print(f"{same} of {len(sequences)} sequences decoded identically")
    from toolkit.fileio import atomic_write_text

    atomic_write_text(out / "seq2seq.json", json.dumps({"identical": same, "sequences": len(sequences),
                                                        "decoder_step": latency}, indent=2) + "\n")
    sys.exit(0 if same == len(sequences) else 1)


def decode_main(encoder: str, decoder: str, inputs: str) -> None:
    sequences = np.load(inputs)
    tokens = [decode_onnx(Path(encoder), Path(decoder), s[None]) for s in sequences]
    heavy = [m for m in ("tensorflow", "keras", "tf2onnx") if m in sys.modules]
    if heavy:
        raise SystemExit(f"decode imported {heavy}; it must run without TensorFlow")
    print(json.dumps(tokens))


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "decode":
        decode_main(*sys.argv[2:])
    else:
        main()
