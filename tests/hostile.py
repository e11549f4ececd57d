"""Hostile files, built on the spot (no binary blobs): `.keras` archives edited the way an attacker edits a
real one, zip bombs, FIFOs, symlinks to devices, and feeds ONNX Runtime cannot take.

Used by tests/test_limits.py and scripts/fuzz_cli.py. Each builder takes the folder to write into and
returns the path it wrote. `seed_keras` saves a real two-layer Keras model once; the others rewrite its
`config.json` or its weights, so everything Keras would read besides the edit is genuine.
"""

from __future__ import annotations

import json
import os
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np


def seed_keras(folder: Path) -> Path:
    """A real `.keras` file: Input((3, 1)) -> LSTM(2, return_sequences=True) -> LSTM(2), saved by Keras."""
    import keras

    path = folder / "seed.keras"
    if not path.exists():
        x = keras.Input((3, 1), name="input")
        y = keras.layers.LSTM(2, return_sequences=True, name="lstm_1")(x)
        keras.Model(x, keras.layers.LSTM(2, name="lstm_2")(y), name="seed").save(path)
    return path


def seed_embedding_keras(folder: Path) -> Path:
    """A real `.keras` file with an Embedding(10, 4) in front of an LSTM(2)."""
    import keras

    path = folder / "seed_embedding.keras"
    if not path.exists():
        x = keras.Input((3,), name="ids", dtype="int32")
        y = keras.layers.Embedding(10, 4, name="embedding")(x)
        keras.Model(x, keras.layers.LSTM(2, name="lstm")(y), name="seed_embedding").save(path)
    return path


def rewrite(src: Path, dst: Path, replace: dict[str, bytes | None],
            compress: dict[str, int] | None = None) -> Path:
    """Copy the archive `src` to `dst`, with members replaced (bytes) or dropped (None)."""
    compress = compress or {}
    with zipfile.ZipFile(src) as old, zipfile.ZipFile(dst, "w") as new:
        for info in old.infolist():
            data = replace.get(info.filename, old.read(info.filename))
            if data is not None:
                new.writestr(info.filename, data, compress_type=compress.get(info.filename, zipfile.ZIP_STORED))
        for name, data in replace.items():
            if name not in old.namelist() and data is not None:
                new.writestr(name, data, compress_type=compress.get(name, zipfile.ZIP_STORED))
    return dst


def edit_config(src: Path, dst: Path, edit: Callable[[dict], None]) -> Path:
    with zipfile.ZipFile(src) as archive:
        config = json.loads(archive.read("config.json"))
    edit(config)
    return rewrite(src, dst, {"config.json": json.dumps(config).encode()})


def _layers(config: dict) -> list[dict]:
    return config["config"]["layers"]


def _set_time_axis(config: dict, steps: int | float) -> None:
    """Every declared input shape of the seed model gets `steps` on its time axis, as a consistent file would."""
    text = json.dumps(config).replace("[null, 3, 1]", f"[null, {steps}, 1]").replace("[null, 3, 2]", f"[null, {steps}, 2]")
    config.clear()
    config.update(json.loads(text))


def lstm_units(folder: Path, units: int = 4096) -> Path:
    """The issue's 23 KB file: the first LSTM declares `units` (4096: 67 million parameters)."""
    def edit(config: dict) -> None:
        _layers(config)[1]["config"]["units"] = units
    return edit_config(seed_keras(folder), folder / f"lstm_{units}.keras", edit)


def embedding_rows(folder: Path, rows: int = 125_000_000) -> Path:
    """An Embedding declaring `rows` rows of 4 (the issue's 20 KB file: 4.6 GB before it failed)."""
    def edit(config: dict) -> None:
        _layers(config)[1]["config"]["input_dim"] = rows
    return edit_config(seed_embedding_keras(folder), folder / f"embedding_{rows}.keras", edit)


def fixed_time(folder: Path, steps: int | float) -> Path:
    """The seed model with a fixed time axis of `steps` everywhere it is declared."""
    return edit_config(seed_keras(folder), folder / f"time_{steps}.keras", lambda c: _set_time_axis(c, steps))


def zeros_deflated(size: int) -> tuple[bytes, int]:
    """A deflate stream of `size` zero bytes, made a chunk at a time (never `size` bytes in memory)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = bytes(1 << 24)
    parts = []
    left = size
    while left:
        step = min(left, len(chunk))
        parts.append(packer.compress(chunk if step == len(chunk) else chunk[:step]))
        left -= step
    parts.append(packer.flush())
    return b"".join(parts), _crc_of_zeros(size)


def _crc_of_zeros(size: int) -> int:
    crc, chunk, left = 0, bytes(1 << 24), size
    while left:
        step = min(left, len(chunk))
        crc = zlib.crc32(chunk if step == len(chunk) else chunk[:step], crc)
        left -= step
    return crc


def weights_bomb(folder: Path, size: int = 256 << 20) -> Path:
    """The seed model with `model.weights.h5` replaced by a deflated member of `size` zero bytes."""
    dst = folder / f"weights_bomb_{size}.keras"
    src = seed_keras(folder)
    packed, crc = zeros_deflated(size)
    with zipfile.ZipFile(src) as old, zipfile.ZipFile(dst, "w") as new:
        for info in old.infolist():
            if info.filename != "model.weights.h5":
                new.writestr(info.filename, old.read(info.filename))
        info = zipfile.ZipInfo("model.weights.h5", date_time=(2026, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_DEFLATED
        # A raw deflate stream written through a stored-mode handle, then the header fixed to say
        # 'deflated, `size` bytes': what a bomb is, without compressing through zipfile twice.
        info.file_size, info.compress_size, info.CRC = size, len(packed), crc
        _write_raw_member(new, info, packed)
    return dst


def _write_raw_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, payload: bytes) -> None:
    """Append a member whose compressed bytes are `payload` as given (zipfile has no public way)."""
    archive._writecheck(info)  # noqa: SLF001 - test helper building a deliberately malformed archive
    info.header_offset = archive.fp.tell()
    info.flag_bits = 0
    zip64 = info.file_size > zipfile.ZIP64_LIMIT
    archive.fp.write(info.FileHeader(zip64))
    archive.fp.write(payload)
    archive.start_dir = archive.fp.tell()
    archive.filelist.append(info)
    archive.NameToInfo[info.filename] = info
    archive._didModify = True  # noqa: SLF001


def h5_bomb(folder: Path, size: int = 2 << 30) -> Path:
    """The seed model with its first LSTM kernel replaced by an HDF5 dataset declaring `size` bytes that
    stores nothing (chunked, gzip, only its fill value): a 20 KB file whose dataset Keras reads in full
    before it notices the wrong shape (its own guard starts at 4 GiB)."""
    import h5py

    seed = seed_keras(folder)
    weights = folder / f"h5_bomb_{size}.h5"
    weights.write_bytes(zipfile.ZipFile(seed).read("model.weights.h5"))
    with h5py.File(weights, "r+") as h5:
        names: list[str] = []
        h5.visititems(lambda name, item: names.append(name) if isinstance(item, h5py.Dataset) else None)
        kernel = names[0]
        del h5[kernel]
        h5.create_dataset(kernel, shape=(size // 4,), dtype="f4", chunks=(1 << 20,), compression="gzip")
    return rewrite(seed, folder / f"h5_bomb_{size}.keras", {"model.weights.h5": weights.read_bytes()})


def seed_npz_keras(folder: Path) -> Path:
    """The seed model saved with its weights as `model.weights.npz` (Keras 3.15 loads that too)."""
    import keras
    from keras.src.saving import saving_lib

    path = folder / "seed_npz.keras"
    if not path.exists():
        saving_lib.save_model(keras.saving.load_model(seed_keras(folder)), path, weights_format="npz")
    return path


def npz_bomb(folder: Path, declared: int, member: str = "__root__.npy") -> Path:
    """The npz seed with one `.npy` member (`__root__`, which Keras reads unguarded, by default) replaced by a
    header declaring `declared` bytes of float32 followed by 1 KiB of data: Keras' np.load sizes its array
    from the header."""
    import io

    seed = seed_npz_keras(folder)
    with zipfile.ZipFile(seed) as archive:
        inner = zipfile.ZipFile(io.BytesIO(archive.read("model.weights.npz")))
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (declared // 4,)})
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as npz:
        for name in inner.namelist():
            npz.writestr(name, header.getvalue() + bytes(1024) if name == member else inner.read(name))
    return rewrite(seed, folder / f"npz_bomb_{declared}.keras", {"model.weights.npz": buffer.getvalue()})


def einsum_lie(folder: Path, width: int) -> Path:
    """A real EinsumDense -> LSTM model whose config then declares an EinsumDense `width` wide (its kernel
    8 x width): the weights stay the small real ones, so only the config's count can stop Keras."""
    import keras

    path = folder / "einsum.keras"
    if not path.exists():
        x = keras.Input((5, 8), name="x")
        h = keras.layers.EinsumDense("abc,cd->abd", output_shape=(5, 16), name="ein")(x)
        keras.Model(x, keras.layers.LSTM(2, name="lstm")(h)).save(path)

    def edit(config: dict) -> None:
        for layer in _layers(config):
            if layer["class_name"] == "EinsumDense":
                layer["config"]["output_shape"] = [5, width]
    return edit_config(path, folder / f"einsum_{width}.keras", edit)


def big_config(folder: Path, size: int = 200 << 20) -> Path:
    """config.json padded with `size` bytes of JSON whitespace, deflated (the issue's 1 MB file)."""
    src = seed_keras(folder)
    with zipfile.ZipFile(src) as archive:
        text = archive.read("config.json")
    padded = text[:-1] + b" " * size + b"}"
    return rewrite(src, folder / f"config_{size}.keras", {"config.json": padded},
                   compress={"config.json": zipfile.ZIP_DEFLATED})


def many_members(folder: Path, count: int = 5000) -> Path:
    dst = folder / f"members_{count}.keras"
    src = seed_keras(folder)
    rewrite(src, dst, {})
    with zipfile.ZipFile(dst, "a") as archive:
        for index in range(count):
            archive.writestr(f"assets/{index}", b"")
    return dst


def fifo(folder: Path) -> Path:
    path = folder / "fifo.keras"
    if not path.exists():
        os.mkfifo(path)
    return path


def dev_zero(folder: Path) -> Path:
    path = folder / "zero.keras"
    if not path.is_symlink():
        path.symlink_to("/dev/zero")
    return path


def zero_batch_npy(folder: Path) -> Path:
    """The issue's feed: a batch of 0 for case1_sequences.onnx (ORT 1.32 aborts with SIGABRT)."""
    path = folder / "b0.npy"
    np.save(path, np.zeros((0, 3, 1), np.float32))
    return path


# ------------------------------------------------------------------- red team, round 4 (issue 25)


def h5_linked_weights(source: Path, dst: Path, links: int = 4000, kind: str = "soft") -> Path:
    """F4: a Keras 2 `.h5` (a copy of `source`) whose first weighted layer lists `links` more weights, each a
    soft (or hard) link to one 1 MiB gzip dataset of zeros: 863 KB on disk, 4.7 GB read by name."""
    import h5py

    dst.write_bytes(source.read_bytes())
    with h5py.File(dst, "r+") as f:
        weights = f["model_weights"]
        layer = next(name for name in weights.attrs["layer_names"] if len(weights[name].attrs["weight_names"]))
        group = weights[layer]
        blob = group.create_dataset("blob", shape=(1 << 18,), dtype="f4", chunks=(1 << 16,), compression="gzip")
        names = [n.encode() if isinstance(n, str) else bytes(n) for n in group.attrs["weight_names"]]
        for index in range(links):
            group[f"l{index}"] = h5py.SoftLink(blob.name) if kind == "soft" else blob
            names.append(f"l{index}".encode())
        # An attribute is at most 64 KB: Keras 2 splits a long one into `weight_names0`, `weight_names1`...
        del group.attrs["weight_names"]
        for chunk in range(0, len(names), 1000):
            group.attrs[f"weight_names{chunk // 1000}"] = np.array(names[chunk:chunk + 1000], dtype="S")
    return dst


def _nest(group, levels: int):
    for _ in range(levels):
        group = group.create_group("g")
    return group


def h5_deep(source: Path, dst: Path, levels: int = 10_000) -> Path:
    """F5: a Keras 2 `.h5` (a copy of `source`) with `levels` nested groups under `model_weights` (1.5 MB in
    HDF5's compact format): h5py's `visititems` by path took 159-268 s."""
    import h5py

    dst.write_bytes(source.read_bytes())
    with h5py.File(dst, "r+", libver="latest") as f:
        _nest(f["model_weights"].create_group("deep"), levels).create_dataset("x", data=np.zeros(1, np.float32))
    return dst


def keras_deep(folder: Path, levels: int = 6_000) -> Path:
    """F5: the seed `.keras` with `levels` nested groups in its `model.weights.h5` (900 KB): 31-58 s in
    `inspect_keras_file` before."""
    import h5py

    seed = seed_keras(folder)
    weights = folder / f"deep_{levels}.h5"
    weights.write_bytes(zipfile.ZipFile(seed).read("model.weights.h5"))
    with h5py.File(weights, "r+", libver="latest") as h5:
        _nest(h5.create_group("deep"), levels).create_dataset("x", data=np.zeros(1, np.float32))
    return rewrite(seed, folder / f"deep_{levels}.keras", {"model.weights.h5": weights.read_bytes()})


def keras_linked(folder: Path) -> Path:
    """The seed `.keras` whose first LSTM's recurrent kernel is a soft link to its kernel."""
    import h5py

    seed = seed_keras(folder)
    weights = folder / "linked.h5"
    weights.write_bytes(zipfile.ZipFile(seed).read("model.weights.h5"))
    with h5py.File(weights, "r+") as h5:
        del h5["layers/lstm_1/cell/vars/1"]
        h5["layers/lstm_1/cell/vars/1"] = h5py.SoftLink("/layers/lstm_1/cell/vars/0")
    return rewrite(seed, folder / "linked.keras", {"model.weights.h5": weights.read_bytes()})


def fixed_batch(folder: Path, batch: int = 4_000_000) -> Path:
    """F6: `Input(batch_shape=(batch, 4, 4)) -> LSTM(16)` (21 KB): 8.46 GB when the batch escaped the
    per-sample counts."""
    import keras

    path = folder / f"batch_{batch}.keras"
    if not path.exists():
        x = keras.Input(batch_shape=(batch, 4, 4), name="input")
        keras.Model(x, keras.layers.LSTM(16, name="lstm")(x)).save(path)
    return path


def padded_dynamic(folder: Path, pad: int = 3_000_000) -> Path:
    """F7: `Input((None, 1)) -> ZeroPadding1D((0, pad)) -> LSTM(8)` (20 KB): Keras' shapes say `None` after
    the padding, and the parity check ran for minutes."""
    import keras

    path = folder / f"padded_{pad}.keras"
    if not path.exists():
        x = keras.Input((None, 1), name="input")
        padded = keras.layers.ZeroPadding1D((0, pad), name="pad")(x)
        keras.Model(x, keras.layers.LSTM(8, name="lstm")(padded)).save(path)
    return path


SPIN_SCRIPT = """
import sys, tensorflow as tf
class Spin(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec((None, 3, 1), tf.float32, name='x')])
    def serve(self, x):
        i = tf.while_loop(lambda i: i < {steps}, lambda i: i + 1, [tf.constant(0, tf.int64)])[0]
        return {{'y': x * tf.cast(i - i + 1, tf.float32)}}
m = Spin()
tf.saved_model.save(m, sys.argv[1], signatures={{'serving_default': m.serve}})
"""


def spinning_savedmodel(folder: Path, steps: int) -> Path:
    """F8: a `tf.Module` SavedModel whose signature counts to `steps` in an allowlisted `While` before it
    answers (each call spins; the issue's took 80-90 s a call). Made by real TensorFlow in a subprocess."""
    import subprocess
    import sys

    path = folder / f"spin_{steps}"
    if not path.exists():
        subprocess.run([sys.executable, "-c", SPIN_SCRIPT.format(steps=steps), str(path)], check=True,
                       capture_output=True, timeout=300)
    return path
