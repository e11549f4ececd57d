"""The one-step LSTM cell written in plain ONNX ops, for `stream_benchmark.py`'s "what bounds the call" rows
(issue 28): can ~10 small-node dispatches and one prepacked GEMV beat ONNX Runtime's LSTM kernel?

    python scripts/lstm_cell_graph.py            # every variant against the op alone and TFLite, ~1 minute

The export's LSTM weights are rearranged once: W (4H, F) and R (4H, H) become one (F + H, 4H) matrix over
`[x, h]`, the two biases one. ONNX's gate order is i, o, f, c, so the three sigmoid gates are already
contiguous. Two forms:

- `one_gemm`: Concat([x, h]) -> Gemm (bias fused) -> Split [3H, H] -> Sigmoid / Tanh -> Split [i, o, f]
  -> c' = f*c + i*g -> h' = o*tanh(c'): 11 nodes;
- `gate_gemms`: Concat -> one Gemm per gate, each followed by its activation (ORT_ENABLE_ALL fuses each
  pair into one FusedGemm) -> the same 5 elementwise nodes: no Split (a Split of 512 floats costs 0.4-0.6
  us, more than a Gemm's dispatch).

Run alone, it times every variant in `VARIANTS` at ORT_ENABLE_ALL and ENABLE_BASIC, with and without ONNX
Runtime's CPU arena, against the op alone, `open_stream` and TFLite, in alternation, the calling thread's CPU time first
(the machine is shared; see docs/speed.md). A measurement: it asserts nothing.

Each is checked against the op alone on a random step before it is timed. Default activations only
(Sigmoid, Tanh, Tanh, no clip, no input_forget): what the benchmark's export has.
"""

from __future__ import annotations

from typing import Any

import numpy as np

FORMS = ("one_gemm", "gate_gemms")  # what stream_benchmark.py times; VARIANTS: every form tried
VARIANTS = {
    "one_gemm": "Concat, one Gemm (bias fused), Split [3H, H], Sigmoid, Tanh, Split [i, o, f], 5 elementwise",
    "matmul_add": "as one_gemm with MatMul + Add for the Gemm",
    "two_matmuls": "no Concat: MatMul of x, Gemm of h adding it, Add of the bias, then as one_gemm",
    "two_gemms": "no Concat: Gemm of x (bias fused), Gemm of h adding it, then as one_gemm",
    "block_gemms": "Concat, a Gemm + Sigmoid for [i, o, f], a Gemm + Tanh for g, one Split, 5 elementwise",
    "gate_gemms": "Concat, a Gemm + activation per gate (no Split), 5 elementwise",
}
def _weights(proto: Any) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(W over [x, h] as (F + H, 4H), the summed bias (4H,), F, H) of the export's one LSTM op."""
    from onnx import helper, numpy_helper

    node = next(n for n in proto.graph.node if n.op_type == "LSTM")
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("activations", [b"Sigmoid", b"Tanh", b"Tanh"]) != [b"Sigmoid", b"Tanh", b"Tanh"] or "clip" in attrs:
        raise ValueError(f"Expected an LSTM with default activations and no clip. Received: {attrs}")
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    w, r = inits[node.input[1]][0], inits[node.input[2]][0]
    units, features = r.shape[1], w.shape[1]
    bias = inits[node.input[3]][0] if len(node.input) > 3 and node.input[3] else np.zeros(8 * units, np.float32)
    return np.concatenate([w, r], axis=1).T.copy(), bias[:4 * units] + bias[4 * units:], features, units


def _gates(form: str, wr: np.ndarray, bias: np.ndarray, features: int, units: int,
           add: Any) -> list[Any]:
    """The nodes from (x, h) to the gates i, o, f (sigmoid) and g (tanh) in `form`."""
    from onnx import helper

    node = helper.make_node
    b = bias.reshape(1, -1)
    concat = [node("Concat", ["x", "h"], ["xh"], axis=1)]
    if form in ("gate_gemms", "block_gemms"):
        blocks = ({g: slice(k * units, (k + 1) * units) for k, g in enumerate("iofg")} if form == "gate_gemms"
                  else {"s": slice(0, 3 * units), "g": slice(3 * units, 4 * units)})
        nodes = concat + [n for name, cols in blocks.items() for n in (
            node("Gemm", ["xh", add(f"w{name}", wr[:, cols]), add(f"b{name}", b[:, cols])], [f"z{name}"]),
            node("Tanh" if name == "g" else "Sigmoid", [f"z{name}"], [name]))]
        return nodes + ([node("Split", ["s"], ["i", "o", "f"], axis=1, num_outputs=3)] if form == "block_gemms" else [])
    if form == "one_gemm":
        nodes = concat + [node("Gemm", ["xh", add("wr", wr), add("b", b)], ["z"])]
    elif form == "matmul_add":
        nodes = concat + [node("MatMul", ["xh", add("wr", wr)], ["zw"]), node("Add", ["zw", add("b", b)], ["z"])]
    elif form == "two_matmuls":
        nodes = [node("MatMul", ["x", add("w", wr[:features])], ["zx"]),
                 node("Gemm", ["h", add("r", wr[features:]), "zx"], ["zw"]), node("Add", ["zw", add("b", b)], ["z"])]
    elif form == "two_gemms":
        nodes = [node("Gemm", ["x", add("w", wr[:features]), add("b", b)], ["zx"]),
                 node("Gemm", ["h", add("r", wr[features:]), "zx"], ["z"])]
    else:
        raise ValueError(f"Expected a form among {list(VARIANTS)}. Received: {form!r}")
    return nodes + [node("Split", ["z", add("sizes", np.array([3 * units, units], np.int64))], ["zs", "zg"], axis=1),
                    node("Sigmoid", ["zs"], ["s"]), node("Tanh", ["zg"], ["g"]),
                    node("Split", ["s"], ["i", "o", "f"], axis=1, num_outputs=3)]


def cell_graph(proto: Any, form: str) -> Any:
    """The cell as an ONNX model: inputs x (1, F), h (1, H), c (1, H); outputs h2, c2 (1, H)."""
    import onnx
    from onnx import helper, numpy_helper

    wr, bias, features, units = _weights(proto)
    const = []

    def add(name: str, array: np.ndarray) -> str:
        const.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    node = helper.make_node
    nodes = _gates(form, wr, bias, features, units, add) + [
        node("Mul", ["f", "c"], ["fc"]), node("Mul", ["i", "g"], ["ig"]), node("Add", ["fc", "ig"], ["c2"]),
        node("Tanh", ["c2"], ["tc"]), node("Mul", ["o", "tc"], ["h2"])]
    value = helper.make_tensor_value_info
    shape = {"x": [1, features], "h": [1, units], "c": [1, units], "h2": [1, units], "c2": [1, units]}
    graph = helper.make_graph(nodes, form, [value(n, onnx.TensorProto.FLOAT, shape[n]) for n in ("x", "h", "c")],
                              [value(n, onnx.TensorProto.FLOAT, shape[n]) for n in ("h2", "c2")], const)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def gemv_graph(proto: Any) -> Any:
    """The cell's arithmetic alone: one Gemm of [x, h] (1, F + H) by the (F + H, 4H) weights, bias fused."""
    import onnx
    from onnx import helper, numpy_helper

    wr, bias, features, units = _weights(proto)
    value = helper.make_tensor_value_info
    graph = helper.make_graph([helper.make_node("Gemm", ["xh", "wr", "b"], ["z"])], "gemv",
                              [value("xh", onnx.TensorProto.FLOAT, [1, features + units])],
                              [value("z", onnx.TensorProto.FLOAT, [1, 4 * units])],
                              [numpy_helper.from_array(wr, "wr"), numpy_helper.from_array(bias.reshape(1, -1), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    return model


def cell_error(cell_session: Any, op_session: Any, seed: int = 0) -> float:
    """Max abs difference of (h', c') between the cell graph and the op alone (`stream_benchmark.op_alone`:
    inputs X, s0, s1; outputs Y, o0, o1) on one random step from random states."""
    rng = np.random.default_rng(seed)
    x, h, c = (rng.uniform(-1, 1, (1, n)).astype(np.float32)
               for n in (op_session.get_inputs()[0].shape[-1], op_session.get_inputs()[1].shape[-1],
                         op_session.get_inputs()[1].shape[-1]))
    _, op_h, op_c = op_session.run(None, {"X": x[None], "s0": h[None], "s1": c[None]})
    cell_h, cell_c = cell_session.run(None, {"x": x, "h": h, "c": c})
    return float(max(np.abs(cell_h - op_h[0]).max(), np.abs(cell_c - op_c[0]).max()))


def _timers(cell: str = "lstm") -> tuple[dict[str, Any], dict[str, float]]:
    """Every form's timer, and each cell variant's max abs difference from the op alone."""
    import onnxruntime as ort
    import stream_benchmark as sb

    import toolkit
    from toolkit.export.exporter import export_model
    from toolkit.runtimes.onnxrt import open_session, session_options

    model = sb.keras3_model(cell, sequences=False)
    proto = export_model(model, state_io=True).model
    lite = sb.TFLite(sb.tf_keras_copy(model, cell, 1, 1, False, state_io=False))
    # A random step, not zeros: TFLite's LSTM kernel skips the input's product for an all-zero input (measured:
    # 6.4 against 8.8 us a call), which no real stream gives it.
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (1, 1, sb.FEATURES)).astype(np.float32)

    def opened(graph: Any, level: Any = ort.GraphOptimizationLevel.ORT_ENABLE_ALL, arena: bool = True) -> Any:
        options = session_options(1, level)
        options.enable_cpu_mem_arena = arena
        return open_session(graph, options)

    def bound(session: Any) -> Any:
        feeds = {i.name: rng.uniform(-1, 1, [d if isinstance(d, int) else 1 for d in i.shape]).astype(np.float32)
                 for i in session.get_inputs()}
        return sb.call_timer(sb.bound_call(session, feeds))

    alone = opened(sb.op_alone(proto))
    timers = {"TFLite set_tensor + invoke + get_tensor": sb.call_timer(lambda: lite.call(x)),
              "TFLite invoke alone": sb.call_timer(lite.it.invoke),
              "Identity graph": bound(opened(sb.identity_graph())),
              "the cell's Gemm alone": bound(opened(gemv_graph(proto))),
              "LSTM op alone": bound(alone), "LSTM op alone, arena off": bound(opened(sb.op_alone(proto), arena=False))}
    for copy in (True, False):
        stream = toolkit.open_stream(proto, copy=copy)
        timers[f"open_stream, copy={copy}"] = sb.call_timer(lambda stream=stream: stream.step(x))
    errors = {}
    for form in VARIANTS:
        for level in ("ALL", "BASIC"):
            session = opened(cell_graph(proto, form), getattr(ort.GraphOptimizationLevel, f"ORT_ENABLE_{level}"))
            errors[form] = cell_error(session, alone)
            timers[f"cell {form}, {level}"] = bound(session)
        timers[f"cell {form}, ALL, arena off"] = bound(opened(cell_graph(proto, form), arena=False))
    return timers, errors


def main() -> None:
    import os

    import stream_benchmark as sb

    loads = [os.getloadavg()[0]]
    timers, errors = _timers()
    clock = sb.Clock()
    wall = sb.interleaved_timers({name: clock.wrap(name, t) for name, t in timers.items()}, budget_s=20.0, rounds=15)
    loads.append(os.getloadavg()[0])
    cpu = clock.medians_us()
    print(f"LSTM(128) on 64 features, one step, batch 1, 1 thread, C-level I/O binding; 1-minute load average "
          f"{min(loads):.1f}-{max(loads):.1f}\n\n| form | CPU us | wall us |\n|---|---|---|")
    for name, ms in wall.items():
        print(f"| {name} | {cpu[name]:.2f} | {ms * 1e3:.2f} |")
    print("\nmax abs (h, c) against the op alone on a random step: "
          + ", ".join(f"{form} {error:.1e}" for form, error in errors.items()))
    for form, text in VARIANTS.items():
        print(f"- {form}: {text}")


if __name__ == "__main__":
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
