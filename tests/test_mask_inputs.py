"""A mask from anywhere is fused: `layer(x, mask=m)` with `m` a bool model input, a 0/1 input of another
dtype, a comparison computed in the graph, or a mask handed from one layer to the next.

This is how Keras' own masking tests feed masks (`keras/src/layers/rnn/*_test.py`, `test_masking`), and
how models that compute their masks do it. Until issue 20 only Masking and Embedding(mask_zero=True)
masks reached the exact any-mask path (`toolkit/lowering/masks.py`); every other mask fell back to a
tf2onnx `Loop`. Each model here must export with fused ops only, no Loop, and match Keras at the default
tolerance on masks of every shape: holes, leading masked steps, right padding, all-masked samples.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest

from toolkit.checking.inputs import draw_mask, make_cases, mask_inputs
from toolkit.export.exporter import export_model
from toolkit.onnxfile.model import count_ops
from toolkit.runtimes.keras import keras_outputs
from toolkit.runtimes.onnxrt import OnnxRunner

RTOL, ATOL = 1e-5, 1e-6

# One row per shape a sample's mask can take: unmasked, leading masked steps, right-padded, holes, both
# ends, all masked (a row of two kept steps last, so that the batch is not the same at each length).
EVERY_SHAPE = np.array([[1, 1, 1, 1, 1, 1, 1],
                        [0, 0, 0, 1, 1, 1, 1],
                        [1, 1, 1, 1, 0, 0, 0],
                        [1, 0, 1, 1, 0, 1, 1],
                        [0, 1, 1, 0, 1, 1, 0],
                        [0, 0, 0, 0, 0, 0, 0],
                        [0, 1, 0, 0, 0, 1, 0]], bool)


def _layer(kind: str, go_backwards: bool, return_sequences: bool):
    import keras

    flags = {"return_sequences": return_sequences, "return_state": True, "go_backwards": go_backwards}
    if kind == "lstm":
        return keras.layers.LSTM(4, name="rec", **flags)
    if kind == "gru":
        return keras.layers.GRU(4, name="rec", **flags)
    if kind == "simple_rnn":
        return keras.layers.SimpleRNN(4, name="rec", **flags)
    if kind == "zero_output":
        return keras.layers.LSTM(4, name="rec", zero_output_for_mask=True, **flags)
    if kind == "stacked":
        cells = keras.layers.StackedRNNCells([keras.layers.LSTMCell(4), keras.layers.GRUCell(3),
                                              keras.layers.SimpleRNNCell(2)])
        return keras.layers.RNN(cells, name="rec", **flags)
    assert kind.startswith("bidirectional")
    # Keras refuses a Bidirectional of a go_backwards layer (its copy would go backwards too).
    inner = keras.layers.GRU(3, return_sequences=return_sequences, return_state=True)
    return keras.layers.Bidirectional(inner, name="rec", merge_mode=None if kind.endswith("none") else "concat")


KINDS = ("lstm", "gru", "simple_rnn", "zero_output", "stacked")
CASES = [(k, b, s) for k in KINDS for b in (False, True) for s in (True, False)] + [
    (k, False, s) for k in ("bidirectional", "bidirectional_none") for s in (True, False)]


def _case_id(case) -> str:
    kind, backwards, sequences = case
    return f"{kind}{'-backwards' if backwards else ''}-{'sequence' if sequences else 'last'}"


@cache
def _input_mask_model(kind: str, go_backwards: bool, return_sequences: bool):
    """Sequence `x` and a bool mask input `m`, both with a variable time axis."""
    import keras

    x = keras.Input((None, 3), name="x")
    m = keras.Input((None,), dtype="bool", name="m")
    return keras.Model([x, m], _layer(kind, go_backwards, return_sequences)(x, mask=m))


def _export(model):
    result = export_model(model)
    assert result.parity, result.parity.failures()  # the export's own check: its mask batches are mixed too
    ops = count_ops(result.model)
    assert ops["Loop"] == 0 and ops["Scan"] == 0, ops
    assert all(entry.fused for entry in result.lowering), result.warnings
    assert not result.warnings
    return result


def _feeds(mask: np.ndarray, seed: int = 0, mask_dtype=bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((*mask.shape, 3)).astype(np.float32), "m": mask.astype(mask_dtype)}


def _assert_matches_keras(model, onnx_model, feeds) -> None:
    got = list(OnnxRunner(onnx_model).run(feeds).values())
    want = keras_outputs(model, feeds)
    assert len(got) == len(want)
    for index, (have, expected) in enumerate(zip(got, want)):
        np.testing.assert_allclose(have, expected, rtol=RTOL, atol=ATOL, err_msg=f"output {index}")


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_a_bool_mask_input_is_fused_and_exact_for_every_mask_shape(case):
    model = _input_mask_model(*case)
    result = _export(model)
    for seed, mask in enumerate((EVERY_SHAPE, EVERY_SHAPE[:, :3], EVERY_SHAPE[::-1])):
        _assert_matches_keras(model, result.model, _feeds(mask, seed))


def test_the_mask_input_keeps_its_name_dtype_and_dynamic_axes():
    result = _export(_input_mask_model("lstm", False, True))
    inputs = {i.name: i for i in result.model.graph.input}
    mask = inputs["m"].type.tensor_type
    assert mask.elem_type == 9  # BOOL
    assert [d.dim_param for d in mask.shape.dim] == ["batch", "m_time"]
    assert [i.name for i in result.inputs] == ["x", "m"]


def test_the_export_checks_masks_of_every_shape_for_a_mask_input():
    """make_cases used to feed a random bool input, which is all True: the mask path went unchecked."""
    model = _input_mask_model("gru", True, True)
    assert mask_inputs(model) == {"m"}
    masks = [case.feeds["m"] for case in make_cases(model)]
    widest = max(masks, key=len)
    assert widest[0].all() and not widest[-1].any()  # unmasked and all-masked samples
    assert any(not row[0] and row.any() for row in widest)  # leading masked steps
    assert any(row[0] and not row[-1] for row in widest)  # right padding


def test_draw_mask_gives_every_shape_in_the_dtype_asked():
    rng = np.random.default_rng(0)
    drawn = draw_mask(5, 8, np.float32, rng, "left")
    assert drawn.dtype == np.float32 and drawn.shape == (5, 8)
    assert drawn[0].all() and not drawn[1, 0] and drawn[1, -1] and not drawn[3].any()
    assert not drawn[4, 0] and not drawn[4, -1] and drawn[4, 1:-1].all()


def test_a_float_zero_one_mask_input_is_cast_as_keras_casts_it():
    import keras

    x = keras.Input((None, 3), name="x")
    m = keras.Input((None,), dtype="float32", name="m")
    model = keras.Model([x, m], keras.layers.LSTM(4, return_sequences=True, name="rec")(x, mask=m))
    result = _export(model)
    assert mask_inputs(model) == {"m"}
    _assert_matches_keras(model, result.model, _feeds(EVERY_SHAPE, mask_dtype=np.float32))


def test_a_mask_computed_in_the_graph_is_fused():
    """A comparison on the model's own ids (what Embedding(mask_zero=True) does, written by hand)."""
    import keras

    ids = keras.Input((None,), dtype="int32", name="ids")
    embedded = keras.layers.Embedding(7, 3, name="embed")(ids)
    mask = keras.ops.greater(ids, 1)  # ids 0 and 1 are padding here
    out = keras.layers.GRU(4, return_sequences=True, go_backwards=True, name="rec")(embedded, mask=mask)
    model = keras.Model(ids, out)
    result = _export(model)
    tokens = np.where(EVERY_SHAPE, 3, 1).astype(np.int32)
    tokens[0, 2] = 0
    _assert_matches_keras(model, result.model, {"ids": tokens})


def test_a_mask_handed_from_layer_to_layer_is_fused():
    """Keras hands a layer's mask= on to the next layer reading its sequence, and on through a Dense."""
    import keras

    x = keras.Input((None, 3), name="x")
    m = keras.Input((None,), dtype="bool", name="m")
    y = keras.layers.LSTM(4, return_sequences=True, name="first")(x, mask=m)
    y = keras.layers.Dense(3, name="dense")(y)
    y = keras.layers.GRU(2, return_sequences=True, go_backwards=True, name="second")(y)
    model = keras.Model([x, m], keras.layers.SimpleRNN(2, name="third")(y))
    result = _export(model)
    assert result.fused_ops == {"LSTM": 1, "GRU": 1, "RNN": 1}
    _assert_matches_keras(model, result.model, _feeds(EVERY_SHAPE))


def test_an_explicit_mask_wins_over_a_propagated_one():
    """Masking computes one mask; the layer is given another. Keras uses the one given."""
    import keras

    x = keras.Input((None, 3), name="x")
    m = keras.Input((None,), dtype="bool", name="m")
    masked = keras.layers.Masking(name="masking")(x)
    model = keras.Model([x, m], keras.layers.LSTM(4, return_sequences=True, name="rec")(masked, mask=m))
    result = _export(model)
    feeds = _feeds(EVERY_SHAPE)
    feeds["x"][1, 4:] = 0.0  # steps Masking would mask, which m keeps
    _assert_matches_keras(model, result.model, feeds)
