"""The exporter on built stacks: names, axes, fused ops, checker, metadata, batch sizes, overrides."""

import subprocess
import sys

import numpy as np
import onnx
import pytest
from conftest import assert_close

from toolkit.errors import InputError, ParityError
from toolkit.export.exporter import export_model
from toolkit.models.builder import StackConfig, build_stack
from toolkit.models.naming import output_origins
from toolkit.onnxfile import metadata
from toolkit.onnxfile.model import count_ops
from toolkit.options import DEFAULT_OPSET, ExportOptions
from toolkit.runtimes.keras import keras_outputs
from toolkit.runtimes.onnxrt import OnnxRunner
from toolkit.tolerance import DEFAULT_TOLERANCE, Tolerances

# Beyond the post's four: 1-3 layers, several unit counts, fixed and variable time, every flag pair.
MATRIX = [
    StackConfig(layers=1, units=1, return_sequences=False, return_state=True),
    StackConfig(layers=1, units=7, timesteps=None, features=3, return_sequences=True, return_state=True),
    StackConfig(layers=2, units=2, return_sequences=True, return_state=False),
    StackConfig(layers=2, units=16, timesteps=None, features=4, return_sequences=False, return_state=False),
    StackConfig(layers=3, units=5, timesteps=6, features=2, return_sequences=True, return_state=True, all_states=True),
    StackConfig(layers=3, units=3, timesteps=None, return_sequences=False, return_state=True, all_states=True, seed=9),
]


@pytest.fixture(scope="module", params=MATRIX, ids=lambda c: c.name)
def exported(request):
    config = request.param
    model = build_stack(config)
    return config, model, export_model(model, seed=config.seed, source={"builder": config.to_json()})


def test_parity_passes_with_default_tolerance(exported):
    _, _, result = exported
    assert result.parity, result.parity.failures()
    assert all(s.tolerance == DEFAULT_TOLERANCE for s in result.parity.summaries())


def test_outputs_are_named_in_keras_order(exported):
    _, model, result = exported
    names = [v.name for v in result.model.graph.output]
    assert names == [o.name for o in output_origins(model)]
    assert len(set(names)) == len(names)
    assert not any(n.startswith("Identity") or ":" in n for n in names)
    assert [v.name for v in result.model.graph.input] == ["input"]


def test_one_fused_lstm_per_layer_and_no_loop(exported):
    config, _, result = exported
    counts = count_ops(result.model)
    assert counts["LSTM"] == config.layers
    assert counts["Loop"] == 0 and counts["Scan"] == 0
    assert result.fused and not result.warnings


def test_dynamic_axes_are_named_and_no_unk_remains(exported):
    config, _, result = exported
    dims = [d.dim_param or d.dim_value for d in result.model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", config.timesteps or "time", config.features]
    assert all(v.type.tensor_type.shape.dim[0].dim_param == "batch" for v in result.model.graph.output)
    assert b"unk__" not in result.data


def test_passes_full_onnx_checker_and_records_metadata(exported):
    config, _, result = exported
    onnx.checker.check_model(result.model, full_check=True)
    proto = result.model
    assert metadata.read_source(proto) == {"builder": config.to_json()}
    assert metadata.read_parity(proto)["passed"] is True
    assert metadata.read_output_names(proto) == [o.name for o in result.outputs]
    assert {"tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "lstm_onnx"} <= set(metadata.read_versions(proto))
    assert metadata.read_options(proto) == ExportOptions()
    layers = metadata.read_layers(proto)
    assert [layer["name"] for layer in layers] == [f"lstm_{i + 1}" for i in range(config.layers)]
    assert layers[-1]["return_sequences"] == config.return_sequences
    assert layers[-1]["return_state"] == config.return_state
    assert metadata.read_opset(proto) == DEFAULT_OPSET
    assert result.model.opset_import[0].version == DEFAULT_OPSET


def test_runs_with_other_batch_sizes_and_lengths_than_traced(exported):
    config, model, result = exported
    runner = OnnxRunner(result.model)
    rng = np.random.default_rng(1)
    for batch, steps in [(7, config.timesteps or 2), (2, config.timesteps or 17)]:
        x = rng.standard_normal((batch, steps, config.features)).astype(np.float32)
        actual = runner.run({"input": x})
        for name, want in zip(runner.output_names, keras_outputs(model, {"input": x})):
            assert_close(actual[name], want, name)


def test_invariants_of_the_post_are_checked():
    model = build_stack(StackConfig(return_sequences=True, return_state=True))
    result = export_model(model)
    descriptions = {inv.description for inv in result.parity.invariants()}
    assert descriptions == {"lstm_2_sequence[:, -1] == lstm_2_state_h"}
    assert all(result.parity.invariants())


def test_output_names_can_be_overridden_by_map_or_list():
    model = build_stack(StackConfig(return_state=True))
    renamed = export_model(model, output_names={"lstm_2_state_h": "h", "lstm_2_state_c": "c"})
    assert [v.name for v in renamed.model.graph.output] == ["lstm_2_last", "h", "c"]
    assert renamed.parity
    listed = export_model(model, output_names=["y", "h", "c"], tolerances=Tolerances.parse(atol=["c:1e-5"]))
    assert [o.name for o in listed.outputs] == ["y", "h", "c"]
    with pytest.raises(InputError, match="Expected output names to rename among"):
        export_model(model, output_names={"state_h": "h"})
    with pytest.raises(InputError, match="Expected unique, non-empty output names"):
        export_model(model, output_names=["y", "y", "c"])


@pytest.mark.parametrize("name", ["two\nlines", "\x1b[31mred", "right\u202eleft"])
def test_a_chosen_output_name_must_be_printable(name):
    """Before: written as given, and a newline in it broke every table row that printed it."""
    model = build_stack(StackConfig())
    with pytest.raises(InputError, match="Expected unique, non-empty output names of printable characters") as caught:
        export_model(model, output_names={"lstm_2_last": name})
    assert "\n" not in str(caught.value)
    assert [o.name for o in export_model(model, output_names={"lstm_2_last": "naïve 名前"}).outputs] == ["naïve 名前"]


def test_with_state_io_a_state_is_found_by_its_origin_not_by_its_name():
    """Before: a head renamed `lstm_2_state_h` was taken for the state (the real one was dropped and the map
    fed the head back as the state), and a renamed returned state got a second, duplicate output."""
    model = build_stack(StackConfig(return_state=True))
    renamed = export_model(model, state_io=True, output_names={"lstm_2_state_h": "h", "lstm_2_state_c": "c"})
    assert [v.name for v in renamed.model.graph.output] == ["lstm_2_last", "h", "c", "lstm_1_state_h", "lstm_1_state_c"]
    assert metadata.read_state_map(renamed.model) == {
        "lstm_1_initial_state_h": "lstm_1_state_h", "lstm_1_initial_state_c": "lstm_1_state_c",
        "lstm_2_initial_state_h": "h", "lstm_2_initial_state_c": "c"}
    with pytest.raises(InputError, match=r"Expected unique output names with --state-io. Received: .*'lstm_2_state_h'"):
        export_model(build_stack(StackConfig()), state_io=True, output_names={"lstm_2_last": "lstm_2_state_h"})


def test_opset_is_selectable_and_bounded():
    model = build_stack(StackConfig())
    assert export_model(model, opset=18).model.opset_import[0].version == 18
    with pytest.raises(InputError, match="Expected --opset between 14 and 18. Received: 12"):
        export_model(model, opset=12)


def test_a_failed_parity_writes_nothing(tmp_path):
    model = build_stack(StackConfig())
    # A tolerance no float32 computation can meet makes parity fail on purpose.
    result = export_model(model, tolerances=Tolerances.parse(atol=["0"], rtol=["0"]))
    if result.parity:  # pragma: no cover - only if ORT and Keras agreed bit for bit
        pytest.skip("ORT matched Keras bit for bit; cannot force a failure this way")
    target = tmp_path / "m.onnx"
    with pytest.raises(ParityError, match="nothing written"):
        result.save(target)
    assert list(tmp_path.iterdir()) == []
    result.save(target, keep_failed=True)
    assert target.read_bytes() == result.data


REPRODUCE = """
import sys
from toolkit.models.builder import StackConfig, build_stack
from toolkit.export.exporter import export_model
# Advance the process-wide counters first, as a longer session would.
build_stack(StackConfig(units=3)); export_model(build_stack(StackConfig(layers=1)))
cfg = StackConfig(layers=2, units=4, timesteps=None, return_sequences=True, return_state=True)
print(export_model(build_stack(cfg), source={"builder": cfg.to_json()}).sha256)
"""


@pytest.mark.slow
def test_same_model_exports_to_the_same_bytes_in_two_processes():
    shas = [
        subprocess.run([sys.executable, "-c", REPRODUCE], capture_output=True, text=True, check=True).stdout.split()[-1]
        for _ in range(2)
    ]
    assert shas[0] == shas[1]


LAYERS_AROUND = """
import keras
from toolkit.models.builder import build_stack, variant_config
from toolkit.export.exporter import export_model
for _ in range(WARMUP):  # advance Keras' and tf2onnx's name counters differently in each run
    export_model(keras.Sequential([keras.Input((2, 1)), keras.layers.LSTM(2), keras.layers.Dense(3)]))
print(",".join(export_model(build_stack(variant_config(v))).sha256 for v in ("dense_head", "lstm_embedding_mask")))
"""


@pytest.mark.slow
def test_layers_converted_by_tf2onnx_are_byte_reproducible_too():
    """Dense, TimeDistributed and Embedding go through tf2onnx one by one; their names are canonical too."""
    shas = [subprocess.run([sys.executable, "-c", LAYERS_AROUND.replace("WARMUP", str(n))],
                           capture_output=True, text=True, check=True).stdout.split()[-1] for n in (0, 2)]
    assert shas[0] == shas[1]


def test_a_graph_onnx_runtime_refuses_is_an_export_error():
    from onnx import TensorProto, helper

    from toolkit.errors import ExportError
    from toolkit.export.result import load_runner

    graph = helper.make_graph([helper.make_node("NoSuchOp", ["x"], ["y"], domain="example.custom")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("example.custom", 1)])
    with pytest.raises(ExportError, match="ONNX Runtime cannot load the export of 'm': Expected a model ONNX Runtime"):
        load_runner(proto, "m")
