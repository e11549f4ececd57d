"""lstm-onnx: Keras recurrent models to ONNX Runtime with every output named and proven equal.

The package imports nothing heavy: `toolkit.runner` and `toolkit.compare` work without TensorFlow, and
the Keras-side modules (`builder`, `exporter`, `parity`) import it only when used.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "open_stream"]


def __getattr__(name: str):  # noqa: ANN202
    """`toolkit.open_stream`, imported on first use: `import toolkit` stays free of numpy and ONNX Runtime.
    (Through importlib: the modules behind it import `toolkit.__version__`, and the import graph is kept
    free of circles.)"""
    if name == "open_stream":
        import importlib

        return importlib.import_module("toolkit.stream_session").open_stream
    raise AttributeError(f"module 'toolkit' has no attribute {name!r}")
