"""Names for every graph output, from the Keras layer it comes from and its role.

A Keras recurrent layer returns `[output, *states]`; tf2onnx calls them `Identity:0`, `Identity_1:0`
and nobody can tell `state_h` from `state_c`. Here each output is `<layer>_<role>`:

| layer                              | roles, in Keras' order                                   |
|------------------------------------|----------------------------------------------------------|
| LSTM                               | `sequence` or `last`, then `state_h`, `state_c`           |
| GRU, SimpleRNN                     | `sequence` or `last`, then `state_h`                      |
| Bidirectional(LSTM)                | `sequence`/`last` (or `forward_*` and `backward_*` when   |
|                                    | merge_mode is None), then `forward_state_h`,             |
|                                    | `forward_state_c`, `backward_state_h`, `backward_state_c` |
| RNN(LSTMCell), RNN(GRUCell), ...   | as the LSTM, GRU, SimpleRNN layer of that cell            |
| RNN(StackedRNNCells([...]))        | `sequence` or `last` (the last cell's), then each cell's |
|                                    | states in stack order: `cell0_state_h`, `cell0_state_c`, |
|                                    | `cell1_state_h`, ...                                      |
| any other layer                    | `output` (`output_<i>` when it returns several)          |

`sequence` is the output at every step (`return_sequences=True`), `last` the output at the last step.
A layer called more than once gets `_call<n>` for its later calls. The names depend only on the layer
names and flags, so they are stable across exports.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from toolkit.errors import InputError, UnsupportedModelError
from toolkit.text import safe_text


@dataclass(frozen=True)
class OutputOrigin:
    """Where one model output comes from: a layer, which call of it, and its role."""

    layer: str
    layer_class: str
    role: str
    call: int = 0

    @property
    def name(self) -> str:
        suffix = f"_call{self.call}" if self.call else ""
        return f"{self.layer}{suffix}_{self.role}"


def is_recurrent(layer: Any) -> bool:
    """True for Keras RNN layers (LSTM, GRU, SimpleRNN, RNN subclasses) and Bidirectional wrappers."""
    import keras

    return isinstance(layer, (keras.layers.RNN, keras.layers.Bidirectional))


def is_bidirectional(layer: Any) -> bool:
    """True for a Keras `Bidirectional` wrapper (its flags live on `layer.forward_layer`)."""
    return type(layer).__name__ == "Bidirectional"


def layer_cells(layer: Any) -> list[Any]:
    """The cells of a recurrent layer in stack order: one, or a `StackedRNNCells`' cells."""
    cell = getattr(layer, "cell", None)
    if type(cell).__name__ == "StackedRNNCells":
        return list(cell.cells)
    return [cell]


def _flat_sizes(cell: Any) -> list[Any]:
    sizes = getattr(cell, "state_size", 1)
    return list(sizes) if isinstance(sizes, (list, tuple)) else [sizes]


def _cell_state_roles(cell: Any) -> list[str]:
    """An LSTM cell's states are h and c; a one-state cell's is h; any other cell's are numbered."""
    cls = type(cell).__name__
    if cls == "LSTMCell":
        return ["state_h", "state_c"]
    count = len(_flat_sizes(cell))
    return ["state_h"] if count == 1 else [f"state_{i}" for i in range(count)]


def state_roles(layer: Any) -> list[str]:
    """The names of one recurrent layer's states, in Keras' order. A `StackedRNNCells` returns each
    cell's states in stack order: `cell<i>_state_h` (and `cell<i>_state_c`)."""
    cls = type(layer).__name__
    if cls == "LSTM":
        return ["state_h", "state_c"]
    if cls in ("GRU", "SimpleRNN"):
        return ["state_h"]
    cells = layer_cells(layer)
    if len(cells) == 1:
        return _cell_state_roles(cells[0])
    return [f"cell{i}_{role}" for i, cell in enumerate(cells) for role in _cell_state_roles(cell)]


def state_units(layer: Any) -> list[int]:
    """The size of each state of a recurrent layer, in the order of `state_roles`."""
    return [int(size) for cell in layer_cells(layer) for size in _flat_sizes(cell)]


def main_count(layer: Any) -> int:
    """How many sequence outputs come before the states: two for a Bidirectional with merge_mode=None."""
    return 2 if is_bidirectional(layer) and layer.merge_mode is None else 1


def recurrent_roles(layer: Any) -> list[str]:
    """The roles of a recurrent layer's outputs, in the order Keras returns them."""
    if is_bidirectional(layer):
        inner = layer.forward_layer
        main = "sequence" if inner.return_sequences else "last"
        roles = [main] if layer.merge_mode is not None else [f"forward_{main}", f"backward_{main}"]
        if layer.return_state:
            states = state_roles(inner)
            roles += [f"forward_{s}" for s in states] + [f"backward_{s}" for s in states]
        return roles
    main = "sequence" if layer.return_sequences else "last"
    return [main] + (state_roles(layer) if layer.return_state else [])


def _origin(tensor: Any) -> tuple[Any, int, int]:
    """The layer, call index and output index that produce a Keras tensor, looking through nested models."""
    import keras

    history = getattr(tensor, "_keras_history", None)
    if history is None:
        raise UnsupportedModelError(f"Expected a built Keras model whose outputs come from layers. Received: output {tensor!r}")
    op, node_index, tensor_index = history
    while isinstance(op, keras.Model) and getattr(op, "outputs", None):
        inner = op.outputs[tensor_index]
        op, node_index, tensor_index = inner._keras_history
    return op, node_index, tensor_index


def call_in_model(model: Any, layer: Any, node_index: int) -> int:
    """Which call of `layer` within this model (Keras numbers calls across every model sharing it:
    the keras.io decoder LSTM is call 1 globally but the only call of the inference decoder model)."""
    functional = getattr(model, "_functional", None) or model
    own = getattr(functional, "_nodes", None)  # Keras keys nodes as f"{id(op)}_ib-{index}" (make_node_key)
    nodes = getattr(layer, "_inbound_nodes", [])
    if own is None or node_index >= len(nodes):
        return node_index
    mine = [i for i in range(len(nodes)) if f"{id(layer)}_ib-{i}" in own]
    return mine.index(node_index) if node_index in mine else node_index


def output_origins(model: Any) -> list[OutputOrigin]:
    """Describe every output of a built Keras model, in the model's output order."""
    origins: list[OutputOrigin] = []
    for tensor in model.outputs:
        layer, node_index, index = _origin(tensor)
        call = call_in_model(model, layer, node_index)
        cls = type(layer).__name__
        if is_recurrent(layer):
            roles = recurrent_roles(layer)
            role = roles[index] if index < len(roles) else f"output_{index}"
        else:
            count = len(layer._inbound_nodes[node_index].output_tensors) if getattr(layer, "_inbound_nodes", None) else 1
            role = "output" if count == 1 else f"output_{index}"
        origins.append(OutputOrigin(layer=layer.name, layer_class=cls, role=role, call=call))
    return origins


def default_output_names(model: Any, origins: Sequence[OutputOrigin] | None = None) -> list[str]:
    """The names an export of `model` gets when the user renames nothing: `<layer>_<role>`, made unique.
    Pass `origins` when they are already known (`output_origins(model)`)."""
    return unique_names([o.name for o in (output_origins(model) if origins is None else origins)])


def unique_names(names: Sequence[str]) -> list[str]:
    """Keep names unique when one tensor is returned twice: the second gets `_1`, and so on."""
    seen: dict[str, int] = {}
    result = []
    for name in names:
        candidate, n = name, seen.get(name, 0)
        while candidate in seen:
            n += 1
            candidate = f"{name}_{n}"
        seen[name] = n
        seen.setdefault(candidate, 0)
        result.append(candidate)
    return result


def apply_overrides(defaults: Sequence[str], overrides: Mapping[str, str] | Sequence[str] | None) -> list[str]:
    """User-chosen names: a mapping from default name to new name, or a full list in output order."""
    if overrides is None:
        return list(defaults)
    if isinstance(overrides, Mapping):
        unknown = sorted(set(overrides) - set(defaults))
        if unknown:
            raise InputError(f"Expected output names to rename among {list(defaults)}. Received: {unknown}")
        names = [overrides.get(n, n) for n in defaults]
    else:
        names = list(overrides)
        if len(names) != len(defaults):
            raise InputError(f"Expected {len(defaults)} output names, one per output {list(defaults)}. Received: {names}")
    # Printable: a newline or an escape in a chosen name broke every table row that printed it.
    bad = [n for n in names if not n or not isinstance(n, str) or safe_text(n, limit=None) != n]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if bad or duplicates:
        raise InputError(f"Expected unique, non-empty output names of printable characters. Received: {names}")
    return names
