"""Graph surgery on small hand-written graphs: output names, axis names, canonical names, opset imports."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from toolkit.errors import ExportError
from toolkit.export.graph import canonicalize, name_axes, name_outputs, prune_opset_imports, set_shape
from toolkit.tf2onnx_lib import InputSignature


def _model(output_names=("Identity:0", "Identity_1:0"), same_tensor=False, domain_import=False, n=3):
    """x -> Add(weight) -> Relu -> outputs; tf2onnx-like names and an unused initializer."""
    weight = numpy_helper.from_array(np.ones((3,), np.float32), f"const_fold_opt__{n + 9}")
    unused = numpy_helper.from_array(np.zeros((1,), np.float32), "unused__7")
    nodes = [helper.make_node("Add", ["x", f"const_fold_opt__{n + 9}"], [f"add__{n}:0"], name=f"model/add__{n}"),
             helper.make_node("Relu", [f"add__{n}:0"], [output_names[0]], name=f"model/relu__{n + 6}")]
    second = output_names[0] if same_tensor else output_names[1]
    if not same_tensor:
        nodes.append(helper.make_node("Neg", [f"add__{n}:0"], [second], name="model/neg__1"))
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["unk__1", "unk__2", 3])],
        [helper.make_tensor_value_info(output_names[0], TensorProto.FLOAT, ["unk__1", "unk__2", 3]),
         helper.make_tensor_value_info(second, TensorProto.FLOAT, ["unk__1", "unk__2", 3])],
        [weight, unused],
    )
    imports = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("ai.onnx.ml", 2)] if domain_import else [])
    return helper.make_model(graph, opset_imports=imports)


def test_name_outputs_renames_in_order_and_splits_a_shared_tensor():
    model = _model()
    name_outputs(model, ["a", "b"])
    assert [o.name for o in model.graph.output] == ["a", "b"] and model.graph.node[1].output[0] == "a"
    shared = _model(same_tensor=True)
    name_outputs(shared, ["a", "b"])
    assert [o.name for o in shared.graph.output] == ["a", "b"]
    assert shared.graph.node[-1].op_type == "Identity" and list(shared.graph.node[-1].input) == ["Identity:0"]
    with pytest.raises(ExportError, match="Expected 3 graph outputs from the converter. Received: 2"):
        name_outputs(_model(), ["a", "b", "c"])


def test_name_axes_names_batch_and_time_and_drops_value_info():
    model = _model()
    model.graph.value_info.append(helper.make_tensor_value_info("add__3:0", TensorProto.FLOAT, ["unk__5"]))
    name_axes(model, [InputSignature("x", "float32", (None, None, 3))], [(None, None, 3), (None, 4)])
    dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
    assert dims(model.graph.input[0]) == ["batch", "time", 3]
    assert [dims(o) for o in model.graph.output] == [["batch", "time", 3], ["batch", 4]]
    assert len(model.graph.value_info) == 0


def test_set_shape_leaves_an_unnamed_dynamic_axis_empty():
    value = helper.make_tensor_value_info("v", TensorProto.FLOAT, [1, 2])
    set_shape(value, ["batch", None, 5])
    dim = value.type.tensor_type.shape.dim
    assert (dim[0].dim_param, dim[1].dim_param, dim[1].dim_value, dim[2].dim_value) == ("batch", "", 0, 5)


def test_canonical_names_depend_only_on_structure():
    # As two processes would write it: tf2onnx numbers names with a process-wide counter.
    first, second = _model(), _model(output_names=("out_a", "out_b"), n=40)
    for model in (first, second):
        name_outputs(model, ["y", "z"])
        canonicalize(model.graph, 17, keep={"x", "y", "z"})
    assert first.SerializeToString() == second.SerializeToString()
    assert [n.name for n in first.graph.node] == ["Add_0", "Relu_0", "Neg_0"]
    assert [t.name for t in first.graph.initializer] == ["Add_0_B"]  # named after its first reader; unused dropped
    assert first.graph.node[0].output[0] == "Add_0_C"
    onnx.checker.check_model(first, full_check=True)


def test_prune_opset_imports_keeps_only_used_domains():
    model = _model(domain_import=True)
    prune_opset_imports(model)
    assert [o.domain for o in model.opset_import] == [""]
