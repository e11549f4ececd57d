"""Triton model repositories: parsed with Triton's own model-config schema and checked against the rules
Triton's onnxruntime backend applies when it loads a model.

The backend is not available on this machine (pytriton ships only the Python backend), so its rules are
restated here from its source, triton-inference-server/onnxruntime_backend `src/onnxruntime.cc`, each
check citing the function it comes from, and applied against a real ONNX Runtime session of the
repository's model (the session the backend would open).
"""

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from google.protobuf import text_format

from toolkit.cli import cli
from toolkit.deploy.triton import check_model_name, config_text, write_repository
from toolkit.errors import InputError
from toolkit.export.exporter import export_model
from toolkit.models.builder import VARIANTS, StackConfig, build_stack, variant_config
from toolkit.onnxfile.metadata import read_state_map as state_map
from toolkit.onnxfile.model import load_onnx

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
SEEDS = Path(__file__).resolve().parent.parent / "exported"

ORT_TYPES = {"tensor(float)": "TYPE_FP32", "tensor(int32)": "TYPE_INT32", "tensor(int64)": "TYPE_INT64",
             "tensor(double)": "TYPE_FP64", "tensor(bool)": "TYPE_BOOL"}


def parse(path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def type_name(value):
    return model_config_pb2.DataType.Name(value)


def session_dims(arg):
    return [d if isinstance(d, int) else -1 for d in arg.shape]


def compare_dims(model_dims, config_dims, max_batch_size, exact):
    """backend_common.cc `CompareDimsSupported`, called by ValidateInputs (compare_exact=false) and
    ValidateOutputs (compare_exact=true): with batching the model's first dim is the batch (-1) and the
    config's dims are the rest; each dim equal, or (inputs only) a -1 on either side."""
    if max_batch_size > 0:
        assert model_dims and model_dims[0] == -1, f"model's batch dim {model_dims}"
        model_dims = model_dims[1:]
    assert len(model_dims) == len(config_dims), f"model {model_dims} vs config {config_dims}"
    for m, c in zip(model_dims, config_dims):
        assert m == c or (not exact and -1 in (m, c)), f"model {model_dims} vs config {config_dims}"


def check_input_count(config, session):
    """ModelInstanceState::ModelInstanceState: expected_input_cnt = config inputs - optional ones
    + one per sequence_batching state (+ control inputs, none here); ValidateInputs refuses the model
    unless the session's inputs (initializer-backed inputs excluded) number exactly that."""
    expected = len(config.input) - sum(i.optional for i in config.input) + len(config.sequence_batching.state)
    assert len(session.get_inputs()) == expected


def check_inputs(config, session):
    """ModelInstanceState::ValidateInputs: no `optional` input when max_batch_size != 0 ("optional input
    ... is not supported for models that support batching"); each input is a session input or an
    overridable initializer (merged into the allowed inputs; CheckAllowedModelInput); same data type;
    dims by CompareDimsSupported."""
    known = {a.name: a for a in session.get_inputs() + session.get_overridable_initializers()}
    for entry in config.input:
        assert not (entry.optional and config.max_batch_size != 0), \
            f"optional input {entry.name!r} is not supported for models that support batching"
        assert entry.name in known, entry.name
        assert ORT_TYPES[known[entry.name].type] == type_name(entry.data_type)
        compare_dims(session_dims(known[entry.name]), list(entry.dims), config.max_batch_size, exact=False)


def check_outputs(config, session):
    """ModelInstanceState::ValidateOutputs: each output is a session output (CheckAllowedModelOutput),
    same data type, dims by CompareDimsSupported with compare_exact."""
    known = {a.name: a for a in session.get_outputs()}
    for entry in config.output:
        assert entry.name in known, entry.name
        assert ORT_TYPES[known[entry.name].type] == type_name(entry.data_type)
        compare_dims(session_dims(known[entry.name]), list(entry.dims), config.max_batch_size, exact=True)


def check_states(config, session):
    """ModelState::Create adds each state's output_name to the outputs the backend binds, and
    ValidateOutputs checks its data type against the session's output; SetInputTensors binds the state
    by input_name, which must be a required session input (counted in expected_input_cnt). Triton's
    model_config.proto (ModelSequenceBatching.State): without `initial_state` the first request of a
    sequence reads uninitialized state, so every state starts from zeros."""
    outputs = {a.name: a for a in session.get_outputs()}
    inputs = {a.name: a for a in session.get_inputs()}
    for state in config.sequence_batching.state:
        assert ORT_TYPES[outputs[state.output_name].type] == type_name(state.data_type)
        assert ORT_TYPES[inputs[state.input_name].type] == type_name(state.data_type)
        assert state.input_name not in {i.name for i in config.input}
        compare_dims(session_dims(inputs[state.input_name]), list(state.dims), config.max_batch_size, exact=True)
        (initial,) = state.initial_state
        assert initial.zero_data and initial.name and list(initial.dims) == list(state.dims)
        assert initial.data_type == state.data_type


def check_repository(folder):
    """Every rule above, on the config and a real ONNX Runtime session of the repository's model."""
    config = parse(folder / "config.pbtxt")
    session = ort.InferenceSession(str(folder / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert config.backend == "onnxruntime" and config.name == folder.name
    for check in (check_input_count, check_inputs, check_outputs, check_states):
        check(config, session)
    return config


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_gives_a_repository_the_backend_loads(tmp_path, variant):
    result = export_model(build_stack(variant_config(variant)))
    paths = write_repository(tmp_path, variant, result.model)
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == [f"{variant}/1/model.onnx", f"{variant}/config.pbtxt"]
    config = check_repository(tmp_path / variant)
    assert config.max_batch_size == 64 and config.HasField("dynamic_batching")
    assert [o.name for o in config.output] == [o.name for o in result.outputs]


@pytest.fixture(scope="module")
def streaming_export():
    return export_model(build_stack(StackConfig(timesteps=None, units=3, features=2, return_state=True)), state_io=True)


def test_state_io_streams_with_implicit_zero_state(tmp_path, streaming_export):
    write_repository(tmp_path, "streaming", streaming_export.model)
    config = check_repository(tmp_path / "streaming")
    mapping = state_map(streaming_export.model)
    assert [i.name for i in config.input] == ["input"]
    assert {s.input_name: s.output_name for s in config.sequence_batching.state} == mapping
    assert all(list(s.dims) == [3] for s in config.sequence_batching.state)
    assert config.sequence_batching.oldest.max_candidate_sequences == 64
    assert not config.HasField("dynamic_batching")  # one scheduler per model (a oneof in model_config.proto)
    # Every graph output stays an output too: the backend returns a state that is also in `output`.
    assert [o.name for o in config.output] == [o.name for o in streaming_export.outputs]


def test_state_io_repository_model_feeds_states_and_keeps_the_numbers(tmp_path, streaming_export):
    """The repository's copy has no default for the states (Triton feeds them); given zeros it computes
    what the export computes without them."""
    write_repository(tmp_path, "streaming", streaming_export.model)
    copy = ort.InferenceSession(str(tmp_path / "streaming" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    original = ort.InferenceSession(streaming_export.model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).normal(size=(2, 5, 2)).astype(np.float32)
    zeros = {name: np.zeros((2, 3), np.float32) for name in state_map(streaming_export.model)}
    assert sorted(a.name for a in copy.get_inputs()) == sorted(["input", *zeros])
    # Exports have no state defaults either (plain state inputs, every runtime honours them): zeros to both.
    for got, want in zip(copy.run(None, {"input": x, **zeros}), original.run(None, {"input": x, **zeros})):
        np.testing.assert_array_equal(got, want)


def test_state_io_that_cannot_stream_keeps_its_states_as_request_inputs(tmp_path):
    """A Bidirectional layer's backward direction starts at the end: no state to carry between requests."""
    result = export_model(build_stack(variant_config("bidirectional_concat", all_states=False)), state_io=True)
    write_repository(tmp_path, "bi", result.model)
    config = check_repository(tmp_path / "bi")
    assert not config.HasField("sequence_batching") and config.HasField("dynamic_batching")
    assert {i.name for i in config.input} == {"input", *state_map(result.model)}


def test_state_io_whose_chunks_are_not_its_whole_run_keeps_its_states_as_request_inputs(tmp_path):
    """Before: a causal Conv1D under the LSTM got sequence batching, and Triton carried its states from
    request to request 3e-2 off the whole sequence's run (the Conv1D's window crosses a request's edge)."""
    import keras

    x = keras.Input((None, 3), name="x")
    model = keras.Model(x, keras.layers.LSTM(5, name="l")(keras.layers.Conv1D(4, 2, padding="causal")(x)))
    result = export_model(model, state_io=True, seed=1)
    write_repository(tmp_path, "conv", result.model)
    config = check_repository(tmp_path / "conv")
    assert not config.HasField("sequence_batching") and config.HasField("dynamic_batching")
    assert {i.name for i in config.input} == {"x", *state_map(result.model)}


def test_the_old_optional_state_config_breaks_the_backend_rules(tmp_path, streaming_export):
    """The checks can fail: the config written before (states as `optional` inputs next to batching)."""
    write_repository(tmp_path, "streaming", streaming_export.model)
    config = parse(tmp_path / "streaming" / "config.pbtxt")
    config.ClearField("sequence_batching")
    for name in state_map(streaming_export.model):
        config.input.add(name=name, data_type=model_config_pb2.TYPE_FP32, dims=[3], optional=True)
    session = ort.InferenceSession(streaming_export.model.SerializeToString(), providers=["CPUExecutionProvider"])
    with pytest.raises(AssertionError, match="is not supported for models that support batching"):
        check_inputs(config, session)


def test_hostile_names_parse_back_exactly(tmp_path):
    renamed = {"lstm_2_sequence": 'a"b', "lstm_2_state_h": "back\\slash {x: 1}", "lstm_2_state_c": "état 'c'"}
    result = export_model(build_stack(StackConfig(return_sequences=True, return_state=True)), output_names=renamed)
    write_repository(tmp_path, 'm"odel', result.model)
    config = check_repository(tmp_path / 'm"odel')
    assert config.name == 'm"odel'
    assert [o.name for o in config.output] == list(renamed.values())
    assert config.default_model_filename == "" and not config.instance_group


@pytest.mark.parametrize("name", ["a\nb", "x\x00", 'a"\ndefault_model_filename: "attacker.onnx"'])
def test_names_triton_cannot_carry_are_refused(tmp_path, name):
    # A file made elsewhere: --output-name itself refuses a name that is not printable.
    model = export_model(build_stack(StackConfig())).model
    for node in model.graph.node:
        node.output[:] = [name if out == "lstm_2_last" else out for out in node.output]
    model.graph.output[0].name = name
    with pytest.raises(InputError, match="Expected tensor names Triton can carry"):
        write_repository(tmp_path, "m", model)
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "../up", "a\\b", "x\ny"])
def test_model_names_stay_inside_the_repository(name):
    with pytest.raises(InputError, match="Expected a Triton model name"):
        check_model_name(name)


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_repository_files_follow_the_umask(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        paths = write_repository(tmp_path, "m", load_onnx(SEEDS / "case4_last.onnx"))
    finally:
        os.umask(previous)
    assert [oct(p.stat().st_mode & 0o777) for p in paths] == [oct(mode)] * 2


def test_export_triton_option(tmp_path):
    result = CliRunner().invoke(cli, ["export", "-o", str(tmp_path / "out"), "--return-state", "--no-return-sequences",
                                      "--triton", str(tmp_path / "repo")])
    assert result.exit_code == 0, result.output
    config = check_repository(tmp_path / "repo" / "case2_state")
    assert [o.name for o in config.output] == ["lstm_2_last", "lstm_2_state_h", "lstm_2_state_c"]
    assert list(config.input[0].dims) == [3, 1]
    assert (tmp_path / "repo" / "case2_state" / "1" / "model.onnx").read_bytes() == \
        (tmp_path / "out" / "case2_state.onnx").read_bytes()


def test_export_triton_name_option(tmp_path, saved_models):
    out, repo = tmp_path / "out" / "m.onnx", tmp_path / "repo"
    args = ["export", str(saved_models["sequential"]), "-o", str(out), "--triton", str(repo)]
    result = CliRunner().invoke(cli, args + ["--triton-name", "stack_v2"])
    assert result.exit_code == 0, result.output
    check_repository(repo / "stack_v2")
    refused = CliRunner().invoke(cli, args + ["--triton-name", ".."])
    assert refused.exit_code == 1 and "Expected a Triton model name" in refused.output
    assert len(refused.output.strip().splitlines()) == 1 and sorted(p.name for p in repo.iterdir()) == ["stack_v2"]


def test_max_batch_size_is_checked_and_written():
    model = load_onnx(SEEDS / "case1_sequences.onnx")
    config = text_format.Parse(config_text("m", model, max_batch_size=8), model_config_pb2.ModelConfig())
    assert config.max_batch_size == 8
    for bad in (0, -1, True):
        with pytest.raises(InputError, match="Expected a maximum batch size >= 1"):
            config_text("m", model, max_batch_size=bad)
