"""Consecutive calls of a stateful export, its states carried through its state map, against Keras' own
stateful layers called as many times.

Every input case of the parity check starts from zero states, so an export whose states were frozen as
zeros passes them all: its first call is right, and only the second shows the states were never carried
(issue 20: 442 instead of 3978). So an export with stateful layers is also checked on `CALLS` calls in a
row: Keras keeps its layers' states from one call to the next, ONNX Runtime is fed, on each call, the
states its previous call returned, by the state map in the file's metadata (as deploy code would be).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from toolkit.checking.inputs import CALLS, call_cases, input_cases
from toolkit.checking.loop import compare_with_keras
from toolkit.checking.results import NOTHING_CARRIED, ParityReport
from toolkit.onnxfile import metadata
from toolkit.runtimes.base import Runner
from toolkit.runtimes.keras import StatefulKerasRunner, reset_states
from toolkit.tolerance import Tolerances

__all__ = ["CALLS", "CarryingRunner", "call_cases", "carried_parity", "has_stateful_layers", "with_carried_calls"]


def has_stateful_layers(model: Any) -> bool:
    return any(getattr(layer, "stateful", False) for layer in model._flatten_layers(include_self=False))


class CarryingRunner(Runner):
    """A graph runner fed, on each call after its first, the states its previous call returned (that
    runner checks the feeds)."""

    def __init__(self, runner: Runner, mapping: Mapping[str, str]):
        super().__init__(None, runner.name)
        self.runner, self.mapping = runner, dict(mapping)
        self.carried: dict[str, np.ndarray] = {}

    def _run(self, feeds: dict[str, np.ndarray], timeout: float) -> dict[str, np.ndarray]:
        outputs = self.runner.run({**feeds, **self.carried}, timeout)
        self.carried = {state_in: outputs[state_out] for state_in, state_out in self.mapping.items()}
        return outputs


def carried_parity(keras_model: Any, runner: Runner, expected_names: Sequence[str], tolerances: Tolerances,
                   seed: int = 0, padding_side: str = "right",
                   state_map: Mapping[str, str] | None = None, reference: Any = None) -> ParityReport | None:
    """The consecutive calls' parity, or None for a model without stateful layers. `state_map`: the
    export's (its metadata is written after the check); by default the file's. A file without one (made by
    `--converter tf2onnx`, or before issue 20) is run the same way, carrying nothing: if its states were
    frozen, its second call differs from Keras' and the check fails rather than passing on one call.
    `reference`: the runner of the single calls. The original of a translated Keras 2 model (it has a
    `label`) carries its states from call to call through its `carrying()` runner (tf.keras); one without
    it (a SavedModel's signature zeroes them on every call) leaves the calls to the translation, and each
    call's label says so."""
    if not has_stateful_layers(keras_model):
        return None
    mapping = dict(state_map) if state_map is not None else metadata.read_state_map(runner.model)
    note = "" if mapping else NOTHING_CARRIED
    carrying = getattr(reference, "carrying", None)
    if carrying is None and getattr(reference, "label", None):
        note += f"vs the Keras 3 translation ({getattr(reference, 'label', reference.name)} cannot carry states); "
    cases = input_cases(keras_model, seed, padding_side=padding_side, calls=CALLS, note=note)
    keras = carrying() if carrying is not None else StatefulKerasRunner(keras_model)
    try:
        return compare_with_keras(keras, [CarryingRunner(runner, mapping)], runner.model, expected_names,
                                  tolerances, cases, carried=True)[runner.name]
    finally:
        reset_states(keras_model)  # as the export found them: each case from zero


def with_carried_calls(report: ParityReport, carried: ParityReport | None) -> ParityReport:
    """One report: the independent cases, then the consecutive calls."""
    if carried is None:
        return report
    return dataclasses.replace(report, cases=report.cases + carried.cases)
