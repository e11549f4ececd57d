"""Hypothesis strategies for stacks and their masks, shared by tests/test_fuzz.py and scripts/fuzz.py."""

from hypothesis import strategies as st

from toolkit.models.builder import StackConfig


@st.composite
def stacks(draw):
    """A stack of every kind the builder makes, within the ranges the hardening issue names."""
    bidirectional = draw(st.sampled_from([None, None, "concat", "sum", "mul", "ave", "none"]))
    variable = draw(st.booleans())
    length = draw(st.integers(1, 50))
    config = StackConfig(
        cell=draw(st.sampled_from(["lstm", "gru", "simple_rnn", "lstm,gru", "gru,simple_rnn,lstm"])),
        layers=draw(st.integers(1, 3)),
        units=draw(st.integers(1, 64)),
        features=draw(st.integers(1, 16)),
        timesteps=None if variable else length,
        return_sequences=draw(st.booleans()),
        return_state=draw(st.booleans()),
        all_states=draw(st.booleans()),
        bidirectional=bidirectional,
        masking=draw(st.sampled_from([None, None, "masking", "embedding"])),
        initial_state=draw(st.booleans()),
        go_backwards=False if bidirectional else draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)),
    )
    batch = draw(st.integers(1, 8))
    return config, batch, length, draw(masks(batch, length))


def masks(batch: int, steps: int):
    """A (batch, steps) keep-mask of any shape Keras accepts: each sample drawn step by step (holes, padding
    on either side, both ends), or kept or masked whole (rarely drawn step by step). Used only where the
    stack masks."""
    row = st.one_of(st.lists(st.booleans(), min_size=steps, max_size=steps),
                    st.sampled_from([[True] * steps, [False] * steps]))
    return st.lists(row, min_size=batch, max_size=batch)
