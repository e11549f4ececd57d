"""Input cases: padding sides, dtypes, token ids below the vocabulary, the post's input, reproducibility."""

import keras
import numpy as np
import pytest

from toolkit.checking.inputs import Padding, embedding_vocab, make_cases, pad, padding_of, random_input
from toolkit.models.builder import SEED_INPUT, build_stack, variant_config


def _lengths(padded: np.ndarray, value: float, side: str) -> list[int]:
    """Kept steps per sample, read back from where the padding value sits."""
    is_pad = np.all(padded == value, axis=tuple(range(2, padded.ndim))) if padded.ndim > 2 else padded == value
    return [int((~row).sum()) for row in is_pad]


@pytest.mark.parametrize("side", ["right", "left"])
def test_pad_keeps_the_first_sample_whole_and_pads_on_its_side(side):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 8, 2)).astype(np.float32) + 10.0  # no value is the padding value
    padded = pad(x, -1.0, rng, side)
    lengths = _lengths(padded, -1.0, side)
    assert lengths[0] == 8 and lengths[1] == 4 and all(1 <= n <= 8 for n in lengths)
    for row, n in zip(padded, lengths):
        kept = row[:n] if side == "right" else row[8 - n:]
        padding = row[n:] if side == "right" else row[:8 - n]
        assert (padding == -1.0).all() and (kept != -1.0).all()
    assert padded is not x and not (x == -1.0).any()  # the input itself is left untouched


@pytest.mark.parametrize("dtype", ["float32", "int32", "int64"])
def test_random_input_dtype_and_shape(dtype):
    value = random_input((None, 3), dtype, batch=4, length=7, rng=np.random.default_rng(1), vocab=5)
    assert value.dtype == np.dtype(dtype) and value.shape == (4, 7, 3)
    if np.dtype(dtype).kind == "i":
        assert value.min() >= 0 and value.max() < 5


def test_token_ids_stay_below_the_vocabulary_and_pad_with_zero():
    rng = np.random.default_rng(2)
    ids = random_input((None,), "int32", batch=8, length=9, rng=rng, vocab=4, padding=Padding(int_value=0, side="left"))
    assert ids.shape == (8, 9) and ids.max() < 4
    # Id 0 is padding only: every sample is zeros then ids >= 1 (left-padded), the first one unpadded.
    assert (ids[0] >= 1).all()
    for row in ids:
        first = int(np.argmax(row != 0))
        assert (row[:first] == 0).all() and (row[first:] >= 1).all()


def test_masking_and_embedding_are_read_from_the_model():
    masked = build_stack(variant_config("lstm_masking"))
    assert padding_of(masked, "left") == Padding(float_value=0.0, side="left") and padding_of(masked).masked
    x = keras.Input((None,), dtype="int32", name="ids")
    y = keras.layers.LSTM(2)(keras.layers.Embedding(7, 3, mask_zero=True)(x))
    embedded = keras.Model(x, y)
    assert padding_of(embedded) == Padding(int_value=0) and embedding_vocab(embedded) == 7
    assert not padding_of(build_stack(variant_config("lstm"))).masked


def test_cases_hold_the_post_input_two_batches_and_two_lengths():
    cases = make_cases(build_stack(variant_config("lstm", features=1)))
    assert [c.label for c in cases] == ["seed [0.1, 0.2, 0.3]", "random batch 1, 5 steps", "random batch 4, 11 steps"]
    np.testing.assert_array_equal(cases[0].feeds["input"], SEED_INPUT)
    assert [c.feeds["input"].shape for c in cases[1:]] == [(1, 5, 1), (4, 11, 1)]


def test_cases_are_reproducible_and_name_their_padding_side():
    model = build_stack(variant_config("lstm_masking"))
    left, again, right = make_cases(model, 3, "left"), make_cases(model, 3, "left"), make_cases(model, 3, "right")
    assert all("left-padded" in c.label for c in left) and all("right-padded" in c.label for c in right)
    for a, b in zip(left, again):
        np.testing.assert_array_equal(a.feeds["input"], b.feeds["input"])
    batch4 = left[-1].feeds["input"]
    assert (batch4[1, : batch4.shape[1] // 2] == 0.0).all()  # the second sample keeps half, padded on the left


def test_one_source_gives_every_kind_of_case_with_the_draws_each_made_before():
    """Issue 26: `input_cases` is the one source; each kind keeps its seed and distribution, so exports, their
    recorded parity and bench's figures are unchanged (bench: uniform(-1, 1) from the seed itself; a
    signature: from seed + 1000; a Keras model: `make_cases`; a stateful model's calls: `call_cases`)."""
    from toolkit.checking.inputs import call_cases, input_cases
    from toolkit.export.exporter import export_model

    model = build_stack(variant_config("lstm", features=2, timesteps=None))
    keras_cases, made = input_cases(model, 4), make_cases(model, 4)
    assert [c.label for c in keras_cases] == [c.label for c in made]
    np.testing.assert_array_equal(keras_cases[-1].feeds["input"], made[-1].feeds["input"])
    calls = input_cases(model, 4, calls=2, note="x; ")
    assert [c.label for c in calls] == [c.label for c in call_cases(model, 4, "right", 2, "x; ")]

    proto = export_model(model).model
    (case,) = input_cases(proto, 5, batch=3, steps=7)
    np.testing.assert_array_equal(case.feeds["input"],
                                  np.random.default_rng(5).uniform(-1, 1, (3, 7, 2)).astype(np.float32))
    (drawn_as_keras,) = input_cases(proto, 5, batch=2, steps=6, keras_model=model)
    np.testing.assert_array_equal(drawn_as_keras.feeds["input"],
                                  random_input((None, 2), "float32", 2, 6, np.random.default_rng(5)))

    signature = input_cases([("x", (None, None, 2), "float32"), ("ids", (None, None), "int32")], 2)
    assert [c.label for c in signature] == ["random batch 1, 3 steps", "random batch 4, 5 steps",
                                            "random batch 1, 11 steps", "random batch 4, 3 steps"]
    rng = np.random.default_rng(1002)
    first_x, first_ids = rng.uniform(-1, 1, (1, 3, 2)).astype(np.float32), rng.integers(0, 10, (1, 3))
    np.testing.assert_array_equal(signature[0].feeds["x"], first_x)
    np.testing.assert_array_equal(signature[0].feeds["ids"], first_ids.astype(np.int32))
