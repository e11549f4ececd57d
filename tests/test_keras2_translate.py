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
