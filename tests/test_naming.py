"""The `<layer>_<role>` naming rules, on real Keras layers and models."""

import keras
import pytest

from toolkit.builder import StackConfig, build_stack, variant_config
from toolkit.errors import InputError
from toolkit.naming import (OutputOrigin, apply_overrides, default_output_names, is_bidirectional, is_recurrent,
                            output_origins, recurrent_roles, unique_names)


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
