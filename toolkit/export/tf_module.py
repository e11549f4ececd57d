"""A SavedModel without Keras metadata (a `tf.Module` with a serving signature): no layer configs to lower,
so tf2onnx converts the signature. lstm-onnx still names the graph by the signature (its input and
output keys, never `Identity_1:0`; dynamic axes `batch` and `time`), says when no fused recurrent op
came out, checks parity against the signature run by TensorFlow, and makes the bytes reproducible.

The graph's ops pass the allowlist (`toolkit.models.keras2.savedmodel.check_graph_ops`) before TensorFlow loads it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from toolkit.runtimes.signature import SignatureSpec

TIME_STEPS = (3, 5, 11)  # a dynamic time axis is checked at several lengths
BATCHES = (1, 4)


def module_cases(spec: SignatureSpec, seed: int) -> list[Any]:
    """Random inputs of the signature's shapes: batch 1 and 4 and several lengths of a dynamic time axis."""
    from toolkit.checking.inputs import InputCase

    rng = np.random.default_rng(seed + 1000)
    cases = []
    for batch, steps in zip(BATCHES * 2, TIME_STEPS + TIME_STEPS[:1]):
        feeds = {}
        for name, shape, dtype in spec.inputs:
            concrete = tuple(batch if i == 0 and d is None else (steps if d is None else d) for i, d in enumerate(shape))
            kind = np.dtype(dtype)
            feeds[name] = (rng.integers(0, 10, size=concrete).astype(kind) if kind.kind in "iu"
                           else rng.uniform(-1, 1, size=concrete).astype(kind))
        cases.append(InputCase(f"random batch {batch}, {steps} steps", feeds))
    return cases
