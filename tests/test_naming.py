"""The `<layer>_<role>` naming rules, on real Keras layers and models."""

import keras
import pytest

from toolkit.errors import InputError
from toolkit.models.builder import StackConfig, build_stack, variant_config
from toolkit.models.naming import (
    OutputOrigin,
    apply_overrides,
    default_output_names,
    is_bidirectional,
    is_recurrent,
    output_origins,
    recurrent_roles,
    unique_names,
)


def test_origin_names_carry_the_call_index_after_the_first():
    assert OutputOrigin("lstm_1", "LSTM", "state_h").name == "lstm_1_state_h"
    assert OutputOrigin("dec", "LSTM", "sequence", call=2).name == "dec_call2_sequence"


def test_unique_names_number_repeats():
    assert unique_names(["a", "a", "b", "a", "a_1"]) == ["a", "a_1", "b", "a_2", "a_1_1"]


def test_overrides_by_mapping_or_list_and_their_errors():
    assert apply_overrides(["a", "b"], None) == ["a", "b"]
    assert apply_overrides(["a", "b"], {"b": "c"}) == ["a", "c"]
    assert apply_overrides(["a", "b"], ["x", "y"]) == ["x", "y"]
    with pytest.raises(InputError, match=r"Expected output names to rename among \['a', 'b'\]. Received: \['z'\]"):
        apply_overrides(["a", "b"], {"z": "c"})
    with pytest.raises(InputError, match="Expected 2 output names, one per output"):
        apply_overrides(["a", "b"], ["x"])
    with pytest.raises(InputError, match="Expected unique, non-empty output names"):
        apply_overrides(["a", "b"], {"b": "a"})


def test_roles_of_plain_and_bidirectional_layers():
    lstm = keras.layers.LSTM(2, return_sequences=True, return_state=True)
    gru = keras.layers.GRU(2, return_state=True)
    both = keras.layers.Bidirectional(keras.layers.LSTM(2, return_state=True), merge_mode=None)
    assert recurrent_roles(lstm) == ["sequence", "state_h", "state_c"]
    assert recurrent_roles(gru) == ["last", "state_h"]
    assert recurrent_roles(both) == ["forward_last", "backward_last", "forward_state_h", "forward_state_c",
                                     "backward_state_h", "backward_state_c"]
    assert is_bidirectional(both) and not is_bidirectional(lstm)
    assert is_recurrent(both) and is_recurrent(gru) and not is_recurrent(keras.layers.Dense(1))


def test_default_names_of_built_stacks():
    model = build_stack(StackConfig(return_state=True))
    assert default_output_names(model) == ["lstm_2_last", "lstm_2_state_h", "lstm_2_state_c"]
    assert default_output_names(model, output_origins(model)) == default_output_names(model)
    bidirectional = build_stack(variant_config("bidirectional_sum", layers=1, all_states=False))
    assert default_output_names(bidirectional) == [
        "bi_lstm_1_sequence", "bi_lstm_1_forward_state_h", "bi_lstm_1_forward_state_c",
        "bi_lstm_1_backward_state_h", "bi_lstm_1_backward_state_c"]


def test_one_tensor_returned_twice_gets_two_names():
    x = keras.Input((3, 1))
    y = keras.layers.LSTM(2, name="enc")(x)
    assert default_output_names(keras.Model(x, [y, y])) == ["enc_last", "enc_last_1"]


def test_cell_and_stack_roles():
    single = keras.layers.RNN(keras.layers.LSTMCell(3), return_state=True)
    stack = keras.layers.RNN(keras.layers.StackedRNNCells([keras.layers.GRUCell(2), keras.layers.LSTMCell(3)]),
                             return_sequences=True, return_state=True)
    assert recurrent_roles(single) == ["last", "state_h", "state_c"]
    assert recurrent_roles(stack) == ["sequence", "cell0_state_h", "cell1_state_h", "cell1_state_c"]
    x = keras.Input((4, 2))
    model = keras.Model(x, keras.layers.RNN(keras.layers.StackedRNNCells(
        [keras.layers.LSTMCell(2), keras.layers.SimpleRNNCell(3)]), return_state=True, name="stk")(x))
    assert default_output_names(model) == ["stk_last", "stk_cell0_state_h", "stk_cell0_state_c", "stk_cell1_state_h"]


def _export(model, **options):
    from toolkit.export.exporter import export_model
    from toolkit.models.builder import set_deterministic_weights

    set_deterministic_weights(model, 2)
    result = export_model(model, **options)
    assert result.parity, result.parity.failures()
    return result


def test_a_loaded_sequential_first_layer_has_no_call_suffix(tmp_path):
    """Keras gives a loaded Sequential's first layer two inbound nodes; only one is in the model's graph."""
    model = keras.Sequential([keras.Input((5, 2)), keras.layers.GRU(4, return_sequences=True, name="gru_a"),
                              keras.layers.LSTM(3, name="lstm_b")])
    model.save(tmp_path / "seq.keras")
    loaded = keras.saving.load_model(tmp_path / "seq.keras")
    assert len(loaded.get_layer("gru_a")._inbound_nodes) == 2  # the case: if Keras changes, this test says so
    result = _export(loaded, state_io=True)
    names = [o.name for o in result.outputs] + [i.name for i in result.model.graph.input]
    assert not any("call" in n for n in names), names
    assert [o.name for o in result.outputs] == ["lstm_b_last", "gru_a_state_h", "lstm_b_state_h", "lstm_b_state_c"]


def test_an_attention_decoders_time_axis_is_its_inputs():
    enc_in = keras.Input((None, 5), name="encoder_inputs")
    dec_in = keras.Input((None, 6), name="decoder_inputs")
    enc_seq, h, c = keras.layers.LSTM(8, return_sequences=True, return_state=True, name="encoder")(enc_in)
    dec_seq = keras.layers.LSTM(8, return_sequences=True, name="decoder")(dec_in, initial_state=[h, c])
    context = keras.layers.Attention(name="attention")([dec_seq, enc_seq])
    merged = keras.layers.Concatenate(name="concat")([dec_seq, context])
    out = keras.layers.Dense(7, activation="softmax", name="dense_9")(merged)
    result = _export(keras.Model([enc_in, dec_in], [out, enc_seq], name="attention_decoder"))
    assert [o.shape for o in result.outputs] == [("batch", "decoder_inputs_time", 7), ("batch", "encoder_inputs_time", 8)]
    # Along time (Concatenate on axis 1) the axis is neither input's: it keeps its own name.
    joined = keras.layers.Concatenate(axis=1, name="join")([enc_seq, dec_seq])
    result = _export(keras.Model([enc_in, dec_in], keras.layers.LSTM(2, return_sequences=True, name="post")(joined)))
    assert result.outputs[0].shape == ("batch", "post_sequence_time", 2)


def test_bidirectional_inner_layers_list_their_fused_op():
    from toolkit.onnxfile.metadata import read_layers

    x = keras.Input((5, 3))
    y = keras.layers.Bidirectional(keras.layers.LSTM(4, name="inner"), name="bi")(x)
    layers = {entry["name"]: entry["onnx_op"] for entry in read_layers(_export(keras.Model(x, y)).model)}
    assert layers == {"bi": "LSTM", "forward_inner": "LSTM", "backward_inner": "LSTM"}
