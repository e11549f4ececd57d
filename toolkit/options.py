"""What an export is asked to do, as one value: `ExportOptions`, checked once, passed whole.

The library (`export_model`, `export_keras_model`, `export_stacks`) and the CLI read the defaults and
choice lists from here. This module imports no TensorFlow, Keras or tf2onnx, so `lstm-onnx --help`
stays light. Part of the value is recorded in every export's metadata (`lstm_onnx.options`, see
`toolkit.metadata`): `to_json` writes exactly that record and `from_json` reads it back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from toolkit.errors import InputError
from toolkit.limits import DEFAULT_LIMITS, ResourceLimits
from toolkit.tolerance import Tolerances

# Opset 17 is the newest that ONNX Runtime has run since 1.13 (Oct 2022), and its LSTM is unchanged since 14.
DEFAULT_OPSET = 17
# tf2onnx 1.17 writes opsets up to 18 (tf2onnx.constants.OPSET_TO_IR_VERSION); below 14 its LSTM
# rewriter output is not what we test.
MIN_OPSET = 14
MAX_OPSET = 18
CONVERTERS = ("lstm-onnx", "tf2onnx")
# --padding: accepted and recorded (so an export's metadata stays as it was), but any mask is exact
# without it (toolkit/lowering/masks.py); it only picks the side of the export's own check batches.
PADDING_SIDES = ("right", "left")
# Precision tiers (see `toolkit.tiers`, which holds their transforms and measured tolerances).
TIERS = ("float32", "float16", "int8")
DEFAULT_TIER = "float32"

# The options that change the graph beyond its opset: what `lstm_onnx.options` records, in this order.
# `tier` is recorded only when it is not the default, so float32 exports keep their bytes.
RECORDED = ("converter", "propagate_nan", "state_io", "padding", "tier")

OutputNames = Mapping[str, str] | Sequence[str] | None


def check_opset(opset: Any) -> int:
    if not isinstance(opset, int) or isinstance(opset, bool) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise InputError(f"Expected --opset between {MIN_OPSET} and {MAX_OPSET}. Received: {opset!r}")
    return opset


@dataclass(frozen=True)
class ExportOptions:
    """Every choice of an export. `output_names` renames outputs (default name -> new name, or a full
    list in output order); `tolerances` may name outputs by their final names."""

    opset: int = DEFAULT_OPSET
    converter: str = "lstm-onnx"  # or "tf2onnx": the whole model through tf2onnx, as a user would without us
    propagate_nan: bool = False  # NaN inputs propagate as in Keras (ONNX Runtime's fused ops drop them)
    state_io: bool = False  # initial-state inputs and final-state outputs on every recurrent layer
    padding: str = "right"  # the padding side of the check batches only: no longer changes the graph
    require_fused: bool = False  # refuse a model whose recurrent layers are not fused ONNX ops
    tier: str = DEFAULT_TIER  # precision tier: float32, float16 (weights stored half) or int8 (dynamic quantization)
    output_names: OutputNames = None
    tolerances: Tolerances = field(default_factory=Tolerances)
    # Runtimes the export must be valid in (`verify --runtimes` names, or "all"): an export one of them
    # is known to compute wrong (OpenVINO and a masked layer, e.g.) is refused before anything is written.
    targets: tuple[str, ...] = ()
    # Runtimes each export is proven in against Keras before it is written (`export --runtimes`; not recorded).
    runtimes: tuple[str, ...] = ()
    limits: ResourceLimits = DEFAULT_LIMITS  # what a model file or a built stack may declare (toolkit.limits)

    def __post_init__(self) -> None:
        check_opset(self.opset)
        if self.padding not in PADDING_SIDES:
            raise InputError(f"Expected padding in {list(PADDING_SIDES)}. Received: {self.padding!r}")
        if self.converter not in CONVERTERS:
            raise InputError(f"Expected converter in {list(CONVERTERS)}. Received: {self.converter!r}")
        if self.tier not in TIERS:
            raise InputError(f"Expected a precision tier among {list(TIERS)}. Received: {self.tier!r}")
        if self.converter == "tf2onnx" and self.state_io:
            raise InputError("Expected --converter lstm-onnx with --state-io. Received: --converter tf2onnx")
        for name in ("propagate_nan", "state_io", "require_fused"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"Expected {name} True or False. Received: {name}={getattr(self, name)!r}")
        for name in ("targets", "runtimes"):
            value = getattr(self, name)
            if not isinstance(value, tuple) or not all(isinstance(t, str) for t in value):
                raise InputError(f"Expected {name} as a tuple of runtime names. Received: {name}={value!r}")
        if not isinstance(self.limits, ResourceLimits):
            raise InputError(f"Expected limits as a ResourceLimits. Received: {type(self.limits).__name__}")
        if not isinstance(self.tolerances, Tolerances):
            raise InputError(f"Expected tolerances as a Tolerances. Received: {type(self.tolerances).__name__}")

    def replace(self, **changes: Any) -> ExportOptions:
        """A copy with some options changed (checked again); an unknown option is an `InputError`."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            known = [f.name for f in dataclasses.fields(self)]
            raise InputError(f"Expected export options among {known}. Received unknown option(s): {unknown}")
        return dataclasses.replace(self, **changes) if changes else self

    def to_json(self) -> dict[str, Any]:
        """The record kept in the metadata key `lstm_onnx.options` (the opset has its own key)."""
        return {name: getattr(self, name) for name in RECORDED if name != "tier" or self.tier != DEFAULT_TIER}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], opset: int = DEFAULT_OPSET) -> ExportOptions:
        """Read a `to_json` record back; options it lacks (older exports) keep their defaults."""
        if not isinstance(data, Mapping):
            raise InputError(f"Expected export options as a JSON object. Received: {data!r}")
        unknown = sorted(set(data) - set(RECORDED))
        if unknown:
            raise InputError(f"Expected recorded options among {list(RECORDED)}. Received unknown key(s): {unknown}")
        return cls(opset=opset, **dict(data))
