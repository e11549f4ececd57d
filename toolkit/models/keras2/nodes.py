"""Keras 2 call nodes of recurrent layers given initial states, in the form Keras 3 rebuilds.

`LSTM(..., return_state=True)(decoder_inputs, initial_state=[h, c])` (Keras' own seq2seq example) is
stored by Keras 2 as ONE inbound node listing the sequence and then the states:
`[["decoder_inputs", 0, 0, {}], ["lstm_1", 0, 1, {}], ["lstm_1", 0, 2, {}]]` (Keras 2.0-2.3 and tf.keras
2.4+), or with the states under the first tensor's kwargs, `{"initial_state": [["lstm_1", 0, 1], ...]}`
(tf.keras 2.0-2.3). Keras 3 rebuilds a legacy node as one positional list, which an RNN layer refuses
("expects 1 input(s), but it received 3 input tensors"); its own node form passes
`args=[sequence], kwargs={"initial_state": [...]}`, which is what the lowering fuses as the op's
`initial_h`/`initial_c`. The states may come from another layer (an encoder) or be model inputs.
"""

from __future__ import annotations

from typing import Any

from toolkit.errors import UnsupportedModelError
from toolkit.text import safe_text

RECURRENT_CLASSES = ("LSTM", "GRU", "SimpleRNN", "RNN", "Bidirectional")


def _reference(value: Any) -> bool:
    """A Keras 2 tensor reference `[layer, node, tensor]` (or with a kwargs dict)."""
    return (isinstance(value, list) and len(value) in (3, 4) and isinstance(value[0], str)
            and isinstance(value[1], int) and isinstance(value[2], int))


def _tensor(reference: list) -> dict:
    """A reference in Keras 3's node form. Shape and dtype are placeholders: Keras 3 replaces the tensor
    by the output of the layer its history names (`functional.deserialize_node`)."""
    return {"class_name": "__keras_tensor__",
            "config": {"shape": [], "dtype": "float32", "keras_history": [reference[0], reference[1], reference[2]]}}


def _states(kwargs: dict) -> list[list]:
    """The tensor references a Keras 2 node's kwargs pass as initial_state (one, or a list)."""
    given = kwargs.get("initial_state")
    if given is None:
        return []
    if _reference(given):
        return [given]
    if isinstance(given, list) and all(_reference(item) for item in given):
        return list(given)
    raise UnsupportedModelError(f"Expected initial_state as Keras tensors. Received: {safe_text(repr(given)[:80])}")


def state_nodes(layers: list, source: str) -> list[str]:
    """Each recurrent layer's Keras 2 nodes with initial states, rewritten in place in Keras 3's form;
    returns the names of the layers rewritten."""
    rewritten = []
    for layer in layers:
        if not isinstance(layer, dict) or layer.get("class_name") not in RECURRENT_CLASSES:
            continue
        nodes = layer.get("inbound_nodes")
        if not isinstance(nodes, list):
            continue
        name = str((layer.get("config") or {}).get("name", layer.get("name")))
        for index, node in enumerate(nodes):
            if isinstance(node, list) and node and all(_reference(item) for item in node):
                converted = _node(node, name, source)
                if converted is not None:
                    nodes[index] = converted
                    rewritten.append(name)
        layer.pop("build_config", None)  # lists every tensor of the call: the call itself rebuilds the layer
    return rewritten


def _node(node: list, name: str, source: str) -> dict | None:
    """One Keras 2 node as Keras 3's {"args", "kwargs"}, or None when it passes no initial state."""
    kwargs: dict = {}
    for item in node:
        if len(item) == 4 and isinstance(item[3], dict):
            kwargs.update({key: value for key, value in item[3].items() if value is not None})
    states = [list(item) for item in node[1:]] + _states(kwargs)
    if not states:
        return None
    if kwargs.pop("constants", None) is not None:
        raise UnsupportedModelError(f"Expected a recurrent layer without constants. Received: {safe_text(source)!r} "
                                    f"with layer {safe_text(name)!r} called with constants= (not supported)")
    kwargs.pop("initial_state", None)
    unknown = sorted(kwargs)
    if unknown:
        raise UnsupportedModelError(f"Expected a recurrent call with a sequence and initial states only. Received: "
                                    f"{safe_text(source)!r} with layer {safe_text(name)!r} called with {unknown}")
    return {"args": [_tensor(node[0])], "kwargs": {"initial_state": [_tensor(state) for state in states]}}



def _masked_calls(model: Any) -> list[str]:
    """The recurrent layers called with initial states on a masked sequence and no mask passed."""
    names = []
    for layer in model._flatten_layers(include_self=False):
        if type(layer).__name__ not in RECURRENT_CLASSES:
            continue
        for node in getattr(layer, "_inbound_nodes", []):
            args, kwargs = node.arguments.args, node.arguments.kwargs
            if kwargs.get("initial_state") is not None and kwargs.get("mask") is None and args \
                    and getattr(args[0], "_keras_mask", None) is not None:
                names.append(layer.name)
    return names


def mask_calls_with_initial_states(model: Any) -> tuple[Any, list[str]]:
    """tf.keras applies a masked sequence's mask in a call given initial states (its RNN reads the first
    input's mask); Keras 3 passes a mask only to a call with one tensor argument, so the translation would
    process the padded steps. Such calls are made again with the sequence's mask passed as `mask=`: the
    same layers (and weights) in a model of the same name, as tf.keras computes it. Returns the model and
    the layers whose calls were changed."""
    names = _masked_calls(model)
    if not names:
        return model, []
    import keras

    def call(layer: Any, *args: Any, **kwargs: Any) -> Any:
        if layer.name in names and kwargs.get("initial_state") is not None and kwargs.get("mask") is None:
            kwargs["mask"] = getattr(args[0], "_keras_mask", None)
        return layer(*args, **kwargs)

    return keras.models.clone_model(model, clone_function=lambda layer: layer, call_function=call), names
