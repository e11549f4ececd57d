"""lstm-onnx: Keras recurrent models to ONNX Runtime with every output named and proven equal.

The distribution is `lstm-onnx`; its import package is `toolkit`. The names in `__all__` are the stable
Python API; everything else is internal. They are imported on first use (PEP 562), so `import toolkit`
imports nothing heavy, and none of them imports TensorFlow until a Keras model is built or loaded:

    from toolkit import export_file, verify_runtimes
    export_file("model.keras", "model.onnx")             # writes only a file that matched Keras
    reports = verify_runtimes("model.onnx", "model.keras", ["onnxruntime", "openvino"])

(The verification entry points, `verify_runtimes` and `verify_files`, live in `toolkit.checking.verify`;
the comparison loop they run is `toolkit.checking.loop`.) Type checkers read the names from `__init__.pyi` (the package ships
py.typed); this module imports none of them at import time, which also keeps it out of import circles.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# name -> the module that defines it
_API = {
    "export_model": "toolkit.export.exporter",  # a Keras model in memory -> an ExportResult (the proto, its parity)
    "export_file": "toolkit.export.exporter",  # a .keras / .h5 / SavedModel file -> a proven .onnx file
    "ExportOptions": "toolkit.options",
    "ExportResult": "toolkit.export.result",
    "verify_runtimes": "toolkit.checking.verify",  # an export vs its Keras model, in each runtime named
    "verify_files": "toolkit.checking.verify",  # the same in ONNX Runtime alone -> a ParityReport
    "Tolerances": "toolkit.tolerance",
    "ParityReport": "toolkit.checking.results",
    "RuntimeReport": "toolkit.checking.results",
    "VerifyReport": "toolkit.checking.results",
    "open_runner": "toolkit.runtimes.registry",  # run an export in ONNX Runtime or OpenVINO (no TensorFlow)
    "inspect_model": "toolkit.onnxfile.model",
    "open_stream": "toolkit.deploy.stream_session",  # a --state-io export streamed one step (or chunk) per call
    "LstmOnnxError": "toolkit.errors",
    "InputError": "toolkit.errors",
}
__all__ = [  # the same names as _API, spelled out for linters and readers
    "__version__", "export_model", "export_file", "ExportOptions", "ExportResult", "verify_runtimes", "verify_files",
    "Tolerances", "ParityReport", "RuntimeReport", "VerifyReport", "open_runner", "inspect_model", "open_stream", "LstmOnnxError",
    "InputError",
]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'toolkit' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # imported once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
