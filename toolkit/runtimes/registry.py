"""The deploy runtimes as data, for `toolkit.verify`'s registry: (name, problem, open) per runtime.

A table rather than `Runtime` values so this module needs nothing from `toolkit.verify` (which imports
it): each opens lazily, so a missing Node, browser or package is a one-line error from `open`, never an
import failure.
"""

from __future__ import annotations

from collections.abc import Callable

from toolkit.runtimes import chromium, js, openvino
from toolkit.runtimes.base import valid_everywhere

DEPLOY_RUNTIMES: tuple[tuple[str, Callable, Callable], ...] = (
    ("onnxruntime-node", valid_everywhere, js.open_node),
    ("onnxruntime-web", valid_everywhere, js.open_web),  # WASM, under Node
    ("chromium", valid_everywhere, chromium.open_chromium),  # onnxruntime-web in a headless page
    ("openvino", openvino.problem, openvino.open_f32),
    ("openvino-bf16", openvino.problem_bf16, openvino.open_default),
)
# Runtimes `all` leaves out: a tier not meant to compute Keras' numbers at the f32 tolerances (OpenVINO's
# default precision, bf16 on CPUs that have it, is off by 5e-4 to 0.16 on the variant matrix). Named
# alone, it is run and reported with its error, never as passing at f32.
TIERS = ("openvino-bf16",)
