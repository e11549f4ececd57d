"""Makes the Keras 2 models the Keras 2 tests read: real tf.keras (the `tf-keras` 2.21 package, Keras 2 on
TensorFlow 2.21) builds each model, saves it as `.h5`, as a SavedModel folder and as a tf.keras `.keras`
file, and records its own outputs on fixed inputs (`<name>.reference.npz`), so that the tests compare
lstm-onnx's exports with what tf.keras computed, never with a translation.

    python scripts/make_keras2_models.py OUT_DIR [--only NAME ...]

Besides the models of the "Done when" list (LSTM, GRU with both `reset_after`, SimpleRNN, Bidirectional
with states, Masking, Embedding(mask_zero), Sequential and functional, stacked, stateful) it writes:
- `cudnn_lstm.h5`, `cudnn_gru.h5`: GPU-era `CuDNNLSTM`/`CuDNNGRU` layers (built here on the CPU; their
  reference is tf.keras' own conversion to `LSTM`/`GRU(reset_after=True)`, which runs on a CPU);
- `keras22_lstm.h5`: the post's stack with its file rewritten to standalone Keras 2.2's layout
  (`keras_version` 2.2.4, `class_name` "Model", initializers without `module`) — tf.keras still reads it;
- `module_lstm/`: a `tf.Module` SavedModel with a serving signature and no Keras metadata;
- hostile files: `lambda.h5` (a Lambda layer: marshalled bytecode) and `writes_file/` (a SavedModel whose
  signature writes a file).
Weights come from numpy's `default_rng`, so the files are the same numbers on every run.
"""

from __future__ import annotations

import argparse
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
warnings.filterwarnings("ignore")  # tf.keras' "HDF5 is legacy" advice: these files are made on purpose

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as k2  # noqa: E402
import yaml  # noqa: E402  (Keras 1 and 2 wrote to_yaml() with it: the YAML pairs)

L = k2.layers
BATCH = 4


def _is_variance(model, index: int) -> bool:
    """Whether weight `index` of `model.get_weights()` is a BatchNormalization's moving variance."""
    names = [w.name for w in model.weights]
    return index < len(names) and "moving_variance" in names[index]


def weights(model, seed: int) -> None:
    """Glorot-like kernels and uniform(-0.5, 0.5) biases, in model order (states of stateful layers stay 0)."""
    rng = np.random.default_rng(seed)
    values = []
    for index, w in enumerate(model.get_weights()):
        if w.ndim == 1:
            value = rng.uniform(-0.5, 0.5, size=w.shape) + (1.0 if _is_variance(model, index) else 0.0)  # variance > 0
            values.append(value.astype(w.dtype))
        elif w.dtype.kind == "f":
            limit = np.sqrt(6.0 / (w.shape[0] + w.shape[-1]))
            values.append(rng.uniform(-limit, limit, size=w.shape).astype(w.dtype))
        else:
            values.append(w)
    model.set_weights(values)


# ------------------------------------------------------------------------------------------ the models


def post_case3():
    """The post's stack, case (3), written the way the post writes it (Keras 2's functional API)."""
    inputs1 = L.Input(shape=(3, 1))
    lstm1, state_h, state_c = L.LSTM(2, return_sequences=True, return_state=True)(inputs1)
    lstm2, state_h2, state_c2 = L.LSTM(2, return_sequences=True, return_state=True)(lstm1)
    return k2.Model(inputs=inputs1, outputs=[lstm2, state_h2, state_c2])


def sequential_lstm():
    """A Sequential forecaster: window of 10 steps -> LSTM -> Dense."""
    return k2.Sequential([L.LSTM(8, input_shape=(10, 1)), L.Dense(1)])


def embedding_gru():
    """A text classifier: Embedding(mask_zero=True) -> GRU (reset_after=True, Keras 2's default) -> Dense."""
    ids = L.Input(shape=(None,), dtype="int32", name="tokens")
    x = L.Embedding(50, 6, mask_zero=True)(ids)
    x = L.GRU(5)(x)
    return k2.Model(ids, L.Dense(3, activation="softmax")(x))


def bidirectional_states():
    """A Bidirectional LSTM encoder that returns its sequence and the four states."""
    x = L.Input(shape=(None, 3), name="frames")
    seq, fh, fc, bh, bc = L.Bidirectional(L.LSTM(4, return_sequences=True, return_state=True))(x)
    return k2.Model(x, [seq, fh, fc, bh, bc])


def masking_simple_rnn():
    """Masking -> SimpleRNN(return_sequences) -> TimeDistributed(Dense), Sequential."""
    return k2.Sequential([
        L.Masking(mask_value=0.0, input_shape=(None, 2)),
        L.SimpleRNN(4, return_sequences=True),
        L.TimeDistributed(L.Dense(2)),
    ])


def gru_reset_before():
    """A stack of GRU(reset_after=False) layers (the Keras 1 / CPU form), the last returning its state."""
    x = L.Input(shape=(6, 3))
    y = L.GRU(4, reset_after=False, return_sequences=True)(x)
    y, h = L.GRU(3, reset_after=False, return_state=True)(y)
    return k2.Model(x, [y, h])


def stateful_lstm():
    """A stateful LSTM stream model: fixed batch of 2 (Keras requires one), chunks of 4 steps."""
    x = L.Input(batch_shape=(2, 4, 3))
    y = L.LSTM(5, stateful=True, return_sequences=True)(x)
    return k2.Model(x, L.Dense(1)(y))


def mixed_stack():
    """Conv1D -> frozen BatchNormalization -> RNN(StackedRNNCells([LSTMCell, GRUCell])) -> Dropout ->
    TimeDistributed(a nested Sequential): nested models, non-trainable weights and cells in one file."""
    x = L.Input(shape=(None, 3), name="x")
    y = L.Conv1D(4, 2, padding="causal")(x)
    norm = L.BatchNormalization()
    norm.trainable = False
    y = L.RNN(L.StackedRNNCells([L.LSTMCell(5), L.GRUCell(3)]), return_sequences=True)(norm(y))
    head = k2.Sequential([L.Dense(4, activation="relu"), L.Dense(2)], name="head")
    return k2.Model(x, L.TimeDistributed(head)(L.Dropout(0.2)(y)))


def nested_encoder():
    """A Sequential (frozen Dense, BatchNormalization, LSTM) called inside a functional model, then a
    Bidirectional GRU: Keras 2 numbers a nested model's calls from node 1."""
    inner = k2.Sequential([L.Dense(4, trainable=False, input_shape=(None, 3)), L.BatchNormalization(),
                           L.LSTM(3, return_sequences=True)], name="inner")
    x = L.Input((None, 3), name="signal")
    h = L.Bidirectional(L.GRU(2, return_sequences=True))(inner(x))
    return k2.Model(x, L.TimeDistributed(L.Dense(2))(h))


def classic_text():
    """The classic Keras 2 text model: Sequential([Embedding(input_length=...), LSTM, Dense]), whose
    input Keras 2 leaves float32 (the ids are cast inside Embedding)."""
    return k2.Sequential([L.Embedding(50, 8, input_length=7), L.LSTM(4), L.Dense(1, activation="sigmoid")])


def float64_input():
    """A float64 input into a float32 LSTM: tf.keras' autocast casts it to float32 before the layer."""
    x = L.Input(shape=(None, 3), dtype="float64", name="signal")
    return k2.Model(x, L.Dense(1)(L.LSTM(4)(x)))


def float64_layers():
    """Layers whose dtype is float64 (float64 variables, float64 compute): LSTM -> GRU -> Dense."""
    x = L.Input(shape=(None, 3), dtype="float64", name="signal")
    y = L.LSTM(4, dtype="float64", return_sequences=True)(x)
    return k2.Model(x, L.Dense(2, dtype="float64")(L.GRU(3, dtype="float64")(y)))


MODELS: dict[str, Callable] = {
    "post_case3": post_case3,
    "sequential_lstm": sequential_lstm,
    "embedding_gru": embedding_gru,
    "bidirectional_states": bidirectional_states,
    "masking_simple_rnn": masking_simple_rnn,
    "gru_reset_before": gru_reset_before,
    "stateful_lstm": stateful_lstm,
    "mixed_stack": mixed_stack,
    "nested_encoder": nested_encoder,
    "classic_text": classic_text,
    "float64_input": float64_input,
    "float64_layers": float64_layers,
}


def cudnn_lstm():
    from tf_keras.src.layers.rnn.cudnn_lstm import CuDNNLSTM

    x = L.Input(shape=(5, 3))
    seq, h, c = CuDNNLSTM(4, return_sequences=True, return_state=True)(x)
    return k2.Model(x, [seq, h, c])


def cudnn_gru():
    from tf_keras.src.layers.rnn.cudnn_gru import CuDNNGRU

    x = L.Input(shape=(5, 3))
    return k2.Model(x, L.Dense(2)(CuDNNGRU(4)(x)))


# CuDNN layers run only on a GPU; their CPU twins are what tf.keras loads their weights into.
CUDNN: dict[str, tuple[Callable, Callable]] = {
    "cudnn_lstm": (cudnn_lstm, lambda: _cpu_twin(cudnn_lstm)),
    "cudnn_gru": (cudnn_gru, lambda: _cpu_twin(cudnn_gru)),
}


def _cpu_twin(build: Callable):
    """The CuDNN model with each CuDNN layer replaced by the CPU layer tf.keras converts its weights to."""
    config = build().get_config()
    for layer in config["layers"]:
        if layer["class_name"] == "CuDNNLSTM":
            layer["class_name"] = "LSTM"
            layer["config"] = {k: v for k, v in layer["config"].items() if k not in ("time_major",)}
        elif layer["class_name"] == "CuDNNGRU":
            layer["class_name"] = "GRU"
            layer["config"] = dict(layer["config"], reset_after=True, recurrent_activation="sigmoid")
    return k2.Model.from_config(config)


# ------------------------------------------------------------------------------------------ inputs


def reference_inputs(model, seed: int) -> dict[str, np.ndarray]:
    """Fixed inputs for the recorded outputs: masked models get padded rows and holes."""
    rng = np.random.default_rng(seed + 7)
    feeds = {}
    for tensor in model.inputs:
        batch = tensor.shape[0] or BATCH
        steps = tensor.shape[1] or 7
        rest = tuple(tensor.shape[2:])
        ids = tensor.dtype == tf.int32 or isinstance(model.layers[0], L.Embedding)
        if ids:
            value = rng.integers(1, 50, size=(batch, steps)).astype(np.int32)
            value[1, -3:] = 0  # right padding
            value[2, :2] = 0  # left padding
            value[3, 3] = 0  # a hole
            value = value.astype(tensor.dtype.as_numpy_dtype)
        else:
            value = rng.uniform(-1, 1, size=(batch, steps) + rest).astype(tensor.dtype.as_numpy_dtype)
        feeds[tensor.name.split(":")[0]] = value
    if any(isinstance(layer, L.Masking) for layer in model.layers):
        value = feeds[next(iter(feeds))]
        value[1, -2:] = 0.0
        value[2, 0] = 0.0
        value[3, 4] = 0.0
    return feeds


def record(model, name: str, out: Path, seed: int, named_by=None) -> None:
    """tf.keras' outputs on `reference_inputs`, keyed by the input names of `named_by` (default `model`)."""
    feeds = reference_inputs(named_by or model, seed)
    model.reset_states()
    outputs = model.predict(list(feeds.values()) if len(feeds) > 1 else next(iter(feeds.values())), verbose=0)
    outputs = outputs if isinstance(outputs, list) else [outputs]
    arrays = {f"input:{k}": v for k, v in feeds.items()}
    arrays.update({f"output:{i}": np.asarray(v) for i, v in enumerate(outputs)})
    np.savez(out / f"{name}.reference.npz", **arrays)


def save_all(model, name: str, out: Path, seed: int) -> None:
    weights(model, seed)
    model.reset_states()
    record(model, name, out, seed)
    model.save(out / f"{name}.h5")
    model.save(out / f"{name}.keras")
    model.save(out / f"{name}_savedmodel", save_format="tf")


def save_cudnn(name: str, out: Path, seed: int) -> None:
    build, twin = CUDNN[name]
    model = build()
    weights(model, seed)
    model.save(out / f"{name}.h5")
    reference = twin()
    reference.load_weights(out / f"{name}.h5")  # tf.keras' own CuDNN -> CPU weight conversion
    record(reference, name, out, seed, named_by=model)


def save_keras22(out: Path, seed: int) -> None:
    """The post's stack in standalone Keras 2.2's h5 layout."""
    model = post_case3()
    weights(model, seed)
    record(model, "keras22_lstm", out, seed)
    path = out / "keras22_lstm.h5"
    model.save(path)
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        config["class_name"] = "Model"
        for layer in config["config"]["layers"]:
            layer["config"].pop("time_major", None)
            for key, value in list(layer["config"].items()):
                if isinstance(value, dict) and "module" in value:  # Keras 2.2: {"class_name", "config"}
                    layer["config"][key] = {"class_name": value["class_name"], "config": value["config"]}
        f.attrs["model_config"] = json.dumps(config).encode()
        f.attrs["keras_version"] = b"2.2.4"
        f.attrs["backend"] = b"tensorflow"
        f["model_weights"].attrs["keras_version"] = b"2.2.4"


# ------------------------------------------------------------------------------------------ older Keras forms
# Files in forms only older Keras wrote: real tf.keras models whose saved model_config is rewritten into the
# older form (as `save_keras22`). Their reference outputs are tf.keras' own predict on the model before the
# rewrite, i.e. with the meaning the older Keras gave the rewritten file.


def _rewrite(path: Path, version: str, change: Callable[[dict], None]) -> None:
    """`path`'s model_config changed by `change`, its keras_version set to `version`."""
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        change(config)
        f.attrs["model_config"] = json.dumps(config).encode()
        f.attrs["keras_version"] = version.encode()
        f["model_weights"].attrs["keras_version"] = version.encode()


def _layers(config: dict) -> list[dict]:
    """Every layer config of a model config, wrapped layers included."""
    found, stack = [], list(config["config"]["layers"])
    while stack:
        layer = stack.pop()
        found.append(layer)
        stack += [layer["config"][key] for key in ("layer", "backward_layer") if isinstance(layer["config"].get(key), dict)]
    return found


def _as_keras20(config: dict) -> None:
    """Keras 2.0.8's form: `Model`, initializers without `module`, and the recurrent defaults of its day
    left out (recurrent_activation hard_sigmoid, GRU without reset_after, which meant False)."""
    config["class_name"] = "Model"
    for layer in _layers(config):
        inner = layer["config"]
        inner.pop("time_major", None)
        if layer["class_name"] in ("LSTM", "GRU") and inner.get("recurrent_activation") == "hard_sigmoid":
            inner.pop("recurrent_activation")
        if layer["class_name"] == "GRU" and inner.get("reset_after") is False:
            inner.pop("reset_after")
        for key, value in list(inner.items()):
            if isinstance(value, dict) and "module" in value and key.endswith("_initializer"):
                inner[key] = {"class_name": value["class_name"], "config": value["config"]}


def keras20_recurrent():
    """Keras 2.0-2.2's hard_sigmoid everywhere it appears: LSTM/GRU defaults, SimpleRNN in Bidirectional,
    TimeDistributed(Dense), Dense, Activation; and a GaussianNoise(stddev=1.5) Keras 3 refuses."""
    x = L.Input(shape=(6, 3), name="signal")
    y = L.GaussianNoise(1.5)(x)
    y = L.LSTM(4, recurrent_activation="hard_sigmoid", return_sequences=True)(y)
    y = L.GRU(3, recurrent_activation="hard_sigmoid", reset_after=False, return_sequences=True)(y)
    y = L.Bidirectional(L.SimpleRNN(2, activation="hard_sigmoid", return_sequences=True))(y)
    sequence = L.TimeDistributed(L.Dense(3, activation="hard_sigmoid"))(y)
    y = L.Activation("hard_sigmoid")(L.GRU(3, recurrent_activation="hard_sigmoid", reset_after=False)(sequence))
    return k2.Model(x, [L.Dense(2, activation="hard_sigmoid")(y), sequence])


def keras20_embedding():
    """Keras 2.0's Embedding(dtype="int32") and Keras 1/2.0's Merge(mode="concat") around recurrent layers."""
    ids = L.Input(shape=(7,), dtype="int32", name="tokens")
    x = L.Embedding(50, 6)(ids)
    merged = L.Concatenate(name="merge_1")([L.LSTM(3, return_sequences=True)(x), L.GRU(2, return_sequences=True)(x)])
    return k2.Model(ids, L.Dense(1, activation="sigmoid")(L.LSTM(4)(merged)))


def _keras20_embedding_form(config: dict) -> None:
    _as_keras20(config)
    for layer in config["config"]["layers"]:
        if layer["class_name"] == "Embedding":
            layer["config"]["dtype"] = "int32"
        if layer["class_name"] == "Concatenate":
            axis = layer["config"]["axis"]
            layer["class_name"] = "Merge"
            layer["config"] = {"name": layer["config"]["name"], "trainable": True, "mode": "concat",
                               "concat_axis": axis, "dot_axes": -1, "output_shape": None, "output_shape_type": "raw",
                               "output_mask": None, "output_mask_type": "raw", "arguments": {}, "mode_type": "raw"}


def seq2seq():
    """Keras' seq2seq example: an LSTM encoder's states are the initial states of an LSTM decoder (one
    Keras 2 node with three tensors) and of a SimpleRNN decoder (two tensors)."""
    encoder_inputs = L.Input(shape=(None, 3), name="encoder_inputs")
    _, h, c = L.LSTM(4, return_state=True, name="encoder")(encoder_inputs)
    decoder_inputs = L.Input(shape=(None, 2), name="decoder_inputs")
    seq, dh, dc = L.LSTM(4, return_sequences=True, return_state=True, name="decoder")(decoder_inputs, initial_state=[h, c])
    other = L.SimpleRNN(4, name="rnn_decoder")(decoder_inputs, initial_state=h)
    return k2.Model([encoder_inputs, decoder_inputs], [L.Dense(2, activation="softmax")(seq), dh, dc, other])


def masked_decoder():
    """A decoder given its encoder's states on a masked sequence (Embedding(mask_zero=True)): tf.keras
    applies the mask in that call, Keras 3 would not."""
    source = L.Input(shape=(None,), dtype="int32", name="source")
    target = L.Input(shape=(None,), dtype="int32", name="target")
    _, h, c = L.LSTM(3, return_state=True, name="encoder")(L.Embedding(50, 4, mask_zero=True)(source))
    sequence = L.Embedding(50, 4, mask_zero=True)(target)
    decoded = L.LSTM(3, return_sequences=True, name="decoder")(sequence, initial_state=[h, c])
    return k2.Model([source, target], L.Dense(2)(decoded))


def _states_as_kwargs(config: dict) -> None:
    """tf.keras 2.0-2.3's node form: the states under the sequence's kwargs, `initial_state`."""
    for layer in config["config"]["layers"]:
        nodes = layer.get("inbound_nodes") or []
        if layer["class_name"] in ("LSTM", "SimpleRNN") and nodes and len(nodes[0]) > 1:
            first, *states = nodes[0]
            nodes[0] = [[first[0], first[1], first[2], {"initial_state": [s[:3] for s in states]}]]


def state_inputs():
    """Initial states that are model inputs: an LSTM's [h, c], and a Bidirectional GRU's two states."""
    x = L.Input(shape=(None, 2), name="frames")
    h = L.Input(shape=(4,), name="h0")
    c = L.Input(shape=(4,), name="c0")
    y = L.LSTM(4, return_sequences=True)(x, initial_state=[h, c])
    y = L.Bidirectional(L.GRU(4))(y, initial_state=[h, c])
    return k2.Model([x, h, c], L.Dense(2)(y))


def save_old_forms(out: Path, seed: int) -> None:
    """The older forms, each an .h5 (and its reference outputs); `seq2seq` also as tf.keras 2.0-2.3's kwargs."""
    forms = [("keras20_recurrent", keras20_recurrent, "2.0.8", _as_keras20),
             ("keras20_embedding", keras20_embedding, "2.0.8", _keras20_embedding_form),
             ("seq2seq", seq2seq, "2.21.0", lambda config: None),
             ("seq2seq_kwargs", seq2seq, "2.2.4-tf", _states_as_kwargs),
             ("state_inputs", state_inputs, "2.21.0", lambda config: None),
             ("masked_decoder", masked_decoder, "2.21.0", lambda config: None)]
    for offset, (name, build, version, change) in enumerate(forms):
        k2.backend.clear_session()
        model = build()
        weights(model, seed + offset)
        record(model, name, out, seed + offset)
        model.save(out / f"{name}.h5")
        _rewrite(out / f"{name}.h5", version, change)


# Keras 1.2's per-gate weights, in its trainable_weights order (keras/layers/recurrent.py of Keras 1.2.2):
# LSTM i, c, f, o (Keras 2 concatenates i, f, c, o); GRU z, r, h; SimpleRNN and Dense one array each.
KERAS1_GATES = {"LSTM": ("i", "f", "c", "o"), "GRU": ("z", "r", "h")}
KERAS1_ORDER = {"LSTM": ("i", "c", "f", "o"), "GRU": ("z", "r", "h")}


def keras1_recurrent():
    """Keras 1's recurrent layers, as a Keras 1 Sequential held them: LSTM and GRU with Keras 1's
    inner_activation hard_sigmoid (GRU resetting before the recurrent matmul, Keras 1's only GRU), a
    Bidirectional LSTM (24 arrays: the forward layer's 12, then the backward's), SimpleRNN."""
    return k2.Sequential([L.LSTM(5, recurrent_activation="hard_sigmoid", return_sequences=True, name="lstm_1",
                                 input_shape=(6, 3)),  # its input named as Keras 1 named it: lstm_1_input
                          L.GRU(4, recurrent_activation="hard_sigmoid", reset_after=False, return_sequences=True,
                                name="gru_1"),
                          L.Bidirectional(L.LSTM(3, recurrent_activation="hard_sigmoid", return_sequences=True,
                                                 name="lstm_2"), name="bidirectional_1"),
                          L.SimpleRNN(3, activation="tanh", name="simplernn_1"),
                          L.Dropout(0.5, name="dropout_1"),  # Keras 1's Dropout(p)
                          L.Dense(2, activation="linear", name="dense_1")])


def keras1_embedding():
    """ChemTS's Keras 1.1.1 form (tsudalab/ChemTS RNN-model/model.json): an Embedding whose Keras 1 config holds
    `dropout` and `input_dtype: "int32"`, a GRU with activation sigmoid, a TimeDistributed Dense."""
    return k2.Sequential([L.Embedding(64, 4, input_length=6, name="embedding_1"),
                          L.GRU(5, activation="sigmoid", recurrent_activation="hard_sigmoid", reset_after=False,
                                return_sequences=True, name="gru_1"),
                          L.TimeDistributed(L.Dense(3, activation="softmax", name="dense_1"), name="timedistributed_1")])


def _keras1_wrapper_config(layer, first: bool) -> dict | None:
    """Keras 1.1's Embedding (its training-only `dropout`, its input's `input_dtype`), Dropout (`p`) and
    TimeDistributed configs, as Keras 1 wrote them; None for other layers."""
    kind = type(layer).__name__
    if kind == "Embedding":
        config = {"name": layer.name, "trainable": True, "input_dim": layer.input_dim, "output_dim": layer.output_dim,
                  "init": "uniform", "input_length": layer.input.shape[1], "mask_zero": False, "W_regularizer": None,
                  "W_constraint": None, "activity_regularizer": None, "dropout": 0.2, "input_dtype": "int32"}
        if first:
            config["batch_input_shape"] = [None, layer.input.shape[1]]
        return {"class_name": kind, "config": config}
    if kind == "Dropout":
        return {"class_name": kind, "config": {"name": layer.name, "trainable": True, "p": layer.rate}}
    if kind == "TimeDistributed":
        return {"class_name": kind, "config": {"name": layer.name, "trainable": True,
                                               "layer": _keras1_config(layer.layer, False, layer.input.shape[-1])}}
    return None


def _keras1_config(layer, first: bool, features: int | None = None) -> dict:
    """A layer's config as Keras 1.2.2's get_config wrote it (argument names, initializer strings)."""
    kind = type(layer).__name__
    wrapper = _keras1_wrapper_config(layer, first)
    if wrapper is not None:
        return wrapper
    features = features or layer.input.shape[-1]
    if kind == "Bidirectional":  # Keras 1.2: {"layer": the wrapped layer's config, "merge_mode"}
        inner = _keras1_config(layer.forward_layer, False, layer.input.shape[-1])
        inner["config"]["name"] = layer.layer.name
        return {"class_name": kind, "config": {"name": layer.name, "trainable": True, "layer": inner,
                                               "merge_mode": layer.merge_mode}}
    config = {"name": layer.name, "trainable": True, "output_dim": layer.units, "init": "glorot_uniform",
              "activation": layer.get_config()["activation"], "W_regularizer": None, "b_regularizer": None}
    if kind == "Dense":
        config.update({"bias": True, "activity_regularizer": None, "W_constraint": None, "b_constraint": None,
                       "input_dim": features})
    else:
        config.update({"inner_init": "orthogonal", "U_regularizer": None, "dropout_W": 0.0, "dropout_U": 0.0,
                       "return_sequences": layer.return_sequences, "go_backwards": False, "stateful": False,
                       "unroll": False, "consume_less": "cpu", "input_dim": features,
                       "input_length": layer.input.shape[1] if first else None})
        if kind in KERAS1_GATES:
            config["inner_activation"] = layer.get_config()["recurrent_activation"]
        if kind == "LSTM":
            config["forget_bias_init"] = "one"
    if first:
        config.update({"batch_input_shape": [None, *layer.input.shape[1:]], "input_dtype": "float32"})
    return {"class_name": kind, "config": config}


def _keras1_arrays(layer) -> list[tuple[str, np.ndarray]]:
    """The layer's weights split per gate and named as Keras 1 on TensorFlow named them (`lstm_1_W_i:0`)."""
    kind = type(layer).__name__
    if kind == "Bidirectional":  # the forward layer's arrays, then the backward layer's
        return _keras1_arrays(layer.forward_layer) + _keras1_arrays(layer.backward_layer)
    if kind == "TimeDistributed":  # Keras 1 named them after the wrapped layer: dense_1_W:0
        return _keras1_arrays(layer.layer)
    values = [np.asarray(v) for v in layer.get_weights()]
    if kind not in KERAS1_GATES:
        return [(f"{layer.name}_{part}:0", value) for part, value in zip(("W", "U", "b") if kind == "SimpleRNN"
                                                                        else ("W", "b"), values)]
    gates = KERAS1_GATES[kind]
    split = {part: dict(zip(gates, np.split(value, len(gates), axis=-1))) for part, value in zip("WUb", values)}
    return [(f"{layer.name}_{part}_{gate}:0", split[part][gate]) for gate in KERAS1_ORDER[kind] for part in "WUb"]


def _keras1_weights(group, model) -> None:
    """Keras 1.2.2's save_weights_to_hdf5_group: layer_names, then one group per layer with its weight_names
    (no keras_version: Keras 1 wrote none there, which is how tf.keras tells a Keras 1 file)."""
    group.attrs["layer_names"] = [layer.name.encode() for layer in model.layers]
    for layer in model.layers:
        arrays = _keras1_arrays(layer)
        layer_group = group.create_group(layer.name)
        layer_group.attrs["weight_names"] = [name.encode() for name, _ in arrays]
        for name, value in arrays:
            layer_group.create_dataset(name, data=value)


def save_keras1(out: Path, seed: int) -> None:
    """`keras1_recurrent` in Keras 1.2.2's h5 layout: Sequential's config as a list of layers, Keras 1 argument
    names, LSTM/GRU weights as 12/9 per-gate arrays. Also as the pair Keras 1 tutorials published:
    `model.to_json()` (`keras1_recurrent.json`) and `model.save_weights` (`keras1_recurrent_weights.h5`).
    The reference is tf.keras' predict before the rewrite."""
    model = keras1_recurrent()
    weights(model, seed)
    record(model, "keras1_recurrent", out, seed)
    config = {"class_name": "Sequential",
              "config": [_keras1_config(layer, i == 0) for i, layer in enumerate(model.layers)]}
    with h5py.File(out / "keras1_recurrent.h5", "w") as f:
        f.attrs["keras_version"] = b"1.2.2"
        f.attrs["backend"] = b"tensorflow"
        f.attrs["model_config"] = json.dumps(config).encode()
        _keras1_weights(f.create_group("model_weights"), model)
    (out / "keras1_recurrent.json").write_text(json.dumps({**config, "keras_version": "1.2.2"}))
    # Keras 1.2.2's to_yaml (yaml.dump of the config, shapes as tuples), as BUPTLdy/Sentiment-Analysis wrote it
    (out / "keras1_recurrent.yml").write_text(yaml.dump({**config, "config": [
        {**layer, "config": {k: tuple(v) if k == "batch_input_shape" else v for k, v in layer["config"].items()}}
        for layer in config["config"]], "keras_version": "1.2.2"}))
    with h5py.File(out / "keras1_recurrent_weights.h5", "w") as f:
        _keras1_weights(f, model)
    k2.backend.clear_session()
    model = keras1_embedding()  # ChemTS's pair: only a JSON (Keras 1.1.1) and its weights
    weights(model, seed)
    record(model, "keras1_embedding", out, seed)
    layers = [_keras1_config(layer, i == 0) for i, layer in enumerate(model.layers)]
    (out / "keras1_embedding.json").write_text(json.dumps({"class_name": "Sequential", "keras_version": "1.1.1",
                                                           "config": layers}))
    with h5py.File(out / "keras1_embedding_weights.h5", "w") as f:
        _keras1_weights(f, model)


def save_json_pair(out: Path, seed: int) -> None:
    """A tf.keras model published as `model.to_json()` + `model.save_weights("...h5")` (`json_pair.json`,
    `json_pair_weights.h5`), and the same model's whole `.h5` (`json_pair.h5`, for the refusals)."""
    model = k2.Sequential([L.LSTM(4, return_sequences=True, input_shape=(5, 3), name="lstm"), L.GRU(3, name="gru"),
                           L.Dense(2, activation="softmax", name="dense")])
    weights(model, seed)
    record(model, "json_pair", out, seed)
    (out / "json_pair.json").write_text(model.to_json())
    model.save_weights(out / "json_pair_weights.h5")
    model.save(out / "json_pair.h5")
    # tforg7/ML-investment-predictor's form: a Bidirectional first layer given input_shape, which tf.keras writes
    # on the wrapped LSTM only (no InputLayer, no shape on the wrapper), as a pair and as a whole .h5
    k2.backend.clear_session()
    model = k2.Sequential([L.Bidirectional(L.LSTM(4, return_sequences=True, input_shape=(5, 3), name="lstm"),
                                           name="bidirectional"),
                           L.Bidirectional(L.GRU(3, name="gru"), name="bidirectional_1"), L.Dense(2, name="dense")])
    model.build((None, 5, 3))  # tf.keras 2.21 no longer builds from the wrapped layer's shape; 2.7 did
    weights(model, seed + 1)
    record(model, "bidirectional_first", out, seed + 1)
    (out / "bidirectional_first.json").write_text(model.to_json())
    model.save_weights(out / "bidirectional_first_weights.h5")
    model.save(out / "bidirectional_first.h5")


def save_yaml_pair(out: Path, seed: int) -> None:
    """A model published as `model.to_yaml()` + `model.save_weights("...h5")`, written as Keras 1 and 2 wrote it:
    their `to_yaml` was `yaml.dump(model._updated_config())` (shapes as `!!python/tuple`; tf.keras 2.6+ removed
    it), as `yaml_pair.yml`, `yaml_pair_weights.h5`; the tutorials' own form (Edward1Chou/SentimentAnalysis and
    its copies: `f.write(yaml.dump(model.to_yaml(), default_flow_style=True))`, the YAML as one string) as
    `yaml_pair_tutorial.yml`; and the same model's whole `.h5` (`yaml_pair.h5`, for the refusals)."""
    model = k2.Sequential([L.Embedding(60, 4, input_length=5, mask_zero=True, name="embedding_y"),
                           L.LSTM(4, return_sequences=True, name="lstm_y"), L.GRU(3, name="gru_y"),
                           L.Dense(2, activation="softmax", name="dense_y")])
    model.build((None, 5))
    weights(model, seed)
    record(model, "yaml_pair", out, seed)
    text = yaml.dump(model._updated_config())
    assert "!!python/tuple" in text  # the form Keras 2 wrote, which yaml.safe_load refuses
    (out / "yaml_pair.yml").write_text(text)
    (out / "yaml_pair.json").write_text(model.to_json())  # the same config as to_json wrote it, to compare
    (out / "yaml_pair_tutorial.yml").write_text(yaml.dump(text, default_flow_style=True))
    model.save_weights(out / "yaml_pair_weights.h5")
    model.save(out / "yaml_pair.h5")


def save_refused(out: Path) -> None:
    """Forms lstm-onnx refuses in one line: time_major=True, ConvLSTM2D."""
    x = L.Input(batch_shape=(6, 2, 3))
    k2.Model(x, L.LSTM(4, time_major=True, return_sequences=True)(x)).save(out / "time_major.h5")
    frames = L.Input(shape=(None, 4, 4, 1))
    k2.Model(frames, L.ConvLSTM2D(2, 3)(frames)).save(out / "conv_lstm.h5")


class LstmModule(tf.Module):
    """A SavedModel with no Keras metadata: a tf.Module around a Keras LSTM, served by a signature."""

    def __init__(self, seed: int):
        super().__init__()
        self.lstm = L.LSTM(3, return_sequences=True, return_state=True)
        self.lstm.build((None, None, 2))
        rng = np.random.default_rng(seed)
        self.lstm.set_weights([rng.uniform(-0.5, 0.5, size=w.shape).astype(np.float32) for w in self.lstm.get_weights()])

    @tf.function(input_signature=[tf.TensorSpec((None, None, 2), tf.float32, name="signal")])
    def serve(self, signal):
        seq, h, c = self.lstm(signal)
        return {"encoded": seq, "hidden": h, "cell": c}


class WritesFile(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec((None, 3, 1), tf.float32, name="x")])
    def serve(self, x):
        tf.io.write_file("/tmp/lstm_onnx_pwned.txt", "written by a model file")
        return {"y": x * 2.0}


def save_hostile(out: Path) -> None:
    x = L.Input(shape=(3, 1))
    y = L.Lambda(lambda t: t * 2.0)(x)
    k2.Model(x, L.LSTM(2)(y)).save(out / "lambda.h5")
    module = WritesFile()
    tf.saved_model.save(module, str(out / "writes_file"), signatures={"serving_default": module.serve})


def save_module(out: Path, seed: int) -> None:
    module = LstmModule(seed)
    path = out / "module_lstm"
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    feeds = {"signal": np.random.default_rng(seed + 7).uniform(-1, 1, size=(BATCH, 6, 2)).astype(np.float32)}
    outputs = module.serve(tf.constant(feeds["signal"]))
    arrays = {"input:signal": feeds["signal"]}
    arrays.update({f"output:{k}": v.numpy() for k, v in sorted(outputs.items())})
    np.savez(out / "module_lstm.reference.npz", **arrays)


LAMBDA_MARKER = "LSTM_ONNX_LAMBDA_MARKER"
"""An environment variable naming a file each Lambda below creates whenever its Python function runs: the
tests set it, export, and check that the file was never made (lstm-onnx converts the traced graph). The
Lambdas' own code does it, with builtins only (their bytecode sees no module globals when tf.keras reloads it)."""


def lambda_affine():
    """Embedding(mask_zero=True) -> Lambda(x * 2 + 1) (traced with the mask, which it drops) -> LSTM returning
    its sequence and states."""
    ids = L.Input(shape=(None,), dtype="int32", name="tokens")
    x = L.Lambda(lambda t: t * 2.0 + 1.0 + (open(__import__("os").environ.get(
        "LSTM_ONNX_LAMBDA_MARKER", __import__("os").devnull), "a").close() or 0.0))(L.Embedding(50, 6, mask_zero=True)(ids))
    seq, h, c = L.LSTM(5, return_sequences=True, return_state=True)(x)
    return k2.Model(ids, [seq, h, c])


def lambda_tf_ops():
    """Dense -> Lambda(tf.reverse in time, then tf.nn.l2_normalize) -> GRU -> Dense."""
    x = L.Input(shape=(None, 3), name="frames")
    y = L.Lambda(lambda t: tf.nn.l2_normalize(tf.reverse(t, axis=[1]), axis=-1) + (open(__import__("os").environ.get(
        "LSTM_ONNX_LAMBDA_MARKER", __import__("os").devnull), "a").close() or 0.0))(L.Dense(4)(x))
    return k2.Model(x, L.Dense(2)(L.GRU(3)(y)))


def lambda_prints():
    """A Lambda whose graph prints (PrintV2, outside the op allowlist)."""
    x = L.Input(shape=(None, 3))

    def shout(t):
        tf.print("a model file printing", t)
        return t * 2.0

    return k2.Model(x, L.LSTM(2)(L.Lambda(shout)(x)))


def save_lambdas(out: Path, seed: int) -> None:
    """The Lambda models as SavedModel folders (and one as .h5, which stays refused), with their outputs; two
    that are refused: one printing, one using an op tf2onnx cannot convert."""
    for offset, (name, build) in enumerate((("lambda_affine", lambda_affine), ("lambda_tf_ops", lambda_tf_ops))):
        model = build()
        weights(model, seed + offset)
        record(model, name, out, seed + offset)
        model.save(out / f"{name}_savedmodel", save_format="tf")
        if offset == 0:
            model.save(out / f"{name}.h5")
    lambda_prints().save(out / "lambda_prints_savedmodel", save_format="tf")
    x = L.Input(shape=(None, 3))  # L2Loss is allowed (it only computes) but tf2onnx has no conversion for it
    k2.Model(x, L.LSTM(2)(L.Lambda(lambda t: t * tf.nn.l2_loss(t))(x))).save(out / "lambda_l2loss_savedmodel",
                                                                           save_format="tf")


EXTRA: dict[str, Callable[[Path, int], None]] = {
    "cudnn_lstm": lambda out, seed: save_cudnn("cudnn_lstm", out, seed),
    "cudnn_gru": lambda out, seed: save_cudnn("cudnn_gru", out, seed),
    "keras22_lstm": save_keras22,
    "module_lstm": save_module,
    "hostile": lambda out, seed: save_hostile(out),
    "lambdas": save_lambdas,
    "old_forms": save_old_forms,
    "keras1": save_keras1,
    "json_pair": save_json_pair,
    "yaml_pair": save_yaml_pair,
    "refused": lambda out, seed: save_refused(out),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--only", nargs="*", help="names of models to make (default: all)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    names = args.only or list(MODELS) + list(EXTRA)
    for seed, name in enumerate(names):
        k2.backend.clear_session()
        if name in MODELS:
            save_all(MODELS[name](), name, args.out, seed)
        else:
            EXTRA[name](args.out, seed)
    print(json.dumps({"made": names, "tf_keras": k2.__version__, "tensorflow": tf.__version__}))


if __name__ == "__main__":
    main()
