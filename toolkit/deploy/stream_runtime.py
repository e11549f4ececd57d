"""The ONNX Runtime side of a stream session (`toolkit.deploy.stream_session`): how many intra-op threads,
the op alone's session options, and the binding's C-level run."""

from __future__ import annotations

from typing import Any

import onnx
import onnxruntime as ort

from toolkit.onnxfile import metadata
from toolkit.runtimes.onnxrt import session_options
from toolkit.runtimes.threads import check_threads, max_threads
from toolkit.text import safe_text


def c_run(session: ort.InferenceSession) -> tuple[Any, bool]:
    """The binding run without the Python wrapper, and whether it takes the C-level binding; the wrapper
    where a future ONNX Runtime renames its internals. ONNX Runtime 1.32's Python `run_with_iobinding` looks
    up a WebGPU run option that is not set, through a C++ exception, on every call: about 30 us."""
    inner = getattr(session, "_sess", None)
    if inner is not None and hasattr(inner, "run_with_iobinding"):
        return inner.run_with_iobinding, True
    return session.run_with_iobinding, False


def stream_threads(model: onnx.ModelProto, threads: int | None) -> tuple[int, str]:
    """The intra-op thread count and where it came from."""
    if threads is not None:
        return check_threads([threads])[0], "given"
    recorded = metadata.read_session_defaults(model)
    if recorded is None:
        return 1, "default (no bench --record in the file)"
    if recorded.runtime != "onnxruntime":
        return 1, f"default: the file records {safe_text(recorded.runtime)} as fastest, a stream session runs ONNX Runtime"
    return min(recorded.threads, max_threads()), (f"recorded by bench ({recorded.us:.1f} us at batch {recorded.batch} "
                                                  f"x {recorded.steps} steps)")


def step_options(threads: int, spinning: bool | None, batch: int) -> tuple[ort.SessionOptions, str]:
    """The op alone's session options, and what `graph` adds about them. At batch 1 without ONNX Runtime's
    CPU memory arena: the op's only allocations are its kernel's scratch, a few KB a step, and the arena's
    bookkeeping costs more than malloc's fast path (0.4-0.7 us of a one-step LSTM or GRU(128) call; SimpleRNN
    equal). From batch 2 to 256 the two measured equal, so larger batches keep the arena, as the file's
    graph does (docs/speed.md)."""
    options = session_options(threads, spinning=spinning)
    if batch != 1:
        return options, ""
    options.enable_cpu_mem_arena = False
    return options, "; ONNX Runtime's CPU arena off at batch 1"
