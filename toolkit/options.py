"""What an export is asked to do, as one value: `ExportOptions`, checked once, passed whole.

The library (`export_model`, `export_keras_model`, `export_stacks`) and the CLI read the defaults and
choice lists from here, and the resource limits a model file must keep (`ResourceLimits`, enforced by
`toolkit.safety`). This module imports no TensorFlow, Keras or tf2onnx, so `lstm-onnx --help`
stays light. Part of the value is recorded in every export's metadata (`lstm_onnx.options`, see
`toolkit.onnxfile.metadata`): `to_json` writes exactly that record and `from_json` reads it back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from toolkit.errors import InputError, ModelLoadError
from toolkit.tolerance import Tolerances

# ---------------------------------------------------------------- the compute limits a model must keep

MAX_MEMBERS = 1_000
"""Members of the archive. Keras writes 3 (metadata, config, weights), plus one per asset file."""

MAX_MEMBER_BYTES = 1 << 30
"""Uncompressed bytes of any one member (1 GiB): the weights of `MAX_PARAMS` float32 values, with room."""

MAX_TOTAL_BYTES = 2 << 30
"""Uncompressed bytes of all members together (2 GiB)."""

MAX_RATIO = 100.0
"""Uncompressed / compressed size of a member above `RATIO_FLOOR_BYTES`. Trained float weights compress
about 1.1x; a zip bomb of zeros about 1000x."""

RATIO_FLOOR_BYTES = 1 << 20
"""Members smaller than this (1 MiB) may compress as well as they like: they cannot hurt."""

MAX_CONFIG_BYTES = 16 << 20
"""Uncompressed bytes of `config.json` (16 MiB; a layer's config is 2-6 KB, so some 3,000 layers)."""

MAX_PARAMS = 100_000_000
"""Parameters the config declares (400 MB as float32). `LSTM(4096)` alone declares 67 million."""

MAX_TIMESTEPS = 100_000
"""A fixed time axis of a recurrent layer's input. Parity is checked over 2,000 steps in the tests; a
fixed axis of 2e6 steps ran past 120 s, 1e8 ran out of memory."""

MAX_ACTIVATION_ELEMENTS = 1 << 22
"""Values in one layer's input or output for one sample, or for the whole batch of a model built for a
fixed one (4.2 million, 16 MiB as float32). With the parity inputs bounded in bytes (`toolkit.checking.inputs`), a
model at this cap exports within the stated 2 GB (README, limits); the earlier 2^27 cost 5.7 GB at half
the cap, and a fixed batch of 4,000,000 counted per sample 8.46 GB."""

MAX_MACS = 10_000_000_000
"""Multiply-adds per sample, or per call of a fixed batch (each layer's parameters times the positions it
maps them over, from Keras' own shapes: `toolkit.safety.shapes`). Keras runs a recurrent layer at a few GMAC/s
on one core: this keeps the export's Keras and ONNX Runtime runs within the stated 120 s."""


@dataclass(frozen=True)
class ResourceLimits:
    """The bounds a `.keras` file must stay within; raise one with `limits.raised(max_params=...)`."""

    max_members: int = MAX_MEMBERS
    max_member_bytes: int = MAX_MEMBER_BYTES
    max_total_bytes: int = MAX_TOTAL_BYTES
    max_ratio: float = MAX_RATIO
    max_config_bytes: int = MAX_CONFIG_BYTES
    max_params: int = MAX_PARAMS
    max_timesteps: int = MAX_TIMESTEPS
    max_activation_elements: int = MAX_ACTIVATION_ELEMENTS
    max_macs: int = MAX_MACS

    def raised(self, **values: int | float | None) -> ResourceLimits:
        """A copy with the given limits replaced; `None` keeps the current value (an unset CLI flag)."""
        given = {key: value for key, value in values.items() if value is not None}
        for key, value in given.items():
            if not hasattr(self, key):
                raise ModelLoadError(f"Expected a resource limit among {sorted(vars(self))}. Received: {key!r}")
            if not isinstance(value, (int, float)) or value <= 0:
                raise ModelLoadError(f"Expected {key} > 0. Received: {key}={value!r}")
        return replace(self, **given)


DEFAULT_LIMITS = ResourceLimits()


# ------------------------------------------------------------------------------------- the export's options

# The deadline of one run (one batch in one runtime) when none is given: the runner contract's default
# (`toolkit.runtimes.base.Runner.timeout`), `run --timeout` and `bench --timeout`. One figure: `run`'s own 300 s
# let a crafted Loop spin 2.5 times longer from the CLI than from Python; 120 s is the export's stated bound.
RUN_TIMEOUT = 120.0

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
# Precision tiers (see `toolkit.onnxfile.tiers`, which holds their transforms and measured tolerances).
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
    limits: ResourceLimits = DEFAULT_LIMITS  # what a model file or a built stack may declare (toolkit.safety.limits)

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
