"""An ONNX file as every later stage reads it: loading with bounded bytes, its inputs and outputs as
`TensorInfo`, op counts and `inspect` (`model`), its `lstm_onnx.*` metadata (`metadata`), and its precision
tiers (`tiers`). No TensorFlow is imported here."""
