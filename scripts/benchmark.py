"""Side-by-side latency of Keras, tf.function, tf2onnx's export and lstm-onnx's export, per variant.

    python scripts/benchmark.py                      # every variant, about 15 minutes on 2 cores
    python scripts/benchmark.py --variants gru lstm_masking --repeats 30
    python scripts/benchmark.py --variants lstm_masking --onnx-only --out /tmp/bench   # the mask rows, quickly

For each variant (1 layer unless the variant says otherwise, 64 features, 128 units, return_sequences) and
each shape (batch 1 x 1 step, batch 1 x 100 steps, batch 32 x 100 steps), it measures in one process:
median latency of `model.predict`, of a `tf.function` call, of ONNX Runtime on the plain tf2onnx export,
of ONNX Runtime on the lstm-onnx export, and of a hand-built graph holding only the fused ops and the
transposes they need ("minimal"). The three ONNX Runtime sessions are timed in alternation, round after
round, so drift lands on all of them alike. For a masked variant, the random batch keeps every step (the
op does all the work the minimal graph does), and the lstm-onnx export is also timed on a batch holding
masks of every shape ("mixed masks": left and right padding, holes, an all-masked sample): the same
op over the same batch, its kept steps moved first (the first sample keeps every step, so the op runs
as many steps as without a mask). It reports the ratios, the lstm-onnx export's GFLOP/s as a
fraction of this machine's float32 matrix-multiply rate (numpy, 1024 x 1024, measured in the same run), and
its speed against numpy doing only the same gate matmuls at the same shapes, step after step (the rate a
recurrence can reach at all: 100 small dependent products, not one big one). Writes JSON and a markdown
table under scripts/results/. A benchmark, not a test: it measures and never asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from toolkit.export.exporter import export_model  # noqa: E402
from toolkit.fileio import atomic_write_text  # noqa: E402
from toolkit.lowering import CELL_OPS, GraphWriter, NotFusable, op_attributes, plan_cell  # noqa: E402
from toolkit.models.builder import VARIANTS, build_stack, variant_config  # noqa: E402
from toolkit.runtimes.onnxrt import OnnxRunner  # noqa: E402
from toolkit.speed.bench import call_timer, interleaved_ms, interleaved_timers  # noqa: E402
from toolkit.tolerance import Tolerances

# Every variant the builder offers but lstm_unroll, which needs a fixed number of steps (unroll=True).
DEFAULT_VARIANTS = [name for name in VARIANTS if name != "lstm_unroll"]
SHAPES = [(1, 1), (1, 100), (32, 100)]
FEATURES, UNITS = 64, 128
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Row:
    variant: str
    batch: int
    steps: int
    keras_predict_ms: float
    tf_function_ms: float
    tf2onnx_ms: float
    lstm_onnx_ms: float
    minimal_ms: float | None
    mixed_mask_ms: float | None  # the lstm-onnx export on a batch with masks of every shape (masked variants)
    tf2onnx_loops: int
    gflops: float
    matmul_fraction: float
    same_matmuls_ms: float  # numpy doing only this export's gate matmuls, step after step
    # Fast forms of the lstm-onnx export, timed in an alternation of their own with lstm-onnx (see `fast_forms`):
    int8_ms: float | None = None  # ORT, int8 tier (LSTM variants; None where nothing is quantized)
    int8_max_abs: float | None = None  # against Keras, on this shape's inputs
    openvino_ms: float | None = None  # OpenVINO, f32 precision (None where not installed or not valid)
    openvino_max_abs: float | None = None
    best_exact: str = "lstm-onnx (ORT)"  # the fastest form within the default tolerance of Keras
    best_exact_ms: float = 0.0

    @property
    def vs_same_matmuls(self) -> float:
        return self.same_matmuls_ms / self.lstm_onnx_ms

    @property
    def vs_tf2onnx(self) -> float:
        return self.tf2onnx_ms / self.lstm_onnx_ms

    @property
    def vs_tf_function(self) -> float:
        return self.tf_function_ms / self.lstm_onnx_ms

    @property
    def vs_minimal(self) -> float | None:
        return self.lstm_onnx_ms / self.minimal_ms if self.minimal_ms else None


def median_ms(fn: Callable[[], Any], repeats: int, budget_s: float = 3.0) -> float:
    for _ in range(3):
        fn()  # warm-up: first calls allocate, trace or build kernels
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < repeats and (len(times) < 5 or time.perf_counter() < deadline):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def matmul_gflops(n: int = 1024, repeats: int = 20) -> float:
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    b = np.random.default_rng(1).standard_normal((n, n)).astype(np.float32)
    ms = median_ms(lambda: a @ b, repeats)
    return 2 * n**3 / (ms / 1e3) / 1e9


def recurrent_directions(model: Any) -> list[tuple[int, int, int]]:
    """(gates, features, units) of every direction of every top-level recurrent layer (a Bidirectional
    layer's inner layers are counted through it)."""
    directions = []
    for layer in model.layers:
        bidirectional = type(layer).__name__ == "Bidirectional"
        inner = layer.forward_layer if bidirectional else layer
        op = CELL_OPS.get(type(inner).__name__)
        if op is not None:
            shape = (GATES[op], int(inner.cell.kernel.shape[0]), int(inner.cell.units))
            directions += [shape] * (2 if bidirectional else 1)
    return directions


def recurrent_flops(model: Any, batch: int, steps: int) -> float:
    """Multiply-adds of the gate matmuls (x W + h R) of every recurrent layer, both directions."""
    return sum(steps * batch * 2 * gates * units * (features + units)
               for gates, features, units in recurrent_directions(model))


def numpy_recurrence_ms(model: Any, batch: int, steps: int, repeats: int) -> float:
    """numpy doing the gate matmuls of every recurrent layer (x W for all steps at once, then h R step
    after step), nothing else: how fast this machine multiplies matrices of exactly these shapes."""
    rng = np.random.default_rng(0)
    mats = [(rng.standard_normal((batch * steps, features)).astype(np.float32),
             rng.standard_normal((features, gates * units)).astype(np.float32),
             rng.standard_normal((batch, units)).astype(np.float32),
             rng.standard_normal((units, gates * units)).astype(np.float32))
            for gates, features, units in recurrent_directions(model)]

    def run() -> None:
        for x, w, h, r in mats:
            x @ w
            for _ in range(steps):
                h @ r

    return median_ms(run, repeats)


def minimal_graph(model: Any) -> Any | None:
    """Only the fused ops and the transposes they need, from the same weights (float inputs only)."""
    import onnx
    from onnx import helper

    layers = [layer for layer in model.layers  # top level: a Bidirectional's inner layers are not separate
              if type(layer).__name__ in ("LSTM", "GRU", "SimpleRNN", "Bidirectional")]
    if any(type(layer).__name__ == "Embedding" for layer in model._flatten_layers(include_self=False)):
        return None
    writer = GraphWriter(17)
    x = writer.transpose("input", [1, 0, 2])
    for layer in layers:
        try:
            bidirectional = type(layer).__name__ == "Bidirectional"
            plans = [plan_cell(layer.forward_layer), plan_cell(layer.backward_layer)] if bidirectional else [plan_cell(layer)]
        except NotFusable:
            return None
        direction = "bidirectional" if bidirectional else ("reverse" if layer.go_backwards else "forward")
        W = writer.const(np.stack([p.W for p in plans]))
        R = writer.const(np.stack([p.R for p in plans]))
        B = writer.const(np.stack([p.B for p in plans]))
        y = writer.op(plans[0].op, [x, W, R, B], outputs=1, **op_attributes(plans, direction))[0]
        # Y is (time, directions, batch, units): move directions next to units and merge them.
        x = writer.op1("Reshape", [writer.transpose(y, [0, 2, 1, 3]), writer.ints([0, 0, -1])])
    out = writer.transpose(x, [1, 0, 2])
    graph = helper.make_graph(
        writer.nodes, "minimal",
        [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["batch", "time", FEATURES])],
        [helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, None)], writer.initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    return proto


@dataclass
class FastForm:
    """A fast form of the lstm-onnx export (`toolkit.onnxfile.tiers`): its runner and whether it counts as exact."""

    name: str
    runner: Any
    exact: bool  # float32 math: a candidate for "best exact runtime"


def fast_forms(proto: Any, folder: Path) -> list[FastForm]:
    """ORT int8 and OpenVINO f32 of the export, where they apply (ORT's default thread count, as the others)."""
    import onnx

    from toolkit.errors import InputError
    from toolkit.runtimes.registry import RUNTIMES, open_checked

    path = folder / "export.onnx"
    onnx.save(proto, str(path))
    forms = []
    for name, exact in (("onnxruntime-int8", False), ("openvino", True)):
        if not RUNTIMES[name].installed():
            continue
        try:
            forms.append(FastForm(name, open_checked(RUNTIMES[name], path, proto, os.cpu_count() or 1), exact))
        except InputError as exc:  # not valid there, or refused by the runtime
            print(f"    {name}: not run ({exc})", flush=True)
    return forms


def fill_fast_columns(row: Row, timings: dict[str, float], forms: list[FastForm], expected: np.ndarray,
                      feeds: dict[str, np.ndarray]) -> None:
    """The fast forms' times and errors against Keras, and the best exact form (within 1e-5 of Keras,
    the default tolerance's scale, else it is not counted as exact)."""
    row.best_exact, row.best_exact_ms = "lstm-onnx (ORT)", row.lstm_onnx_ms
    for form in forms:
        ms = timings[form.name]
        error = float(np.abs(list(form.runner.run(feeds).values())[0].astype(np.float64) - expected).max())
        if form.name == "onnxruntime-int8":
            row.int8_ms, row.int8_max_abs = ms, error
        else:
            row.openvino_ms, row.openvino_max_abs = ms, error
        if form.exact and error <= 1e-5 and ms < row.best_exact_ms:
            row.best_exact, row.best_exact_ms = form.name, ms


def fast_markdown(rows: list[Row]) -> str:
    """The fast forms next to the float32 export: ratio = lstm-onnx (ORT float32) ms / the form's ms."""
    lines = ["Ratios are lstm-onnx (ORT float32) ms over the form's ms. Errors are on this benchmark's standard-normal "
             "inputs; on uniform(-1, 1) inputs int8 LSTM is off by about a third as much (3.5e-3 at 32 x 100).", "",
             "| variant | batch x steps | lstm-onnx (ORT) | ORT int8 | int8 max abs vs Keras | OpenVINO f32 | "
             "OpenVINO max abs | best exact runtime | best exact vs tf2onnx |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        int8 = f"{r.int8_ms:.3f} ({r.lstm_onnx_ms / r.int8_ms:.2f}x)" if r.int8_ms else "not quantized"
        vino = f"{r.openvino_ms:.3f} ({r.lstm_onnx_ms / r.openvino_ms:.2f}x)" if r.openvino_ms else "n/a"
        lines.append(f"| {r.variant} | {r.batch} x {r.steps} | {r.lstm_onnx_ms:.3f} | {int8} | "
                     f"{'' if r.int8_max_abs is None else f'{r.int8_max_abs:.1e}'} | {vino} | "
                     f"{'' if r.openvino_max_abs is None else f'{r.openvino_max_abs:.1e}'} | {r.best_exact} | "
                     f"{r.tf2onnx_ms / r.best_exact_ms:.2f}x |")
    return "\n".join(lines) + "\n"


def make_input(model: Any, batch: int, steps: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    if str(model.inputs[0].dtype).startswith("int"):
        return rng.integers(1, 20, (batch, steps)).astype(np.int32)
    return rng.standard_normal((batch, steps, FEATURES)).astype(np.float32)


def mixed_masks(model: Any, x: np.ndarray) -> np.ndarray | None:
    """`x` with masks of every shape (None for a model without a mask): sample after sample, unmasked,
    left-padded, right-padded, holes, all masked, then around again (a padded id 0 or all-zero step,
    what Embedding(mask_zero=True) and Masking(0.0) mask). Each shape masks about a third of the steps."""
    from toolkit.checking.inputs import padding_of

    if not padding_of(model).masked:
        return None
    steps = x.shape[1]
    cut = steps // 3
    kept = np.ones(x.shape[:2], bool)
    for i in range(x.shape[0]):
        kind = i % 5
        if kind == 1:
            kept[i, :cut] = False
        elif kind == 2:
            kept[i, steps - cut:] = False
        elif kind == 3:
            kept[i, 1::3] = False
        elif kind == 4:
            kept[i] = False
    mixed = x.copy()
    mixed[~kept] = 0
    return mixed


def bench_variant(name: str, repeats: int, onnx_only: bool = False) -> list[Row]:
    """The rows of one variant; `onnx_only`: only the ONNX Runtime sessions (no Keras, tf.function or numpy)."""
    import tensorflow as tf

    overrides: dict[str, Any] = {"units": UNITS, "features": FEATURES, "timesteps": None, "return_sequences": True,
                                 "return_state": False, "all_states": False, "initial_state": False}
    if "layers" not in VARIANTS[name]:
        overrides["layers"] = 1
    model = build_stack(variant_config(name, **overrides))
    loose = Tolerances.parse(atol=["1e-3"], rtol=["1e-2"])  # large models: the benchmark times, tests judge
    ours = OnnxRunner(export_model(model, tolerances=loose).model)
    theirs_result = export_model(model, tolerances=loose, converter="tf2onnx")
    theirs = OnnxRunner(theirs_result.model)
    loops = sum(theirs_result.op_counts.get(op, 0) for op in ("Loop", "Scan"))
    minimal_proto = minimal_graph(model)
    minimal = OnnxRunner(minimal_proto) if minimal_proto is not None else None
    traced = tf.function(lambda t: model(t, training=False))
    folder = tempfile.TemporaryDirectory()
    fast = fast_forms(ours.model, Path(folder.name))
    rows = []
    for batch, steps in SHAPES:
        x = make_input(model, batch, steps)
        x_tf = tf.constant(x)
        feeds = {"input": x}
        sessions = {"tf2onnx": lambda: theirs.session.run(None, feeds), "ours": lambda: ours.session.run(None, feeds)}
        if minimal:
            sessions["minimal"] = lambda: minimal.session.run(None, feeds)
        mixed = mixed_masks(model, x)
        if mixed is not None:
            sessions["mixed"] = lambda: ours.session.run(None, {"input": mixed})
        onnx_ms = interleaved_ms(sessions)
        if fast:
            # Timed beside the ONNX Runtime sessions, OpenVINO's own threads moved their times by up to 2x
            # (bidirectional 1 x 100: tf2onnx 1.27 ms alone, 0.61 ms beside OpenVINO). So the fast forms get
            # an alternation of their own with lstm-onnx, reported on the first group's scale.
            # Each form through its runner's `time_calls`, as `bench` times it: OpenVINO runs in a child
            # process, which times its own calls (timing `run` measured the JSON transfer to it: 51.9 ms
            # for LSTM 32 x 100 against 5.7 ms in ONNX Runtime, 2026-12-06).
            group = interleaved_timers({"ours": call_timer(sessions["ours"]),
                                        **{form.name: (lambda calls, r=form.runner: r.time_calls(feeds, calls))
                                           for form in fast}})
            onnx_ms.update({form.name: group[form.name] * onnx_ms["ours"] / group["ours"] for form in fast})
        if onnx_only:
            rows.append(Row(name, batch, steps, 0.0, 0.0, onnx_ms["tf2onnx"], onnx_ms["ours"], onnx_ms.get("minimal"),
                            onnx_ms.get("mixed"), loops, 0.0, 0.0, 0.0))
            print(f"  {name} b{batch} t{steps}: lstm-onnx {onnx_ms['ours']:.4f} ms, "
                  f"minimal {onnx_ms.get('minimal', 0):.4f}, tf2onnx {onnx_ms['tf2onnx']:.4f}, "
                  f"mixed masks {onnx_ms.get('mixed', 0):.4f}", flush=True)
            continue
        flops = recurrent_flops(model, batch, steps)
        row = Row(
            variant=name, batch=batch, steps=steps,
            keras_predict_ms=median_ms(lambda: model.predict(x, verbose=0, batch_size=batch), max(5, repeats // 4)),
            tf_function_ms=median_ms(lambda: traced(x_tf), repeats),
            tf2onnx_ms=onnx_ms["tf2onnx"], lstm_onnx_ms=onnx_ms["ours"], minimal_ms=onnx_ms.get("minimal"),
            mixed_mask_ms=onnx_ms.get("mixed"),
            tf2onnx_loops=loops, gflops=flops / (onnx_ms["ours"] / 1e3) / 1e9, matmul_fraction=0.0,
            same_matmuls_ms=numpy_recurrence_ms(model, batch, steps, repeats),
        )
        fill_fast_columns(row, onnx_ms, fast, np.asarray(model(x, training=False), np.float64), feeds)
        rows.append(row)
        print(f"  {name} b{batch} t{steps}: lstm-onnx {row.lstm_onnx_ms:.3f} ms, tf2onnx {row.tf2onnx_ms:.3f} ms "
              f"({row.vs_tf2onnx:.2f}x), tf.function {row.tf_function_ms:.3f} ms ({row.vs_tf_function:.1f}x)", flush=True)
    for form in fast:
        form.runner.close()
    folder.cleanup()
    return rows


def markdown(rows: list[Row], matmul: float, machine: str) -> str:
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {machine}; numpy float32 matmul: {matmul:.0f} GFLOP/s. "
        f"Median ms; 1 layer of {UNITS} units on {FEATURES} features unless the variant says otherwise. "
        "The ONNX Runtime columns are timed in alternation. \"vs numpy, same matmuls\": numpy's time for only "
        "the gate matmuls at these shapes, over lstm-onnx's time (above 1x: ONNX Runtime does the whole layer "
        "faster than numpy does its matmuls).",
        "",
        "| variant | batch x steps | Keras predict | tf.function | tf2onnx (ORT) | lstm-onnx (ORT) | minimal | "
        "lstm-onnx, mixed masks | vs tf2onnx | vs tf.function | vs minimal | GFLOP/s (% of matmul) | "
        "vs numpy, same matmuls |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        loop = " (Loop)" if r.tf2onnx_loops else ""
        minimal = f"{r.minimal_ms:.3f}" if r.minimal_ms else "n/a"
        vs_min = f"{r.vs_minimal:.2f}x" if r.vs_minimal else "n/a"
        mixed = f"{r.mixed_mask_ms:.3f}" if r.mixed_mask_ms else "n/a"
        lines.append(
            f"| {r.variant} | {r.batch} x {r.steps} | {r.keras_predict_ms:.2f} | {r.tf_function_ms:.3f} | "
            f"{r.tf2onnx_ms:.3f}{loop} | {r.lstm_onnx_ms:.3f} | {minimal} | {mixed} | {r.vs_tf2onnx:.2f}x | "
            f"{r.vs_tf_function:.1f}x | {vs_min} | {r.gflops:.1f} ({100 * r.matmul_fraction:.0f}%) | "
            f"{r.vs_same_matmuls:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def decoder_step() -> dict[str, float]:
    """The keras.io seq2seq single-step decoder (scripts/seq2seq.py): one step at batch 1."""
    import tempfile

    import tensorflow as tf

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import seq2seq

    _, encoder_model, decoder_model = seq2seq.build()
    with tempfile.TemporaryDirectory() as folder:
        _, decoder_path = seq2seq.export(encoder_model, decoder_model, Path(folder))
        timings = seq2seq.decoder_step_latency(decoder_model, decoder_path)
    target = seq2seq.one_hot(seq2seq.START, seq2seq.NUM_DECODER_TOKENS)
    h = np.zeros((1, seq2seq.LATENT_DIM), np.float32)
    traced = tf.function(lambda a, b, c: decoder_model([a, b, c], training=False))
    args = [tf.constant(v) for v in (target, h, h)]
    timings["tf_function_ms"] = median_ms(lambda: traced(*args), 50)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--onnx-only", action="store_true",
                        help="time only the ONNX Runtime sessions (no Keras, tf.function, numpy or seq2seq decoder)")
    args = parser.parse_args()

    import onnxruntime
    import tensorflow as tf

    matmul = matmul_gflops()
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}, tensorflow {tf.__version__}, " \
              f"onnxruntime {onnxruntime.__version__}"
    print(f"numpy float32 matmul: {matmul:.1f} GFLOP/s ({machine})", flush=True)
    rows: list[Row] = []
    for name in args.variants:
        rows += bench_variant(name, args.repeats, args.onnx_only)
    for row in rows:
        row.matmul_fraction = row.gflops / matmul
    step = decoder_step() if not args.onnx_only else None
    payload = {"machine": machine, "matmul_gflops": matmul, "units": UNITS, "features": FEATURES,
               "seq2seq_decoder_step": step,
               "rows": [asdict(r) | {"vs_tf2onnx": r.vs_tf2onnx, "vs_tf_function": r.vs_tf_function,
                                     "vs_minimal": r.vs_minimal, "vs_same_matmuls": r.vs_same_matmuls} for r in rows]}
    atomic_write_text(args.out / "benchmark.json", json.dumps(payload, indent=2) + "\n")
    table = markdown(rows, matmul, machine) + (
        "\nkeras.io seq2seq single-step decoder (LSTM 64, batch 1, one step; median ms): "
        f"Keras predict {step['keras_predict_ms']:.2f}, Keras call {step['keras_call_ms']:.3f}, "
        f"tf.function {step['tf_function_ms']:.3f}, lstm-onnx (ORT) {step['onnxruntime_ms']:.4f} "
        f"({step['keras_predict_ms'] / step['onnxruntime_ms']:.0f}x faster than predict)\n" if step else "")
    table += ("\nFast forms of the lstm-onnx export, timed in an alternation of their own with lstm-onnx (ORT "
              "sessions timed beside OpenVINO moved by up to 2x), at each runtime's default thread count:\n\n"
              + fast_markdown(rows))
    atomic_write_text(args.out / "benchmark.md", table)
    print(table)


if __name__ == "__main__":
    main()
