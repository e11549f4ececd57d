"""A SavedModel's `serving_default` signature as a runner: what the bounded child says the signature takes
and gives (`SignatureSpec`), and `SignatureRunner`, the signature run by TensorFlow in that child
(`toolkit.runtimes.keras2_child.SignatureChild`) behind the runner contract.

A `tf.Module` SavedModel has no Keras layers, so its export's parity reference is the signature itself:
its feeds are checked against the signature's inputs like any runner's (names, dtypes, ranks, fixed dims,
one batch size), and `close` stops the child. Its deadline is the child's own: a call is stopped past
`CALL_SECONDS`, and every call together past the child's whole deadline, with one line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.errors import InputError, UnsupportedModelError
from toolkit.onnxfile.model import BATCH_AXIS, TensorInfo
from toolkit.runtimes.base import Runner
from toolkit.text import safe_text


@dataclass(frozen=True)
class SignatureSpec:
    inputs: list[tuple[str, tuple[int | None, ...], str]]  # name, shape, numpy dtype
    outputs: list[str]  # the signature's output keys, in tf.nest's (sorted) order
    output_shapes: dict[str, tuple[int | None, ...]]

    def input_infos(self) -> tuple[TensorInfo, ...]:
        """The inputs as a graph's inputs are described: a dynamic axis 0 is the batch every input shares
        (as the converted graph names it), other dynamic axes any size."""
        return tuple(TensorInfo(name, dtype, tuple(BATCH_AXIS if axis == 0 and dim is None else dim
                                                   for axis, dim in enumerate(shape)))
                     for name, shape, dtype in self.inputs)


def signature_spec(spec: dict, folder: Path) -> SignatureSpec:
    """The child's description of the signature, refused unless its inputs and outputs are named."""
    if not spec.get("inputs") or not spec.get("outputs"):
        raise UnsupportedModelError(f"Expected a serving signature with named inputs and outputs. Received: "
                                    f"{safe_text(str(folder))!r} with inputs {spec.get('inputs')} and outputs "
                                    f"{spec.get('outputs')}")
    inputs = [(str(name), tuple(shape), str(dtype)) for name, shape, dtype in spec["inputs"]]
    shapes = {str(k): tuple(v) for k, v in spec.get("output_shapes", {}).items()}
    return SignatureSpec(inputs, [str(o) for o in spec["outputs"]], shapes)


def signature_outputs(child: Any, feeds: Mapping[str, np.ndarray], inputs: Sequence[str],
                      keys: Sequence[str]) -> list[np.ndarray]:
    """One run of the signature in `child` on the `inputs` among `feeds`: the outputs under `keys`, in that
    order; a signature that does not give them all is refused in one line."""
    result = child.run({name: feeds[name] for name in inputs if name in feeds})
    missing = [key for key in keys if key not in result]
    if missing:
        raise InputError(f"Expected the signature's outputs {list(keys)}. Received: {sorted(result)}")
    return [result[key] for key in keys]


class SignatureRunner(Runner):
    """The serving signature, run in its bounded child process, keyed by the signature's output keys: the
    parity reference of a `tf.Module` SavedModel's export. The runner owns the child from now on: `close`
    stops it (closing the child twice is harmless)."""

    def __init__(self, child: Any, spec: SignatureSpec, name: str = "savedmodel-signature"):
        super().__init__(None, name)
        self.child, self.spec = child, spec
        self.inputs = spec.input_infos()
        self.checks_feeds = True  # against the signature's inputs: there is no ONNX model to read them from
        self.output_names = list(spec.outputs)

    def _run(self, feeds: dict[str, np.ndarray], timeout: float) -> dict[str, np.ndarray]:
        # `timeout` is not the child's to take: its own per-call and whole-life deadlines stop a run.
        names = [name for name, _, _ in self.spec.inputs]
        return dict(zip(self.output_names, signature_outputs(self.child, feeds, names, self.output_names)))

    def _stop(self) -> None:
        child = getattr(self, "child", None)
        if child is not None:
            child.close()
