"""The export's parity check: the same input cases through Keras and through ONNX Runtime, output by output.

The work is `loop.compare_with_keras` over the cases of `inputs.input_cases`, at the tolerances the
exporter decided once (`loop.decided_tolerances`); this module keeps the signature the exporter calls.
Besides values,
the invariants the post states are checked on the runtime's outputs: a layer's last output equals its
`state_h`, and with `return_sequences` the last step of its sequence does. An export with stateful
layers is also run on consecutive calls, its states carried (`toolkit.checking.carry`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from toolkit.checking.carry import carried_parity, with_carried_calls
from toolkit.checking.inputs import InputCase, input_cases
from toolkit.checking.loop import compare_with_keras
from toolkit.checking.results import ParityReport
from toolkit.runtimes.base import Runner
from toolkit.runtimes.keras import KerasRunner
from toolkit.tolerance import Tolerances


def check_parity(keras_model: Any, runner: Runner, expected_names: Sequence[str],
                 tolerances: Tolerances = Tolerances(), seed: int = 0,
                 cases: Sequence[InputCase] | None = None, padding_side: str = "right",
                 reference: KerasRunner | None = None,
                 state_map: Mapping[str, str] | None = None) -> ParityReport:
    """Compare an ONNX model (in `runner`) with its Keras model on every input case; a stateful one also on
    consecutive calls through `state_map` (by default the one in its metadata). `reference` computes the
    single-call expected outputs instead of `keras_model` (the original of a translated Keras 2 model)."""
    tolerances.check_names(runner.output_names)  # before Keras runs: a typo in a key fails fast
    keras = reference if reference is not None else KerasRunner(keras_model)
    chosen = cases if cases is not None else input_cases(keras_model, seed, padding_side=padding_side)
    report = compare_with_keras(keras, [runner], runner.model, expected_names, tolerances, chosen)[runner.name]
    # A stateful export is also run on consecutive calls, its states carried through its state map.
    return with_carried_calls(report, carried_parity(keras_model, runner, expected_names, tolerances, seed,
                                                     padding_side, state_map, reference))
