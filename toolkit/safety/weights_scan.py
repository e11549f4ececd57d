"""What the weights member of a `.keras` archive declares, read from metadata alone (split out of
`toolkit.safety.limits`, which checks the figures against its limits).

Keras 3 saves weights as `model.weights.h5` (HDF5) and also loads `model.weights.npz` (a zip of `.npy`
files, one per layer path plus `__root__`). Either can declare arrays far larger than the bytes it stores
(an HDF5 dataset holding only its fill value, a deflated npy of zeros), and Keras allocates what is
declared before it checks anything; its own guards start at 4 GiB. Here every array is listed with the
bytes and elements it declares and the bytes it stores: HDF5 dataset shapes through h5py, npy headers
through numpy (each header read from the first bytes of its member, never the array).
"""

from __future__ import annotations

import io
import math
import struct
import zipfile
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
from numpy.lib import format as npy_format

WEIGHTS_H5 = "model.weights.h5"
WEIGHTS_NPZ = "model.weights.npz"
WEIGHTS_MEMBERS = (WEIGHTS_H5, WEIGHTS_NPZ)

MAX_DEFLATED_WEIGHTS = 64 << 20
"""Keras stores its weights member uncompressed; a deflated one is inspected in memory up to this size."""

_OPTIMIZER = "optimizer"  # the optimizer's variables: not loaded with compile=False, not parameters


class WeightsReadError(ValueError):
    """The weights member cannot be read as what its name says; `limits` turns it into a refusal."""


@dataclass(frozen=True)
class DeclaredArray:
    """One array of the weights member: what it declares and what it stores."""

    name: str
    declared_bytes: int
    elements: int
    stored_bytes: int
    parameter: bool  # counted among the model's parameters (not an optimizer variable)


class _Window(io.RawIOBase):
    """`length` bytes at `start` of an open file, as a read-only seekable file: a stored member for h5py."""

    def __init__(self, handle: BinaryIO, start: int, length: int):
        super().__init__()
        self._handle, self._start, self._length, self._pos = handle, start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._length}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        count = max(0, min(len(buffer), self._length - self._pos))
        self._handle.seek(self._start + self._pos)
        data = self._handle.read(count)
        buffer[:len(data)] = data
        self._pos += len(data)
        return len(data)


def weights_source(handle: BinaryIO, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> BinaryIO:
    """The member as a seekable file: a window on the archive when stored, its bytes when small and deflated."""
    if info.compress_type == zipfile.ZIP_STORED:
        handle.seek(info.header_offset)
        header = handle.read(30)
        names, extra = struct.unpack("<HH", header[26:30])
        return io.BufferedReader(_Window(handle, info.header_offset + 30 + names + extra, info.file_size))
    if info.file_size > MAX_DEFLATED_WEIGHTS:
        raise WeightsReadError(f"{info.filename} stored uncompressed, as Keras writes it, when over "
                               f"{MAX_DEFLATED_WEIGHTS} bytes|has {info.file_size} bytes compressed")
    return io.BytesIO(archive.read(info.filename))


def h5_arrays(source: BinaryIO, where: str = "model.weights.h5") -> list[DeclaredArray]:
    """Every HDF5 dataset: declared size from its shape and dtype, stored size from its chunks, walked within
    `toolkit.safety.hdf5`'s bounds (depth, object count, ordinary links only, each object once)."""
    import h5py  # Keras' own HDF5 reader; no TensorFlow

    from toolkit.safety.hdf5 import walk_datasets

    with h5py.File(source, "r") as weights:
        found = walk_datasets(weights, where)
    return [DeclaredArray(item.name, item.declared_bytes, item.elements, item.stored_bytes,
                          not item.name.startswith(_OPTIMIZER)) for item in found.values()]


def npz_arrays(source: BinaryIO, max_members: int) -> list[DeclaredArray]:
    """Every `.npy` member of an npz archive (`__root__` included): its header's shape and dtype, and the
    bytes the member stores compressed. Only the header is decompressed (numpy bounds its length)."""
    arrays: list[DeclaredArray] = []
    with zipfile.ZipFile(source) as npz:
        infos = npz.infolist()
        if len(infos) > max_members:
            raise WeightsReadError(f"at most {max_members} arrays in {WEIGHTS_NPZ}|holds {len(infos)}")
        for info in infos:
            with npz.open(info) as member:
                version = npy_format.read_magic(member)
                read_header = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
                shape, _, dtype = read_header(member)
            elements = math.prod(int(dim) for dim in shape)
            declared = max(elements * np.dtype(dtype).itemsize, info.file_size)
            # An object array is a pickle, which Keras' np.load(allow_pickle=False) refuses: no parameters.
            arrays.append(DeclaredArray(info.filename, declared, 0 if np.dtype(dtype).hasobject else elements,
                                        info.compress_size, not info.filename.startswith(_OPTIMIZER)))
    return arrays
