"""onnx.reference's `ReferenceEvaluator`: a second, independent runtime, and why it is no oracle for a model.

It runs in a daemon thread so its deadline holds: numpy cannot be interrupted, but a run past its
deadline is abandoned (the runner refuses every later run) and never keeps the process from exiting.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from toolkit.errors import InputError, RuntimeFailure, overrun
from toolkit.runtimes.base import Runner
from toolkit.runtimes.onnxrt import as_proto
from toolkit.text import first_line

# What onnx.reference's numpy kernels raise for a graph or feed they cannot evaluate.
REFERENCE_ERRORS = (ArithmeticError, LookupError, RuntimeError, TypeError, ValueError)
# Defaults of the activations attribute; onnx's ReferenceEvaluator implements only these.
_DEFAULT_ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}


def reference_oracle_problem(model: onnx.ModelProto) -> str | None:
    """Why onnx.reference is no oracle for this model, or None when it is.

    Its LSTM/GRU/RNN ignore the `activations` and `sequence_lens` inputs (onnx 1.23 marks them unused):
    comparing against it there would blame the export for the evaluator's gap. It has no kernels for
    ONNX Runtime's own ops either (an int8 tier's `com.microsoft` DynamicQuantizeLSTM).
    """
    foreign = sorted({f"{n.domain}.{n.op_type}" for n in model.graph.node if n.domain not in ("", "ai.onnx")})
    if foreign:
        return f"onnx.reference has no kernel for {', '.join(foreign)}"
    for node in model.graph.node:
        if node.op_type not in _DEFAULT_ACTIVATIONS:
            continue
        attrs = {a.name: a for a in node.attribute}
        if "activations" in attrs:
            acts = [s.decode() for s in attrs["activations"].strings]
            per_direction = _DEFAULT_ACTIVATIONS[node.op_type]
            if acts != per_direction * (len(acts) // len(per_direction)):
                return f"onnx.reference ignores the activations attribute ({node.op_type} with {acts})"
        if len(node.input) > 4 and node.input[4]:
            return f"onnx.reference ignores sequence_lens ({node.op_type} of a masked layer)"
    return None


class ReferenceRunner(Runner):
    """onnx.reference.ReferenceEvaluator, refused where it is no oracle."""

    def __init__(self, model: onnx.ModelProto | str | Path, name: str = "reference"):
        from onnx.reference import ReferenceEvaluator

        super().__init__(as_proto(model), name)
        problem = reference_oracle_problem(self.model)
        if problem:
            raise InputError(f"Expected a model onnx.reference can evaluate faithfully. Received: {problem}")
        self.evaluator = ReferenceEvaluator(self.model)
        self.broken = ""

    def _run(self, feeds: dict[str, np.ndarray], timeout: float) -> dict[str, np.ndarray]:
        if self.broken:
            raise RuntimeFailure(f"Expected {self.name} to be free. Received: {self.broken}")
        result: dict[str, Any] = {}

        def evaluate() -> None:
            try:
                result["values"] = self.evaluator.run(None, feeds)
            except REFERENCE_ERRORS as exc:
                result["error"] = exc

        worker = threading.Thread(target=evaluate, daemon=True)
        worker.start()
        worker.join(timeout)
        if worker.is_alive():
            self.broken = f"a run past its {timeout:g} s deadline still computes"
            raise overrun(timeout)
        if "error" in result:
            raise RuntimeFailure(f"Expected a model onnx.reference can run. Received an error: "
                                 f"{first_line(result['error'])}")
        return dict(zip(self.output_names, result["values"]))
