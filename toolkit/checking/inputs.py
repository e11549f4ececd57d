"""Input cases: the feeds every runner is given, drawn once per model.

Inputs are drawn so that every export is run with a batch size other than the one it was traced with,
and with two sequence lengths when the time axis is dynamic. The post's own input `[0.1, 0.2, 0.3]` is
one of the cases whenever the model takes it. Where the model masks, a batch holds masks of every
shape Keras accepts: the first sample unmasked, the second padded on the `--padding` side, then holes
with padding on the other side, an all-masked sample, both ends masked (`mix_masks`). A mask given as
an input (a bool `(batch, time)` input, or any input passed as a layer's `mask=`) gets the same shapes
(`draw_mask`), not random values: a random bool is almost always True. Nothing here imports TensorFlow:
a Keras model is only read through its `inputs` and layers.

This module is the one source of input cases (`input_cases`): for a Keras model (`make_cases`), for a
stateful model's consecutive calls (`call_cases`), for an ONNX file without Keras (`file_cases`: `bench`,
`bench --stream`, `verify --stream`) and for a SavedModel signature (`signature_cases`). Each keeps the
draws it made before this module held it all (its distribution and seed), so exports, their recorded
parity and the tests' figures are unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from toolkit.checking.results import CARRIED
from toolkit.errors import InputError
from toolkit.models.builder import SEED_INPUT
from toolkit.runtimes.feeds import check_feed_bytes
from toolkit.safety.shapes import DRAWN_LENGTHS, DRAWN_OTHER, compute_budget

# Batch sizes other than 1 catch a batch axis frozen by tracing; 4 also differs from any traced size.
BATCH_SIZES = (1, 4)
# Bytes of the largest tensor one case makes the model compute (its largest per-sample activation, times
# the batch, as float64): a larger model gets a smaller second batch, down to 2 at the activation cap. With batch 4
# drawn in float64, an honest model at half the earlier cap peaked at 5.7 GB.
CASE_ACTIVATION_BYTES = 64 << 20
# Bytes of one drawn input of one case, checked before it is drawn: a model's fixed batch is drawn whole
# (a stateful model takes no other), so a `batch_shape` of 4,000,000 drew 256 MB per input and its run
# reached 8.46 GB. The resource limits count a fixed batch whole; this bounds the draw itself too. At
# the default limits an input is at most 2^22 values per call: 32 MiB in float64, 4 of them 128 MiB.
CASE_INPUT_BYTES = 256 << 20
NORMAL_CHUNK = 1 << 20  # values drawn at a time: float64 draws stay small, the array is the model's dtype
# For a dynamic time axis, two lengths that differ from each other and from the post's 3; the resource
# limits are checked at these very lengths (`toolkit.safety.shapes`).
VARIABLE_LENGTHS = DRAWN_LENGTHS
PADDING_SIDES = ("right", "left")
# A stateful model's consecutive calls: the issue asks for at least two; three show a state carried across
# more than one boundary (`toolkit.checking.carry`).
CALLS = 3
# A SavedModel signature (no Keras model to read lengths from): batches 1 and 4, several time lengths.
SIGNATURE_STEPS = (3, 5, 11)
SIGNATURE_BATCHES = (1, 4)
# A signature's inputs, as its child process describes them: name, shape (None: dynamic), numpy dtype.
SignatureInputs = Sequence[tuple[str, tuple[int | None, ...], str]]


@dataclass(frozen=True)
class InputCase:
    """One batch of feeds, keyed by input name, with a label for reports."""

    label: str
    feeds: Mapping[str, np.ndarray]


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


def _input_dtype(tensor: Any) -> np.dtype:
    return np.dtype(str(tensor.dtype))


def embedding_vocab(model: Any) -> int:
    """The smallest Embedding's vocabulary, so that every drawn token id is valid (2 without one)."""
    sizes = [layer.input_dim for layer in model._flatten_layers(include_self=False) if hasattr(layer, "input_dim")]
    return min(sizes) if sizes else 2


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


def mix_masks(array: np.ndarray, value: float | int, rng: np.random.Generator, side: str = "right") -> np.ndarray:
    """Give the samples from the third on the mask shapes a padding side does not: in turn, holes with
    padding on the side other than `side`, every step masked, both ends masked around a hole. The first
    two samples (unmasked, padded on `side`) are left as `pad` made them."""
    steps = array.shape[1]
    mixed = array.copy()
    for i in range(2, array.shape[0]):
        kind = (i - 2) % 3
        masked = np.zeros(steps, bool)
        if kind == 0:
            masked = rng.random(steps) < 0.3
            cut = int(rng.integers(0, steps // 2 + 1))
            other_side = slice(0, cut) if side == "right" else slice(steps - cut, steps)
            masked[other_side] = True
        elif kind == 1:
            masked[:] = True
        else:
            masked[[0, -1, steps // 2]] = True
        mixed[i, masked] = value
    return mixed


def mask_inputs(model: Any) -> set[str]:
    """The model inputs that are masks: every bool (batch, time) input, and any input a layer takes as
    its mask= (a 0/1 mask of another dtype). Their cases hold masks of every shape, not random values."""
    names = {t.name for t in model.inputs if len(t.shape) == 2 and _input_dtype(t).kind == "b"}
    by_id = {id(t): t.name for t in model.inputs if len(t.shape) == 2}
    for layer in model._flatten_layers(include_self=False):
        for node in layer._inbound_nodes:
            given = node.arguments.kwargs.get("mask")
            if id(given) in by_id:
                names.add(by_id[id(given)])
    return names


def draw_mask(batch: int, steps: int, dtype: Any, rng: np.random.Generator, side: str = "right") -> np.ndarray:
    """(batch, steps) masks of every shape, 1 for a kept step: the first sample unmasked, then in turn one
    padded on `side`, one with leading masked steps and holes, one all masked, one masked at both ends."""
    kept = np.ones((batch, steps), bool)
    for i in range(1, batch):
        kind = (i - 1) % 4
        cut = int(rng.integers(1, steps // 2 + 1)) if steps > 1 else 1
        if kind == 0:
            kept[i, slice(steps - cut, steps) if side == "right" else slice(0, cut)] = False
        elif kind == 1:
            kept[i] = rng.random(steps) >= 0.3
            kept[i, :cut] = False  # leading masked steps: Keras starts from the initial states at the first kept one
        elif kind == 2:
            kept[i] = False
        else:
            kept[i, [0, -1]] = False
    return kept.astype(np.dtype(dtype))


def random_input(dims: Sequence[Any], dtype: Any, batch: int, length: int | None, rng: np.random.Generator,
                 vocab: int = 2, padding: Padding = Padding()) -> np.ndarray:
    """A random input of shape (batch, *dims): a dynamic axis 1 gets `length` steps, other dynamic axes 3.

    Floats are standard normal; ints are token ids below `vocab` (from 1 when id 0 pads). Where the model
    masks, each sample is padded (on `padding.side`) to a random length.
    """
    shape = [batch] + [(length if (axis == 1 and length is not None) else DRAWN_OTHER) if not isinstance(d, int) else d
                       for axis, d in enumerate(dims, start=1)]
    dtype = np.dtype(dtype)
    size = math.prod(shape) * dtype.itemsize
    if size > CASE_INPUT_BYTES:
        raise InputError(f"Expected check cases of at most {CASE_INPUT_BYTES >> 20} MiB per input. Received: an input "
                         f"of shape {tuple(shape)} {dtype.name} ({size >> 20} MiB)")
    if dtype.kind in "iu":
        low = 1 if padding.int_value is not None else 0
        value = rng.integers(low, max(vocab, low + 1), size=shape).astype(dtype)
        return pad(value, padding.int_value, rng, padding.side) if padding.int_value is not None and len(shape) >= 2 \
            else value
    value = _standard_normal(rng, shape, dtype)
    if padding.float_value is not None and len(shape) == 3:
        value = pad(value, padding.float_value, rng, padding.side)
    return value


def _standard_normal(rng: np.random.Generator, shape: Sequence[int], dtype: np.dtype) -> np.ndarray:
    """`rng.standard_normal(shape).astype(dtype)`, value for value (the generator fills element by element,
    so chunks give the same stream), without the float64 array of the whole shape."""
    out = np.empty(shape, dtype)
    flat = out.reshape(-1)
    for start in range(0, flat.size, NORMAL_CHUNK):
        stop = min(start + NORMAL_CHUNK, flat.size)
        flat[start:stop] = rng.standard_normal(stop - start)
    return out


def batch_sizes(model: Any) -> tuple[int, int]:
    """`BATCH_SIZES`, the second one smaller where a batch of it would pass `CASE_ACTIVATION_BYTES`."""
    per_sample = max(compute_budget(model).largest_activation, 1) * 8  # float64 outputs in the comparison
    return BATCH_SIZES[0], max(2, min(BATCH_SIZES[1], CASE_ACTIVATION_BYTES // per_sample))


def post_case(input_name: str = "input") -> InputCase:
    """The post's own input, [0.1, 0.2, 0.3] as (1, 3, 1), fed to `input_name`."""
    return InputCase("seed [0.1, 0.2, 0.3]", {input_name: SEED_INPUT.copy()})


def _seed_case(inputs: Sequence[Any]) -> list[InputCase]:
    """The post's input, for a model with one float input of (3 or any) steps of one feature."""
    if len(inputs) != 1 or _input_dtype(inputs[0]).kind != "f":
        return []
    shape = tuple(inputs[0].shape[1:])
    if len(shape) == 2 and shape[0] in (None, 3) and shape[1] == 1:
        return [post_case(inputs[0].name)]
    return []


def make_cases(model: Any, seed: int = 0, padding_side: str = "right") -> list[InputCase]:
    """The input cases for a Keras model: the post's input where it fits, then random batches."""
    rng = np.random.default_rng(seed + 1000)
    inputs = list(model.inputs)
    cases = _seed_case(inputs)
    variable = any(len(t.shape) >= 2 and t.shape[1] is None for t in inputs)
    lengths = VARIABLE_LENGTHS if variable else (None, None)
    fixed_batch = inputs[0].shape[0]  # a stateful model is built for one batch size
    batches = (fixed_batch, fixed_batch) if fixed_batch is not None else batch_sizes(model)
    vocab = embedding_vocab(model)
    padding = padding_of(model, padding_side)
    masks = mask_inputs(model)
    mixing = np.random.default_rng(seed + 2000)  # its own stream: the padded draws stay as they were
    for batch, length in zip(batches, lengths):
        feeds = {tensor.name: random_input(tuple(tensor.shape[1:]), _input_dtype(tensor), batch, length, rng,
                                           vocab, padding) for tensor in inputs}
        if padding.masked:
            feeds = {name: _mixed(value, padding, mixing) for name, value in feeds.items()}
        for name in sorted(masks & feeds.keys()):  # sorted: a set's order differs between processes
            feeds[name] = draw_mask(*feeds[name].shape, feeds[name].dtype, mixing, padding.side)
        label = f"random batch {batch}" + (f", {length} steps" if length is not None else "")
        label += f", {padding.side}-padded" + (" and mixed masks" if batch > 2 else "") if padding.masked or masks else ""
        cases.append(InputCase(label, feeds))
    return cases


def _mixed(value: np.ndarray, padding: Padding, rng: np.random.Generator) -> np.ndarray:
    """`mix_masks` on a masked sequence input (ids (batch, time), or floats (batch, time, features))."""
    if value.dtype.kind in "iu" and padding.int_value is not None and value.ndim >= 2:
        return mix_masks(value, padding.int_value, rng, padding.side)
    if value.dtype.kind == "f" and padding.float_value is not None and value.ndim == 3:
        return mix_masks(value, padding.float_value, rng, padding.side)
    return value


def call_cases(model: Any, seed: int, padding_side: str, calls: int = CALLS, note: str = "") -> list[InputCase]:
    """`calls` random batches of the model's fixed batch size (a stateful model has one), one per call;
    `note` says what is carried, ahead of each batch's label."""
    drawn: list[InputCase] = []
    attempt = 0
    while len(drawn) < calls:
        drawn += [c for c in make_cases(model, seed + 7919 * (attempt + 1), padding_side) if c.label.startswith("random")]
        attempt += 1
    return [InputCase(f"call {i + 1} of {calls}{CARRIED}{note}{case.label}", case.feeds)
            for i, case in enumerate(drawn[:calls])]


def signature_cases(inputs: SignatureInputs, seed: int = 0) -> list[InputCase]:
    """A SavedModel signature's cases: uniform(-1, 1) floats and ids below 10 (no Embedding to read a
    vocabulary from), at batch 1 and 4 and several lengths of a dynamic time axis."""
    rng = np.random.default_rng(seed + 1000)
    cases = []
    for batch, steps in zip(SIGNATURE_BATCHES * 2, SIGNATURE_STEPS + SIGNATURE_STEPS[:1]):
        feeds = {}
        for name, shape, dtype in inputs:
            concrete = tuple(batch if i == 0 and d is None else (steps if d is None else d) for i, d in enumerate(shape))
            kind = np.dtype(dtype)
            feeds[name] = (rng.integers(0, 10, size=concrete).astype(kind) if kind.kind in "iu"
                           else rng.uniform(-1, 1, size=concrete).astype(kind))
        cases.append(InputCase(f"random batch {batch}, {steps} steps", feeds))
    return cases


def file_vocab(model: onnx.ModelProto) -> int:
    """An export's vocabulary without its Keras model: the smallest table an integer input indexes (its
    Embedding, a Gather over an initializer), so drawn ids are valid; 2 without one."""
    tables = {t.name: t.dims[0] for t in model.graph.initializer if t.dims}
    sizes = [tables[n.input[0]] for n in model.graph.node if n.op_type == "Gather" and n.input[0] in tables]
    return int(min(sizes)) if sizes else 2


def file_cases(model: onnx.ModelProto, batch: int, steps: int, seed: int = 0, keras_model: Any = None) -> list[InputCase]:
    """One case for an export's graph inputs at `batch` x `steps` (a fixed axis keeps its size). Without
    Keras (`bench`): uniform(-1, 1) floats and ids below the file's vocabulary, only a batch and a time
    axis dynamic. With `keras_model` (`--stream`'s check against it): drawn as its own cases are, standard
    normal floats and ids below its Embedding's vocabulary."""
    from toolkit.onnxfile.model import graph_inputs

    rng = np.random.default_rng(seed)
    infos = graph_inputs(model)
    if keras_model is not None:
        vocab = embedding_vocab(keras_model)
        feeds = {t.name: random_input(t.shape[1:], t.dtype, batch, steps, rng, vocab) for t in infos}
        return [InputCase(f"random batch {batch}, {steps} steps", feeds)]
    feeds = {}
    for info in infos:
        dims = [_file_dim(info, axis, dim, batch, steps) for axis, dim in enumerate(info.shape)]
        check_feed_bytes(info.name, dims, np.dtype(info.dtype))  # before allocating (and float64 drawing)
        feeds[info.name] = (rng.integers(1, max(2, file_vocab(model)), dims).astype(info.dtype)
                            if info.dtype.startswith("int") else rng.uniform(-1, 1, dims).astype(info.dtype))
    return [InputCase(f"random batch {batch}, {steps} steps", feeds)]


def _file_dim(info: Any, axis: int, dim: int | str, batch: int, steps: int) -> int:
    """One axis of a drawn file input: its fixed size, else `batch` (axis 0) or `steps` (axis 1)."""
    if isinstance(dim, int):
        return dim
    if axis in (0, 1):
        return (batch, steps)[axis]
    raise InputError(f"Expected inputs with a dynamic batch and time axis only. Received: {info.name} "
                     f"{info.shape_text()}")


def input_cases(source: Any, seed: int = 0, *, padding_side: str = "right", calls: int | None = None,
                note: str = "", batch: int = 1, steps: int = 1, keras_model: Any = None) -> list[InputCase]:
    """The input cases every check runs, from one place, for what there is to read shapes from:
    - a Keras model: `make_cases` (the post's input, two random batches); with `calls`, `call_cases`
      (a stateful model's consecutive calls, `note` saying what is carried);
    - an `onnx.ModelProto` (an export without its Keras model): `file_cases` at `batch` x `steps`,
      drawn as `keras_model`'s own cases where one is given;
    - a signature's inputs, a sequence of (name, shape, dtype): `signature_cases`."""
    if isinstance(source, onnx.ModelProto):
        return file_cases(source, batch, steps, seed, keras_model)
    if isinstance(source, (list, tuple)):
        return signature_cases(source, seed)
    if calls is not None:
        return call_cases(source, seed, padding_side, calls, note)
    return make_cases(source, seed, padding_side)
