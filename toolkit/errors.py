"""The exceptions lstm-onnx raises for problems a user can act on.

Every one of them is caught once, at the CLI edge (`toolkit.cli`), and turned into a one-line message
and a non-zero exit code. Library callers catch `LstmOnnxError`; the input errors are `ValueError`s too.
"""

from __future__ import annotations


class LstmOnnxError(Exception):
    """Base class: a problem with what the user gave us, not a bug in lstm-onnx."""


class InputError(LstmOnnxError, ValueError):
    """A file, option or array is not what the command expected."""


class ModelLoadError(InputError):
    """A Keras or ONNX model file is missing, unreadable or refused."""


class UnsupportedModelError(InputError):
    """The model loads but lstm-onnx cannot export it (e.g. it has no recurrent layer)."""


class ExportError(LstmOnnxError):
    """The converter failed on a model lstm-onnx accepted."""


class ParityError(LstmOnnxError):
    """ONNX Runtime's outputs do not match Keras' within tolerance."""


class OptionError(InputError):
    """A command-line option's value is malformed; the CLI exits 2 for it, as click does for its own."""


class OutputError(InputError):
    """A destination could not be written (read-only, full, a folder where a file goes, ...)."""


class RuntimeFailure(InputError):
    """A runtime refused or failed to run a model it was given (the message is its own, first line)."""


def overrun(timeout: float) -> RuntimeFailure:
    """A run still going at its deadline, stopped: one message for every runtime."""
    return RuntimeFailure(f"Expected a run that ends within {timeout:g} s (--timeout). Received: a run still going, "
                          "stopped")
