"""Bounds on what a `.keras` file may make lstm-onnx read or allocate, checked before Keras touches it.

A `.keras` file is a zip archive holding `config.json` (the architecture) and `model.weights.h5` (or `.npz`). Keras
allocates every variable the config declares before it reads a single weight, and its own zip-bomb guard
starts at 4 GiB per member, so a 20 KB hostile file declaring `LSTM(4096)` costs 44 s and 2.4 GB before it
fails. This module reads only the archive's central directory and a size-bounded `config.json` (numpy and
the standard library; no Keras, no TensorFlow), counts parameters and per-sample activation sizes from the
config, and refuses anything above `ResourceLimits` with a one-line `Expected ... Received: ...`.

The counting itself is `toolkit.safety.budget`.
"""

from __future__ import annotations

import json
import math
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass
from typing import BinaryIO

from toolkit.errors import ModelLoadError
from toolkit.options import DEFAULT_LIMITS, RATIO_FLOOR_BYTES, ResourceLimits
from toolkit.safety.budget import Budget, count_config
from toolkit.safety.files import open_regular_file
from toolkit.safety.weights_scan import (
    WEIGHTS_H5,
    WEIGHTS_MEMBERS,
    DeclaredArray,
    WeightsReadError,
    h5_arrays,
    npz_arrays,
    weights_source,
)
from toolkit.text import safe_text


@dataclass(frozen=True)
class ArchiveReport:
    """What the inspection found; every figure is within the limits it was checked against."""

    path: str
    members: int
    uncompressed_bytes: int
    config_bytes: int
    layers: int
    params: int
    largest_activation: int
    longest_fixed_time: int | None


def _refuse(path: str, expected: str, received: str) -> ModelLoadError:
    # Member and layer names come from the file: escaped, so they cannot drive the user's terminal.
    return ModelLoadError(safe_text(f"Expected {expected}. Received: {path!r} {received}", limit=1000))


# ------------------------------------------------------------------------------------------- archive


def _directory_size(handle: BinaryIO, size: int, path: str) -> tuple[int, int]:
    """Entries and bytes of the zip central directory, read from its end record before zipfile parses it."""
    tail_length = min(size, 22 + 0xFFFF)
    handle.seek(size - tail_length)
    tail = handle.read(tail_length)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or at + 22 > len(tail):
        raise _refuse(path, "a .keras file (a zip archive)", "has no zip directory")
    entries, directory_bytes = struct.unpack("<HL", tail[at + 10:at + 16])
    locator = at - 20
    if locator >= 0 and tail[locator:locator + 4] == b"PK\x06\x07":  # zip64: the real counts are elsewhere
        offset = struct.unpack("<Q", tail[locator + 8:locator + 16])[0]
        if offset + 56 > size:
            raise _refuse(path, "a .keras file (a zip archive)", "has a broken zip64 directory")
        handle.seek(offset)
        record = handle.read(56)
        if record[:4] != b"PK\x06\x06":
            raise _refuse(path, "a .keras file (a zip archive)", "has a broken zip64 directory")
        entries, directory_bytes = struct.unpack("<QQ", record[32:48])
    handle.seek(0)
    return entries, directory_bytes


def check_members(archive: zipfile.ZipFile, path: str, limits: ResourceLimits) -> int:
    """Bound member count, names, sizes and compression ratios; return the total uncompressed bytes."""
    infos = archive.infolist()
    if len(infos) > limits.max_members:
        raise _refuse(path, f"at most {limits.max_members} archive members", f"holds {len(infos)}")
    names = [info.filename for info in infos]
    if len(set(names)) != len(names):
        twice = sorted({name for name in names if names.count(name) > 1})[:3]
        raise _refuse(path, "each archive member once", f"repeats {twice}")
    total = 0
    for info in infos:
        if info.file_size > limits.max_member_bytes:
            raise _refuse(path, f"archive members of at most {limits.max_member_bytes} bytes (--max-member-bytes)",
                          f"declares {info.filename!r} of {info.file_size} bytes")
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > RATIO_FLOOR_BYTES and ratio > limits.max_ratio:
            raise _refuse(path, f"a compression ratio of at most {limits.max_ratio:g} (a zip bomb otherwise)",
                          f"member {info.filename!r}: {info.file_size} bytes from {info.compress_size} ({ratio:.0f}x)")
        total += info.file_size
    if total > limits.max_total_bytes:
        raise _refuse(path, f"at most {limits.max_total_bytes} uncompressed bytes in all (--max-member-bytes raises it)",
                      f"declares {total}")
    return total


_READ_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, RuntimeError, NotImplementedError, EOFError,
                zlib.error, OSError, ValueError, struct.error)


def read_config(archive: zipfile.ZipFile, path: str, limits: ResourceLimits) -> tuple[dict, int]:
    """`config.json`, read with a size bound whatever the header claims, parsed as a JSON object."""
    if "config.json" not in archive.namelist():
        raise _refuse(path, "a .keras archive holding config.json", "has none")
    try:
        with archive.open("config.json") as member:
            data = member.read(limits.max_config_bytes + 1)
    except _READ_ERRORS as exc:
        raise _refuse(path, "a readable config.json", f"({type(exc).__name__}: {str(exc)[:120]})") from None
    if len(data) > limits.max_config_bytes:
        raise _refuse(path, f"a config.json of at most {limits.max_config_bytes} bytes",
                      "holds more")
    try:
        config = json.loads(data)
    except (ValueError, RecursionError) as exc:  # bad JSON, bad UTF-8, 5000-digit numbers, deep nesting
        raise _refuse(path, "config.json holding JSON", f"({type(exc).__name__}: {str(exc)[:120]})") from None
    if not isinstance(config, dict):
        raise _refuse(path, "config.json holding a JSON object", f"holds a {type(config).__name__}")
    return config, len(data)


def _weights_arrays(handle: BinaryIO, archive: zipfile.ZipFile, name: str, path: str,
                    limits: ResourceLimits) -> list[DeclaredArray]:
    """The arrays the weights member `name` declares (HDF5 datasets or npy headers), refused if unreadable."""
    info = archive.getinfo(name)
    try:
        source = weights_source(handle, archive, info)
        if name == WEIGHTS_H5:
            return h5_arrays(source, f"{path}:{name}")
        # The npz is a zip inside the zip: its directory is bounded before zipfile parses it, as the outer one.
        entries, directory_bytes = _directory_size(source, info.file_size, f"{path}:{name}")
        if entries > limits.max_members or directory_bytes > min(info.file_size, limits.max_members * 1024):
            raise _refuse(path, f"at most {limits.max_members} arrays in {name}, with a directory of at most 1 KiB "
                          "each", f"declares {entries} in {directory_bytes} bytes")
        return npz_arrays(source, limits.max_members)
    except ModelLoadError:  # the bounded HDF5 walk's own refusal (`toolkit.safety.hdf5`)
        raise
    except WeightsReadError as exc:
        expected, _, received = str(exc).partition("|")
        raise _refuse(path, expected, received) from None
    except (OSError, ValueError, KeyError, RuntimeError, TypeError, EOFError, zlib.error, zipfile.BadZipFile,
            zipfile.LargeZipFile, NotImplementedError, struct.error) as exc:
        raise _refuse(path, f"a readable {name}", f"({type(exc).__name__}: {str(exc)[:120]})") from None


@dataclass(frozen=True)
class WeightsReport:
    """What the weights members declare in all: bytes, and elements that are model parameters."""

    declared_bytes: int
    params: int


def check_weights_file(handle: BinaryIO, archive: zipfile.ZipFile, path: str, limits: ResourceLimits) -> WeightsReport:
    """Bytes and parameters the arrays of the weights members declare, read from their metadata alone.

    An array may be compressed (an HDF5 chunk, a deflated npy), or hold only a fill value, while declaring
    any shape; Keras reads it whole when it assigns a variable, and its own guards start at 4 GiB. Refused:
    more than `max_member_bytes` declared in all, more than `max_params` parameters, or an array over 1 MiB
    declaring more than `max_ratio` times what it stores. Every member counts, npz's `__root__` included.
    """
    arrays = [array for name in WEIGHTS_MEMBERS if name in archive.namelist()
              for array in _weights_arrays(handle, archive, name, path, limits)]
    return check_declared_arrays(arrays, path, limits)


def check_declared_arrays(arrays: list[DeclaredArray], path: str, limits: ResourceLimits) -> WeightsReport:
    """Refuse arrays that declare more bytes or parameters than `limits`, or a bomb's ratio; any file format's
    (a `.keras` weights member, a Keras 2 `.h5`, a SavedModel's variables)."""
    declared = sum(array.declared_bytes for array in arrays)
    if declared > limits.max_member_bytes:
        raise _refuse(path, f"weights declaring at most {limits.max_member_bytes} bytes (--max-member-bytes)",
                      f"declares {declared} in {len(arrays)} datasets")
    for array in arrays:
        if array.declared_bytes > RATIO_FLOOR_BYTES and array.declared_bytes > limits.max_ratio * max(array.stored_bytes, 1):
            raise _refuse(path, f"weights stored at a ratio of at most {limits.max_ratio:g} (a bomb otherwise)",
                          f"dataset {array.name!r} declares {array.declared_bytes} bytes and stores {array.stored_bytes}")
    params = sum(array.elements for array in arrays if array.parameter)
    if params > limits.max_params:  # whatever layer kinds the config names: the arrays Keras would assign
        raise _refuse(path, f"at most {limits.max_params} parameters (--max-params)",
                      f"declares {params} in the arrays of its weights")
    return WeightsReport(declared_bytes=declared, params=params)


def inspect_keras_file(path: str | os.PathLike[str], limits: ResourceLimits = DEFAULT_LIMITS) -> ArchiveReport:
    """Check a `.keras` file against `limits` without Keras; raise `ModelLoadError` on the first excess."""
    with open_regular_file(path) as handle:
        return inspect_keras_handle(handle, str(path), limits)


def inspect_keras_handle(handle: BinaryIO, path: str, limits: ResourceLimits = DEFAULT_LIMITS) -> ArchiveReport:
    """Like `inspect_keras_file` on an open file (the one Keras will read next: no swap in between)."""
    size = os.fstat(handle.fileno()).st_size
    entries, directory_bytes = _directory_size(handle, size, path)
    if entries > limits.max_members:
        raise _refuse(path, f"at most {limits.max_members} archive members", f"declares {entries}")
    if directory_bytes > min(size, limits.max_members * 1024):  # names of .keras members are short
        raise _refuse(path, "a zip directory of at most 1 KiB per member", f"declares {directory_bytes} bytes")
    try:
        with zipfile.ZipFile(handle) as archive:
            total = check_members(archive, path, limits)
            config, config_bytes = read_config(archive, path, limits)
            members = len(archive.infolist())
            weights = {info.filename: info.file_size for info in archive.infolist()
                       if info.filename.startswith("model.weights.")}
            budget = count_config(config)
            check_budget(budget, path, limits)
            check_weights_present(budget, weights, path)
            params = max(budget.params, check_weights_file(handle, archive, path, limits).params)
    except ModelLoadError:
        raise
    except _READ_ERRORS as exc:
        raise _refuse(path, "a .keras file (a zip archive)", f"({type(exc).__name__}: {str(exc)[:120]})") from None
    finally:
        handle.seek(0)
    return ArchiveReport(path=path, members=members, uncompressed_bytes=total, config_bytes=config_bytes,
                         layers=budget.layers, params=params, largest_activation=budget.largest_activation,
                         longest_fixed_time=budget.longest_fixed_time)


# ------------------------------------------------------------------------------------------ budgets


def check_budget(budget: Budget, path: str, limits: ResourceLimits) -> None:
    """Refuse a counted budget above `limits`; each message names the flag that raises the limit."""
    if budget.bad_dim_at:
        raise _refuse(path, "every declared axis >= 1 (besides the batch axis)", f"declares {budget.bad_dim_at}")
    if budget.uncounted_at:
        raise _refuse(path, "layer kinds whose parameters lstm-onnx can bound before Keras allocates them",
                      f"declares {budget.uncounted_at}")
    if budget.params > limits.max_params:
        raise _refuse(path, f"at most {limits.max_params} parameters (--max-params)",
                      f"declares {budget.params} in {budget.layers} layers")
    if budget.longest_fixed_time is not None and budget.longest_fixed_time > limits.max_timesteps:
        raise _refuse(path, f"a fixed time axis of at most {limits.max_timesteps} steps (--max-timesteps)",
                      f"declares {budget.longest_fixed_time} at {budget.time_at}")
    if budget.largest_activation > limits.max_activation_elements:
        raise _refuse(path, f"at most {limits.max_activation_elements} values per sample in one layer "
                      "(--max-activation), a fixed batch counted whole",
                      f"declares {budget.largest_activation} at {budget.activation_at}")


MIN_BYTES_PER_PARAM = 0.5
"""The fewest bytes a saved parameter takes (Keras' int4 quantization packs two in a byte)."""


def check_weights_present(budget: Budget, weights: dict[str, int], path: str) -> None:
    """The weights member must be big enough to hold the parameters the config declares.

    Keras allocates and initializes every declared variable before it reads the weights (an orthogonal
    initializer on LSTM(4096) alone is a QR of a 16384 x 4096 matrix), so a 20 KB file declaring 67 million
    parameters costs 44 s and 2.4 GB before Keras notices that their weights are missing. With the
    compression ratio bounded, holding N parameters takes a file of at least N / 2 / `max_ratio` bytes.
    """
    stored = sum(weights.values())
    needed = math.ceil(budget.params * MIN_BYTES_PER_PARAM)
    if budget.params and not weights:
        raise _refuse(path, "a .keras archive holding its weights (model.weights.h5)", "has none")
    if stored < needed:
        raise _refuse(path, f"weights for the {budget.params} parameters the config declares (at least {needed} "
                      "bytes)", f"holds {stored} bytes in {sorted(weights)}")
