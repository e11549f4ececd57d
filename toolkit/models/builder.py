"""Building the stacked Keras LSTMs of the seed post, for each flag combination.

The post's stack: every layer but the last returns sequences and states (so it can feed the next one);
the last layer's `return_sequences` and `return_state` are the two flags the post explains. Weights are
drawn from numpy's `default_rng(seed)`, not Keras' initializers, so a stack is the same numbers on any
Keras release and a committed export can be checked against a fresh build.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from toolkit.errors import InputError
from toolkit.safety.budget import Budget

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


CELLS = ("lstm", "gru", "simple_rnn")
MERGE_MODES = ("concat", "sum", "mul", "ave", "none")  # "none" is Keras' merge_mode=None
MASKINGS = ("masking", "embedding")
ACTIVATIONS = ("tanh", "sigmoid", "relu", "hard_sigmoid", "linear", "softsign", "softplus", "elu")
EMBEDDING_VOCAB = 20  # token ids 1..19; 0 is the padding id when the mask comes from Embedding(mask_zero=True)

# Bounds of the builder's sizes. Beyond them Keras allocates for minutes before anything fails (the issue
# measured --units 100000, --features 3e8 and --layers 5000); the parameter and time-step budgets of
# toolkit.safety.limits apply on top (`stack_budget`), and their flags raise those, not these.
MAX_LAYERS = 64
MAX_UNITS = 4096
MAX_FEATURES = 65536
_BOUNDS = {"layers": MAX_LAYERS, "units": MAX_UNITS, "features": MAX_FEATURES}


@dataclass(frozen=True)
class StackConfig:
    """One stack of recurrent layers. Defaults are the post's: 2 LSTM layers of 2 units on (3, 1) inputs."""

    layers: int = 2
    units: int = 2
    timesteps: int | None = 3  # None: variable length, the graph's `time` axis is dynamic
    features: int = 1  # input features (the embedding size when masking="embedding")
    return_sequences: bool = False  # of the last layer
    return_state: bool = False  # of the last layer
    all_states: bool = False  # also output the states of every earlier layer (a stacked encoder's hand-over)
    seed: int = 0
    # Variants beyond the post (the variant matrix in tests/test_variants.py covers each):
    cell: str = "lstm"  # or "gru", "simple_rnn", or a comma-separated list, one per layer ("lstm,gru")
    bidirectional: str | None = None  # wrap each layer in Bidirectional with this merge mode
    masking: str | None = None  # "masking": Masking(0.0) first; "embedding": int ids through Embedding(mask_zero)
    go_backwards: bool = False
    use_bias: bool = True
    activation: str = "tanh"
    recurrent_activation: str = "sigmoid"  # LSTM and GRU
    dropout: float = 0.0  # dropout and recurrent_dropout: identities at inference
    unroll: bool = False
    reset_after: bool = True  # GRU
    initial_state: bool = False  # the first layer's initial states are model inputs
    head: bool = False  # a Dense (TimeDistributed for sequences) on the last layer's main output
    sequential: bool = False  # build a keras.Sequential (single output only)

    def __post_init__(self) -> None:
        for field_name, bound in _BOUNDS.items():
            value = getattr(self, field_name)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= bound:
                raise InputError(f"Expected 1 <= {field_name} <= {bound}. Received: {field_name}={value!r}")
        if self.timesteps is not None and (not isinstance(self.timesteps, int) or self.timesteps < 1):
            raise InputError(f"Expected timesteps >= 1 or None (variable length). Received: timesteps={self.timesteps!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise InputError(f"Expected seed >= 0. Received: seed={self.seed!r}")
        bad_cells = [c for c in self.cells if c not in CELLS]
        if bad_cells:
            raise InputError(f"Expected cell among {list(CELLS)} (or a comma-separated list). Received: cell={self.cell!r}")
        _choice("bidirectional", self.bidirectional, MERGE_MODES)
        _choice("masking", self.masking, MASKINGS)
        _choice("activation", self.activation, ACTIVATIONS)
        _choice("recurrent_activation", self.recurrent_activation, ACTIVATIONS)
        if not 0.0 <= self.dropout < 1.0:
            raise InputError(f"Expected 0 <= dropout < 1. Received: dropout={self.dropout!r}")
        if self.go_backwards and self.bidirectional is not None:
            raise InputError("Expected go_backwards=False with bidirectional (Keras' Bidirectional sets it on its "
                             "backward layer). Received: go_backwards=True")
        if self.unroll and self.timesteps is None:
            raise InputError("Expected a fixed number of timesteps with unroll=True. Received: timesteps=None")
        if self.sequential and (self.return_state or self.all_states or self.initial_state):
            raise InputError("Expected a single-output, single-input stack for sequential=True. "
                             "Received: return_state, all_states or initial_state set")

    @property
    def cells(self) -> list[str]:
        """The cell type of each layer; a list shorter than the stack repeats."""
        kinds = [c.strip() for c in self.cell.split(",")]
        return [kinds[i % len(kinds)] for i in range(self.layers)]

    @property
    def name(self) -> str:
        """A file-friendly name; the post's case name for its own stack."""
        if self.is_seed_stack:
            return SEED_CASES[(self.return_sequences, self.return_state)]
        time = "tvar" if self.timesteps is None else f"t{self.timesteps}"
        flags = f"seq{int(self.return_sequences)}_state{int(self.return_state)}"
        tags = [f"{k}-{v}" if not isinstance(v, bool) else k
                for k, v in self._variant_fields().items()]
        extra = "".join(f"_{t}" for t in tags)
        kind = self.cell.replace(",", "-").replace("simple_rnn", "rnn")
        return f"{kind}{self.layers}x{self.units}_{time}_f{self.features}_{flags}{extra}_s{self.seed}"

    def _variant_fields(self) -> dict[str, Any]:
        defaults = StackConfig()
        skip = {"layers", "units", "timesteps", "features", "return_sequences", "return_state", "seed", "cell"}
        return {f: getattr(self, f) for f in self.__dataclass_fields__
                if f not in skip and getattr(self, f) != getattr(defaults, f)}

    @property
    def is_seed_stack(self) -> bool:
        base = replace(self, return_sequences=False, return_state=False)
        return base == StackConfig()

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


_GATES = {"lstm": 4, "gru": 3, "simple_rnn": 1}


def stack_budget(config: StackConfig) -> Budget:
    """Parameters and per-sample activation size of the stack `build_stack` would build, counted before
    Keras allocates it (`toolkit.safety.limits.check_budget` compares them with the limits)."""
    directions = 2 if config.bidirectional else 1
    width = 2 if config.bidirectional in ("concat", "none") else 1
    budget = Budget(layers=config.layers, longest_fixed_time=config.timesteps, time_at="--timesteps")
    budget.params = EMBEDDING_VOCAB * config.features if config.masking == "embedding" else 0
    in_dim = widest = config.features
    for cell in config.cells:
        gates, units = _GATES[cell], config.units
        budget.params += directions * gates * units * (in_dim + units + 2)  # kernels and (up to two) biases
        in_dim = units * width
        widest = max(widest, in_dim)
    budget.largest_activation = (config.timesteps or 1) * widest
    budget.activation_at = "the widest layer"
    return budget


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value is not None and value not in allowed:
        raise InputError(f"Expected {name} among {list(allowed)}. Received: {name}={value!r}")


# Named variants the builder offers (`lstm-onnx export --variant NAME`); the test matrix covers every one.
VARIANTS: dict[str, dict[str, Any]] = {
    "lstm": {},
    "lstm_initial_state": {"initial_state": True},
    "lstm_go_backwards": {"go_backwards": True},
    "lstm_no_bias": {"use_bias": False},
    "lstm_hard_sigmoid": {"recurrent_activation": "hard_sigmoid"},
    "lstm_relu": {"activation": "relu"},
    "lstm_dropout": {"dropout": 0.3},
    "lstm_unroll": {"unroll": True, "timesteps": 6},
    "lstm_masking": {"masking": "masking"},
    "lstm_embedding_mask": {"masking": "embedding"},
    "gru": {"cell": "gru"},
    "gru_reset_before": {"cell": "gru", "reset_after": False},
    "gru_masking": {"cell": "gru", "masking": "masking"},
    "gru_go_backwards_no_bias": {"cell": "gru", "go_backwards": True, "use_bias": False},
    "simple_rnn": {"cell": "simple_rnn"},
    "simple_rnn_masking": {"cell": "simple_rnn", "masking": "embedding"},
    "simple_rnn_relu": {"cell": "simple_rnn", "activation": "relu"},
    "bidirectional_concat": {"bidirectional": "concat"},
    "bidirectional_sum": {"bidirectional": "sum"},
    "bidirectional_mul": {"bidirectional": "mul"},
    "bidirectional_ave": {"bidirectional": "ave"},
    "bidirectional_none": {"bidirectional": "none"},
    "bidirectional_gru_masking": {"cell": "gru", "bidirectional": "concat", "masking": "masking"},
    "bidirectional_initial_state": {"bidirectional": "concat", "initial_state": True},
    "mixed_cells": {"cell": "lstm,gru,simple_rnn", "layers": 3},
    "dense_head": {"head": True},
    "sequential": {"sequential": True, "head": True},
}


def variant_config(name: str, **overrides: Any) -> StackConfig:
    """The config of a named variant: variable length, 8 units, 4 features, states returned, unless set."""
    if name not in VARIANTS:
        raise InputError(f"Expected a variant among {sorted(VARIANTS)}. Received: {name!r}")
    base: dict[str, Any] = {"units": 8, "features": 4, "timesteps": None, "return_sequences": True,
                            "return_state": True, "all_states": True}
    base.update(VARIANTS[name])
    if base.get("sequential"):
        base.update(return_state=False, all_states=False)
    base.update(overrides)
    return StackConfig(**base)


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


def requested_configs(options: dict[str, Any], variant: str | None = None, return_sequences: bool | None = None,
                      return_state: bool | None = None) -> list[StackConfig]:
    """The stacks `lstm-onnx export` builds from its builder options (`options`: the fields given).

    A named variant is built exactly as `variant_config` builds it, the model the variant matrix
    proves, with the options given overriding it; otherwise one stack per flag combination of the last
    layer (the post's four by default), left open flags taking both values.
    """
    if variant is not None:
        if variant not in VARIANTS:
            raise InputError(f"Expected --variant among {sorted(VARIANTS)}. Received: {variant!r}")
        flags = {"return_sequences": return_sequences, "return_state": return_state}
        return [variant_config(variant, **options, **{k: v for k, v in flags.items() if v is not None})]
    base = StackConfig(**options)
    if base.sequential and return_state is None:
        return_state = False  # a Sequential model has one output: no states to return
    return stack_configs(base, return_sequences, return_state)


def layer_name(index: int, cell: str = "lstm") -> str:
    return f"{cell}_{index + 1}"


def _recurrent_layer(config: StackConfig, index: int, return_sequences: bool, return_state: bool) -> Any:
    import keras

    cell = config.cells[index]
    kwargs: dict[str, Any] = {
        "units": config.units,
        "return_sequences": return_sequences,
        "return_state": return_state,
        "go_backwards": config.go_backwards,
        "use_bias": config.use_bias,
        "activation": config.activation,
        "dropout": config.dropout,
        "recurrent_dropout": config.dropout,
        "unroll": config.unroll,
    }
    if cell != "simple_rnn":
        kwargs["recurrent_activation"] = config.recurrent_activation
    if cell == "gru":
        kwargs["reset_after"] = config.reset_after
    classes = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU, "simple_rnn": keras.layers.SimpleRNN}
    name = layer_name(index, cell)
    if config.bidirectional is None:
        return classes[cell](name=name, **kwargs)
    merge = None if config.bidirectional == "none" else config.bidirectional
    return keras.layers.Bidirectional(classes[cell](name=name, **kwargs), merge_mode=merge, name=f"bi_{name}")


def _state_count(config: StackConfig, index: int) -> int:
    count = 2 if config.cells[index] == "lstm" else 1
    return count * (2 if config.bidirectional is not None else 1)


def _front(config: StackConfig, inputs: Any) -> Any:
    import keras

    if config.masking == "masking":
        return keras.layers.Masking(mask_value=0.0, name="masking")(inputs)
    if config.masking == "embedding":
        return keras.layers.Embedding(EMBEDDING_VOCAB, config.features, mask_zero=True, name="embedding")(inputs)
    return inputs


def _head(config: StackConfig, x: Any) -> Any:
    import keras

    dense = keras.layers.Dense(3, name="dense")
    return keras.layers.TimeDistributed(dense, name="time_distributed")(x) if config.return_sequences else dense(x)


def build_stack(config: StackConfig) -> Any:
    """Build the Keras model for `config`, with deterministic weights."""
    import keras

    if config.masking == "embedding":
        inputs = keras.Input(shape=(config.timesteps,), dtype="int32", name=INPUT_NAME)
    else:
        inputs = keras.Input(shape=(config.timesteps, config.features), name=INPUT_NAME)
    if config.sequential:
        layers: list[Any] = [inputs]
        layers += [keras.layers.Masking(0.0, name="masking")] if config.masking == "masking" else []
        layers += ([keras.layers.Embedding(EMBEDDING_VOCAB, config.features, mask_zero=True, name="embedding")]
                   if config.masking == "embedding" else [])
        for i in range(config.layers):
            last = i == config.layers - 1
            # A Sequential layer has one output: lower layers return sequences, no layer returns states.
            layers.append(_recurrent_layer(config, i, config.return_sequences if last else True, False))
        if config.head:
            dense = keras.layers.Dense(3, name="dense")
            layers.append(keras.layers.TimeDistributed(dense, name="time_distributed") if config.return_sequences else dense)
        model = keras.Sequential(layers, name=config.name)
        set_deterministic_weights(model, config.seed)
        return model

    model_inputs = [inputs]
    x = _front(config, inputs)
    earlier_states: list[Any] = []
    for i in range(config.layers):
        last = i == config.layers - 1
        # As in the post: a lower layer returns sequences (to feed the next one) and its states.
        layer = _recurrent_layer(config, i, config.return_sequences if last else True,
                                 config.return_state if last else True)
        initial = None
        if i == 0 and config.initial_state:
            roles = ["h", "c"] if config.cells[0] == "lstm" else ["h"]
            directions = ["forward_", "backward_"] if config.bidirectional is not None else [""]
            initial = [keras.Input(shape=(config.units,), name=f"initial_{d}{r}") for d in directions for r in roles]
            model_inputs += initial
        result = layer(x, initial_state=initial) if initial is not None else layer(x)
        result = list(result) if isinstance(result, (list, tuple)) else [result]
        if last:
            main_count = 2 if (config.bidirectional == "none") else 1
            outputs = result
            if config.head:
                outputs = [_head(config, result[0]) if main_count == 1 else result[0]] + result[1:]
        else:
            x = result[0] if config.bidirectional != "none" else keras.layers.Concatenate(name=f"concat_{i + 1}")(result[:2])
            main_count = 2 if config.bidirectional == "none" else 1
            earlier_states += result[main_count:main_count + _state_count(config, i)]
    if config.all_states:
        outputs += earlier_states
    model = keras.Model(inputs=model_inputs if len(model_inputs) > 1 else inputs, outputs=outputs, name=config.name)
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

