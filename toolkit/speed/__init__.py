"""`lstm-onnx bench`: every runtime, tier and thread count timed in alternation (`bench`), and consecutive
carried calls per streaming form (`stream`)."""
