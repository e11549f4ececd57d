"""The keras.io seq2seq script: ONNX Runtime decodes token for token what Keras decodes, without TensorFlow."""

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "seq2seq.py"


@pytest.fixture(scope="module")
def seq2seq():
    spec = importlib.util.spec_from_file_location("seq2seq_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["seq2seq_script"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_greedy_decoding_in_onnx_runtime_equals_keras(seq2seq, tmp_path):
    _, encoder_model, decoder_model = seq2seq.build(latent_dim=32)
    encoder_path, decoder_path = seq2seq.export(encoder_model, decoder_model, tmp_path)
    sequences = seq2seq.input_sequences(4)
    keras_tokens = [seq2seq.decode_keras(encoder_model, decoder_model, s[None]) for s in sequences]
    onnx_tokens = seq2seq.decode_in_fresh_process(encoder_path, decoder_path, sequences)  # no TensorFlow there
    assert onnx_tokens == keras_tokens
    assert len({t for tokens in keras_tokens for t in tokens}) >= 2  # not a constant decoder


def test_exports_are_named_like_the_keras_io_models(seq2seq, tmp_path):
    from toolkit.runtimes.onnxrt import OnnxRunner

    _, encoder_model, decoder_model = seq2seq.build(latent_dim=8)
    encoder_path, decoder_path = seq2seq.export(encoder_model, decoder_model, tmp_path)
    assert OnnxRunner(encoder_path).output_names == ["encoder_state_h", "encoder_state_c"]
    decoder = OnnxRunner(decoder_path)
    assert decoder.input_names == ["decoder_inputs", "decoder_state_input_h", "decoder_state_input_c"]
    # The decoder LSTM is the training model's layer called again: named without a call suffix here.
    assert decoder.output_names == ["decoder_dense_output", "decoder_lstm_state_h", "decoder_lstm_state_c"]
