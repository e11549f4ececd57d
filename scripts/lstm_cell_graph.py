"""The one-step LSTM cell written in plain ONNX ops, for `stream_benchmark.py`'s "what bounds the call" rows
(issue 28): can ~10 small-node dispatches and one prepacked GEMV beat ONNX Runtime's LSTM kernel?

The export's LSTM weights are rearranged once: W (4H, F) and R (4H, H) become one (F + H, 4H) matrix over
`[x, h]`, the two biases one. ONNX's gate order is i, o, f, c, so the three sigmoid gates are already
contiguous. Two forms:

- `one_gemm`: Concat([x, h]) -> Gemm (bias fused) -> Split [3H, H] -> Sigmoid / Tanh -> Split [i, o, f]
  -> c' = f*c + i*g -> h' = o*tanh(c'): 11 nodes;
- `gate_gemms`: Concat -> one Gemm per gate, each followed by its activation (ORT_ENABLE_ALL fuses each
  pair into one FusedGemm) -> the same 5 elementwise nodes: no Split (a Split of 512 floats costs 0.4-0.6
  us, more than a Gemm's dispatch).

Each is checked against the op alone on a random step before it is timed. Default activations only
(Sigmoid, Tanh, Tanh, no clip, no input_forget): what the benchmark's export has.
"""

from __future__ import annotations

from typing import Any

import numpy as np

FORMS = ("one_gemm", "gate_gemms")


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
    nodes = [node("Concat", ["x", "h"], ["xh"], axis=1)]
    if form == "one_gemm":
        nodes += [node("Gemm", ["xh", add("wr", wr), add("b", bias.reshape(1, -1))], ["z"]),
                  node("Split", ["z", add("sizes", np.array([3 * units, units], np.int64))], ["zs", "zg"], axis=1),
                  node("Sigmoid", ["zs"], ["s"]), node("Tanh", ["zg"], ["g"]),
                  node("Split", ["s"], ["i", "o", "f"], axis=1, num_outputs=3)]
    elif form == "gate_gemms":
        for k, gate in enumerate(("i", "o", "f", "g")):
            cols = slice(k * units, (k + 1) * units)
            nodes += [node("Gemm", ["xh", add(f"w{gate}", wr[:, cols]), add(f"b{gate}", bias[cols].reshape(1, -1))],
                           [f"z{gate}"]),
                      node("Tanh" if gate == "g" else "Sigmoid", [f"z{gate}"], [gate])]
    else:
        raise ValueError(f"Expected a form among {FORMS}. Received: {form!r}")
    nodes += [node("Mul", ["f", "c"], ["fc"]), node("Mul", ["i", "g"], ["ig"]), node("Add", ["fc", "ig"], ["c2"]),
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
