"""The runtimes an export is proven in besides ONNX Runtime in Python: ONNX Runtime for JavaScript in
Node (native and WASM) and in headless Chromium, and OpenVINO (f32, and its default bf16 as a tier).

Each is a `Runtime` (name, `problem`, `open`): `problem(model)` says why a model is not valid in that
runtime (None when it is) and `open(path, model)` returns a runner whose `run(feeds)` returns the graph's
outputs by name and whose `close()` stops every process it started. Nothing here imports TensorFlow.
"""

from __future__ import annotations

from toolkit.runtimes import chromium, js, openvino
from toolkit.runtimes.base import Runtime, RunnerBase, RuntimeFailure, valid_everywhere

RUNTIMES: dict[str, Runtime] = {
    "onnxruntime-node": Runtime("onnxruntime-node", valid_everywhere, js.open_node),
    "onnxruntime-web": Runtime("onnxruntime-web", valid_everywhere, js.open_web),
    "chromium": Runtime("chromium", valid_everywhere, chromium.open_chromium),
    "openvino": Runtime("openvino", openvino.problem, openvino.open_f32),
    "openvino-bf16": Runtime("openvino-bf16", openvino.problem, openvino.open_default),
}

__all__ = ["RUNTIMES", "Runtime", "RunnerBase", "RuntimeFailure"]
