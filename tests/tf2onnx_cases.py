"""tf2onnx's own Keras recurrent tests (`tests/keras2onnx_unit_tests/test_layers.py`, onnx/tensorflow-onnx
at 6537fcb), re-created as Keras 3 models: each builder returns the model, the inputs the upstream test
feeds it and the tolerance it compares at (`run_onnx_runtime`: rtol 1e-3, atol 1e-6 unless the test says).

The translation, where Keras 3 differs: one class per layer (tf.keras' `recurrent_v2` LSTM/GRU, upstream's
second parametrization, are the same layers); `Sequential(input_shape=...)` becomes an `Input` named `x`;
`test_seq_dynamic_batch_size` keeps its random weights (upstream trains 200 epochs on random data first);
`test_bidirectional_seqlen_none` feeds integer ids (upstream's `rand()` floats are all id 0). Not re-created:
the three `time_major` tests (Keras 3 has no `time_major`), `test_masking_custom` and
`test_timedistributed` (no recurrent layer: Dense, Conv2D and a pooling layer).
Upstream hard-codes no expected output for these cases: every one compares with `model.predict`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

RNN_KINDS = ("SimpleRNN", "GRU", "LSTM")


@dataclass
class Case:
    model: Any
    feeds: list[dict[str, np.ndarray]]  # one dict per upstream `runner(...)` call on this model
    rtol: float = 1e-3
    atol: float = 1e-6
    bidirectional: bool = False  # upstream asserts `all_recurrents_should_bidirectional`
    notes: list[str] = field(default_factory=list)


def _rng() -> np.random.Generator:
    return np.random.default_rng(0)


def _layer(kind: str, *args, **kwargs):
    import keras

    return getattr(keras.layers, kind)(*args, **kwargs)


def simple_rnn_sequences() -> Case:
    import keras

    x = keras.Input((3, 1), name="x")
    model = keras.Model(x, keras.layers.SimpleRNN(2, return_sequences=True)(x))
    return Case(model, [{"x": np.array([0.1, 0.2, 0.3], np.float32).reshape(1, 3, 1)}])


def simple_rnn_initial_state(return_state: bool) -> Case:
    import keras

    units = 10 if return_state else 5
    x, state = keras.Input((1, 2), name="x"), keras.Input((units,), name="state")
    out = keras.layers.SimpleRNN(units, activation="relu", return_sequences=True, return_state=return_state)(
        x, initial_state=[state])
    hidden = out[0] if return_state else out
    dense = keras.layers.Dense(2, activation="linear" if return_state else "sigmoid")(hidden)
    model = keras.Model([x, state], [dense, out[1]] if return_state else dense)
    rng = _rng()
    return Case(model, [{"x": rng.random((3, 1, 2), np.float32), "state": rng.random((3, units), np.float32)}])


def gru_plain() -> Case:
    import keras

    x = keras.Input((3, 1), name="x")
    model = keras.Model(x, keras.layers.GRU(2)(x))
    return Case(model, [{"x": np.array([0.1, 0.2, 0.3], np.float32).reshape(1, 3, 1)}])


def gru_initial_state(return_sequences: bool) -> Case:
    import keras

    x, state = keras.Input((3, 1), name="x"), keras.Input((2,), name="state")
    model = keras.Model([x, state], keras.layers.GRU(2, return_sequences=return_sequences)(x, initial_state=state))
    return Case(model, [{"x": np.array([0.1, 0.2, 0.3], np.float32).reshape(1, 3, 1),
                         "state": np.array([[0.4, 0.5]], np.float32)}])


def gru_2() -> Case:
    import keras

    x = keras.Input((1, 257), name="x")
    h = keras.layers.GRU(400, reset_after=True)(x)
    model = keras.Model(x, keras.layers.Dense(257, activation="sigmoid")(h))
    return Case(model, [{"x": _rng().random((3, 1, 257), np.float32)}])


def lstm_and_cell(return_sequences: bool, use_bias: bool) -> Case:
    import keras

    x = keras.Input((3, 5), name="x")
    first = keras.layers.LSTM(2, return_state=True, return_sequences=return_sequences, use_bias=use_bias)(x)
    second = keras.layers.RNN(keras.layers.LSTMCell(2, use_bias=use_bias), return_state=True,
                              return_sequences=return_sequences)(x)
    return Case(keras.Model(x, [*first, *second]), [{"x": _rng().random((1, 3, 5), np.float32)}])


def lstm_rev(return_sequences: bool, use_bias: bool) -> Case:
    import keras

    x = keras.Input((3, 5), name="x")
    out = keras.layers.LSTM(2, return_state=True, go_backwards=True, return_sequences=return_sequences,
                            use_bias=use_bias)(x)
    return Case(keras.Model(x, out), [{"x": _rng().random((1, 3, 5), np.float32)}])


def lstm_with_bias() -> Case:
    import keras

    x = keras.Input((1, 1), name="x")
    first = keras.layers.LSTM(1, return_state=True, return_sequences=True)(x)
    second = keras.layers.RNN(keras.layers.LSTMCell(1), return_state=True, return_sequences=True)(x)
    model = keras.Model(x, [*first, *second])
    weights = [np.array([[1, 2, 3, 4]]), np.array([[5, 6, 7, 8]]), np.array([1, 2, 3, 4])]
    model.set_weights([w.astype(np.float32) for w in weights * 2])  # upstream's kernel, recurrent, bias
    return Case(model, [{"x": _rng().random((1, 1, 1), np.float32)}])


def lstm_reshape() -> Case:
    import keras

    x = keras.Input((3, 7), name="x")
    first = keras.layers.LSTM(5, return_sequences=True)(x)
    second = keras.layers.RNN(keras.layers.LSTMCell(5), return_sequences=True)(x)
    model = keras.Model(x, [keras.layers.Reshape((3, 5))(first), keras.layers.Reshape((3, 5))(second)])
    return Case(model, [{"x": _rng().random((1, 3, 7), np.float32)}])


def lstm_with_initializer() -> Case:
    import keras

    x = keras.Input((1, 2), name="inputs")
    h, c = keras.Input((5,), name="state_h"), keras.Input((5,), name="state_c")
    first = keras.layers.LSTM(5, activation="relu", return_sequences=True)(x, initial_state=[h, c])
    second = keras.layers.RNN(keras.layers.LSTMCell(5, activation="relu"), return_sequences=True)(
        x, initial_state=[h, c])
    model = keras.Model([x, h, c], [keras.layers.Dense(2, activation="sigmoid")(first),
                                    keras.layers.Dense(2, activation="sigmoid")(second)])
    rng = _rng()
    return Case(model, [{"inputs": rng.random((1, 1, 2), np.float32), "state_h": rng.random((1, 5), np.float32),
                         "state_c": rng.random((1, 5), np.float32)}])


def lstm_seqlen_none(return_sequences: bool) -> Case:
    import keras

    x = keras.Input(batch_shape=(1, None, 1), name="x")
    first = keras.layers.LSTM(2, return_sequences=return_sequences, stateful=True)(x)
    second = keras.layers.RNN(keras.layers.LSTMCell(2), return_sequences=return_sequences, stateful=True)(x)
    return Case(keras.Model(x, [first, second]), [{"x": _rng().random((1, 5, 1), np.float32)}])


def bidirectional(kind: str, return_sequences: bool, head: str) -> Case:
    """head: 'sequential' (Dense + softmax after it), or the merge_mode of the bare functional model."""
    import keras

    x = keras.Input((5, 10), name="x")
    merge = {"sequential": "concat", "concat": "concat", "none": None}[head]
    out = keras.layers.Bidirectional(_layer(kind, 7, return_sequences=return_sequences), merge_mode=merge)(x)
    if head == "sequential":
        out = keras.layers.Activation("softmax")(keras.layers.Dense(5)(out))
    rng = _rng()
    return Case(keras.Model(x, out), [{"x": rng.random((b, 5, 10), np.float32)} for b in (1, 4)], bidirectional=True)


def _random_bias(layer, bidirectional_layer: bool) -> None:
    weights = layer.get_weights()
    weights[2] = _rng().uniform(size=weights[2].shape).astype(np.float32)
    if bidirectional_layer:
        weights[5] = weights[2]
    layer.set_weights(weights)


def bidirectional_with_bias(kind: str) -> Case:
    import keras

    x = keras.Input((3, 5), name="x")
    model = keras.Model(x, keras.layers.Bidirectional(_layer(kind, 4), name="bi")(x))
    _random_bias(model.get_layer("bi"), True)
    return Case(model, [{"x": _rng().uniform(100, 999, (2, 3, 5)).astype(np.float32)}], bidirectional=True)


def bidirectional_initial_states(kind: str, passed: bool) -> Case:
    import keras

    first = keras.Input((None, 5), name="first")
    states = keras.layers.Bidirectional(_layer(kind, 2, return_state=True))(first)
    x = _rng().uniform(0.1, 1.0, (4, 3, 5)).astype(np.float32)
    if not passed:
        return Case(keras.Model(first, states), [{"first": x}], bidirectional=True)
    second = keras.Input((None, 5), name="second")
    out = keras.layers.Bidirectional(_layer(kind, 2, return_sequences=True))(second, initial_state=states[1:])
    return Case(keras.Model([first, second], out), [{"first": x, "second": x}], atol=1e-5, bidirectional=True)


def bidirectional_seqlen_none(kind: str) -> Case:
    import keras

    ids = keras.Input((None,), name="ids")
    out = keras.layers.Bidirectional(_layer(kind, 256, return_sequences=True))(keras.layers.Embedding(39, 128)(ids))
    model = keras.Model(ids, keras.layers.Dense(44)(out))
    rng = _rng()
    return Case(model, [{"ids": rng.integers(0, 39, (b, 50)).astype(np.float32)} for b in (1, 4)], bidirectional=True)


def rnn_state_passing(kind: str) -> Case:
    import keras

    first, second = keras.Input((None, 5), name="first"), keras.Input((None, 5), name="second")
    states = _layer(kind, 2, return_state=True)(first)[1:]
    model = keras.Model([first, second], _layer(kind, 2, return_sequences=True)(second, initial_state=states))
    x = _rng().uniform(0.1, 1.0, (4, 3, 5)).astype(np.float32)
    return Case(model, [{"first": x, "second": x}], atol=1e-5)


def seq_dynamic_batch_size(kind: str) -> Case:
    import keras

    x = keras.Input((3, 4), name="x")
    h = _layer(kind, 128, return_sequences=True, unroll=True)(x)
    h = _layer(kind, 256, return_sequences=True, unroll=True)(h)
    model = keras.Model(x, _layer(kind, 128, unroll=True)(h))
    return Case(model, [{"x": _rng().random((5, 3, 4)).astype(np.float32)}])


def masking(kind: str, variant: str) -> Case:
    """variant: 'plain' (test_masking), 'bias', 'bias_bidirectional', 'value' (mask value 5)."""
    import keras

    mask_value = 5.0 if variant == "value" else 0.0
    x = keras.Input((3, 5), name="x")
    layer = _layer(kind, 8, name="rnn")
    if variant == "bias_bidirectional":
        layer = keras.layers.Bidirectional(layer, name="rnn")
    model = keras.Model(x, layer(keras.layers.Masking(mask_value=mask_value)(x)))
    data = _rng().uniform(100, 999, (2, 3, 5)).astype(np.float32)
    if variant == "value":
        data[1] = mask_value
    elif variant != "plain":
        data[1, 1:] = 0  # one entry all zeros but its first step
        _random_bias(model.get_layer("rnn"), variant == "bias_bidirectional")
    return Case(model, [{"x": data}], rtol=5e-3 if variant == "plain" else 1e-3,
                bidirectional=variant == "bias_bidirectional")


def _cases() -> dict[str, Any]:
    cases: dict[str, Any] = {
        "test_simpleRNN sequences": simple_rnn_sequences,
        "test_simpleRNN initial_state": partial(simple_rnn_initial_state, False),
        "test_simpleRNN initial_state return_state": partial(simple_rnn_initial_state, True),
        "test_GRU no initial_state": gru_plain,
        "test_GRU_2": gru_2,
        "test_LSTM_with_bias": lstm_with_bias,
        "test_LSTM_reshape": lstm_reshape,
        "test_LSTM_with_initializer": lstm_with_initializer,
    }
    for seq in (True, False):
        cases[f"test_GRU initial_state[return_sequences={seq}]"] = partial(gru_initial_state, seq)
        cases[f"test_LSTM_seqlen_none[return_sequences={seq}]"] = partial(lstm_seqlen_none, seq)
        for bias in (True, False):
            cases[f"test_LSTM[return_sequences={seq},use_bias={bias}]"] = partial(lstm_and_cell, seq, bias)
            cases[f"test_LSTM_rev[return_sequences={seq},use_bias={bias}]"] = partial(lstm_rev, seq, bias)
    for kind in RNN_KINDS:
        for seq in (True, False):
            for head in ("sequential", "concat", "none"):
                cases[f"test_bidirectional[{kind},return_sequences={seq},{head}]"] = partial(bidirectional, kind, seq, head)
        cases[f"test_bidirectional_with_bias[{kind}]"] = partial(bidirectional_with_bias, kind)
        cases[f"test_bidirectional_with_initial_states[{kind},return_state]"] = partial(
            bidirectional_initial_states, kind, False)
        cases[f"test_bidirectional_with_initial_states[{kind},passed]"] = partial(
            bidirectional_initial_states, kind, True)
        cases[f"test_bidirectional_seqlen_none[{kind}]"] = partial(bidirectional_seqlen_none, kind)
        cases[f"test_rnn_state_passing[{kind}]"] = partial(rnn_state_passing, kind)
        cases[f"test_seq_dynamic_batch_size[{kind}]"] = partial(seq_dynamic_batch_size, kind)
        for variant in ("plain", "bias", "bias_bidirectional", "value"):
            name = "test_masking" + ("" if variant == "plain" else f"_{variant}")
            cases[f"{name}[{kind}]"] = partial(masking, kind, variant)
    return cases


CASES = _cases()
