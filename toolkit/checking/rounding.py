"""Float32 rounding, measured: the same Keras model run in float64 on the same case.

`|keras_float32 - keras_float64|` per output is how far float32 arithmetic alone moves that output on
that input: large logits and long sequences make it larger by themselves, so a tolerance built on it is
scale- and length-aware without a guess (`toolkit.tolerance.widened` turns it into an atol, capped by the
output's scale so damage still fails). The float64 twin is the model rebuilt from its own config with
every floating dtype policy set to float64 and its weights cast, so it computes the same function.

It is measured only for a case where an output failed the policy tolerance (a passing case needs no
wider one), and only when the user set no tolerance. TensorFlow and Keras are imported inside the
functions: nothing here runs for `run` or `inspect`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from toolkit.text import first_line, safe_text

_FLOAT_NAMES = {"float16", "bfloat16", "float32", "float64", "mixed_float16", "mixed_bfloat16"}


def float64_config(config: Any) -> Any:
    """A model config with every floating dtype (a plain name or a `DTypePolicy`) set to float64; integer
    and bool dtypes (token ids, masks) kept."""
    if isinstance(config, list):
        return [float64_config(item) for item in config]
    if not isinstance(config, dict):
        return config
    out = {key: float64_config(value) for key, value in config.items()}
    dtype = out.get("dtype")
    if isinstance(dtype, str) and dtype in _FLOAT_NAMES:
        out["dtype"] = "float64"
    elif isinstance(dtype, dict) and "DTypePolicy" in str(dtype.get("class_name", "")):
        inner = dtype.get("config")
        if isinstance(inner, dict) and inner.get("name") in _FLOAT_NAMES:
            out["dtype"] = {**copy.deepcopy(dtype), "config": {**inner, "name": "float64"}}
    return out


class RoundingProbe:
    """Measures an output's float32 rounding on one case against the model's float64 twin. The twin is
    built on first use; a model that cannot have one (a subclassed model, a layer Keras cannot rebuild in
    float64) gives `None` for every case, with `reason` saying why, and keeps the policy tolerance."""

    def __init__(self, model: Any, names: Sequence[str], dtype: str = "float32"):
        self.model = model
        self.names = list(names)
        self.dtype = dtype  # the model's compute dtype: what bounds the widening (`tolerance.rounding_cap`)
        self.reason = ""
        self._twin: Any = None
        self._tried = False

    def twin(self) -> Any:
        if not self._tried:
            self._tried = True
            try:
                self._twin = _build_twin(self.model)
            except Exception as exc:  # noqa: BLE001 -- any failure to rebuild means "no measurement", said in `reason`
                self.reason = f"no float64 twin of {safe_text(self.model.name)!r}: {type(exc).__name__}: {first_line(exc)}"
        return self._twin

    def measure(self, feeds: Mapping[str, np.ndarray]) -> dict[str, float] | None:
        """Per output name, max |float32 - float64| of the model's outputs on `feeds`; None without a twin."""
        from toolkit.runtimes.keras import keras_outputs

        twin = self.twin()
        if twin is None:
            return None
        wide = {name: value.astype(np.float64) if value.dtype.kind == "f" else value for name, value in feeds.items()}
        try:
            narrow_out = keras_outputs(self._narrow(), feeds, reset=not self.carries)
            wide_out = keras_outputs(twin, wide, reset=not self.carries)
        except Exception as exc:  # noqa: BLE001 -- the reference itself already ran; a twin failing is only "no measurement"
            self.reason = f"the float64 twin failed: {type(exc).__name__}: {first_line(exc)}"
            self._twin = None
            return None
        return {name: _max_diff(a, b) for name, a, b in zip(self.names, narrow_out, wide_out)}

    carries = False  # each case from zero states: the model itself can run it

    def _narrow(self) -> Any:
        return self.model


class CarriedRoundingProbe(RoundingProbe):
    """The rounding of a stateful model's consecutive calls (`toolkit.checking.carry`): a float32 copy and
    the float64 twin carry their states from call to call as the reference does, so every call must be
    measured, in order. Its own float32 copy: the reference's model carries the reference's states, which a
    measurement must not move."""

    carries = True

    def __init__(self, model: Any, names: Sequence[str], dtype: str = "float32"):
        super().__init__(model, names, dtype)
        self._copy: Any = None

    def twin(self) -> Any:
        if not self._tried:
            twin = super().twin()
            if twin is not None:
                from toolkit.runtimes.keras import reset_states

                self._copy = type(self.model).from_config(self.model.get_config())
                self._copy.set_weights(self.model.get_weights())
                reset_states(self._copy)
                reset_states(twin)
        return self._twin

    def _narrow(self) -> Any:
        return self._copy


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a64.shape != b64.shape or not a64.size:
        return 0.0
    finite = np.isfinite(a64) & np.isfinite(b64)
    return float(np.abs(a64[finite] - b64[finite]).max()) if finite.any() else 0.0


def _build_twin(model: Any) -> Any:
    """The model rebuilt from its config in float64, with its weights cast: the same function, computed
    with 53-bit instead of 24-bit significands."""
    config = float64_config(model.get_config())
    twin = type(model).from_config(config)
    twin.set_weights([w.astype(np.float64) if w.dtype.kind == "f" else w for w in model.get_weights()])
    return twin
