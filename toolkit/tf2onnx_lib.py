"""Every contact lstm-onnx has with tf2onnx, in one place (as Keras keeps its own in `tf2onnx_lib.py`).

Why `from_function` and not `from_keras`: on Keras 3, `tf2onnx.convert.from_keras` fails on `Sequential`
models (`KeyError: 'keras_tensor_NN'`, tf2onnx 1.17 / Keras 3.15) and names outputs after internal
tensors. Wrapping the model call in a `tf.function` with named `TensorSpec`s works for functional and
Sequential models alike; the exporter renames what comes out.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from toolkit.errors import ExportError
from toolkit.text import error_cause


@dataclass(frozen=True)
class InputSignature:
    name: str
    dtype: str
    shape: tuple[int | None, ...]


@functools.cache
def _quiet_tf2onnx() -> None:
    """tf2onnx logs each rewriter step at INFO and WARNING; lstm-onnx reports fusion itself. Idempotent."""
    from tf2onnx import verbose_logging

    verbose_logging.set_level(logging.ERROR)


class _DropTf2onnxRecords(logging.Filter):
    """Drops the records tf2onnx logs on the root logger itself (`logging.warning(...)` in its Gemm
    rewriter: "For now, onnxruntime only support float32 type for Gemm rewriter", on a float16 Dense)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return f"{os.sep}tf2onnx{os.sep}" not in record.pathname


@contextlib.contextmanager
def _root_records_of_tf2onnx_dropped() -> Iterator[None]:
    """For one conversion: the filter above on the root logger, and a NullHandler, so that the root
    logger's first record does not make `logging.basicConfig` attach a stderr handler for good (that is
    what printed `WARNING:root:` lines). Both are removed after: the application's logging is its own."""
    root = logging.getLogger()
    drop, null = _DropTf2onnxRecords(), logging.NullHandler()
    root.addFilter(drop)
    root.addHandler(null)
    try:
        yield
    finally:
        root.removeHandler(null)
        root.removeFilter(drop)


def convert_call(call: Callable[..., Any], signature: Sequence[InputSignature], opset: int, what: str) -> Any:
    """Trace `call(*tensors)` with named input specs and convert it; outputs are its flattened results, in order."""
    import keras
    import tensorflow as tf
    import tf2onnx

    _quiet_tf2onnx()
    specs = [tf.TensorSpec(s.shape, tf.as_dtype(s.dtype), name=s.name) for s in signature]

    @tf.function(input_signature=specs)
    def traced(*args: Any) -> list[Any]:
        return keras.tree.flatten(call(*args))

    try:
        with _root_records_of_tf2onnx_dropped():
            proto, _ = tf2onnx.convert.from_function(traced, input_signature=specs, opset=opset)
    except Exception as exc:  # tf2onnx raises anything from KeyError to ValueError on a graph it cannot take
        # The cause in one line (`-v` prints the whole error, chained here); TensorFlow's own tracing
        # errors start "in user code:", which says nothing.
        raise ExportError(f"tf2onnx could not convert {what!r}: {error_cause(exc)}") from exc
    return proto


def convert(model: Any, signature: Sequence[InputSignature], opset: int) -> Any:
    """Convert a whole Keras model with tf2onnx alone (what a user gets without lstm-onnx's lowering)."""
    import keras

    inputs_struct = getattr(model, "_inputs_struct", None)

    def call(*args: Any) -> Any:
        if inputs_struct is not None:
            packed = keras.tree.pack_sequence_as(inputs_struct, list(args))
        else:
            packed = args[0] if len(args) == 1 else list(args)
        return model(packed, training=False)

    return convert_call(call, signature, opset, f"model {model.name}")


def tf2onnx_version() -> str:
    import tf2onnx

    return tf2onnx.__version__
