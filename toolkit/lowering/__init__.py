"""Lowering Keras recurrent layers to fused ONNX `LSTM`, `GRU` and `RNN` ops, from their weights.

tf2onnx fuses only plain LSTMs: GRU, SimpleRNN, masked layers, `hard_sigmoid` and recurrent dropout come
out as an ONNX `Loop` of elementwise ops, several times slower (measured in `scripts/benchmark.py`).
So lstm-onnx walks the Keras functional graph itself (`dispatch.py`), each layer call going to the
handler registered for its class (`layers.py`):

- each recurrent layer (LSTM, GRU, SimpleRNN, Bidirectional of one of them) becomes one fused op plus the
  transposes it needs (`recurrent.py`, `bidirectional.py`), with its weights re-ordered (`cells.py`);
- `Masking` and `Embedding(mask_zero=True)` produce a mask, which becomes the op's `sequence_lens`
  (right padding, or left padding with the input flipped in time); Keras carries the last output over
  masked steps, ONNX writes zeros there, so a `Where` restores Keras' values (`masks.py`);
- sequences stay time-major from one recurrent layer to the next (the layout ONNX Runtime runs);
- `Embedding` becomes a `Gather`, `Dense` (and `TimeDistributed(Dense)`) a `MatMul`/`Add`/activation;
- `Dropout`-like layers are identities at inference;
- every other layer is converted by tf2onnx on its own and spliced in (`tf2onnx_lib.convert_call`).

A recurrent layer that cannot be fused (an activation ONNX lacks, a custom cell, ...) is converted by
tf2onnx too, and the reason is reported (`LayerLowering.reason`, then the export's warnings): never a
silent fallback.
"""

from toolkit.lowering.cells import ACTIVATIONS, CELL_OPS, CellPlan, NotFusable, op_attributes, plan_cell
from toolkit.lowering.context import LayerLowering, LoweringReport, StateIO
from toolkit.lowering.dispatch import lower_model
from toolkit.lowering.writer import GraphWriter, outer_reads, prune, rename_values

__all__ = ["ACTIVATIONS", "CELL_OPS", "CellPlan", "GraphWriter", "LayerLowering", "LoweringReport", "NotFusable",
           "StateIO", "op_attributes", "lower_model", "outer_reads", "plan_cell", "prune", "rename_values"]
