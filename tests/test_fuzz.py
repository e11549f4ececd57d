"""Property-based: any stack the builder can draw exports fused and matches Keras, on a drawn mask of
any shape where it masks (one export takes every mask).

Derandomized, so CI runs the same examples every time; `scripts/fuzz.py` runs many more on demand.
"""

import os
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from strategies import stacks

from toolkit.checking.inputs import InputCase, embedding_vocab, padding_of, random_input
from toolkit.checking.parity import check_parity
from toolkit.export.exporter import export_model
from toolkit.models.builder import build_stack
from toolkit.runtimes.onnxrt import OnnxRunner

EXAMPLES = int(os.environ.get("LSTM_ONNX_FUZZ_EXAMPLES", "25"))


def drawn_case(model, batch: int, length: int, seed: int, keep: Sequence[Sequence[bool]]) -> InputCase:
    """The drawn batch size and length; where the model masks, its masked steps are exactly the drawn
    mask's False entries (id 0 for an Embedding, the mask value in every feature for a Masking layer)."""
    rng = np.random.default_rng(seed)
    vocab, padding = embedding_vocab(model), padding_of(model)
    kept = np.asarray(keep, bool).reshape(batch, length)
    feeds = {}
    for t in model.inputs:
        value = random_input(tuple(t.shape[1:]), str(t.dtype), batch, length, rng, vocab)  # unpadded
        if padding.int_value is not None and value.dtype.kind in "iu" and value.ndim == 2:
            value = np.where(kept, np.maximum(value, 1), padding.int_value).astype(value.dtype)
        elif padding.float_value is not None and value.dtype.kind == "f" and value.ndim == 3:
            value[~kept] = padding.float_value
        feeds[t.name] = value
    masked = f", {int((~kept).sum())} of {kept.size} steps masked" if padding.masked else ""
    return InputCase(f"drawn batch {batch}, {length} steps{masked}", feeds)


def check_stack(config, batch: int, length: int, keep: Sequence[Sequence[bool]]) -> None:
    model = build_stack(config)
    result = export_model(model, seed=config.seed)
    assert result.fused and not result.warnings, result.warnings
    assert result.parity, result.parity.failures()
    case = drawn_case(model, batch, config.timesteps or length, config.seed, keep)
    report = check_parity(model, OnnxRunner(result.model), [o.name for o in result.outputs], cases=[case])
    assert report, report.failures()


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@pytest.mark.slow
@given(stacks())
def test_any_drawn_stack_exports_fused_and_matches_keras(drawn):
    check_stack(*drawn)
