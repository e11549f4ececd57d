"""Streaming speed against TFLite: one carried step per call, and the speed table's long-sequence rows.

    python scripts/stream_benchmark.py                       # about 5 minutes on 2 shared cores
    python scripts/stream_benchmark.py --cells lstm --no-table --seconds 4

Part 1, one step per call (issue 28): the same model, 128 units on 64 features, batch 1, one step per call,
the states carried from call to call, for LSTM, GRU and SimpleRNN. TFLite runs a tf_keras copy of the
Keras 3 model (same weights) converted by `tf.lite.TFLiteConverter.from_keras_model`, 1 thread,
set_tensor + invoke + get_tensor: LSTM becomes the fused UNIDIRECTIONAL_SEQUENCE_LSTM, whose states are
variable tensors the interpreter carries itself; GRU and SimpleRNN have no fused op (WHILE), so their copy
takes and returns the state and the loop feeds it back, as ours does. Beside it: ONNX Runtime `session.run`
(1 and 2 threads), its I/O binding through the Python wrapper and through the C-level call, `open_stream`
(copies of the outputs, and its buffers), Node (`await session.run`, timed in Node), OpenVINO (one infer
request, timed in its process), tf.function over the same step. Then what bounds the call: TFLite's
invoke alone, an Identity graph's call cost (dispatch), the ONNX LSTM/GRU/RNN op alone in a graph (op and
kernel; with and without ONNX Runtime's CPU arena), for LSTM the cell written in plain ONNX ops
(`lstm_cell_graph.py`: one Gemm and Splits, or a Gemm per gate) and that cell's Gemm alone, numpy doing only
the step's matmuls (the arithmetic).

Part 2, the speed table at 1 x 100 and 32 x 100 (return_sequences): TFLite, tf.function, tf2onnx's export
in ONNX Runtime, and lstm-onnx's export in its best exact form (ONNX Runtime or OpenVINO f32, 1 or 2
threads; for SimpleRNN also `onnxruntime-scan`, its RNN ops as MatMul + Scan; OpenVINO and the Scan form
count as exact only within 1e-5 of Keras).

The machine is shared: every form of a group is timed in alternation, round after round, and the medians
are compared (`toolkit.speed.bench.interleaved_timers`), so load lands on all of them alike. It writes JSON and
markdown under scripts/results/. A benchmark: it measures and never asserts.
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
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
warnings.filterwarnings("ignore")  # tf.lite.Interpreter's deprecation notice, once per interpreter

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmark import matmul_gflops  # noqa: E402

from toolkit.fileio import atomic_write_text  # noqa: E402
from toolkit.speed.bench import call_timer, interleaved_timers  # noqa: E402

FEATURES, UNITS = 64, 128
CELLS = {"lstm": ("LSTM", 2), "gru": ("GRU", 1), "simple_rnn": ("SimpleRNN", 1)}  # Keras class, states
RESULTS = Path(__file__).resolve().parent / "results"
SCAN_FORM = "lstm-onnx ORT RNN as Scan"  # SimpleRNN's RNN ops rewritten at open (runtime onnxruntime-scan)


class Clock:
    """The calling thread's CPU time beside wall time, for the forms that compute on that one thread (1
    intra-op thread, TFLite at 1 thread): on a shared machine a call's wall time includes the time other
    processes held the core, its thread's CPU time does not. Forms with more threads (x2, tf.function) and
    the child runtimes (Node, OpenVINO) have wall time only: a thread clock would miss their other threads,
    and the process clock counts every idle pool's spinning (it read more CPU than wall time)."""

    def __init__(self) -> None:
        self.cpu: dict[str, list[tuple[int, float]]] = {}

    def wrap(self, name: str, timed: Any) -> Any:
        samples = self.cpu.setdefault(name, [])

        def both(calls: int) -> float:
            start = time.thread_time()
            wall = timed(calls)
            samples.append((calls, (time.thread_time() - start) / max(calls, 1)))
            return wall

        return both

    def medians_us(self) -> dict[str, float]:
        """Medians over the timed blocks only (the most calls): `interleaved_timers` also makes 1 and 3
        calls to calibrate and to wake a session up, each slower than a warm call."""
        found = {}
        for name, samples in self.cpu.items():
            if samples:
                most = max(calls for calls, _ in samples)
                found[name] = statistics.median(t for calls, t in samples if calls == most) * 1e6
        return found


def keras3_model(cell: str, sequences: bool) -> Any:
    from toolkit.models.builder import StackConfig, build_stack

    return build_stack(StackConfig(layers=1, units=UNITS, features=FEATURES, timesteps=None, cell=cell,
                                   return_sequences=sequences))


def tf_keras_copy(model: Any, cell: str, batch: int, steps: int, sequences: bool, state_io: bool) -> Any:
    """The same layer in tf_keras (Keras 2, what TFLite fuses) with the Keras 3 model's weights, at a fixed
    shape; `state_io`: the states are inputs and outputs."""
    import tf_keras

    kind, states = CELLS[cell]
    layer = getattr(tf_keras.layers, kind)(UNITS, return_sequences=sequences, return_state=state_io)
    x = tf_keras.Input((steps, FEATURES), batch_size=batch, name="x")
    if not state_io:
        copy = tf_keras.Model(x, layer(x))
    else:
        ins = [tf_keras.Input((UNITS,), batch_size=batch, name=f"s{i}") for i in range(states)]
        copy = tf_keras.Model([x, *ins], layer(x, initial_state=ins))
    source = next(lay for lay in model.layers if hasattr(lay, "cell"))
    layer.set_weights(source.get_weights())
    return copy


class TFLite:
    """One interpreter at 1 thread; `call(x)` = set_tensor (x and any states) + invoke + get_tensor."""

    def __init__(self, keras2_model: Any):
        import tensorflow as tf

        flat = tf.lite.TFLiteConverter.from_keras_model(keras2_model).convert()
        self.it = tf.lite.Interpreter(model_content=flat, num_threads=1)
        self.it.allocate_tensors()
        self.ops = sorted({d["op_name"] for d in self.it._get_ops_details()} - {"STRIDED_SLICE", "SHAPE", "PACK"})
        details = self.it.get_input_details()
        self.x = next(d["index"] for d in details if "_x:" in d["name"])
        self.state_ins = sorted((d["name"], d["index"]) for d in details if d["index"] != self.x)
        outs = self.it.get_output_details()
        self.outs = [d["index"] for d in outs]
        self.states = [np.zeros((1, UNITS), np.float32) for _ in self.state_ins]

    def call(self, x: np.ndarray) -> list[np.ndarray]:
        it = self.it
        it.set_tensor(self.x, x)
        for (_, index), state in zip(self.state_ins, self.states):
            it.set_tensor(index, state)
        it.invoke()
        got = [it.get_tensor(i) for i in self.outs]
        if self.states:  # outputs: the output, then the states in order (tf_keras return_state)
            self.states = got[1:]
        return got


def identity_graph() -> Any:
    import onnx
    from onnx import helper

    value = helper.make_tensor_value_info
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity",
                              [value("x", onnx.TensorProto.FLOAT, [1, UNITS])], [value("y", onnx.TensorProto.FLOAT, [1, UNITS])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def bound_call(session: Any, feeds: dict[str, np.ndarray], wrapper: bool = False) -> Any:
    """A run of `session` through I/O binding over buffers bound once (inputs and outputs)."""
    import onnxruntime as ort

    binding = session.io_binding()
    keep = []
    for info in session.get_inputs():
        keep.append(np.ascontiguousarray(feeds[info.name]))
        binding.bind_ortvalue_input(info.name, ort.OrtValue.ortvalue_from_numpy(keep[-1]))
    probe = session.run(None, feeds)
    for info, value in zip(session.get_outputs(), probe):
        keep.append(np.empty_like(value))
        binding.bind_ortvalue_output(info.name, ort.OrtValue.ortvalue_from_numpy(keep[-1]))
    options = ort.RunOptions()
    if wrapper:
        return lambda: (keep, session.run_with_iobinding(binding, options))
    inner, raw = session._sess, binding._iobinding
    return lambda: (keep, inner.run_with_iobinding(raw, options))


def op_alone(proto: Any) -> Any:
    """The export's recurrent op alone, time-major, states in and out: what ONNX Runtime runs as the kernel."""
    import onnx
    from onnx import helper

    node = next(n for n in proto.graph.node if n.op_type in ("LSTM", "GRU", "RNN"))
    keep = {name for name in node.input[1:4] if name}
    inits = [t for t in proto.graph.initializer if t.name in keep]
    states = 2 if node.op_type == "LSTM" else 1
    value = helper.make_tensor_value_info
    ins = [value("X", onnx.TensorProto.FLOAT, [1, 1, FEATURES])] + [
        value(f"s{i}", onnx.TensorProto.FLOAT, [1, 1, UNITS]) for i in range(states)]
    inputs = ["X", *node.input[1:4], "", "s0"] + (["s1"] if states == 2 else [])
    outputs = ["Y"] + [f"o{i}" for i in range(states)]
    copy = helper.make_node(node.op_type, inputs, outputs)
    copy.attribute.extend(node.attribute)
    graph = helper.make_graph([copy], "op", ins, [value(n, onnx.TensorProto.FLOAT, None) for n in outputs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def one_step_forms(cell: str, folder: Path, clock: Clock) -> tuple[dict[str, Any], dict[str, str], dict[str, float]]:
    """Every one-step form of this cell: `name -> timer(calls) -> seconds per call` (the in-process ones
    wrapped by `clock`); notes; errors vs Keras."""
    import tensorflow as tf

    import toolkit
    from toolkit.export.exporter import export_model
    from toolkit.onnxfile import metadata
    from toolkit.runtimes.js import NodeRunner
    from toolkit.runtimes.onnxrt import open_session, session_options
    from toolkit.runtimes.openvino import OpenVinoRunner

    model = keras3_model(cell, sequences=False)
    proto = export_model(model, state_io=True).model
    path = folder / f"{cell}.onnx"
    path.write_bytes(proto.SerializeToString())
    mapping = metadata.read_state_map(proto)
    x = np.random.default_rng(0).uniform(-1, 1, (1, 1, FEATURES)).astype(np.float32)
    lite = TFLite(tf_keras_copy(model, cell, 1, 1, False, state_io=cell != "lstm"))
    notes = {"tflite ops": ",".join(lite.ops)}
    zeros = {name: np.zeros((1, UNITS), np.float32) for name in mapping}
    names = [o.name for o in proto.graph.output]
    index = {name: names.index(out) for name, out in mapping.items()}
    forms: dict[str, Any] = {"TFLite invoke (1 thread)": call_timer(lambda: lite.call(x))}
    for threads in (1, 2):
        session = open_session(proto, session_options(threads))
        feeds = {"input": x, **zeros}

        def run(session: Any = session, feeds: dict = feeds) -> None:
            out = session.run(None, feeds)
            for name, at in index.items():
                feeds[name] = out[at]

        forms[f"ORT session.run x{threads}"] = call_timer(run)
    single = open_session(proto, session_options(1))
    forms["ORT run_with_iobinding (Python wrapper) x1"] = call_timer(bound_call(single, {"input": x, **zeros}, True))
    forms["ORT I/O binding, C-level call x1"] = call_timer(bound_call(single, {"input": x, **zeros}))
    stream, buffers, stream2 = (toolkit.open_stream(proto), toolkit.open_stream(proto, copy=False),
                                toolkit.open_stream(proto, threads=2))
    forms["open_stream x1"] = call_timer(lambda: stream.step(x))
    forms["open_stream x1, copy=False"] = call_timer(lambda: buffers.step(x))
    in_place = toolkit.open_stream(proto, copy=False)
    in_place.input[...] = x  # the caller writes each step into the bound buffer: no copy, no check
    forms["open_stream x1, copy=False, step in session.input"] = call_timer(lambda: in_place.step(in_place.input))
    every = toolkit.open_stream(proto, outputs=names)
    forms["open_stream x1, every output copied (states too)"] = call_timer(lambda: every.step(x))
    forms["open_stream x2"] = call_timer(lambda: stream2.step(x))
    quiet2 = toolkit.open_stream(proto, threads=2, spinning=False)
    forms["open_stream x2, spinning off"] = call_timer(lambda: quiet2.step(x))
    node = NodeRunner(path, proto, threads=1)
    forms["Node await session.run x1 (timed in Node)"] = lambda calls: node.stream("input", [x], zeros, mapping, calls)[0]
    vino = OpenVinoRunner(path, proto, threads=1)
    forms["OpenVINO infer x1 (timed in its process)"] = lambda calls: vino.stream("input", [x], zeros, mapping, calls)[0]
    step_model = tf_keras_copy(model, cell, 1, 1, False, state_io=True)
    traced = tf.function(lambda *args: step_model(list(args), training=False))
    tf_states = [tf.constant(v) for v in zeros.values()]
    tf_x = tf.constant(x)

    def tf_step() -> None:
        out = traced(tf_x, *tf_states)
        tf_states[:] = out[1:]

    forms["tf.function (TF default threads)"] = call_timer(tf_step)
    forms.update(bound_forms(proto, cell, lite, notes))
    errors = _one_step_errors(model, lite, stream, cell)
    return {k: clock.wrap(k, v) if single_threaded(k) else v for k, v in forms.items()}, notes, errors


def bound_forms(proto: Any, cell: str, lite: TFLite, notes: dict[str, str]) -> dict[str, Any]:
    """What bounds the call: TFLite's invoke alone, an Identity graph's call (dispatch), the op alone (with and
    without ONNX Runtime's CPU arena), for LSTM its cell in plain ONNX ops (`lstm_cell_graph`) and that
    cell's one Gemm alone, and numpy doing only the step's matmul. All at 1 thread, C-level I/O binding."""
    from lstm_cell_graph import FORMS, cell_error, cell_graph, gemv_graph

    from toolkit.runtimes.onnxrt import open_session, session_options

    def zeros(session: Any) -> dict[str, np.ndarray]:
        return {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], np.float32) for i in session.get_inputs()}

    forms = {"bound: TFLite invoke alone (no set_tensor, get_tensor)": call_timer(lite.it.invoke)}
    ident = open_session(identity_graph(), session_options(1))
    one = np.zeros((1, UNITS), np.float32)
    forms["bound: Identity graph, session.run"] = call_timer(lambda: ident.run(None, {"x": one}))
    forms["bound: Identity graph, C-level I/O binding"] = call_timer(bound_call(ident, {"x": one}))
    alone = open_session(op_alone(proto), session_options(1))
    forms["bound: the recurrent op alone, C-level I/O binding"] = call_timer(bound_call(alone, zeros(alone)))
    no_arena = session_options(1)
    no_arena.enable_cpu_mem_arena = False
    bare = open_session(op_alone(proto), no_arena)
    forms["bound: the op alone, ORT's CPU arena off"] = call_timer(bound_call(bare, zeros(bare)))
    if cell == "lstm":  # open_stream's: the bias folded into W (toolkit.deploy.step_graph)
        from toolkit.deploy.step_graph import step_graph

        plan = step_graph(proto, 1, 1, {i.name: i.type.tensor_type.shape.dim[-1].dim_value for i in proto.graph.input})
        folded = open_session(plan.model, no_arena)
        forms["bound: the op alone, arena off, bias folded into W (open_stream's)"] = call_timer(
            bound_call(folded, zeros(folded)))
    if cell == "lstm":
        for form, label in zip(FORMS, ("one Gemm, 2 Splits (11 nodes)", "a Gemm per gate, no Split (10 nodes fused)")):
            session = open_session(cell_graph(proto, form), session_options(1))  # ORT_ENABLE_ALL
            notes[f"cell {form} max abs vs op"] = f"{cell_error(session, alone):.1e}"
            forms[f"bound: LSTM cell in ONNX ops, {label}"] = call_timer(bound_call(session, zeros(session)))
        gemv = open_session(gemv_graph(proto), session_options(1))
        forms["bound: the cell's Gemm alone (1 x 192 by 192 x 512, bias)"] = call_timer(bound_call(gemv, zeros(gemv)))
    gates = {"lstm": 4, "gru": 3, "simple_rnn": 1}[cell]
    w = np.random.default_rng(1).standard_normal((FEATURES + UNITS, gates * UNITS)).astype(np.float32)
    xh = np.zeros((1, FEATURES + UNITS), np.float32)
    forms["bound: numpy [x h] @ [W; R] only"] = call_timer(lambda: xh @ w)
    return forms


def single_threaded(form: str) -> bool:
    """A form that computes on the calling thread alone (see `Clock`)."""
    return not form.startswith(("Node", "OpenVINO", "tf.function")) and "x2" not in form


def _one_step_errors(model: Any, lite: TFLite, stream: Any, cell: str, steps: int = 20) -> dict[str, float]:
    """Max abs error against Keras of TFLite and open_stream over `steps` carried calls from zero states."""
    seq = np.random.default_rng(3).uniform(-1, 1, (1, steps, FEATURES)).astype(np.float32)
    expected = np.asarray(model(seq, training=False))
    lite.states = [np.zeros((1, UNITS), np.float32) for _ in lite.state_ins]
    if cell == "lstm":
        lite.it.reset_all_variables()
    stream.reset()
    lite_out = [lite.call(seq[:, t:t + 1])[0] for t in range(steps)][-1]
    name = stream.output_names[0]
    ours = [stream.step(seq[:, t:t + 1])[name] for t in range(steps)][-1]
    stream.reset()
    return {"tflite": float(np.abs(lite_out - expected).max()), "open_stream": float(np.abs(ours - expected).max())}


def table_row(variant: str, batch: int, steps: int, folder: Path, seconds: float) -> dict[str, Any]:
    """TFLite, tf.function, tf2onnx and lstm-onnx's forms at one shape, in one alternation. TFLite gets a
    tf_keras copy (its fused LSTM): the builder's Keras 3 models, with a dynamic batch, convert only with
    TensorFlow (Flex) ops, which this tf.lite.Interpreter cannot run, so the other variants are not here."""
    import tensorflow as tf

    from toolkit.export.exporter import export_model
    from toolkit.runtimes.onnxrt import OnnxRunner
    from toolkit.runtimes.openvino import OpenVinoRunner
    from toolkit.runtimes.rnn_scan import open_scan
    from toolkit.tolerance import Tolerances

    model = keras3_model(variant, sequences=True)
    loose = Tolerances.parse(atol=["1e-3"], rtol=["1e-2"])  # the benchmark times; tests judge
    ours = export_model(model, tolerances=loose).model
    path = folder / f"{variant}_seq.onnx"
    path.write_bytes(ours.SerializeToString())
    theirs = export_model(model, tolerances=loose, converter="tf2onnx").model
    x = np.random.default_rng(0).uniform(-1, 1, (batch, steps, FEATURES)).astype(np.float32)
    feeds = {"input": x}
    lite = TFLite(tf_keras_copy(model, variant, batch, steps, True, state_io=False))
    traced = tf.function(lambda t: model(t, training=False))
    tx = tf.constant(x)
    timers: dict[str, Any] = {"TFLite": call_timer(lambda: lite.call(x)), "tf.function": call_timer(lambda: traced(tx))}
    runners: dict[str, Any] = {}
    for threads in (1, 2):
        for label, proto in (("tf2onnx", theirs), ("lstm-onnx ORT", ours)):
            runners[f"{label} x{threads}"] = OnnxRunner(proto, threads=threads)
        if variant == "simple_rnn":  # the registry's onnxruntime-scan: the file's RNN ops as MatMul + Scan
            runners[f"{SCAN_FORM} x{threads}"] = open_scan(path, ours, threads=threads)
        runners[f"lstm-onnx OpenVINO x{threads}"] = OpenVinoRunner(path, ours, threads=threads)
    timers.update({k: (lambda calls, r=r: r.time_calls(feeds, calls)) for k, r in runners.items()})
    clock = Clock()
    ms = interleaved_timers({k: clock.wrap(k, v) if single_threaded(k) else v for k, v in timers.items()}, budget_s=seconds)
    cpu_ms = {k: v / 1e3 for k, v in clock.medians_us().items()}
    expected = np.asarray(model(x, training=False))
    # A form that is not ONNX Runtime's run of the file counts as exact only within 1e-5 of Keras.
    errors = {form: float(np.abs(runners[f"{form} x1"].run(feeds)[runners[f"{form} x1"].output_names[0]] - expected).max())
              for form in ("lstm-onnx OpenVINO", SCAN_FORM) if f"{form} x1" in runners}
    for runner in runners.values():
        runner.close()
    exact = {k: v for k, v in ms.items() if k.startswith("lstm-onnx")
             and all(errors[form] <= 1e-5 for form in errors if k.startswith(form))}
    best = min(exact, key=exact.get)
    return {"cell": variant, "batch": batch, "steps": steps, "tflite_ops": ",".join(lite.ops), "ms": ms, "cpu_ms": cpu_ms,
            "tf2onnx_best": min(ms["tf2onnx x1"], ms["tf2onnx x2"]), "best_form": best, "best_ms": ms[best],
            "openvino_max_abs": errors["lstm-onnx OpenVINO"],
            **({"scan_max_abs": errors[SCAN_FORM]} if SCAN_FORM in errors else {})}


def one_step_markdown(results: dict[str, dict[str, Any]]) -> str:
    """Per cell: wall us (vs TFLite) and CPU us (vs TFLite); ratios above 1x are faster than TFLite."""
    cells = list(results)
    lite = "TFLite invoke (1 thread)"
    lines = ["| one step, batch 1, states carried | " + " | ".join(f"{c} wall us (vs TFLite) | {c} CPU us (vs TFLite)"
                                                                   for c in cells) + " |",
             "|---|" + "---|---|" * len(cells)]
    for form in dict.fromkeys(f for c in cells for f in results[c]["us"]):
        row = [form]
        for cell in cells:
            wall, cpu = results[cell]["us"].get(form), results[cell]["cpu_us"].get(form)
            if wall is None:
                row += ["", ""]
                continue
            bound = form.startswith("bound:")
            row.append(f"{wall:.1f}" + ("" if bound else f" ({results[cell]['us'][lite] / wall:.2f}x)"))
            row.append("" if cpu is None else f"{cpu:.1f}" + ("" if bound else f" ({results[cell]['cpu_us'][lite] / cpu:.2f}x)"))
        lines.append("| " + " | ".join(row) + " |")
    ops = "; ".join(f"{c}: {results[c]['notes']['tflite ops']}" for c in cells)
    cell_notes = "; ".join(f"{k}: {v}" for c in cells for k, v in results[c]["notes"].items() if k.startswith("cell "))
    errors = "; ".join(f"{c}: TFLite {results[c]['errors']['tflite']:.1e}, open_stream {results[c]['errors']['open_stream']:.1e}"
                       for c in cells)
    return "\n".join(lines) + (f"\n\nTFLite ops: {ops}. Max abs error vs Keras after 20 carried steps: {errors}."
                               + (f" LSTM cell graphs against the op alone on a random step: {cell_notes}." if cell_notes else "")
                               + "\n")


def table_markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| variant | batch x steps | TFLite (op) | tf.function | tf2onnx (best of x1, x2) | lstm-onnx best exact "
             "(form) | vs TFLite | vs tf.function | vs tf2onnx | CPU ms: TFLite, lstm-onnx ORT x1 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ms, cpu = r["ms"], r["cpu_ms"]
        lines.append(f"| {r['cell']} | {r['batch']} x {r['steps']} | {ms['TFLite']:.3f} ({r['tflite_ops']}) | "
                     f"{ms['tf.function']:.3f} | {r['tf2onnx_best']:.3f} | {r['best_ms']:.3f} ({r['best_form']}) | "
                     f"{ms['TFLite'] / r['best_ms']:.2f}x | {ms['tf.function'] / r['best_ms']:.2f}x | "
                     f"{r['tf2onnx_best'] / r['best_ms']:.2f}x | {cpu['TFLite']:.3f}, {cpu['lstm-onnx ORT x1']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", nargs="+", default=list(CELLS), choices=list(CELLS))
    parser.add_argument("--seconds", type=float, default=10.0, help="timing budget of each alternation")
    parser.add_argument("--no-table", action="store_true", help="only the one-step part")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    import onnxruntime
    import tensorflow as tf

    matmul = matmul_gflops()
    machine = (f"{platform.machine()}, {os.cpu_count()} cores (shared), Python {platform.python_version()}, "
               f"tensorflow {tf.__version__}, onnxruntime {onnxruntime.__version__}")
    print(f"{time.strftime('%Y-%m-%d %H:%M')} numpy float32 matmul: {matmul:.1f} GFLOP/s ({machine})", flush=True)
    one_step: dict[str, dict[str, Any]] = {}
    rows: list[dict[str, Any]] = []
    loads = [os.getloadavg()[0]]  # the 1-minute load average, before and after each part: how shared the run was
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        for cell in args.cells:
            clock = Clock()
            forms, notes, errors = one_step_forms(cell, folder, clock)
            us = {k: v * 1e3 for k, v in interleaved_timers(forms, budget_s=args.seconds, rounds=21).items()}
            one_step[cell] = {"us": us, "cpu_us": clock.medians_us(), "notes": notes, "errors": errors}
            print(f"{cell}: " + ", ".join(f"{k} {v:.1f}" for k, v in us.items()), flush=True)
            print("  cpu: " + ", ".join(f"{k} {v:.1f}" for k, v in one_step[cell]["cpu_us"].items()), flush=True)
            loads.append(os.getloadavg()[0])
        for cell in [] if args.no_table else args.cells:
            for batch, steps in ((1, 100), (32, 100)):
                rows.append(table_row(cell, batch, steps, folder, args.seconds))
                r = rows[-1]
                loads.append(os.getloadavg()[0])
                print(f"{cell} {batch}x{steps}: " + ", ".join(f"{k} {v:.3f}" for k, v in r["ms"].items()), flush=True)
    payload = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine, "matmul_gflops": matmul,
               "load_average_1min": loads, "one_step_us": one_step, "table": rows}
    atomic_write_text(args.out / "stream_benchmark.json", json.dumps(payload, indent=2) + "\n")
    text = (f"Measured {payload['date']} on {machine}; numpy float32 matmul {matmul:.0f} GFLOP/s; 1-minute load "
            f"average {min(loads):.1f}-{max(loads):.1f} during the run. Medians of forms timed in alternation, round "
            "after round, in one process.\n\n" + one_step_markdown(one_step)
            + ("\n" + table_markdown(rows) if rows else ""))
    atomic_write_text(args.out / "stream_benchmark.md", text)
    print(text)


if __name__ == "__main__":
    main()
