"""The post's lesson, executable: what each flag combination returns, from live Keras and ONNX Runtime runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from toolkit.checking.inputs import post_case
from toolkit.checking.loop import invariant_checks, run_case
from toolkit.errors import RuntimeFailure
from toolkit.export.exporter import export_model
from toolkit.models.builder import StackConfig, build_stack, stack_configs
from toolkit.models.naming import output_origins
from toolkit.runtimes.keras import KerasRunner
from toolkit.runtimes.onnxrt import OnnxRunner
from toolkit.tolerance import Tolerances


@dataclass(frozen=True)
class ExplainedOutput:
    name: str
    shape: tuple[int, ...]
    keras: np.ndarray
    onnx: np.ndarray
    role: str = ""  # sequence, last, state_h, state_c


@dataclass(frozen=True)
class ExplainedCase:
    number: int
    config: StackConfig
    outputs: tuple[ExplainedOutput, ...]
    keras_equalities: tuple[str, ...]
    onnx_equalities: tuple[str, ...]
    all_hold: bool
    model: bytes = b""  # the exported model's bytes (those of exported/caseN_*.onnx), for the lesson page
    file: str = ""  # its file name in exported/


def _equality(check: Any) -> str:
    return f"{check.description}: {'yes' if check else 'NO'} (max_abs {check.max_abs:.2g})"


def explain(base: StackConfig = StackConfig(), keras2: bool = False) -> list[ExplainedCase]:
    """Build, export and run the post's four cases on the post's input. `keras2`: the post's own code
    path, a tf.keras stack saved as `.h5` and exported from that file (`toolkit.pages.keras2_post`)."""
    cases = []
    case = post_case("input")
    for number, config in enumerate(stack_configs(base), start=1):
        if keras2:
            from toolkit.pages.keras2_post import export_post_stack_h5

            result, reference, model = export_post_stack_h5(config)
        else:
            model = build_stack(config)
            result = export_model(model, seed=config.seed, source={"builder": config.to_json()})
            reference = KerasRunner(model)
        # The loop's own run of each side on the post's input: the lesson shows both sides' values.
        run = run_case(reference, {"onnxruntime": OnnxRunner(result.model)}, case)
        expected, actual = run.expected, run.actual["onnxruntime"]
        if isinstance(actual, str):  # ONNX Runtime's own error on the export it just proved
            raise RuntimeFailure(actual)
        names = [o.name for o in result.outputs]
        origins = output_origins(model)
        tol = Tolerances()
        keras_checks = invariant_checks(origins, names, dict(zip(names, expected)), tol)
        onnx_checks = invariant_checks(origins, names, actual, tol)
        cases.append(
            ExplainedCase(
                number=number,
                config=config,
                outputs=tuple(
                    ExplainedOutput(o.name, tuple(k.shape), k, actual[o.name], o.role)
                    for o, k in zip(result.outputs, expected)
                ),
                keras_equalities=tuple(_equality(c) for c in keras_checks),
                onnx_equalities=tuple(_equality(c) for c in onnx_checks),
                all_hold=bool(result.parity) and all(keras_checks) and all(onnx_checks),
                model=result.data,
                file=f"{config.name}.onnx",
            )
        )
    return cases
