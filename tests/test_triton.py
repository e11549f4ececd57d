"""Triton model repositories, validated with Triton's own model-config protobuf schema."""

import pytest
from click.testing import CliRunner
from google.protobuf import text_format

from toolkit.builder import VARIANTS, StackConfig, build_stack, variant_config
from toolkit.cli import cli
from toolkit.exporter import export_model
from toolkit.runner import graph_inputs, graph_outputs, load_onnx, optional_inputs
from toolkit.triton import write_repository

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")

TYPES = {"float32": model_config_pb2.TYPE_FP32, "int32": model_config_pb2.TYPE_INT32}


def parse(path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def check_against_onnx(config, onnx_path):
    model = load_onnx(onnx_path)
    batched = config.max_batch_size > 0

    def dims(info):
        shape = info.shape[1:] if batched else info.shape
        return [d if isinstance(d, int) else -1 for d in shape]

    required, optional = graph_inputs(model), optional_inputs(model)
    assert [i.name for i in config.input] == [t.name for t in required + optional]
    for entry, info in zip(config.input, required + optional):
        assert entry.data_type == TYPES[info.dtype] and list(entry.dims) == dims(info)
        assert entry.optional == (info in optional)
    assert [o.name for o in config.output] == [t.name for t in graph_outputs(model)]
    for entry, info in zip(config.output, graph_outputs(model)):
        assert entry.data_type == TYPES[info.dtype] and list(entry.dims) == dims(info)
    assert config.backend == "onnxruntime"


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_gives_a_valid_repository(tmp_path, variant):
    result = export_model(build_stack(variant_config(variant)))
    paths = write_repository(tmp_path, variant, result.model)
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == [f"{variant}/1/model.onnx", f"{variant}/config.pbtxt"]
    config = parse(tmp_path / variant / "config.pbtxt")
    assert config.name == variant and config.max_batch_size == 64 and config.HasField("dynamic_batching")
    check_against_onnx(config, tmp_path / variant / "1" / "model.onnx")


def test_state_io_states_are_optional_inputs(tmp_path):
    result = export_model(build_stack(StackConfig(timesteps=None)), state_io=True)
    write_repository(tmp_path, "streaming", result.model)
    config = parse(tmp_path / "streaming" / "config.pbtxt")
    assert [(i.name, i.optional) for i in config.input] == [
        ("input", False), ("lstm_1_initial_state_h", True), ("lstm_1_initial_state_c", True),
        ("lstm_2_initial_state_h", True), ("lstm_2_initial_state_c", True)]
    check_against_onnx(config, tmp_path / "streaming" / "1" / "model.onnx")


def test_export_triton_option(tmp_path):
    result = CliRunner().invoke(cli, ["export", "-o", str(tmp_path / "out"), "--return-state", "--no-return-sequences",
                                      "--triton", str(tmp_path / "repo")])
    assert result.exit_code == 0, result.output
    config = parse(tmp_path / "repo" / "case2_state" / "config.pbtxt")
    assert [o.name for o in config.output] == ["lstm_2_last", "lstm_2_state_h", "lstm_2_state_c"]
    assert list(config.input[0].dims) == [3, 1]
    assert (tmp_path / "repo" / "case2_state" / "1" / "model.onnx").read_bytes() == \
        (tmp_path / "out" / "case2_state.onnx").read_bytes()
