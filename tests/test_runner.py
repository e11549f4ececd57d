"""The ONNX Runtime side: loading checks, feed checks, description. No TensorFlow is needed here."""

import numpy as np
import onnx
import pytest

from toolkit.errors import InputError, ModelLoadError
from toolkit.onnxfile.metadata import STATE_MAP, write_entries
from toolkit.onnxfile.model import inspect_model, load_onnx, optional_inputs
from toolkit.runtimes.feeds import load_feeds
from toolkit.runtimes.onnxrt import OnnxRunner


@pytest.fixture(scope="module")
def case3(seed_suite):
    return seed_suite.out_dir / "case3_sequences_state.onnx"


def test_run_returns_named_outputs_in_graph_order(case3):
    runner = OnnxRunner(case3)
    out = runner.run({"input": np.zeros((5, 3, 1), np.float32)})
    assert list(out) == ["lstm_2_sequence", "lstm_2_state_h", "lstm_2_state_c"]
    assert [v.shape for v in out.values()] == [(5, 3, 2), (5, 2), (5, 2)]


@pytest.mark.parametrize("feeds,needle", [
    ({"input": np.zeros((1, 3, 1), np.float64)}, "Expected input 'input' of dtype float32. Received: dtype float64"),
    ({"input": np.zeros((1, 4, 1), np.float32)},
     r"Expected input 'input' with shape \(batch, 3, 1\) \(axis 1 = 3\). Received: shape \(1, 4, 1\)"),
    ({"input": np.zeros((3, 1), np.float32)}, "Expected input 'input' of rank 3"),
    ({"x": np.zeros((1, 3, 1), np.float32)}, r"Expected inputs \['input'\]. Received: \['x'\]"),
])
def test_bad_feeds_name_the_input_and_both_sides(case3, feeds, needle):
    with pytest.raises(InputError, match=needle):
        OnnxRunner(case3).run(feeds)


def test_non_onnx_and_truncated_files_are_refused(tmp_path, case3):
    text = tmp_path / "notes.onnx"
    text.write_text("hello")
    with pytest.raises(ModelLoadError, match="Expected an ONNX model file"):
        load_onnx(text)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(case3.read_bytes()[:200])
    with pytest.raises(ModelLoadError):
        load_onnx(truncated)
    with pytest.raises(ModelLoadError, match="no such file"):
        load_onnx(tmp_path / "absent.onnx")


def test_external_data_outside_the_folder_is_refused(tmp_path, case3):
    model = onnx.load(str(case3))
    weight = model.graph.initializer[0]
    weight.data_location = onnx.TensorProto.EXTERNAL
    weight.ClearField("raw_data")
    weight.external_data.add(key="location", value="../../etc/passwd")
    path = tmp_path / "evil.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ModelLoadError, match="Expected external data inside the model's folder"):
        load_onnx(path)


def test_inspect_lists_names_axes_recurrent_ops_and_metadata(case3):
    desc = inspect_model(case3)
    assert [t.name for t in desc.outputs] == ["lstm_2_sequence", "lstm_2_state_h", "lstm_2_state_c"]
    assert desc.inputs[0].shape == ("batch", 3, 1)
    assert desc.recurrent_ops == {"LSTM": 2}
    assert desc.opset == 17
    assert "lstm_onnx.parity" in desc.metadata
    assert desc.to_json()["metadata"]["lstm_onnx.parity"]["passed"] is True


def test_load_feeds_forms(tmp_path):
    np.save(tmp_path / "a.npy", np.ones((1, 3, 1), np.float32))
    np.savez(tmp_path / "b.npz", x=np.ones(2), h=np.zeros(2))
    assert list(load_feeds([str(tmp_path / "a.npy")], ["input"])) == ["input"]
    assert list(load_feeds([f"x={tmp_path / 'a.npy'}"], ["x", "h"])) == ["x"]
    assert set(load_feeds([str(tmp_path / "b.npz")], ["x", "h"])) == {"x", "h"}
    with pytest.raises(InputError, match="Expected NAME=FILE.npy for each of the inputs"):
        load_feeds([str(tmp_path / "a.npy")], ["x", "h"])
    with pytest.raises(InputError, match="no such file"):
        load_feeds(["missing.npy"], ["input"])
    (tmp_path / "bad.npy").write_text("not numpy")
    with pytest.raises(InputError, match="unreadable"):
        load_feeds([str(tmp_path / "bad.npy")], ["input"])


def _graph(node: onnx.NodeProto, in_shape, out_shape, *initializers) -> onnx.ModelProto:
    graph = onnx.helper.make_graph(
        [node], "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, in_shape)],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, out_shape)], list(initializers))
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])


def test_a_model_onnx_runtime_rejects_is_a_one_line_load_error():
    unknown = _graph(onnx.helper.make_node("NoSuchOp", ["x"], ["y"]), ["n"], ["n"])
    with pytest.raises(ModelLoadError, match=r"Expected a model ONNX Runtime .* can load. Received: "):
        OnnxRunner(unknown)


def test_a_run_onnx_runtime_rejects_is_a_one_line_input_error():
    # The declared input axis is dynamic, but the graph reshapes to a fixed (1, 3): a batch of 2 fails inside ORT.
    shape = onnx.numpy_helper.from_array(np.array([1, 3], np.int64), "shape")
    fixed = _graph(onnx.helper.make_node("Reshape", ["x", "shape"], ["y"]), ["batch", 3], [1, 3], shape)
    runner = OnnxRunner(fixed)
    assert runner.run({"x": np.ones((1, 3), np.float32)})["y"].shape == (1, 3)
    with pytest.raises(InputError, match="Expected inputs ONNX Runtime can run. Received an error: ") as caught:
        runner.run({"x": np.ones((2, 3), np.float32)})
    assert "\n" not in str(caught.value)


def _weight_as_input() -> onnx.ModelProto:
    """y = x + W, with W an initializer that is also a graph input (keep_initializers_as_inputs style)."""
    weight = onnx.numpy_helper.from_array(np.full((1, 3), 2.0, np.float32), "W")
    model = _graph(onnx.helper.make_node("Add", ["x", "W"], ["y"]), ["batch", 3], ["batch", 3], weight)
    model.graph.input.append(onnx.helper.make_tensor_value_info("W", onnx.TensorProto.FLOAT, [1, 3]))
    return model


def test_an_initializer_listed_as_input_keeps_its_value_and_is_not_a_state(tmp_path):
    model = _weight_as_input()
    path = tmp_path / "weight_input.onnx"
    path.write_bytes(model.SerializeToString())
    assert OnnxRunner(path).run({"x": np.ones((1, 3), np.float32)})["y"].tolist() == [[3.0, 3.0, 3.0]]
    desc = inspect_model(path)
    assert [t.name for t in desc.inputs] == ["x"] and desc.optional_inputs == ()


def test_only_the_states_the_metadata_names_default_to_zeros(tmp_path):
    """The old state form (a same-name zeros initializer, named by the state map) is still a state; the
    weight beside it is not."""
    model = _weight_as_input()
    state = onnx.numpy_helper.from_array(np.full((1, 3), 5.0, np.float32), "h0")
    model.graph.initializer.append(state)
    model.graph.input.append(onnx.helper.make_tensor_value_info("h0", onnx.TensorProto.FLOAT, ["batch", 3]))
    model.graph.node.append(onnx.helper.make_node("Add", ["x", "h0"], ["z"]))
    model.graph.output.append(onnx.helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, ["batch", 3]))
    write_entries(model, {STATE_MAP: {"h0": "z"}})
    out = OnnxRunner(model).run({"x": np.ones((2, 3), np.float32)})
    assert out["y"].tolist() == [[3.0] * 3] * 2 and out["z"].tolist() == [[1.0] * 3] * 2  # h0 fed zeros
    assert [t.name for t in optional_inputs(model)] == ["h0"]


@pytest.mark.parametrize("key,text", [("state_inputs", "{not json"), ("state_inputs", "[1, 2]"), ("state_map", "[1, 2]")])
def test_unreadable_state_metadata_makes_no_input_optional(key, text):
    model = _weight_as_input()
    model.metadata_props.add(key="lstm_onnx." + key, value=text)
    assert optional_inputs(model) == ()
    assert OnnxRunner(model).run({"x": np.ones((1, 3), np.float32)})["y"].tolist() == [[3.0, 3.0, 3.0]]
