"""Property-based: any stack the builder can draw exports fused and matches Keras.

Derandomized, so CI runs the same examples every time; `scripts/fuzz.py` runs many more on demand.
"""

import os

import numpy as np
from hypothesis import HealthCheck, given, settings

from strategies import stacks
from toolkit.builder import build_stack
from toolkit.exporter import export_model
from toolkit.parity import InputCase, check_parity, embedding_vocab, padding_of, random_input
from toolkit.runner import OnnxRunner

EXAMPLES = int(os.environ.get("LSTM_ONNX_FUZZ_EXAMPLES", "25"))


def padding_side(seed: int) -> str:
    """Half the drawn stacks are exported for (and checked on) left-padded batches, half right-padded."""
    return ("right", "left")[seed % 2]


def drawn_case(model, batch: int, length: int, seed: int) -> InputCase:
    """The drawn batch size and length (padded on the drawn side where the model masks)."""
    rng = np.random.default_rng(seed)
    padding, vocab = padding_of(model, padding_side(seed)), embedding_vocab(model)
    feeds = {t.name: random_input(tuple(t.shape[1:]), str(t.dtype), batch, length, rng, vocab, padding)
             for t in model.inputs}
    return InputCase(f"drawn batch {batch}, {length} steps", feeds)


def check_stack(config, batch: int, length: int) -> None:
    model = build_stack(config)
    result = export_model(model, seed=config.seed, padding=padding_side(config.seed))
    assert result.fused and not result.warnings, result.warnings
    assert result.parity, result.parity.failures()
    case = drawn_case(model, batch, config.timesteps or length, config.seed)
    report = check_parity(model, OnnxRunner(result.model), [o.name for o in result.outputs], cases=[case])
    assert report, report.failures()


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(stacks())
def test_any_drawn_stack_exports_fused_and_matches_keras(drawn):
    check_stack(*drawn)
