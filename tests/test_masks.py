"""Any mask Keras accepts gives Keras' numbers with fused ops, in one export.

Keras processes each sample's kept steps in order, wherever they are, and repeats its previous output on
masked steps. The export moves the kept steps first, runs the fused op with sequence_lens, and moves the
outputs back (`toolkit/lowering/masks.py`). Here hypothesis draws masks of every shape (left and right
padding, holes, both ends, all-masked and unmasked samples in one batch) against real Keras, for every
masked variant: cells, go_backwards, Bidirectional with every merge mode, stacks, zero_output_for_mask,
state inputs fed with nonzero states, and --propagate-nan. Derandomized, with a bounded example count.
"""

from __future__ import annotations

import json
from functools import cache

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from toolkit.export.exporter import export_model
from toolkit.models.builder import EMBEDDING_VOCAB, build_stack, variant_config
from toolkit.onnxfile.model import count_ops
from toolkit.runtimes.keras import keras_outputs
from toolkit.runtimes.onnxrt import OnnxRunner

RTOL, ATOL = 1e-5, 1e-6
EXAMPLES = settings(max_examples=6, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# One row per shape a sample's mask can take: unmasked, left-padded, right-padded, holes, both ends, all masked.
EVERY_SHAPE = np.array([[1, 1, 1, 1, 1, 1, 1],
                        [0, 0, 0, 1, 1, 1, 1],
                        [1, 1, 1, 1, 0, 0, 0],
                        [1, 0, 1, 1, 0, 1, 1],
                        [0, 1, 1, 0, 1, 1, 0],
                        [0, 0, 0, 0, 0, 0, 0]], bool)


def _zero_output_model():
    """go_backwards and forward layers that write zeros at masked steps, stacked, with a Dense head."""
    import keras

    x = keras.Input((None, 3), name="input")
    masked = keras.layers.Masking(name="masking")(x)
    y = keras.layers.LSTM(5, return_sequences=True, zero_output_for_mask=True, go_backwards=True, name="back")(masked)
    y = keras.layers.GRU(4, return_sequences=True, zero_output_for_mask=True, name="zeroed")(y)
    head = keras.layers.Dense(2, name="head")(y)
    last = keras.layers.SimpleRNN(3, name="last")(y)
    return keras.Model(x, [head, last])


# Every masked variant: (name, builder overrides) or a hand-built model; states returned where the
# variant allows, so that they are compared too.
MODELS = {
    "lstm_stack": ("lstm_masking", {"layers": 2}),
    "lstm_backwards_stack": ("lstm_masking", {"go_backwards": True, "layers": 2}),
    "lstm_embedding": ("lstm_embedding_mask", {"layers": 1}),
    "gru_last_output": ("gru_masking", {"return_sequences": False, "layers": 1}),
    "gru_backwards_last_output": ("gru_masking", {"return_sequences": False, "go_backwards": True, "layers": 1}),
    "simple_rnn_backwards_embedding": ("simple_rnn_masking", {"go_backwards": True}),
    "mixed_cells": ("lstm_masking", {"cell": "gru,simple_rnn,lstm", "layers": 3}),
    "bidirectional_concat_stack": ("bidirectional_gru_masking", {}),
    "bidirectional_sum": ("lstm_masking", {"bidirectional": "sum", "layers": 1}),
    "bidirectional_ave": ("lstm_masking", {"bidirectional": "ave", "layers": 1}),
    "bidirectional_mul": ("gru_masking", {"bidirectional": "mul", "layers": 1}),
    "bidirectional_none": ("lstm_embedding_mask", {"bidirectional": "none", "layers": 1}),
    "bidirectional_last_output": ("lstm_masking", {"bidirectional": "concat", "return_sequences": False}),
    "zero_output_for_mask": None,
}


@cache
def _model(name: str):
    if MODELS[name] is None:
        return _zero_output_model()
    variant, overrides = MODELS[name]
    return build_stack(variant_config(variant, **overrides))


@cache
def _runner(name: str, **options) -> OnnxRunner:
    result = export_model(_model(name), **options)
    assert result.parity, result.parity.failures()  # the export's own checks (their batches are masked too)
    assert count_ops(result.model)["Loop"] == 0 and all(entry.fused for entry in result.lowering)
    return OnnxRunner(result.model)


def _feeds(model, mask: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """A batch whose masked steps are exactly `mask`'s False entries: id 0 for an Embedding, zeros for a
    Masking layer (every kept step has a nonzero feature)."""
    rng = np.random.default_rng(seed)
    tensor = model.inputs[0]
    if str(tensor.dtype).startswith("int"):
        data = rng.integers(1, EMBEDDING_VOCAB, mask.shape).astype(np.int32)
        data[~mask] = 0
    else:
        data = rng.standard_normal((*mask.shape, tensor.shape[-1])).astype(np.float32)
        data[..., 0] = np.where(data[..., 0] == 0, 0.5, data[..., 0])
        data[~mask] = 0.0
    return {tensor.name: data}


def _assert_matches_keras(model, runner: OnnxRunner, feeds) -> None:
    got = list(runner.run(feeds).values())
    want = keras_outputs(model, feeds)
    assert len(got) == len(want)
    for index, (have, expected) in enumerate(zip(got, want)):
        np.testing.assert_allclose(have, expected, rtol=RTOL, atol=ATOL, err_msg=f"output {index}")


@st.composite
def masks(draw, max_batch: int = 5, max_steps: int = 9) -> np.ndarray:
    """A (batch, time) mask of any shape: each sample's steps drawn one by one, or a whole sample kept
    or masked (hypothesis alone rarely draws a row of one value)."""
    batch, steps = draw(st.integers(1, max_batch)), draw(st.integers(1, max_steps))
    row = st.one_of(st.lists(st.booleans(), min_size=steps, max_size=steps),
                    st.sampled_from([[True] * steps, [False] * steps]))
    return np.array(draw(st.lists(row, min_size=batch, max_size=batch)), bool).reshape(batch, steps)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_mask_shape_in_one_batch_matches_keras(name):
    model = _model(name)
    _assert_matches_keras(model, _runner(name), _feeds(model, EVERY_SHAPE, seed=0))


@pytest.mark.parametrize("name", sorted(MODELS))
@EXAMPLES
@given(mask=masks(), seed=st.integers(0, 2**16))
def test_drawn_masks_match_keras(name, mask, seed):
    model = _model(name)
    _assert_matches_keras(model, _runner(name), _feeds(model, mask, seed))


@pytest.mark.parametrize("name", ["lstm_stack", "bidirectional_sum", "zero_output_for_mask",
                                  "gru_backwards_last_output"])
@EXAMPLES
@given(mask=masks(), seed=st.integers(0, 2**16), where=st.tuples(st.integers(0, 4), st.integers(0, 8)))
def test_propagated_nan_with_drawn_masks_matches_keras(name, mask, seed, where):
    """NaN from the NaN step on in Keras' processing order. The NaN step is kept (Masking reads NaN != 0),
    wherever the mask around it keeps or drops steps."""
    model = _model(name)
    feeds = _feeds(model, mask, seed)
    data = next(iter(feeds.values()))
    sample, step = where[0] % mask.shape[0], where[1] % mask.shape[1]
    data[sample, step, -1] = np.nan
    got = list(_runner(name, propagate_nan=True).run(feeds).values())
    for have, expected in zip(got, keras_outputs(model, feeds)):
        np.testing.assert_array_equal(np.isnan(have), np.isnan(expected))
        np.testing.assert_allclose(have, expected, rtol=RTOL, atol=ATOL)


STATEFUL_LAYERS = {"lstm": ("lstm_masking", {}), "gru_backwards": ("gru_masking", {"go_backwards": True}),
                   "simple_rnn": ("lstm_masking", {"cell": "simple_rnn"}),
                   "bidirectional": ("lstm_masking", {"bidirectional": "concat"}),
                   "bidirectional_last_output": ("gru_masking", {"bidirectional": "ave", "return_sequences": False})}


@cache
def _state_io_export(name: str):
    variant, overrides = STATEFUL_LAYERS[name]
    model = build_stack(variant_config(variant, layers=1, all_states=False, **overrides))
    result = export_model(model, state_io=True)
    assert result.parity, result.parity.failures()
    metadata = {p.key: p.value for p in result.model.metadata_props}
    return model, OnnxRunner(result.model), json.loads(metadata["lstm_onnx.state_map"])


@pytest.mark.parametrize("name", sorted(STATEFUL_LAYERS))
@EXAMPLES
@given(mask=masks(), seed=st.integers(0, 2**16))
def test_state_inputs_with_drawn_masks_match_keras(name, mask, seed):
    """--state-io fed nonzero states: Keras' layer called with the same mask and initial states (an
    all-masked sample keeps them)."""
    model, runner, state_map = _state_io_export(name)
    feeds = _feeds(model, mask, seed)
    x = next(iter(feeds.values()))
    rng = np.random.default_rng(seed + 1)
    # The state inputs in Keras' order (state_map's keys are sorted by name).
    states = {info.name: rng.standard_normal((mask.shape[0], int(info.shape[-1]))).astype(np.float32)
              for info in runner.optional}
    got = runner.run({**feeds, **states})
    layer = model.layers[-1]
    # Keras' layer called directly, with the mask and the states (a functional model passes no mask
    # to a layer given initial states): its main output, then its states.
    want = layer(model.get_layer("masking")(x), mask=mask, initial_state=list(states.values()), training=False)
    want = [np.asarray(w) for w in want]
    np.testing.assert_allclose(next(iter(got.values())), want[0], rtol=RTOL, atol=ATOL, err_msg="main output")
    assert len(want) == 1 + len(states) == 1 + len(state_map)
    for state_in, expected in zip(states, want[1:]):
        np.testing.assert_allclose(got[state_map[state_in]], expected, rtol=RTOL, atol=ATOL, err_msg=state_in)


@pytest.mark.slow
def test_kept_steps_stay_in_order_over_thousands_of_steps():
    """The sort that moves kept steps first (ONNX TopK, ties broken by the lower index) is stable at any length."""
    name = "gru_backwards_last_output"
    model = _model(name)
    mask = np.random.default_rng(12).random((3, 1500)) < 0.7
    mask[1, :1200] = False  # a long left padding
    _assert_matches_keras(model, _runner(name), _feeds(model, mask, seed=1))


def test_the_oldest_opset_takes_every_mask_shape_too():
    """Opset 14's Shape has no start/end: TopK's k is then sliced from the whole shape."""
    name = "bidirectional_sum"
    model = _model(name)
    _assert_matches_keras(model, _runner(name, opset=14), _feeds(model, EVERY_SHAPE, seed=2))
