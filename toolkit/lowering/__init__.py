"""Lowering Keras recurrent layers to fused ONNX `LSTM`, `GRU` and `RNN` ops (see `core`)."""

from toolkit.lowering.core import (CELL_OPS, GraphWriter, LayerLowering, NotFusable, StateIO, _op_attributes,
                                   lower_model, outer_reads, plan_cell, rename_values)

__all__ = ["CELL_OPS", "GraphWriter", "LayerLowering", "NotFusable", "StateIO", "_op_attributes", "lower_model",
           "outer_reads", "plan_cell", "rename_values"]
