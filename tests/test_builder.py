import numpy as np
import pytest

from toolkit.errors import InputError
from toolkit.models.builder import SEED_CASES, SEED_INPUT, StackConfig, build_stack, flag_combinations, stack_configs
from toolkit.models.naming import output_origins


def test_default_configs_are_the_posts_four_cases_in_order():
    configs = stack_configs()
    assert [(c.return_sequences, c.return_state) for c in configs] == [(True, False), (False, True), (True, True), (False, False)]
    assert [c.name for c in configs] == ["case1_sequences", "case2_state", "case3_sequences_state", "case4_last"]
    assert all(c.layers == 2 and c.units == 2 and c.timesteps == 3 and c.features == 1 for c in configs)


@pytest.mark.parametrize("seq,state,count", [(None, None, 4), (True, None, 2), (None, False, 2), (False, True, 1)])
def test_flag_filter(seq, state, count):
    pairs = flag_combinations(seq, state)
    assert len(pairs) == count
    assert all((seq is None or s == seq) and (state is None or t == state) for s, t in pairs)


# The post's table: outputs and shapes for each case on the (1, 3, 1) input.
POST_TABLE = {
    "case1_sequences": [("lstm_2_sequence", (1, 3, 2))],
    "case2_state": [("lstm_2_last", (1, 2)), ("lstm_2_state_h", (1, 2)), ("lstm_2_state_c", (1, 2))],
    "case3_sequences_state": [("lstm_2_sequence", (1, 3, 2)), ("lstm_2_state_h", (1, 2)), ("lstm_2_state_c", (1, 2))],
    "case4_last": [("lstm_2_last", (1, 2))],
}


@pytest.mark.parametrize("config", stack_configs(), ids=lambda c: c.name)
def test_seed_stack_matches_the_posts_table(config):
    model = build_stack(config)
    outputs = model(SEED_INPUT)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    got = [(o.name, tuple(np.asarray(v).shape)) for o, v in zip(output_origins(model), outputs)]
    assert got == POST_TABLE[config.name]
    assert set(SEED_CASES.values()) == set(POST_TABLE)


def test_weights_are_deterministic_and_seeded():
    a = build_stack(StackConfig(seed=5)).get_weights()
    b = build_stack(StackConfig(seed=5)).get_weights()
    c = build_stack(StackConfig(seed=6)).get_weights()
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_all_states_adds_every_earlier_layers_states():
    model = build_stack(StackConfig(layers=3, return_sequences=True, return_state=True, all_states=True))
    assert [o.name for o in output_origins(model)] == [
        "lstm_3_sequence", "lstm_3_state_h", "lstm_3_state_c",
        "lstm_1_state_h", "lstm_1_state_c", "lstm_2_state_h", "lstm_2_state_c",
    ]


@pytest.mark.parametrize("kwargs,needle", [
    ({"layers": 0}, "Expected 1 <= layers <= 64. Received: layers=0"),
    ({"units": -2}, "Expected 1 <= units <= 4096"),
    ({"units": 100_000}, "Expected 1 <= units <= 4096. Received: units=100000"),
    ({"layers": 5000}, "Expected 1 <= layers <= 64. Received: layers=5000"),
    ({"features": 300_000_000}, "Expected 1 <= features <= 65536. Received: features=300000000"),
    ({"timesteps": 0}, "Expected timesteps >= 1 or None"),
    ({"features": 1.5}, "Expected 1 <= features <= 65536"),
    ({"seed": -1}, "Expected seed >= 0"),
])
def test_bad_config_is_refused_with_expected_and_received(kwargs, needle):
    with pytest.raises(InputError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        StackConfig(**kwargs)


def test_requested_configs_build_a_variant_exactly_as_the_matrix_does():
    from toolkit.models.builder import VARIANTS, requested_configs, variant_config

    assert all(requested_configs({}, name) == [variant_config(name)] for name in VARIANTS)
    assert requested_configs({"units": 3}, "gru", return_state=False) == [variant_config("gru", units=3, return_state=False)]
    assert requested_configs({}) == stack_configs()
    assert len(requested_configs({"sequential": True, "head": True})) == 2  # no state outputs for Sequential
    with pytest.raises(InputError, match="Expected --variant among"):
        requested_configs({}, "lstmx")
