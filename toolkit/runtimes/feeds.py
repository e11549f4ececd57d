"""Feeds checked before a runtime sees them: one version of each check for every runner, the verifier and
the CLI (numpy only: no ONNX Runtime, no TensorFlow).

- `check_feed_arrays`: ONNX Runtime 1.32 aborts the whole process (SIGABRT, exit 134) on a batch or time
  axis of 0; object arrays and non-native byte orders reach it as confusing errors; a state of batch 1
  beside an input of batch 2 is broadcast silently. Each is refused with a one-line `InputError`.
- `check_feed_bytes`: a feed over `MAX_FEED_BYTES` (bench's `--batch 1000000 --steps 1000000` was a
  MemoryError traceback) is refused with the bound stated.
- `check_feeds`: feeds against an ONNX file's inputs (names, dtypes, shapes); `load_feeds`: `--input
  NAME=FILE` arrays read from `.npy`/`.npz` files.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from toolkit.errors import InputError
from toolkit.onnxfile.model import BATCH_AXIS, TensorInfo, with_zero_states
from toolkit.safety.files import open_regular_file
from toolkit.text import dtype_text, first_line, safe_text

# The most bytes one input may hold: far above any recurrent model's batch, far below a machine's memory.
MAX_FEED_BYTES = 1 << 30


def check_feed_bytes(name: str, shape: Sequence[int], dtype: np.dtype) -> None:
    """An input of this shape and dtype fits `MAX_FEED_BYTES` (checked before it is allocated)."""
    size = int(np.prod([int(d) for d in shape], dtype=object)) * np.dtype(dtype).itemsize
    if size > MAX_FEED_BYTES:
        raise InputError(f"Expected input {safe_text(name)!r} of at most {MAX_FEED_BYTES >> 30} GiB. Received: shape "
                         f"{tuple(int(d) for d in shape)} {np.dtype(dtype).name}, {size / 2**30:.3g} GiB")


# ----------------------------------------------------------------------------------------------- feeds


def check_feed_dtype(name: str, array: np.ndarray, want: np.dtype) -> None:
    """Refuse an array whose dtype, byte order included, is not the input's."""
    want = np.dtype(want)
    if array.dtype == want:
        return
    if array.dtype.newbyteorder("=") == want.newbyteorder("=") and array.dtype.kind not in "OUSV":
        raise InputError(
            f"Expected input {safe_text(name)!r} of dtype {dtype_text(want.newbyteorder('='))} in this machine's "
            f"byte order. Received: {dtype_text(array.dtype)}; convert with array.astype('{want.newbyteorder('=').str}')"
        )
    raise InputError(f"Expected input {safe_text(name)!r} of dtype {want.name}. Received: dtype {array.dtype.name}")


def check_feed_array(name: str, array: object) -> np.ndarray:
    """One feed: a numeric ndarray in native byte order with no empty axis; returned as is."""
    if not isinstance(array, np.ndarray):
        raise InputError(f"Expected input {safe_text(name)!r} as a numpy array. Received: {type(array).__name__}")
    if array.dtype.hasobject or array.dtype.kind in "OUSVMm":
        raise InputError(f"Expected input {safe_text(name)!r} as a numeric array. Received: dtype "
                         f"{dtype_text(array.dtype)}")
    if not array.dtype.isnative:
        raise InputError(f"Expected input {safe_text(name)!r} in this machine's byte order "
                         f"({dtype_text(array.dtype.newbyteorder('='))}). Received: {dtype_text(array.dtype)}; "
                         f"convert with array.astype('{array.dtype.newbyteorder('=').str}')")
    if 0 in array.shape:
        raise InputError(
            f"Expected input {safe_text(name)!r} with every axis at least 1 (ONNX Runtime aborts the process on an "
            f"empty batch or time axis). Received: shape {array.shape}"
        )
    check_feed_bytes(name, array.shape, array.dtype)
    return array


def check_feed_shape(name: str, array: np.ndarray, shape: Sequence[int | str | None], shape_text: str) -> None:
    """Rank and fixed dims of one feed against the input's declared shape (`shape_text` as the user reads it)."""
    if array.ndim != len(shape):
        raise InputError(f"Expected input {safe_text(name)!r} of rank {len(shape)} with shape {shape_text}. "
                         f"Received: shape {array.shape}")
    for axis, (want, got) in enumerate(zip(shape, array.shape)):
        if isinstance(want, int) and want != got:
            raise InputError(f"Expected input {safe_text(name)!r} with shape {shape_text} (axis {axis} = {want}). "
                             f"Received: shape {array.shape}")


@dataclass(frozen=True)
class BatchCheck:
    """The batch size the feeds agree on, and which inputs carried it."""

    size: int | None
    inputs: tuple[str, ...]


def check_batch(feeds: Mapping[str, np.ndarray], batched: Sequence[str]) -> BatchCheck:
    """Every input in `batched` (those whose axis 0 is the model's batch axis) has the same axis-0 size.

    ONNX Runtime's LSTM broadcasts an initial state of batch 1 over an input of batch 2 without a word,
    which gives numbers for a batch the caller never described.
    """
    sizes = {name: int(feeds[name].shape[0]) for name in batched if name in feeds and feeds[name].ndim >= 1}
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{safe_text(name)!r} batch {size}" for name, size in sizes.items())
        raise InputError(f"Expected the same batch size (axis 0) in every input. Received: {listed}")
    size = next(iter(sizes.values()), None)
    return BatchCheck(size=size, inputs=tuple(sizes))


def check_feed_arrays(feeds: Mapping[str, object], batched: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """All feeds through `check_feed_array`, then `check_batch` over `batched`."""
    checked = {name: check_feed_array(name, array) for name, array in feeds.items()}
    check_batch(checked, batched)
    return checked


def check_input_names(specs: Sequence[str]) -> None:
    """`--input NAME=FILE` given twice for one NAME is refused, not resolved by keeping the last."""
    seen: dict[str, str] = {}
    for spec in specs:
        name, sep, _ = spec.partition("=")
        if not sep:
            continue
        if name in seen:
            raise InputError(f"Expected each input once in --input NAME=FILE. Received: {safe_text(seen[name])!r} "
                             f"and {safe_text(spec)!r}")
        seen[name] = spec


def check_feeds(inputs: Sequence[TensorInfo], optional: Sequence[TensorInfo],
                feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Check names, dtypes, ranks and fixed dims against a model's inputs; every message names the input and
    both sides, so a user's mistake never reaches a runtime as a stack trace."""
    expected_names = [t.name for t in inputs]
    optional_names = [t.name for t in optional]
    missing = [n for n in expected_names if n not in feeds]
    extra = [n for n in feeds if n not in expected_names and n not in optional_names]
    if missing or extra:
        also = f" (optional: {optional_names})" if optional_names else ""
        raise InputError(f"Expected inputs {expected_names}{also}. Received: {list(feeds)}")
    given = tuple(inputs) + tuple(t for t in optional if t.name in feeds)
    checked = {info.name: _check_feed(info, np.asarray(feeds[info.name])) for info in given}
    # ONNX Runtime broadcasts a state of batch 1 over an input of batch 2 without a word.
    check_batch(checked, [t.name for t in given if t.shape and t.shape[0] == BATCH_AXIS])
    return with_zero_states(optional, checked)


def _check_feed(info: TensorInfo, array: np.ndarray) -> np.ndarray:
    """One feed: numeric, native byte order, no empty axis (ONNX Runtime aborts the whole process on a batch
    or time axis of 0), then the input's dtype, rank and fixed dims."""
    array = check_feed_array(info.name, array)
    check_feed_dtype(info.name, array, np.dtype(info.dtype))
    check_feed_shape(info.name, array, info.shape, info.shape_text())
    return array


def _read_arrays(path_text: str) -> np.ndarray | dict[str, np.ndarray]:
    """One `.npy` array, or every array of an `.npz`, read whole from a regular file (a FIFO is refused, not
    waited on) without pickle."""
    what = "an input file (.npy or .npz)"
    with open_regular_file(path_text, what) as handle:
        try:
            loaded = np.load(handle, allow_pickle=False)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:  # not numpy, pickled, truncated
            raise InputError(f"Expected {what}. Received: {safe_text(path_text)!r}, unreadable "
                             f"({type(exc).__name__})") from None
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            return loaded
        with loaded:
            try:
                return {key: loaded[key] for key in loaded.files}
            except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:  # an object array, a bad member
                raise InputError(f"Expected numeric arrays in {safe_text(path_text)!r}. Received: "
                                 f"{safe_text(first_line(exc))}") from None


def load_feeds(specs: Sequence[str], input_names: Sequence[str]) -> dict[str, np.ndarray]:
    """Read `--input` values: `x.npy` for a one-input model, `NAME=x.npy` per input, or one `.npz` with named arrays."""
    check_input_names(specs)
    feeds: dict[str, np.ndarray] = {}
    for spec in specs:
        name, sep, path_text = spec.partition("=")
        if not sep:
            name, path_text = "", spec
        loaded = _read_arrays(path_text)
        if isinstance(loaded, dict):
            feeds.update(loaded)
            continue
        if not name:
            if len(input_names) != 1:
                raise InputError(
                    f"Expected NAME=FILE.npy for each of the inputs {list(input_names)}. Received: {spec!r}"
                )
            name = input_names[0]
        feeds[name] = loaded
    return feeds
