"""Building the stacked Keras LSTMs of the seed post, for each flag combination.

The post's stack: every layer but the last returns sequences and states (so it can feed the next one);
the last layer's `return_sequences` and `return_state` are the two flags the post explains. Weights are
drawn from numpy's `default_rng(seed)`, not Keras' initializers, so a stack is the same numbers on any
Keras release and a committed export can be checked against a fresh build.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Iterable

import numpy as np

from toolkit.errors import InputError

# The post's data: batch 1, 3 time steps, 1 feature.
SEED_INPUT = np.array([0.1, 0.2, 0.3], dtype=np.float32).reshape((1, 3, 1))

# The post numbers its four examples (1)-(4); the seed exports keep that order and those names.
SEED_CASES: dict[tuple[bool, bool], str] = {
    (True, False): "case1_sequences",
    (False, True): "case2_state",
    (True, True): "case3_sequences_state",
    (False, False): "case4_last",
}

INPUT_NAME = "input"


@dataclass(frozen=True)
class StackConfig:
    """One stack of LSTMs. Defaults are the post's: 2 layers of 2 units on (3, 1) inputs."""

    layers: int = 2
    units: int = 2
    timesteps: int | None = 3  # None: variable length, the graph's `time` axis is dynamic
    features: int = 1
    return_sequences: bool = False  # of the last layer
    return_state: bool = False  # of the last layer
    all_states: bool = False  # also output the states of every earlier layer (a stacked encoder's hand-over)
    seed: int = 0

    def __post_init__(self) -> None:
        for field_name in ("layers", "units", "features"):
            value = getattr(self, field_name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"Expected {field_name} >= 1. Received: {field_name}={value!r}")
        if self.timesteps is not None and (not isinstance(self.timesteps, int) or self.timesteps < 1):
            raise InputError(f"Expected timesteps >= 1 or None (variable length). Received: timesteps={self.timesteps!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise InputError(f"Expected seed >= 0. Received: seed={self.seed!r}")

    @property
    def name(self) -> str:
        """A file-friendly name; the post's case name for its own stack."""
        if self.is_seed_stack:
            return SEED_CASES[(self.return_sequences, self.return_state)]
        time = "tvar" if self.timesteps is None else f"t{self.timesteps}"
        flags = f"seq{int(self.return_sequences)}_state{int(self.return_state)}"
        extra = "_allstates" if self.all_states else ""
        return f"lstm{self.layers}x{self.units}_{time}_f{self.features}_{flags}{extra}_s{self.seed}"

    @property
    def is_seed_stack(self) -> bool:
        base = replace(self, return_sequences=False, return_state=False)
        return base == StackConfig()

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def flag_combinations(return_sequences: bool | None = None, return_state: bool | None = None) -> list[tuple[bool, bool]]:
    """The (return_sequences, return_state) pairs to build; None means both values, in the post's order."""
    order = list(SEED_CASES)
    return [
        (seq, state)
        for seq, state in order
        if (return_sequences is None or seq == return_sequences) and (return_state is None or state == return_state)
    ]


def stack_configs(base: StackConfig = StackConfig(), return_sequences: bool | None = None,
                  return_state: bool | None = None) -> list[StackConfig]:
    """One config per flag combination of the last layer (four by default, as in the post)."""
    return [replace(base, return_sequences=s, return_state=t) for s, t in flag_combinations(return_sequences, return_state)]


def layer_name(index: int) -> str:
    return f"lstm_{index + 1}"


def build_stack(config: StackConfig) -> Any:
    """Build the functional Keras model for `config`, with deterministic weights."""
    import keras

    inputs = keras.Input(shape=(config.timesteps, config.features), name=INPUT_NAME)
    x = inputs
    earlier_states: list[Any] = []
    for i in range(config.layers - 1):
        # As in the post: a lower layer returns sequences (to feed the next one) and its states.
        x, state_h, state_c = keras.layers.LSTM(
            config.units, return_sequences=True, return_state=True, name=layer_name(i)
        )(x)
        earlier_states += [state_h, state_c]
    last = keras.layers.LSTM(
        config.units,
        return_sequences=config.return_sequences,
        return_state=config.return_state,
        name=layer_name(config.layers - 1),
    )(x)
    outputs = list(last) if isinstance(last, (list, tuple)) else [last]
    if config.all_states:
        outputs += earlier_states
    model = keras.Model(inputs=inputs, outputs=outputs, name=config.name)
    set_deterministic_weights(model, config.seed)
    return model


def set_deterministic_weights(model: Any, seed: int) -> None:
    """Glorot-uniform kernels and uniform(-0.5, 0.5) biases from numpy, layer by layer in model order.

    Biases are non-zero on purpose: with Keras' zero init the post's outputs are ~1e-4 and the bias path
    of the ONNX op would go untested.
    """
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        shape = tuple(variable.shape)
        if len(shape) == 1:
            values = rng.uniform(-0.5, 0.5, size=shape)
        else:
            limit = np.sqrt(6.0 / (shape[0] + shape[-1]))
            values = rng.uniform(-limit, limit, size=shape)
        variable.assign(values.astype(np.float32))

