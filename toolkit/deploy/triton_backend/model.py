"""Triton Python-backend model: ONNX Runtime on the export next to this file (`model.onnx`).

Triton's dynamic batcher hands `execute` several requests at once. Requests whose inputs have the same
shapes past the batch axis (e.g. chunks of one length from many streams) run as one ONNX Runtime call on
their concatenation; the outputs are split back by each request's batch size. A state-io export's states
are ordinary request tensors here: each request carries its stream's states, so requests of different
streams batch together and the server keeps nothing between requests.

Every request is checked before ONNX Runtime sees it (`_problem`): dtype, rank and fixed axes as the
session declares them, no axis of 0 (ONNX Runtime 1.32 aborts the whole stub process on an empty batch
or time axis, and Triton 2.51 then answers HTTP 500 for good), one batch size across the inputs, and the
bounds serve passes as config parameters (values per input, steps of a variable time axis). A request
that fails gets its own one-line error; the others in the batch are served.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument, RuntimeException

# ONNX Runtime's input types, as numpy dtypes (what a checked request must carry).
_ORT_DTYPES = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
               "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int16)": "int16", "tensor(uint16)": "uint16",
               "tensor(int32)": "int32", "tensor(uint32)": "uint32", "tensor(int64)": "int64",
               "tensor(uint64)": "uint64", "tensor(bool)": "bool"}

# What `InferenceSession.run` raises for inputs Triton's checks let through (they are not RuntimeErrors).
_RUN_ERRORS = (Fail, InvalidArgument, RuntimeException, RuntimeError, ValueError)

# The stub (Triton 2.51, from pytriton 0.7) was built against numpy 1: under numpy 2 its
# `Tensor.as_numpy()` and `Tensor(name, array)` misread the array descriptor (measured: outputs of size 0,
# inputs repeating their first element). Tensors then cross by DLPack, which carries no numpy struct and
# is exact; the stub prints a harmless "PyCapsule_GetPointer called with incorrect name" traceback to the
# server log for each output so passed. Under numpy 1 (what pytriton's own requirements install) the
# stub's plain numpy path is used.
_NUMPY_2 = int(np.__version__.split(".")[0]) >= 2


def _from_triton(tensor: Any) -> np.ndarray:
    return np.from_dlpack(tensor) if _NUMPY_2 else tensor.as_numpy()


def _to_triton(name: str, array: np.ndarray) -> Any:
    array = np.ascontiguousarray(array)
    if _NUMPY_2:
        return pb_utils.Tensor.from_dlpack(name, array.__dlpack__())
    return pb_utils.Tensor(name, array)


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        options = ort.SessionOptions()
        threads = config.get("parameters", {}).get("intra_op_threads", {}).get("string_value")
        if threads:
            options.intra_op_num_threads = int(threads)
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.inputs = [entry["name"] for entry in config["input"]]
        self.outputs = [entry["name"] for entry in config["output"]]
        self.specs = {i.name: (np.dtype(_ORT_DTYPES.get(i.type, "V")), [d if isinstance(d, int) else None for d in i.shape])
                      for i in self.session.get_inputs()}
        parameters = config.get("parameters", {})
        self.max_values = int(parameters.get("max_request_values", {}).get("string_value", 1 << 26))
        self.max_steps = int(parameters.get("max_request_steps", {}).get("string_value", 100_000))

    def _problem(self, feed: dict[str, np.ndarray]) -> str | None:
        """Why ONNX Runtime must not see this request (one line, Expected ... Received ...), or None."""
        for name, array in feed.items():
            dtype, shape = self.specs[name]
            where = f"input {name!r}"
            if array.dtype != dtype:
                return f"Expected {where} of dtype {dtype.name}. Received: {array.dtype.name}"
            if array.ndim != len(shape) or any(d is not None and d != a for d, a in zip(shape, array.shape)):
                return f"Expected {where} of shape {shape}. Received: {list(array.shape)}"
            if 0 in array.shape:
                return f"Expected every axis of {where} >= 1. Received: shape {list(array.shape)}"
            if array.size > self.max_values:
                return f"Expected at most {self.max_values} values in {where}. Received: {array.size}"
            if array.ndim >= 3 and shape[1] is None and array.shape[1] > self.max_steps:
                return f"Expected at most {self.max_steps} steps in {where}. Received: {array.shape[1]}"
        batches = {array.shape[0] for name, array in feed.items() if self.specs[name][1][:1] == [None]}
        if len(batches) > 1:
            return f"Expected one batch size across the inputs. Received: {sorted(batches)}"
        return None

    def _feed(self, request: Any) -> dict[str, np.ndarray] | str:
        """The request's inputs as arrays, or why they cannot be used."""
        try:
            feed = {name: _from_triton(pb_utils.get_input_tensor_by_name(request, name)) for name in self.inputs}
        except Exception as exc:  # noqa: BLE001 - a tensor the stub cannot hand over is this request's error
            return f"Expected readable input tensors. Received: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"
        return self._problem(feed) or feed

    def execute(self, requests: list[Any]) -> list[Any]:
        feeds = [self._feed(r) for r in requests]
        responses: list[Any] = [None] * len(requests)
        groups: dict[tuple, list[int]] = defaultdict(list)
        for index, feed in enumerate(feeds):
            if isinstance(feed, str):
                responses[index] = pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(feed))
                continue
            groups[tuple((name, feed[name].shape[1:], feed[name].dtype.str) for name in self.inputs)].append(index)
        for members in groups.values():
            for index, response in zip(members, self._run_group([feeds[i] for i in members])):
                responses[index] = response
        return responses

    def _run_group(self, feeds: list[dict[str, np.ndarray]]) -> list[Any]:
        joined = {name: np.concatenate([f[name] for f in feeds]) for name in self.inputs}
        try:
            results = self.session.run(self.outputs, joined)
        except _RUN_ERRORS as exc:  # this request group fails; the others and the server go on
            error = pb_utils.TritonError(f"ONNX Runtime: {(str(exc).splitlines() or [type(exc).__name__])[0]}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in feeds]
        bounds = np.cumsum([len(f[self.inputs[0]]) for f in feeds])[:-1]
        pieces = [np.split(result, bounds) for result in results]
        return [pb_utils.InferenceResponse(output_tensors=[_to_triton(name, piece[i]) for name, piece in
                                                          zip(self.outputs, pieces)])
                for i in range(len(feeds))]
