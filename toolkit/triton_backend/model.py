"""Triton Python-backend model: ONNX Runtime on the export next to this file (`model.onnx`).

Triton's dynamic batcher hands `execute` several requests at once. Requests whose inputs have the same
shapes past the batch axis (e.g. chunks of one length from many streams) run as one ONNX Runtime call on
their concatenation; the outputs are split back by each request's batch size. A state-io export's states
are ordinary request tensors here: each request carries its stream's states, so requests of different
streams batch together and the server keeps nothing between requests.
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

    def execute(self, requests: list[Any]) -> list[Any]:
        feeds = [{name: _from_triton(pb_utils.get_input_tensor_by_name(r, name)) for name in self.inputs}
                 for r in requests]
        groups: dict[tuple, list[int]] = defaultdict(list)
        for index, feed in enumerate(feeds):
            groups[tuple((name, feed[name].shape[1:], feed[name].dtype.str) for name in self.inputs)].append(index)
        responses: list[Any] = [None] * len(requests)
        for members in groups.values():
            for index, response in zip(members, self._run_group([feeds[i] for i in members])):
                responses[index] = response
        return responses

    def _run_group(self, feeds: list[dict[str, np.ndarray]]) -> list[Any]:
        joined = {name: np.concatenate([f[name] for f in feeds]) for name in self.inputs}
        try:
            results = self.session.run(self.outputs, joined)
        except _RUN_ERRORS as exc:  # this request group fails; the others and the server go on
            error = pb_utils.TritonError(f"ONNX Runtime: {str(exc).splitlines()[0]}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in feeds]
        bounds = np.cumsum([len(f[self.inputs[0]]) for f in feeds])[:-1]
        pieces = [np.split(result, bounds) for result in results]
        return [pb_utils.InferenceResponse(output_tensors=[_to_triton(name, piece[i]) for name, piece in
                                                          zip(self.outputs, pieces)])
                for i in range(len(feeds))]
