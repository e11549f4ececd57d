"""The tolerance policy: the elementwise rule every comparison applies, and `decide`, the one function that
picks an output's tolerance from the user's flags, the graph's ops, the model's compute dtype and the
precision tier. Its one caller is `toolkit.checking.loop.decided_tolerances`, once per command (export,
verify with `--stream`, bench), whose result travels with the run; every measured figure behind a
default is here, next to the default.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from toolkit.errors import InputError


@dataclass(frozen=True)
class Tolerance:
    """Elementwise `|actual - expected| <= atol + rtol * |expected|` (numpy.allclose's rule), and, where
    `scale` is set (a precision tier's), relative damage caught too: the worst error at most `scale` times
    the output's own scale (its largest |expected|), and no sign flipped on a value above that bound. An
    absolute tolerance alone passes any damage to an output whose values are far below it."""

    atol: float
    rtol: float
    scale: float | None = None
    # The float32 rounding measured on this case (`toolkit.checking.rounding`) when it widened `atol`, else None.
    rounding: float | None = None

    def __str__(self) -> str:
        text = f"atol={self.atol:g} rtol={self.rtol:g}"
        text = text if self.scale is None else f"{text} scale={self.scale:g}"
        return text if self.rounding is None else f"{text} (from rounding {self.rounding:.2g})"

    def to_json(self) -> dict[str, float]:
        return {"atol": self.atol, "rtol": self.rtol, **({"scale": self.scale} if self.scale is not None else {}),
                **({"rounding": self.rounding} if self.rounding is not None else {})}


# As tight as tf2onnx's own Keras LSTM tests (tests/test_keras_lstm.py: rtol 1e-5, atol 1e-6).
DEFAULT_TOLERANCE = Tolerance(atol=1e-6, rtol=1e-5)

# Loosened for models holding an ONNX `RNN` op (Keras SimpleRNN), and only when the user set no default.
# Measured (scripts/tolerance_scan.py, ORT 1.32): LSTM and GRU stay within 0.06x and 0.14x of the default
# tolerance up to 64 units and 200 steps, but ORT's RNN kernel reaches 1.0x: against a float64 reference
# ORT's RNN is off by 1.5e-6 where Keras is off by 2.6e-7 (2 x SimpleRNN(3), 11 steps). 10x leaves margin.
RNN_OP_TOLERANCE = Tolerance(atol=1e-5, rtol=1e-4)

# A model computing in float16/bfloat16 (mixed precision): measured 2026-11-28 (Keras 3.15, TensorFlow 2.21
# on CPU, ORT 1.32), 72 models: Dense(16, tanh) -> two LSTM, GRU or SimpleRNN layers of 8, 64 or 256
# units -> Dense(4) -> float32 Activation, 10 or 100 steps, 2 weight seeds, the export's own parity cases.
# The worst error of Keras' run against the float32 export, as max |onnx - keras| / (1 + |keras|), was
# 1.6e-3 under mixed_float16 (float16 keeps 11 significant bits: a relative step of 9.8e-4) and 1.1e-2
# under mixed_bfloat16 (8 bits: 7.8e-3), both from SimpleRNN; LSTM and GRU stayed under 5.2e-4 and
# 4.7e-3. About 3.5x the worst leaves margin for other sizes and still fails a bias off by 0.1
# (tests/test_mixed_precision.py).
LOW_PRECISION_TOLERANCES = {
    "float16": Tolerance(atol=5e-3, rtol=5e-3),
    "bfloat16": Tolerance(atol=4e-2, rtol=4e-2),
}
# The lower the precision, the looser the tolerance: a model's tolerance is its least precise layer's.
_PRECISION_ORDER = ("bfloat16", "float16")

# The tolerance each precision tier is proven at, from measured error against Keras (ORT 1.32, 2026-11-28;
# the figures are max abs). Each is about 2x the worst seen, over the export's own parity cases of every
# builder variant (8 units) and over 128 units on 64 features, 100 steps, inputs uniform(-1, 1), batch 1
# and 32. int8: LSTM 3.5e-3 at 32 x 100 (mean 3.4e-4), LSTM + Dense head 6.6e-3 (the head's
# MatMulInteger quantizes its input too), Bidirectional 5.2e-3, relu LSTM 8.9e-3 (unbounded outputs),
# GRU and SimpleRNN as float32 (not quantized). float16 (weights rounded to 11 bits, then 100 steps of
# recurrence): LSTM 1.7e-4, GRU 2.5e-4, tanh SimpleRNN 1.0e-3, relu SimpleRNN 7.3e-3.
# Each tier also bounds the error relative to each output's own scale (`Tolerance.scale`): an absolute 0.02
# passed an int8 export whose outputs are about 1e-4 with errors over 100% and signs flipped (issue 19).
# Measured over the parity cases of all 27 builder variants (2026-12-06): int8 at most 2.0% of an output's
# scale (lstm_no_bias), float16 0.18% (simple_rnn_relu), no sign flipped; 10% is 5x the worst.
TIER_SCALE = 0.1
INT8_TOLERANCE = Tolerance(atol=2e-2, rtol=1e-2, scale=TIER_SCALE)
FLOAT16_TOLERANCE = Tolerance(atol=1.5e-2, rtol=1e-2, scale=TIER_SCALE)
TIER_TOLERANCES: Mapping[str, Tolerance | None] = {"float32": None, "float16": FLOAT16_TOLERANCE,
                                                    "int8": INT8_TOLERANCE}


def compute_dtype(model: Any) -> str:
    """The least precise compute dtype among a Keras model's layers ("float32" when none is lower); read
    through each layer's `dtype_policy`, with no TensorFlow import."""
    found = {str(getattr(getattr(layer, "dtype_policy", None), "compute_dtype", "float32"))
             for layer in model._flatten_layers(include_self=False)}
    return next((dtype for dtype in _PRECISION_ORDER if dtype in found), "float32")


@dataclass(frozen=True)
class Tolerances:
    """One default tolerance and optional per-output overrides, keyed by output name.

    `default=None` means "not decided yet": `decide` picks it once the graph, the model's compute dtype
    and the tier are known.
    """

    default: Tolerance | None = None
    per_output: Mapping[str, Tolerance] = field(default_factory=dict)
    # Decided by `decide` (the user set no default): an output the user gave no tolerance may then be
    # widened to the float32 rounding measured on its case (`widened`). A user's tolerance is never widened.
    policy: bool = False

    @property
    def base(self) -> Tolerance:
        return self.default or DEFAULT_TOLERANCE

    def for_output(self, name: str) -> Tolerance:
        return self.per_output.get(name, self.base)

    def check_names(self, output_names: Sequence[str]) -> None:
        """Refuse a per-output tolerance for an output the model does not have (a typo passes silently otherwise)."""
        unknown = sorted(set(self.per_output) - set(output_names))
        if unknown:
            raise InputError(
                f"Expected tolerance keys among the model's outputs {list(output_names)}. "
                f"Received unknown key(s): {unknown}"
            )

    @property
    def decided(self) -> bool:
        return self.default is not None

    @classmethod
    def parse(cls, atol: Iterable[str] = (), rtol: Iterable[str] = ()) -> Tolerances:
        """Build from CLI strings: `VALUE` sets the default, `NAME:VALUE` one output (Polygraphy's syntax)."""
        default_atol, default_rtol = DEFAULT_TOLERANCE.atol, DEFAULT_TOLERANCE.rtol
        default_given = False
        overrides: dict[str, dict[str, float]] = {}
        for kind, values in (("atol", atol), ("rtol", rtol)):
            for raw in values:
                name, _, value_text = raw.rpartition(":")
                value = _parse_non_negative(kind, value_text, raw)
                if not name:
                    default_given = True
                    if kind == "atol":
                        default_atol = value
                    else:
                        default_rtol = value
                else:
                    overrides.setdefault(name, {})[kind] = value
        default = Tolerance(atol=default_atol, rtol=default_rtol)
        per_output = {
            name: Tolerance(atol=vals.get("atol", default.atol), rtol=vals.get("rtol", default.rtol))
            for name, vals in overrides.items()
        }
        return cls(default=default if default_given else None, per_output=per_output)



def _parse_non_negative(kind: str, text: str, raw: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value >= 0 and math.isfinite(value)):
        raise InputError(f"Expected --{kind} as VALUE or OUTPUT_NAME:VALUE with a number >= 0. Received: {raw!r}")
    return value


def decide(user: Tolerances, op_counts: Mapping[str, int], tier: str = "float32",
           dtype: str = "float32") -> Tolerances:
    """The tolerances a comparison uses: the user's default when given (per-output ones always kept);
    otherwise the loosest of the ops' default (`RNN_OP_TOLERANCE` for a graph with an `RNN` op), the compute
    dtype's (`LOW_PRECISION_TOLERANCES`: both roundings apply) and the tier's, which keeps its `scale`.
    Deciding again changes nothing."""
    if user.decided:
        return user
    if tier not in TIER_TOLERANCES:
        raise InputError(f"Expected a precision tier among {list(TIER_TOLERANCES)}. Received: {tier!r}")
    found = [RNN_OP_TOLERANCE if op_counts.get("RNN") else DEFAULT_TOLERANCE]
    found += [t for t in (LOW_PRECISION_TOLERANCES.get(dtype), TIER_TOLERANCES[tier]) if t is not None]
    scales = [t.scale for t in found if t.scale is not None]
    return Tolerances(Tolerance(max(t.atol for t in found), max(t.rtol for t in found), max(scales, default=None)),
                      user.per_output, policy=True)


# ------------------------------------------------------------------ float32 rounding on trained weights
#
# A fixed atol cannot tell float32 rounding from damage on real trained weights: a published char-RNN's
# logits reach tens, and two float32 programs (Keras, ONNX Runtime) summing the same products in another
# order differ by 1.8e-5 and 2.1e-5 there, 20x the default atol, while a wrong activation is off by 6e-3
# to 0.78 and a sign flip by twice the value. So the rounding is measured, not guessed: `toolkit.checking.rounding`
# runs the same Keras model in float64 on the same case, and |float32 - float64| is how far float32 alone
# moves this output on this input (it grows with the weights' scale and the sequence's length by itself).
# ONNX Runtime's float32 run is an independent rounding of the same sums, so its distance to Keras' is
# at most about twice that. Measured (scripts/rounding_scan.py, 2026-12-07, ORT 1.32, TF 2.21): over LSTM,
# GRU and SimpleRNN char-RNNs of 128 and 256 units, 50 and 200 steps, logits of 20 to 57, the ratio
# |ort - keras32| / |keras32 - keras64| was 0.81 to 1.36, the errors 3.8e-5 to 8.6e-5 (up to 86x the default
# atol); ROUNDING_FACTOR = 8 is 6x the worst ratio. ROUNDING_CAP bounds the
# widening by the output's own scale (its largest |value|), so no measurement can make damage pass: a
# wrong activation or a sign flip moves an output by far more than 1e-4 of its scale.
ROUNDING_FACTOR = 8.0
ROUNDING_CAP = 1e-4
# A mixed-precision model rounds in float16/bfloat16: its worst measured error against the float32 export
# was 1.6e-3 and 1.1e-2 of (1 + |keras|) (LOW_PRECISION_TOLERANCES above); the caps leave ~5x over that.
ROUNDING_CAPS = {"float32": ROUNDING_CAP, "float16": 1e-2, "bfloat16": 5e-2}


def rounding_cap(dtype: str) -> float:
    """The largest error, as a fraction of an output's scale, that a model computing in `dtype` can owe to
    rounding: the bound on any widening, and past it an error is a defect, not rounding."""
    return ROUNDING_CAPS.get(dtype, ROUNDING_CAP)


def widened(tolerance: Tolerance, rounding: float, scale: float, dtype: str = "float32") -> Tolerance:
    """`tolerance` with its atol raised to ROUNDING_FACTOR x the measured `rounding` of this output on this
    case, at most `rounding_cap(dtype)` x the output's `scale`; unchanged when that is not wider."""
    atol = min(ROUNDING_FACTOR * rounding, rounding_cap(dtype) * scale) if math.isfinite(rounding) else 0.0
    if not atol > tolerance.atol:
        return tolerance
    return Tolerance(float(f"{atol:.2g}"), tolerance.rtol, tolerance.scale, float(f"{rounding:.2g}"))


def looks_like_rounding(max_abs: float, scale: float, dtype: str = "float32") -> bool:
    """Whether an error is small enough against its output's scale to be rounding at all: only then is a
    larger --atol worth offering; anything bigger is a defect to diagnose, not to accept."""
    return math.isfinite(max_abs) and max_abs <= rounding_cap(dtype) * scale
