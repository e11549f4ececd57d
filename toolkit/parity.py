"""The parity check: the same inputs through Keras and through ONNX Runtime, output by output.

Inputs are drawn so that every export is run with a batch size other than the one it was traced with,
and with two sequence lengths when the time axis is dynamic. The post's own input `[0.1, 0.2, 0.3]` is
one of the cases whenever the model takes it. Besides values, the invariants the post states are checked
on ONNX Runtime's outputs: a layer's last output equals its `state_h`, and with `return_sequences` the
last step of its sequence does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from toolkit.builder import SEED_INPUT
from toolkit.compare import (
    ParityReport,
    Tolerances,
    check_equal,
    compare_case,
)
from toolkit.naming import OutputOrigin, output_origins
from toolkit.runner import OnnxRunner, count_ops

# Batch sizes other than 1 catch a batch axis frozen by tracing; 4 also differs from any traced size.
BATCH_SIZES = (1, 4)
# For a dynamic time axis, two lengths that differ from each other and from the post's 3.
VARIABLE_LENGTHS = (5, 11)


@dataclass(frozen=True)
class InputCase:
    label: str
    feeds: Mapping[str, np.ndarray]


def _input_dtype(tensor: Any) -> np.dtype:
    return np.dtype(str(tensor.dtype))


def embedding_vocab(model: Any) -> int:
    sizes = [layer.input_dim for layer in model._flatten_layers(include_self=False) if hasattr(layer, "input_dim")]
    return min(sizes) if sizes else 2


PADDING_SIDES = ("right", "left")


@dataclass(frozen=True)
class Padding:
    """How a model's inputs are masked: the value a padded step holds, for float or for int inputs, and
    on which side of each sample the padding goes (the export's --padding)."""

    float_value: float | None = None  # from Masking(mask_value)
    int_value: int | None = None  # 0, from Embedding(mask_zero=True)
    side: str = "right"

    @property
    def masked(self) -> bool:
        return self.float_value is not None or self.int_value is not None


def padding_of(model: Any, side: str = "right") -> Padding:
    layers = list(model._flatten_layers(include_self=False))
    masking = [layer.mask_value for layer in layers if type(layer).__name__ == "Masking"]
    embedding = any(type(layer).__name__ == "Embedding" and layer.mask_zero for layer in layers)
    return Padding(float(masking[0]) if masking else None, 0 if embedding else None, side)


def pad(array: np.ndarray, value: float | int, rng: np.random.Generator, side: str = "right") -> np.ndarray:
    """Keep a random number of steps per sample (at least 1; the first sample keeps them all) and pad the
    rest with `value`, after the kept steps ("right") or before them ("left", pad_sequences' default)."""
    steps = array.shape[1]
    lengths = rng.integers(1, steps + 1, size=array.shape[0])
    lengths[0] = steps
    if array.shape[0] > 1 and steps > 1:
        lengths[1] = max(1, steps // 2)
    padded = array.copy()
    for i, length in enumerate(lengths):
        if side == "left":
            padded[i, :steps - length] = value
        else:
            padded[i, length:] = value
    return padded


def random_input(dims: Sequence[Any], dtype: Any, batch: int, length: int | None, rng: np.random.Generator,
                 vocab: int = 2, padding: Padding = Padding()) -> np.ndarray:
    """A random input of shape (batch, *dims): a dynamic axis 1 gets `length` steps, other dynamic axes 3.

    Floats are standard normal; ints are token ids below `vocab` (from 1 when id 0 pads). Where the model
    masks, each sample is padded (on `padding.side`) to a random length.
    """
    shape = [batch] + [(length if (axis == 1 and length is not None) else 3) if not isinstance(d, int) else d
                       for axis, d in enumerate(dims, start=1)]
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        low = 1 if padding.int_value is not None else 0
        value = rng.integers(low, max(vocab, low + 1), size=shape).astype(dtype)
        return pad(value, padding.int_value, rng, padding.side) if padding.int_value is not None and len(shape) >= 2 \
            else value
    value = rng.standard_normal(shape).astype(dtype)
    if padding.float_value is not None and len(shape) == 3:
        value = pad(value, padding.float_value, rng, padding.side)
    return value


def make_cases(model: Any, seed: int = 0, padding_side: str = "right") -> list[InputCase]:
    """The input cases for a Keras model: the post's input where it fits, then random batches."""
    rng = np.random.default_rng(seed + 1000)
    inputs = list(model.inputs)
    names = [t.name for t in inputs]
    cases: list[InputCase] = []
    if len(inputs) == 1 and _input_dtype(inputs[0]).kind == "f":
        shape = tuple(inputs[0].shape[1:])
        if len(shape) == 2 and shape[0] in (None, 3) and shape[1] == 1:
            cases.append(InputCase("seed [0.1, 0.2, 0.3]", {names[0]: SEED_INPUT.copy()}))
    variable = any(len(t.shape) >= 2 and t.shape[1] is None for t in inputs)
    lengths = VARIABLE_LENGTHS if variable else (None, None)
    fixed_batch = inputs[0].shape[0]  # a stateful model is built for one batch size
    batches = (fixed_batch, fixed_batch) if fixed_batch is not None else BATCH_SIZES
    vocab = embedding_vocab(model)
    padding = padding_of(model, padding_side)
    for batch, length in zip(batches, lengths):
        feeds = {tensor.name: random_input(tuple(tensor.shape[1:]), _input_dtype(tensor), batch, length, rng,
                                           vocab, padding) for tensor in inputs}
        label = f"random batch {batch}" + (f", {length} steps" if length is not None else "")
        label += f", {padding.side}-padded" if padding.masked else ""
        cases.append(InputCase(label, feeds))
    return cases


def keras_outputs(model: Any, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Run Keras in inference mode and flatten its outputs in model order."""
    import keras

    for layer in model._flatten_layers(include_self=False):
        if getattr(layer, "stateful", False):
            layer.reset_state()  # each case starts from zero states, as the export's defaults do
    args = [feeds[t.name] for t in model.inputs]
    struct = getattr(model, "_inputs_struct", None)
    packed = keras.tree.pack_sequence_as(struct, args) if struct is not None else (args[0] if len(args) == 1 else args)
    outputs = model(packed, training=False)
    return [np.asarray(keras.ops.convert_to_numpy(o)) for o in keras.tree.flatten(outputs)]


def invariant_checks(origins: Sequence[OutputOrigin], names: Sequence[str], actual: Mapping[str, np.ndarray],
                     tolerances: Tolerances) -> list:
    """The post's equalities, on ONNX Runtime's outputs, for every layer whose output and state_h are both outputs."""
    checks = []
    by_layer: dict[tuple[str, int], dict[str, str]] = {}
    for origin, name in zip(origins, names):
        by_layer.setdefault((origin.layer, origin.call), {})[origin.role] = name
    for roles in by_layer.values():
        state_h = roles.get("state_h")
        if state_h is None or state_h not in actual:
            continue
        if "last" in roles and roles["last"] in actual:
            checks.append(check_equal(f"{roles['last']} == {state_h}", actual[roles["last"]], actual[state_h],
                                      tolerances.base))
        if "sequence" in roles and roles["sequence"] in actual:
            checks.append(check_equal(f"{roles['sequence']}[:, -1] == {state_h}", actual[roles["sequence"]][:, -1],
                                      actual[state_h], tolerances.base))
    return checks


def check_parity(keras_model: Any, runner: OnnxRunner, expected_names: Sequence[str],
                 tolerances: Tolerances = Tolerances(), seed: int = 0,
                 cases: Sequence[InputCase] | None = None, padding_side: str = "right") -> ParityReport:
    """Compare an ONNX model (in `runner`) with its Keras model on every input case."""
    tolerances.check_names(runner.output_names)
    tolerances = tolerances.resolve(count_ops(runner.model))
    origins = output_origins(keras_model)
    results = []
    for case in cases if cases is not None else make_cases(keras_model, seed, padding_side):
        expected = keras_outputs(keras_model, case.feeds)
        actual = runner.run(case.feeds)
        invariants = invariant_checks(origins, runner.output_names, actual, tolerances)
        results.append(compare_case(case.label, expected, actual, runner.output_names, tolerances, invariants))
    return ParityReport(tuple(expected_names), tuple(runner.output_names), tuple(results))
