"""The variant matrix: every recurrent variant the builder offers becomes fused ONNX ops and matches Keras."""


import numpy as np
import pytest
from conftest import assert_close

from toolkit.errors import InputError, UnsupportedModelError
from toolkit.export.exporter import export_model
from toolkit.models.builder import VARIANTS, StackConfig, build_stack, variant_config
from toolkit.onnxfile import metadata
from toolkit.onnxfile.model import count_ops
from toolkit.runtimes.keras import keras_outputs
from toolkit.runtimes.onnxrt import OnnxRunner

# Fused ops each variant must become (two layers each, three for mixed_cells). A Bidirectional layer is
# one op with direction=bidirectional.
EXPECTED_OPS = {
    "lstm": {"LSTM": 2},
    "lstm_initial_state": {"LSTM": 2},
    "lstm_go_backwards": {"LSTM": 2},
    "lstm_no_bias": {"LSTM": 2},
    "lstm_hard_sigmoid": {"LSTM": 2},
    "lstm_relu": {"LSTM": 2},
    "lstm_dropout": {"LSTM": 2},
    "lstm_unroll": {"LSTM": 2},
    "lstm_masking": {"LSTM": 2},
    "lstm_embedding_mask": {"LSTM": 2},
    "gru": {"GRU": 2},
    "gru_reset_before": {"GRU": 2},
    "gru_masking": {"GRU": 2},
    "gru_go_backwards_no_bias": {"GRU": 2},
    "simple_rnn": {"RNN": 2},
    "simple_rnn_masking": {"RNN": 2},
    "simple_rnn_relu": {"RNN": 2},
    "bidirectional_concat": {"LSTM": 2},
    "bidirectional_sum": {"LSTM": 2},
    "bidirectional_mul": {"LSTM": 2},
    "bidirectional_ave": {"LSTM": 2},
    "bidirectional_none": {"LSTM": 2},
    "bidirectional_gru_masking": {"GRU": 2},
    "bidirectional_initial_state": {"LSTM": 2},
    "mixed_cells": {"LSTM": 1, "GRU": 1, "RNN": 1},
    "dense_head": {"LSTM": 2},
    "sequential": {"LSTM": 2},
}


def test_every_builder_variant_is_in_the_matrix():
    assert set(EXPECTED_OPS) == set(VARIANTS)


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant(request):
    config = variant_config(request.param)
    model = build_stack(config)
    return request.param, config, model, export_model(model, seed=config.seed)


def test_variant_is_fused_with_no_loop(variant):
    name, _, _, result = variant
    counts = count_ops(result.model)
    assert {op: counts[op] for op in ("LSTM", "GRU", "RNN") if counts[op]} == EXPECTED_OPS[name]
    assert counts["Loop"] == 0 and counts["Scan"] == 0
    assert result.warnings == () and all(entry.fused for entry in result.lowering)


def test_variant_matches_keras_at_two_batch_sizes_and_two_lengths(variant):
    _, config, _, result = variant
    assert result.parity, result.parity.failures()
    batches = {shape[0] for s in result.parity.summaries() for shape in s.shapes}
    assert batches >= {1, 4}
    if config.timesteps is None:
        lengths = {shape[1] for s in result.parity.summaries() for shape in s.shapes if len(shape) == 3}
        assert not lengths or lengths >= {5, 11}
        assert any("11 steps" in case.label for case in result.parity.cases)


def test_variant_names_every_state(variant):
    _, config, model, result = variant
    names = [o.name for o in result.outputs]
    assert len(set(names)) == len(names)
    if config.bidirectional and config.return_state:
        assert any(n.endswith("_forward_state_h") for n in names)
        assert any(n.endswith("_backward_state_h") for n in names)
    if config.initial_state:
        assert [i.name for i in result.inputs][1:] and all(i.name.startswith("initial_") for i in result.inputs[1:])


HARD_SIGMOID = StackConfig(layers=1, units=6, timesteps=None, features=3, recurrent_activation="hard_sigmoid",
                           return_sequences=True, return_state=True)


def test_hard_sigmoid_uses_keras_3_parameters():
    result = export_model(build_stack(HARD_SIGMOID))
    node = next(n for n in result.model.graph.node if n.op_type == "LSTM")
    attrs = {a.name: a for a in node.attribute}
    assert [s.decode() for s in attrs["activations"].strings] == ["HardSigmoid", "Tanh", "Tanh"]
    assert attrs["activation_alpha"].floats[0] == pytest.approx(1 / 6)
    assert attrs["activation_beta"].floats[0] == pytest.approx(0.5)
    assert result.parity


def test_gru_reset_after_maps_to_linear_before_reset():
    for reset_after, expected in ((True, 1), (False, 0)):
        result = export_model(build_stack(variant_config("gru", reset_after=reset_after)))
        node = next(n for n in result.model.graph.node if n.op_type == "GRU")
        assert {a.name: a.i for a in node.attribute}["linear_before_reset"] == expected


def _unfusable_model():
    import keras

    x = keras.Input((None, 3), name="x")
    y = keras.layers.LSTM(4, activation="silu", return_sequences=True, name="silu_lstm")(x)
    y = keras.layers.LSTM(4, name="plain")(y)
    return keras.Model(x, y, name="unfusable")


def test_an_unfusable_layer_is_reported_and_refused_under_require_fused():
    model = _unfusable_model()
    result = export_model(model)
    assert result.parity, result.parity.failures()
    assert [(e.layer, e.onnx_op) for e in result.lowering] == [("silu_lstm", "tf2onnx"), ("plain", "LSTM")]
    assert len(result.warnings) == 1 and "not fused: layer 'silu_lstm'" in result.warnings[0]
    assert "'silu'" in result.warnings[0]
    with pytest.raises(UnsupportedModelError, match="--require-fused"):
        export_model(model, require_fused=True)


@pytest.mark.parametrize("name", ["lstm_masking", "lstm_embedding_mask", "bidirectional_gru_masking"])
def test_a_mask_of_any_shape_gives_keras_numbers_in_one_export(name):
    """Left padding, a hole and right padding in one batch: the kept steps move first for the fused op
    (tests/test_masks.py draws masks of every shape)."""
    model = build_stack(variant_config(name, all_states=False))
    runner = OnnxRunner(export_model(model).model)
    rng = np.random.default_rng(0)
    if name == "lstm_embedding_mask":
        x = rng.integers(1, 20, (4, 6)).astype(np.int32)
    else:
        x = rng.standard_normal((4, 6, 4)).astype(np.float32)
    x[1, :2] = 0  # left padding
    x[2, 2] = 0  # a hole
    x[3, 4:] = 0  # right padding
    expected = keras_outputs(model, {"input": x})
    actual = runner.run({"input": x})
    for want, got in zip(expected, actual.values()):
        assert not np.isnan(got).any()
        assert_close(got, want)


def test_masked_sequence_carries_the_last_output_like_keras():
    model = build_stack(variant_config("lstm_masking", all_states=False, layers=1))
    runner = OnnxRunner(export_model(model).model)
    x = np.random.default_rng(1).standard_normal((2, 7, 4)).astype(np.float32)
    x[1, 3:] = 0
    got = runner.run({"input": x})["lstm_1_sequence"]
    # Keras repeats the last valid output over masked steps (ONNX alone would write zeros there).
    assert np.allclose(got[1, 3:], got[1, 2]) and np.abs(got[1, 3:]).max() > 0
    assert_close(got, keras_outputs(model, {"input": x})[0])


def test_an_activation_object_is_reported_not_fused_instead_of_crashing():
    import keras

    x = keras.Input((None, 3), name="x")
    y = keras.layers.SimpleRNN(4, activation=keras.layers.ReLU(), name="relu_object")(x)
    result = export_model(keras.Model(x, y))
    assert result.parity and [e.onnx_op for e in result.lowering] == ["tf2onnx"]
    assert "has no ONNX RNN equivalent" in result.warnings[0]


def test_masking_with_a_nonzero_mask_value():
    import keras

    x = keras.Input((None, 3), name="x")
    y = keras.layers.LSTM(4, return_sequences=True, name="lstm")(keras.layers.Masking(-1.0, name="masking")(x))
    model = keras.Model(x, y)
    result = export_model(model)
    assert result.parity and any("right-padded and mixed masks" in c.label for c in result.parity.cases)
    data = np.random.default_rng(3).standard_normal((2, 5, 3)).astype(np.float32)
    data[1, 3:] = -1.0
    got = OnnxRunner(result.model).run({"x": data})["lstm_sequence"]
    assert_close(got, keras_outputs(model, {"x": data})[0])


def test_embedding_is_one_gather_and_takes_negative_ids_like_keras():
    import keras

    ids = keras.Input((None,), dtype="int64", name="ids")
    y = keras.layers.Embedding(7, 3, mask_zero=True, name="embedding")(ids)
    y = keras.layers.LSTM(4, return_sequences=True, name="lstm")(y)
    model = keras.Model(ids, y)
    result = export_model(model)
    assert result.parity, result.parity.failures()
    tables = {t.name for t in result.model.graph.initializer}
    lookups = [n for n in result.model.graph.node if n.op_type == "Gather" and n.input[0] in tables]
    assert len(lookups) == 1 and "Less" not in result.op_counts  # the mask's Gathers read no table
    data = np.array([[3, -1, -7, 2, 0, 0], [5, 6, 1, 0, 0, 0]], np.int64)  # -1 is the last row, -7 the first
    got = OnnxRunner(result.model).run({"ids": data})["lstm_sequence"]
    assert_close(got, keras_outputs(model, {"ids": data})[0])


def test_masking_keeps_a_step_with_any_nonzero_feature_and_masks_negative_zero():
    model = build_stack(variant_config("lstm_masking", all_states=False, layers=1))
    runner = OnnxRunner(export_model(model).model)
    x = np.random.default_rng(2).standard_normal((3, 5, 4)).astype(np.float32)
    x[0, 4] = [0, 0, 1e-30, 0]  # tiny but not zero: kept, as Keras' not_equal says
    x[1, 3:] = -0.0  # -0.0 == 0: masked
    x[2, 2:] = [0, 0, 0, 3e38]  # huge: kept
    assert_close(runner.run({"input": x})["lstm_1_sequence"], keras_outputs(model, {"input": x})[0])


def test_a_stack_hands_time_major_values_from_layer_to_layer():
    """ONNX Runtime's recurrent ops are time-major: one Transpose in, one out, none between layers."""
    result = export_model(build_stack(variant_config("mixed_cells")))
    assert result.op_counts.get("Transpose") == 2, result.op_counts
    assert result.parity, result.parity.failures()


def test_the_mask_path_stays_small_on_the_single_step_path():
    """Mask (Transpose, ReduceL1, Cast), its batch-major int64 form (Transpose, Cast), sequence_lens
    (ReduceSum, Cast), the sort of kept steps first (Shape, TopK), the moves in and back
    (GatherND twice, Reshape), the counts (CumSum, Sub): each node costs about as much as the LSTM itself
    at batch 1, one step (2 us in ONNX Runtime's profile)."""
    config = variant_config("lstm_masking", layers=1, return_sequences=True, return_state=False, all_states=False)
    result = export_model(build_stack(config))
    assert sum(result.op_counts.values()) <= 17, result.op_counts
    assert result.op_counts.get("Transpose") == 4 and "Unsqueeze" not in result.op_counts
    last = export_model(build_stack(variant_config("lstm_masking", layers=1, return_sequences=False,
                                                   return_state=False, all_states=False)))
    assert "CumSum" not in last.op_counts  # no output sequence: nothing moves back
    stacked = export_model(build_stack(variant_config("lstm_masking", layers=3, return_sequences=True,
                                                      return_state=False, all_states=False)))
    assert stacked.op_counts["TopK"] == 1 and stacked.op_counts["CumSum"] == 1  # each form once per mask


def test_dense_layers_become_matmul_add_activation_and_match_keras():
    import keras

    x = keras.Input((None, 3), name="x")
    seq = keras.layers.LSTM(4, return_sequences=True, name="lstm")(keras.layers.Masking(name="masking")(x))
    per_step = keras.layers.TimeDistributed(keras.layers.Dense(5, activation="relu"), name="per_step")(seq)
    probs = keras.layers.Dense(2, activation="softmax", name="probs")(per_step)
    last = keras.layers.LSTM(3, name="last")(per_step)  # reads the mask through the Dense layers
    gelu = keras.layers.Dense(2, activation="gelu", use_bias=False, name="gelu")(last)  # tf2onnx: an Erfc ONNX lacks
    elu = keras.layers.Dense(2, activation="elu", name="elu")(last)  # not lowered by lstm-onnx: tf2onnx converts it
    model = keras.Model(x, [probs, gelu, elu])
    result = export_model(model)
    assert result.parity, result.parity.failures()
    assert result.op_counts.get("Relu") == 1 and result.op_counts.get("Softmax") == 1 and result.op_counts.get("Erf") == 1
    assert "Reshape" not in result.op_counts or result.op_counts["Reshape"] <= 1  # no TimeDistributed folding
    data = np.random.default_rng(4).standard_normal((2, 6, 3)).astype(np.float32)
    data[1, 4:] = 0
    got = OnnxRunner(result.model).run({"x": data})
    for want, have in zip(keras_outputs(model, {"x": data}), got.values()):
        assert_close(have, want)


def _parity_on(model, feeds):
    result = export_model(model)
    assert result.parity, result.parity.failures()
    got = OnnxRunner(result.model).run(feeds)
    for want, have in zip(keras_outputs(model, feeds), got.values()):
        assert_close(have, want)
    return result


def test_masking_on_inputs_of_other_ranks_and_with_an_infinite_mask_value():
    import keras

    seq = keras.Input((None, 3), name="seq")
    flat = keras.Input((3,), name="flat_in")  # (batch, features): the mask is (batch,)
    masked_flat = keras.layers.Masking(2.0, name="masking_flat")(flat)
    model = keras.Model([seq, flat], [keras.layers.LSTM(2, name="lstm")(seq),
                                      keras.layers.Dense(2, name="flat_out")(masked_flat)])
    data = {"seq": np.random.default_rng(5).standard_normal((2, 4, 3)).astype(np.float32),
            "flat_in": np.array([[2, 2, 2], [2, 0, 2]], np.float32)}
    _parity_on(model, data)

    x = keras.Input((None, 2), name="x")
    y = keras.layers.LSTM(3, return_sequences=True, name="lstm")(keras.layers.Masking(np.inf, name="masking")(x))
    data = np.random.default_rng(6).standard_normal((2, 5, 2)).astype(np.float32)
    data[1, 3:] = np.inf  # masked: inf == inf, though inf - inf is NaN
    _parity_on(keras.Model(x, y), {"x": data})


@pytest.mark.parametrize("dtype", ["int16", "float32"])
def test_embedding_ids_of_other_dtypes_and_the_mask_of_fractional_ids(dtype):
    import keras

    ids = keras.Input((None,), dtype=dtype, name="ids")
    y = keras.layers.Embedding(6, 3, mask_zero=True, name="embedding")(ids)
    model = keras.Model(ids, keras.layers.LSTM(2, return_sequences=True, name="lstm")(y))
    data = np.array([[3, 1, 5, 0], [2, 4, 0, 0]], dtype=dtype)
    if dtype == "float32":
        data[1, 2] = 0.5  # Keras keeps it (mask: id != 0) and looks up row 0 (cast to int32)
    _parity_on(model, {"ids": data})


def test_dense_activations_are_matched_by_identity_not_by_name():
    import keras

    x = keras.Input((None, 3), name="x")
    y = keras.layers.LSTM(4, return_sequences=True, name="lstm")(x)
    y = keras.layers.Dense(2, activation=keras.ops.gelu, name="approx_gelu")(y)  # named "gelu", tanh-approximated
    result = _parity_on(keras.Model(x, y), {"x": np.random.default_rng(7).standard_normal((2, 5, 3)).astype(np.float32)})
    assert "Erf" not in result.op_counts


@pytest.mark.parametrize("name", ["lstm_masking", "lstm_embedding_mask", "bidirectional_gru_masking"])
def test_a_single_step_kept_or_masked(name):
    """One step: the sort and the counts over a time axis of 1."""
    model = build_stack(variant_config(name, all_states=False))
    runner = OnnxRunner(export_model(model).model)
    if name == "lstm_embedding_mask":
        x = np.array([[3], [0]], np.int32)
    else:
        x = np.random.default_rng(8).standard_normal((2, 1, 4)).astype(np.float32)
        x[1] = 0  # the one step masked
    for want, got in zip(keras_outputs(model, {"input": x}), runner.run({"input": x}).values()):
        assert not np.isnan(got).any()
        assert_close(got, want)


LEFT_PADDED = [("lstm_masking", {}), ("lstm_masking", {"go_backwards": True}), ("lstm_embedding_mask", {}),
               ("gru_masking", {"go_backwards": True}), ("simple_rnn_masking", {}),
               ("bidirectional_gru_masking", {}), ("bidirectional_gru_masking", {"bidirectional": "sum"}),
               ("bidirectional_gru_masking", {"bidirectional": "none", "return_sequences": True})]


@pytest.mark.parametrize(("name", "overrides"), LEFT_PADDED)
def test_padding_left_changes_only_the_check_batches_not_the_graph(name, overrides):
    """--padding is accepted and recorded (an export's metadata stays as it was), but any mask is exact
    without it: it picks the side of the second sample of the export's own check batches, nothing more."""
    model = build_stack(variant_config(name, **overrides))
    left, right = export_model(model, padding="left"), export_model(model)
    assert left.parity, left.parity.failures()
    assert all("left-padded" in case.label for case in left.parity.cases if "random" in case.label)
    assert left.model.graph == right.model.graph and "Loop" not in left.op_counts


def test_pad_sequences_default_batches_match_keras_through_a_default_export():
    """keras.utils.pad_sequences pads on the left by default (issue 11): NaN before, Keras' numbers now."""
    import keras

    ids = keras.Input((None,), dtype="int32", name="ids")
    y = keras.layers.Embedding(20, 8, mask_zero=True, name="embedding")(ids)
    y = keras.layers.Bidirectional(keras.layers.LSTM(6, return_sequences=True), name="encoder")(y)
    y = keras.layers.LSTM(4, name="summary")(y)
    model = keras.Model(ids, keras.layers.Dense(1, activation="sigmoid", name="score")(y))
    batch = keras.utils.pad_sequences([[5, 3, 9], [7], [2, 4, 6, 8, 10, 12], [11, 13]])  # padding="pre"
    assert (batch[:, 0] == 0).any()
    result = export_model(model)
    assert result.parity, result.parity.failures()
    got = OnnxRunner(result.model).run({"ids": batch})["score_output"]
    assert not np.isnan(got).any()
    assert_close(got, keras_outputs(model, {"ids": batch})[0])


def test_padding_is_checked_and_recorded():
    model = build_stack(variant_config("lstm_masking"))
    with pytest.raises(InputError, match="Expected padding in"):
        export_model(model, padding="middle")
    assert metadata.read_options(export_model(model, padding="left").model).padding == "left"


def test_verify_checks_masked_exports_on_mixed_masks(tmp_path):
    from toolkit.checking.verify import verify_files

    model = build_stack(variant_config("gru_masking", all_states=False))
    model.save(tmp_path / "model.keras")
    (tmp_path / "model.onnx").write_bytes(export_model(model, padding="left").data)
    report = verify_files(tmp_path / "model.onnx", tmp_path / "model.keras")
    assert report, report.failures()
    assert any("left-padded and mixed masks" in case.label for case in report.cases)


@pytest.mark.parametrize("padding", ["right", "left"])
def test_propagated_nan_leaves_the_zeros_keras_writes_at_masked_steps(padding):  # the batch's padding side
    """Bidirectional (and zero_output_for_mask=True) layers output 0 at masked steps, even after a NaN."""
    import keras

    x = keras.Input((None, 3), name="x")
    masked = keras.layers.Masking(name="masking")(x)
    both = keras.layers.Bidirectional(keras.layers.GRU(4, return_sequences=True), merge_mode="sum", name="bi")(masked)
    zeroed = keras.layers.LSTM(3, return_sequences=True, zero_output_for_mask=True, name="zeroed")(masked)
    model = keras.Model(x, [both, zeroed])
    runner = OnnxRunner(export_model(model, propagate_nan=True).model)
    data = np.random.default_rng(10).standard_normal((2, 6, 3)).astype(np.float32)
    if padding == "left":
        data[0, :2] = 0
        data[0, 4, 0] = np.nan
    else:
        data[0, 4:] = 0
        data[0, 1, 0] = np.nan
    for want, got in zip(keras_outputs(model, {"x": data}), runner.run({"x": data}).values()):
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        assert_close(got, want)


@pytest.mark.parametrize("name", ["lstm_masking", "gru_masking", "simple_rnn_masking"])
def test_a_fully_masked_sample_keeps_the_states_it_was_given(name):
    """ONNX Runtime returns zero states for sequence_lens 0; Keras keeps the initial ones (streaming)."""
    result = export_model(build_stack(variant_config(name, layers=1, all_states=False)), state_io=True)
    mapping = metadata.read_state_map(result.model)
    runner = OnnxRunner(result.model)
    rng = np.random.default_rng(11)
    if name == "simple_rnn_masking":
        data = rng.integers(1, 5, (2, 4)).astype(np.int32)
    else:
        data = rng.standard_normal((2, 4, 4)).astype(np.float32)
    data[1] = 0  # every step masked
    units = {info.name: info.shape[-1] for info in runner.optional}
    fed = {state_in: rng.standard_normal((2, units[state_in])).astype(np.float32) for state_in in mapping}
    out = runner.run({"input": data, **fed})
    for state_in, state_out in mapping.items():
        np.testing.assert_array_equal(out[state_out][1], fed[state_in][1])
        assert not np.allclose(out[state_out][0], fed[state_in][0])
