"""Every runtime an export can be proven in, named once: its runner, and why a model is not valid in it.

`verify --runtimes`, `export --runtimes`/`--target` and the tests read `RUNTIMES`; each runtime opens
lazily, so a missing Node, browser or package is a one-line error from `open`, never an import failure.
Adding a runtime is one `register(Runtime(...))` line. Nothing here imports TensorFlow.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx

from toolkit.errors import InputError
from toolkit.runtimes import chromium, js, openvino
from toolkit.runtimes.base import Runner
from toolkit.runtimes.onnxrt import ORT_LEVELS, open_level
from toolkit.runtimes.reference import ReferenceRunner, reference_oracle_problem


def valid_everywhere(model: onnx.ModelProto) -> str | None:
    """The `problem` of a runtime with no known defect on our exports."""
    return None


@dataclass(frozen=True)
class Runtime:
    """A kind of runner, as `verify --runtimes` names it."""

    name: str
    problem: Callable[[onnx.ModelProto], str | None]  # why the model is NOT valid in this runtime; None = valid
    open: Callable[[Path, onnx.ModelProto], Runner]  # the .onnx file on disk and its parsed proto
    precision: str = "f32"  # what it computes in: "f32", or a tier's ("bf16")

    @property
    def tier(self) -> bool:
        """A runtime `all` leaves out: not meant to compute Keras' numbers at the f32 tolerances."""
        return self.precision != "f32"


RUNTIMES: dict[str, Runtime] = {}


def register(runtime: Runtime) -> Runtime:
    """Make a runtime available to `verify --runtimes` under its name."""
    RUNTIMES[runtime.name] = runtime
    return runtime


for _name in ORT_LEVELS:  # a wrong rewrite shows up as a difference between levels
    register(Runtime(_name, valid_everywhere, open_level(_name)))
register(Runtime("reference", reference_oracle_problem, lambda path, model: ReferenceRunner(model)))
register(Runtime("onnxruntime-node", js.problem, js.open_node))
register(Runtime("onnxruntime-web", js.problem, js.open_web))  # WASM, under Node
register(Runtime("chromium", js.problem, chromium.open_chromium))  # onnxruntime-web in a headless page
register(Runtime("openvino", openvino.problem, openvino.open_f32))
# OpenVINO's default precision (bf16 on CPUs that have it) is off by 5e-4 to 0.16 on the variant matrix:
# named alone, it is run and reported with its error, never as passing at f32.
register(Runtime("openvino-bf16", openvino.problem_bf16, openvino.open_default, precision="bf16"))


def runtimes_named(names: Sequence[str]) -> list[Runtime]:
    """The registered runtimes of these names (`all`: every one but the tiers); one unknown name refuses
    them all, listing the valid ones."""
    if list(names) == ["all"]:
        names = [n for n, r in RUNTIMES.items() if not r.tier]
    unknown = [n for n in names if n not in RUNTIMES]
    if unknown or not names:
        raise InputError(f"Expected runtimes among {list(RUNTIMES)} or all. Received: {list(names)}")
    return [RUNTIMES[n] for n in names]
