"""A SavedModel without Keras metadata (a `tf.Module` with a serving signature): no layer configs to lower,
so tf2onnx converts the signature. lstm-onnx still names the graph by the signature (its input and
output keys, never `Identity_1:0`; dynamic axes `batch` and `time`), says when no fused recurrent op
came out, checks parity against the signature run by TensorFlow (on `toolkit.checking.inputs.signature_cases`),
and makes the bytes reproducible.

The graph's ops pass the allowlist (`toolkit.models.keras2.savedmodel.check_graph_ops`) before TensorFlow loads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.errors import UnsupportedModelError
from toolkit.text import safe_text


@dataclass(frozen=True)
class SignatureSpec:
    inputs: list[tuple[str, tuple[int | None, ...], str]]  # name, shape, numpy dtype
    outputs: list[str]  # the signature's output keys, in tf.nest's (sorted) order
    output_shapes: dict[str, tuple[int | None, ...]]


class SignatureRunner:
    """The serving signature, run in its bounded child process, as a parity reference keyed by output name."""

    def __init__(self, child: Any, spec: SignatureSpec, name: str = "savedmodel-signature"):
        self.child, self.spec, self.name = child, spec, name
        self.output_names = list(spec.outputs)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = self.child.run({name: feeds[name] for name, _, _ in self.spec.inputs})
        return {key: result[key] for key in self.spec.outputs}


def signature_spec(spec: dict, folder: Path) -> SignatureSpec:
    """The child's description of the signature, refused unless its inputs and outputs are named."""
    if not spec.get("inputs") or not spec.get("outputs"):
        raise UnsupportedModelError(f"Expected a serving signature with named inputs and outputs. Received: "
                                    f"{safe_text(str(folder))!r} with inputs {spec.get('inputs')} and outputs "
                                    f"{spec.get('outputs')}")
    inputs = [(str(name), tuple(shape), str(dtype)) for name, shape, dtype in spec["inputs"]]
    shapes = {str(k): tuple(v) for k, v in spec.get("output_shapes", {}).items()}
    return SignatureSpec(inputs, [str(o) for o in spec["outputs"]], shapes)
