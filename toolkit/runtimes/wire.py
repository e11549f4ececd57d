"""The one wire form of tensors between lstm-onnx and its child runtimes: the Node harness and the Chromium
page (`js/protocol.mjs` reads and writes the same form), the OpenVINO child and a SavedModel's signature
child (`keras2_child`). The messages themselves travel in `toolkit.process`'s framing (a JSON line, and raw
bytes after it where the line says so).

A tensor is the JSON object `{name, dtype, shape, data}`, `data` the base64 of the array's little-endian
bytes. A run's request is `{feeds: [tensor...]}`, its answer `{outputs: [tensor...]}` in graph order, or
`{error: "one line"}`.

Why base64 in JSON and not raw bytes after the line: the page speaks JSON over HTTP and the harness JSON
lines, and the cost stays small beside a run. Measured (encode, JSON, decode; one float32 array; 2 shared
cores): 0.8 MB 5.5 ms (an `.npz`, the signature child's earlier form: 0.7 ms), 65 MB 0.79 s (`.npz`
0.11 s); base64 carries a third more bytes.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence

import numpy as np

from toolkit.errors import InputError, RuntimeFailure
from toolkit.text import first_line

# dtypes both sides can carry; ONNX Runtime's JavaScript API names them as numpy does (float16 as uint16 bits).
WIRE_DTYPES = ("float32", "float64", "float16", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
               "bool")


def encode_tensor(name: str, array: np.ndarray) -> dict:
    array = np.asarray(array)
    if array.dtype.name not in WIRE_DTYPES:
        raise InputError(f"Expected input {name!r} of a dtype among {list(WIRE_DTYPES)}. Received: {array.dtype.name}")
    little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    return {"name": name, "dtype": array.dtype.name, "shape": list(array.shape),
            "data": base64.b64encode(little.tobytes()).decode("ascii")}


def decode_tensor(spec: Mapping) -> np.ndarray:
    dtype = np.dtype(spec["dtype"]).newbyteorder("<")
    flat = np.frombuffer(base64.b64decode(spec["data"]), dtype=dtype)
    return flat.astype(dtype.newbyteorder("="), copy=True).reshape(spec["shape"])


def encode_feeds(feeds: Mapping[str, np.ndarray]) -> dict:
    return {"feeds": [encode_tensor(name, value) for name, value in feeds.items()]}


def decode_outputs(answer: Mapping) -> dict[str, np.ndarray]:
    return {spec["name"]: decode_tensor(spec) for spec in answer["outputs"]}


def decode_answer(answer: Mapping, runtime: str, expected: Sequence[str]) -> dict[str, np.ndarray]:
    """The outputs of one run, in graph order, or the runtime's own error as a one-line `RuntimeFailure`."""
    if "error" in answer:
        raise RuntimeFailure(f"Expected a run in {runtime}. Received its error: {first_line(answer['error'])}")
    outputs = decode_outputs(answer)
    if list(outputs) != list(expected):
        raise RuntimeFailure(f"Expected outputs {list(expected)} from {runtime}. Received: {list(outputs)}")
    return outputs
