"""lstm-onnx: Keras recurrent models to ONNX Runtime with every output named and proven equal.

The package imports nothing heavy: `toolkit.runner` and `toolkit.compare` work without TensorFlow, and
the Keras-side modules (`builder`, `exporter`, `parity`) import it only when used.
"""

__version__ = "0.1.0"
