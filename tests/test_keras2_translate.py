"""toolkit.models.keras2.translate on Keras 2 configs as dicts (no Keras, no TensorFlow): what is dropped, renamed
and refused. The whole path, with real tf.keras files, is tests/test_keras2.py."""

from __future__ import annotations

import pytest

from toolkit.errors import UnsupportedModelError
from toolkit.models.keras2.translate import translate_model_config


def lstm(name: str, **extra) -> dict:
    config = {"name": name, "units": 2, "time_major": False, "implementation": 2, "return_sequences": True,
              "kernel_initializer": {"class_name": "VarianceScaling", "config": {"scale": 1.0, "dtype": "float32"}}}
    return {"class_name": "LSTM", "config": {**config, **extra}, "name": name}


def functional(*layers: dict, outputs: list | None = None) -> dict:
    entries = [{"class_name": "InputLayer", "config": {"batch_input_shape": [None, 3, 1], "dtype": "float32",
                                                          "name": "x"}, "name": "x", "inbound_nodes": []}]
    previous = "x"
    for layer in layers:
        entries.append({**layer, "inbound_nodes": [[[previous, 0, 0, {}]]]})
        previous = layer["name"]
    return {"class_name": "Model", "config": {"name": "m", "layers": entries, "input_layers": [["x", 0, 0]],
                                              "output_layers": outputs or [[previous, 0, 0]]}}


def test_keras2_arguments_dropped_and_legacy_forms_read():
    translation = translate_model_config(functional(lstm("lstm")), "m.h5")
    model = translation.config
    assert model["class_name"] == "Functional"
    layer = model["config"]["layers"][1]["config"]
    assert "time_major" not in layer and "implementation" not in layer
    assert layer["kernel_initializer"] == {"class_name": "VarianceScaling", "config": {"scale": 1.0}}  # Keras 2.2's dtype out
    assert model["config"]["layers"][0]["config"]["batch_shape"] == [None, 3, 1]
    assert any("time_major" in change for change in translation.changes)


def test_cudnn_layers_become_the_layers_they_compute():
    gru = {"class_name": "CuDNNGRU", "config": {"name": "g", "units": 4, "return_sequences": False}, "name": "g"}
    translation = translate_model_config(functional(gru), "gpu.h5")
    layer = translation.config["config"]["layers"][1]
    assert layer["class_name"] == "GRU"
    assert layer["config"]["reset_after"] is True and layer["config"]["recurrent_activation"] == "sigmoid"
    assert translation.cudnn == {"g": "CuDNNGRU"}


def test_savedmodel_tuples_and_keras21_sequential_lists_are_read():
    config = {"class_name": "Sequential", "config": [
        {"class_name": "LSTM", "config": {"name": "l", "units": 2, "batch_input_shape": {"class_name": "__tuple__",
                                                                                       "items": [None, 5, 3]}}}]}
    layers = translate_model_config(config, "old.h5").config["config"]["layers"]
    assert layers[0]["class_name"] == "InputLayer" and layers[0]["config"]["batch_shape"] == [None, 5, 3]
    assert "batch_input_shape" not in layers[1]["config"]


@pytest.mark.parametrize("bad, needle", [
    ({"class_name": "Lambda", "config": {"name": "f", "function": "4wEAAAAA"}, "name": "f"}, "Lambda layer"),
    (lstm("l", kernel_initializer={"module": "os", "class_name": "system", "config": {}}), "naming module 'os'"),
])
def test_code_and_foreign_modules_are_refused(bad, needle):
    with pytest.raises(UnsupportedModelError, match=needle):
        translate_model_config(functional(bad), "bad.h5")


def test_dict_outputs_are_refused_in_one_line():
    with pytest.raises(UnsupportedModelError, match="dict outputs"):
        translate_model_config(functional(lstm("l"), outputs={"a": ["l", 0, 0]}), "d.h5")


def test_nested_model_calls_are_renumbered_and_id_inputs_declared_int32():
    inner = {"class_name": "Sequential", "config": {"name": "inner", "layers": []}, "name": "inner"}
    embedding = {"class_name": "Embedding", "config": {"name": "e", "input_dim": 9, "output_dim": 2, "input_length": 3},
                 "name": "e"}
    config = functional(embedding, inner)
    config["config"]["layers"][2]["inbound_nodes"] = [[["e", 0, 0, {}]]]
    config["config"]["output_layers"] = [["inner", 1, 0]]  # Keras 2: a nested model's first call is node 1
    translated = translate_model_config(config, "n.h5").config["config"]
    assert translated["output_layers"] == [["inner", 0, 0]]
    assert translated["layers"][0]["config"]["dtype"] == "int32"  # x feeds only an Embedding
    assert "input_length" not in translated["layers"][1]["config"]


def layers_of(translation) -> list[dict]:
    return translation.config["config"]["layers"]


def test_hard_sigmoid_keeps_keras2s_meaning_in_layers_wrappers_and_cells():
    gru = {"class_name": "GRU", "config": {"name": "g", "units": 2, "recurrent_activation": "hard_sigmoid"}, "name": "g"}
    wrapped = {"class_name": "Bidirectional", "name": "b", "config": {"name": "b", "layer": {
        "class_name": "SimpleRNN", "config": {"name": "s", "units": 2, "activation": "hard_sigmoid"}}}}
    cells = {"class_name": "RNN", "name": "r", "config": {"name": "r", "cell": {
        "class_name": "LSTMCell", "config": {"name": "c", "units": 2, "recurrent_activation": "hard_sigmoid"}}}}
    dense = {"class_name": "TimeDistributed", "name": "t", "config": {"name": "t", "layer": {
        "class_name": "Dense", "config": {"name": "d", "units": 2, "activation": {"class_name": "function",
                                                                                  "config": "hard_sigmoid"}}}}}
    activation = {"class_name": "Activation", "config": {"name": "a", "activation": "hard_sigmoid"}, "name": "a"}
    translation = translate_model_config(functional(gru, wrapped, cells, dense, activation), "m.h5", "2.2.4")
    found = [layer["config"]["recurrent_activation"] for layer in layers_of(translation)[1:2]]
    found += [layers_of(translation)[2]["config"]["layer"]["config"]["activation"],
              layers_of(translation)[3]["config"]["cell"]["config"]["recurrent_activation"],
              layers_of(translation)[4]["config"]["layer"]["config"]["activation"],
              layers_of(translation)[5]["config"]["activation"]]
    assert all(value["config"] == KERAS2_HARD_SIGMOID for value in found), found
    assert layers_of(translation)[1]["config"]["reset_after"] is False  # Keras 2.2.4 GRU without it
    assert sum("hard_sigmoid kept as Keras 2's" in change for change in translation.changes) == 5


KERAS2_HARD_SIGMOID = "lstm_onnx>keras2_hard_sigmoid"


@pytest.mark.parametrize("version, expected", [("2.0.8", (KERAS2_HARD_SIGMOID, False)),
                                               ("2.2.5", (KERAS2_HARD_SIGMOID, False)),
                                               ("2.4.0", (None, True)), ("2.21.0", (None, True))])
def test_left_out_recurrent_defaults_are_those_of_the_keras_that_wrote_the_file(version, expected):
    """Standalone Keras < 2.3: recurrent_activation hard_sigmoid, GRU reset_after False; tf.keras: Keras 3's."""
    gru = {"class_name": "GRU", "config": {"name": "g", "units": 2}, "name": "g"}
    config = layers_of(translate_model_config(functional(gru), "m.h5", version))[1]["config"]
    activation = config.get("recurrent_activation")
    assert (activation["config"] if activation else None, config["reset_after"]) == expected


def test_keras2_activation_layers_and_arguments_keras3_renamed():
    leaky = {"class_name": "LeakyReLU", "config": {"name": "l", "alpha": 0.1}, "name": "l"}
    thresholded = {"class_name": "ThresholdedReLU", "config": {"name": "t", "theta": 0.3}, "name": "t"}
    dense = {"class_name": "Dense", "name": "d", "config": {"name": "d", "units": 2, "kernel_initializer": {
        "class_name": "VarianceScaling", "config": {"scale": 2.0, "mode": "fan_in", "distribution": "normal"}}}}
    layers = layers_of(translate_model_config(functional(leaky, thresholded, dense), "m.h5", "2.1.0"))
    assert layers[1]["config"] == {"name": "l", "negative_slope": 0.1}
    assert layers[2]["class_name"] == "ReLU" and layers[2]["config"]["threshold"] == 0.3
    assert layers[3]["config"]["kernel_initializer"]["config"]["distribution"] == "truncated_normal"


def test_inference_noops_out_of_keras3s_range_stay_identities_and_legacy_forms_are_read():
    noise = {"class_name": "GaussianNoise", "config": {"name": "n", "stddev": 1.5}, "name": "n"}
    spatial = {"class_name": "SpatialDropout1D", "config": {"name": "s", "rate": 0.2, "noise_shape": None,
                                                            "trainable": True}, "name": "s"}
    conv = {"class_name": "Convolution1D", "config": {"name": "c", "nb_filter": 4, "filter_length": 3,
                                                      "border_mode": "same", "subsample_length": 1, "init": "glorot_uniform"},
            "name": "c"}
    pool = {"class_name": "MaxPooling1D", "config": {"name": "p", "pool_length": 2, "stride": 2}, "name": "p"}
    embedding = {"class_name": "Embedding", "config": {"name": "e", "input_dim": 9, "output_dim": 2, "dtype": "int32"},
                 "name": "e"}
    translation = translate_model_config(functional(noise, spatial, conv, pool, embedding), "m.h5", "2.1.2")
    layers = layers_of(translation)
    assert layers[1]["config"]["stddev"] == 1.0 and any("does nothing at inference" in c for c in translation.changes)
    assert "noise_shape" not in layers[2]["config"] and "trainable" not in layers[2]["config"]
    assert layers[3]["class_name"] == "Conv1D"
    assert {k: layers[3]["config"][k] for k in ("filters", "kernel_size", "padding", "strides")} == {
        "filters": 4, "kernel_size": 3, "padding": "same", "strides": 1}
    assert "init" not in layers[3]["config"]
    assert layers[4]["config"] == {"name": "p", "pool_size": 2, "strides": 2}
    assert layers[5]["config"]["dtype"] == "float32"


def test_merge_becomes_the_merge_layer_of_its_mode_and_a_function_mode_is_refused():
    def merge(mode):
        return {"class_name": "Merge", "name": "m1", "config": {"name": "m1", "mode": mode, "concat_axis": 1,
                                                                "mode_type": "raw"}}

    assert layers_of(translate_model_config(functional(merge("concat")), "m.h5"))[1] == {
        "class_name": "Concatenate", "name": "m1", "config": {"name": "m1", "trainable": True, "axis": 1},
        "inbound_nodes": [[["x", 0, 0, {}]]]}
    assert layers_of(translate_model_config(functional(merge("sum")), "m.h5"))[1]["class_name"] == "Add"
    with pytest.raises(UnsupportedModelError, match="layer 'm1' mode='4wEAAA"):
        translate_model_config(functional(merge("4wEAAAAA")), "m.h5")


def decoder_model(node: list) -> dict:
    """An encoder LSTM whose states start a decoder LSTM, called by `node`."""
    config = functional(lstm("encoder", return_state=True))
    layers = config["config"]["layers"]
    layers.append({"class_name": "InputLayer", "name": "d", "inbound_nodes": [],
                   "config": {"batch_input_shape": [None, None, 2], "name": "d"}})
    layers.append({**lstm("decoder"), "inbound_nodes": [node]})
    return config


@pytest.mark.parametrize("node", [
    [["d", 0, 0, {}], ["encoder", 0, 1, {}], ["encoder", 0, 2, {}]],  # Keras 2.0-2.3, tf.keras 2.4+
    [["d", 0, 0, {"initial_state": [["encoder", 0, 1], ["encoder", 0, 2]]}]],  # tf.keras 2.0-2.3
])
def test_a_decoders_initial_states_become_its_initial_state_argument(node):
    translation = translate_model_config(decoder_model(node), "s2s.h5")
    call = layers_of(translation)[-1]["inbound_nodes"][0]
    assert [t["config"]["keras_history"] for t in call["args"]] == [["d", 0, 0]]
    assert [t["config"]["keras_history"] for t in call["kwargs"]["initial_state"]] == [["encoder", 0, 1],
                                                                                       ["encoder", 0, 2]]
    assert any("initial states read as initial_state=" in change for change in translation.changes)


@pytest.mark.parametrize("layer, needle", [
    (lstm("l", time_major=True), "LSTM 'l' time_major=True"),
    ({"class_name": "ConvLSTM2D", "config": {"name": "cv", "filters": 2}, "name": "cv"}, "ConvLSTM2D layer 'cv'"),
    ({"class_name": "BatchNormalization", "config": {"name": "bn", "mode": 2}, "name": "bn"}, "'bn' mode=2"),
])
def test_forms_with_a_meaning_lstm_onnx_does_not_export_are_refused_in_one_line(layer, needle):
    with pytest.raises(UnsupportedModelError, match=needle) as refused:
        translate_model_config(functional(layer), "m.h5")
    assert "\n" not in str(refused.value)


def test_keras1_per_gate_arrays_are_joined_in_keras2s_gate_order():
    """Keras 1 stored LSTM weights per gate as (W, U, b) for i, c, f, o; Keras 2's kernel is i, f, c, o
    (GRU: z, r, h in both). A Bidirectional holds the forward layer's arrays, then the backward's."""
    import keras
    import numpy as np

    from toolkit.models.keras2.weights import convert_keras1

    def per_gate(order: str, units: int = 2) -> list[np.ndarray]:
        arrays = []
        for gate in order:  # each array filled with its gate's letter code and its part (W 0, U 1, b 2)
            arrays += [np.full(shape, ord(gate) * 10 + part, np.float32)
                       for part, shape in enumerate([(3, units), (units, units), (units,)])]
        return arrays

    lstm = keras.layers.LSTM(2)
    kernel, recurrent, bias = convert_keras1(lstm, per_gate("icfo"))
    assert [int(v) // 10 for v in kernel[0, ::2]] == [ord(g) for g in "ifco"]
    assert (recurrent % 10 == 1).all() and (bias % 10 == 2).all() and kernel.shape == (3, 8)
    gru = keras.layers.GRU(2)
    assert [int(v) // 10 for v in convert_keras1(gru, per_gate("zrh"))[0][0, ::2]] == [ord(g) for g in "zrh"]
    both = keras.layers.Bidirectional(keras.layers.LSTM(2))
    halves = convert_keras1(both, per_gate("icfo") + [a + 10000 for a in per_gate("icfo")])
    assert len(halves) == 6 and (halves[3] >= 10000).all() and (halves[0] < 10000).all()
    dense = keras.layers.Dense(2)
    assert len(convert_keras1(dense, per_gate("i")[:2])) == 2  # not a per-gate layer: left as it is


def test_a_keras1_embeddings_training_dropout_and_int32_input_dtype_are_read_as_keras2s():
    """tsudalab/ChemTS's Keras 1.1.1 JSON: Embedding(dropout=0.0, input_dtype="int32", init, W_regularizer...).
    `dropout` dropped rows of the table in training only; `input_dtype` was its input's dtype, so the table is
    float32 (Keras 3 would draw an int32 initializer and fail)."""
    from toolkit.models.keras2.legacy import legacy_layer

    entry = {"class_name": "Embedding", "config": {"name": "embedding_1", "input_dim": 64, "output_dim": 8,
                                                   "init": "uniform", "dropout": 0.2, "input_dtype": "int32",
                                                   "W_regularizer": None, "mask_zero": False, "input_length": 82}}
    note = legacy_layer(entry, "model.json")
    assert "dropout" not in entry["config"] and "init" not in entry["config"]
    assert entry["config"]["dtype"] == "float32" and entry["config"]["input_dim"] == 64  # its vocabulary, kept
    assert "['init', 'W_regularizer', 'dropout', 'input_dtype']" in note and "read as float32" in note
    recurrent = {"class_name": "GRU", "config": {"name": "gru_1", "output_dim": 4, "dropout_W": 0.1}}
    legacy_layer(recurrent, "model.json")
    assert recurrent["config"]["dropout"] == 0.1  # a recurrent layer's dropout is Keras 2's, not dropped
