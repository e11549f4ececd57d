"""`toolkit.open_stream`: one step per call with the states carried in ONNX Runtime, equal to Keras over
the whole sequence, for every built-in recurrent layer; refusals and the deadline."""

from __future__ import annotations

import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import toolkit
from toolkit.checking.results import compare_arrays
from toolkit.errors import InputError, RuntimeFailure
from toolkit.export.exporter import export_model
from toolkit.models.builder import StackConfig, build_stack, set_deterministic_weights, variant_config
from toolkit.onnxfile import metadata
from toolkit.onnxfile.model import count_ops
from toolkit.tolerance import Tolerances, compute_dtype, decide


def _rnn_cells_model():
    import keras

    x = keras.Input((None, 3), name="x")
    cell = keras.layers.StackedRNNCells([keras.layers.LSTMCell(4), keras.layers.GRUCell(5)])
    model = keras.Model(x, keras.layers.RNN(cell, return_sequences=True, name="rnn")(x), name="cells")
    set_deterministic_weights(model, 3)
    return model


MODELS = {
    "lstm": lambda: build_stack(StackConfig(layers=1, units=16, features=4, timesteps=None, return_sequences=True)),
    "gru": lambda: build_stack(StackConfig(layers=1, units=16, features=4, timesteps=None, cell="gru",
                                           return_sequences=True)),
    "simple_rnn": lambda: build_stack(StackConfig(layers=1, units=16, features=4, timesteps=None, cell="simple_rnn",
                                                  return_sequences=True)),
    "stacked_mixed": lambda: build_stack(variant_config("mixed_cells", all_states=False, return_state=False)),
    "lstm_stack_3": lambda: build_stack(StackConfig(layers=3, units=5, timesteps=None, features=2, return_sequences=True)),
    "rnn_cells": _rnn_cells_model,
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def streamed(request):
    model = MODELS[request.param]()
    result = export_model(model, state_io=True)
    assert result.parity, result.parity.failures()
    return request.param, model, result.model


def _tolerances(keras_model, proto):
    return decide(Tolerances(), count_ops(proto), metadata.read_options(proto).tier, compute_dtype(keras_model))


def test_one_step_calls_match_keras_on_the_whole_sequence(streamed):
    """The carried states stay exact: consecutive one-step calls against Keras run once over all the steps
    (1,000 for the single layers; fewer for the stacks, which Keras runs slower)."""
    name, model, proto = streamed
    steps = 1000 if name in ("lstm", "gru", "simple_rnn") else 200
    features = model.inputs[0].shape[-1]
    x = np.random.default_rng(1).uniform(-1, 1, (1, steps, features)).astype(np.float32)
    expected = np.asarray(model(x, training=False))
    sequence = next(o.name for o in proto.graph.output if o.name.endswith("_sequence"))
    with toolkit.open_stream(proto) as session:
        assert session.threads == 1 and session.step_shape == (1, 1, features)
        # One layer: its op alone, the layout nodes skipped (checked bit for bit at open); a stack: the file's graph.
        single = name in ("lstm", "gru", "simple_rnn")
        assert session.graph.startswith("the LSTM op alone" if name == "lstm" else "the ") and \
            (session.graph.endswith("move no memory here; ONNX Runtime's CPU arena off at batch 1)") == single), session.graph
        # At batch 1 the op alone runs without ONNX Runtime's CPU arena (faster); the file's graph keeps it.
        assert session.session.get_session_options().enable_cpu_mem_arena
        if single:
            assert not session._step_session.get_session_options().enable_cpu_mem_arena
        got = np.concatenate([session.step(x[:, t:t + 1])[sequence] for t in range(steps)], axis=1)
        states = session.states
    tolerance = _tolerances(model, proto).for_output(sequence)
    comparison = compare_arrays(sequence, expected, got, tolerance)
    assert comparison, comparison
    assert set(states) == set(metadata.read_state_map(proto)) and all(v.shape[0] == 1 for v in states.values())


def test_chunks_states_reset_and_the_buffers_it_returns():
    model = MODELS["gru"]()
    proto = export_model(model, state_io=True).model
    x = np.random.default_rng(2).uniform(-1, 1, (2, 9, 4)).astype(np.float32)
    expected = np.asarray(model(x, training=False))
    with toolkit.open_stream(proto, batch=2, steps=3) as session:
        assert session.graph == "the file's graph (chunks of more than one step: the Transpose to time-major moves memory)"
        pieces = [session.step(x[:, 0:3]), session.step(x[:, 3:5]), session.step(x[:, 5:9])]  # a new length rebinds
        got = np.concatenate([p["gru_1_sequence"] for p in pieces], axis=1)
        assert np.abs(got - expected).max() < 1e-5
        # By default a step returns the layer's outputs; the carried state is `states` (a GRU's h: the last step's output).
        assert list(pieces[-1]) == ["gru_1_sequence"]
        assert np.array_equal(session.states["gru_1_initial_state_h"], pieces[-1]["gru_1_sequence"][:, -1])
        session.reset()
        assert not session.states["gru_1_initial_state_h"].any()
        again = session.step(x[:, 0:3])["gru_1_sequence"]
        assert np.array_equal(again, pieces[0]["gru_1_sequence"])
        session.reset({"gru_1_initial_state_h": np.ones((2, 16), np.float32)})
        assert not np.allclose(session.step(x[:, 0:3])["gru_1_sequence"], again)
        with pytest.raises(InputError, match=r"Expected state gru_1_initial_state_h of shape \(2, 16\)"):
            session.reset({"gru_1_initial_state_h": np.ones((1, 16), np.float32)})
    with toolkit.open_stream(proto, batch=2, outputs=["gru_1_state_h"]) as session:
        assert list(session.step(x[:, :1])) == ["gru_1_state_h"]
    with pytest.raises(InputError, match=r"Expected outputs among \['gru_1_sequence'"):
        toolkit.open_stream(proto, outputs=["nope"])
    with toolkit.open_stream(proto, batch=2, copy=False, outputs=["gru_1_state_h"]) as session:
        # Beyond batch 1 the op alone keeps ONNX Runtime's CPU arena (measured equal without it).
        assert session.graph.endswith("move no memory here)"), session.graph
        assert session._step_session.get_session_options().enable_cpu_mem_arena
        first = session.step(x[:, :1])["gru_1_state_h"]
        kept = first.copy()
        session.step(x[:, 1:2])
        session.step(x[:, 2:3])  # the state buffers alternate: the first step's is written again
        assert not np.array_equal(first, kept)


def test_bad_steps_are_one_line_errors_and_the_session_goes_on():
    proto = export_model(MODELS["lstm"](), state_io=True).model
    session = toolkit.open_stream(proto)
    x = np.zeros((1, 1, 4), np.float32)
    session.step(x)
    for bad, message in [(np.zeros((1, 1, 5), np.float32), r"Expected input 'input' with shape \(batch, time, 4\)"),
                         (np.zeros((1, 1, 4), np.float64), "Expected input 'input' of dtype float32"),
                         (np.zeros((2, 1, 4), np.float32), "Expected a step of batch 1"),
                         ([[[0.0] * 4]], "Expected a numpy array for input")]:
        with pytest.raises(InputError, match=message) as caught:
            session.step(bad)
        assert "\n" not in str(caught.value)
    assert session.step(x)["lstm_1_sequence"].shape == (1, 1, 16)
    buffer = session.input
    session.close()
    for stale in (x, buffer, None):  # the bound buffer too: after close it is no longer the session's
        with pytest.raises(InputError, match=r"Expected an open stream session. Received: step\(\) after close\(\)"):
            session.step(stale)
    with pytest.raises(InputError, match=r"Expected an open stream session. Received: input after close\(\)"):
        _ = session.input
    with pytest.raises(InputError, match=r"Expected an open stream session. Received: states after close\(\)"):
        _ = session.states
    with pytest.raises(InputError, match=r"Expected an open stream session. Received: reset\(\) after close\(\)"):
        session.reset()
    # Arguments of the wrong type: one line each, not Python's TypeError from a comparison.
    for kwargs, message in [({"threads": "2"}, r"Expected --threads between 1 and \d+ .* Received: '2'"),
                            ({"threads": True}, r"Expected --threads between 1 and \d+ .* Received: True")]:
        with pytest.raises(InputError, match=message):
            toolkit.open_stream(proto, **kwargs)
    with pytest.raises(InputError, match="Expected an ONNX model: a file path or an onnx.ModelProto. Received: bytes"):
        toolkit.open_stream(proto.SerializeToString())


def _counter_model() -> onnx.ModelProto:
    """A crafted file with a state map like a --state-io export's: each state counts the steps fed ones, on
    two states, so that a lost or doubled step and a half-done reset show in their values."""
    value = lambda name, shape: helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)  # noqa: E731
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["input", "axes"], ["summed"], keepdims=0),
         helper.make_node("Add", ["a_in", "summed"], ["a_out"]), helper.make_node("Add", ["b_in", "summed"], ["b_out"])],
        "counter", [value("input", ["batch", "time", 1]), value("a_in", ["batch", 1]), value("b_in", ["batch", 1])],
        [value("a_out", ["batch", 1]), value("b_out", ["batch", 1])], [helper.make_tensor("axes", TensorProto.INT64, [1], [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    metadata.write_entries(model, {metadata.STATE_MAP: {"a_in": "a_out", "b_in": "b_out"}})
    return model


def test_a_refused_reset_is_one_line_and_changes_no_state():
    """Before: a non-number state or a list raised numpy's ValueError/TypeError, and a reset refused on
    its second state had already written the first."""
    with toolkit.open_stream(_counter_model()) as session:
        session.reset({"a_in": np.full((1, 1), 7, np.float32), "b_in": np.full((1, 1), 7, np.float32)})
        for bad, message in [({"a_in": np.ones((1, 1)), "b_in": np.ones((5, 5))}, r"Expected state b_in of shape \(1, 1\)"),
                             ({"a_in": np.ones((1, 1)), "b_in": "abc"}, r"Expected state b_in as numbers \(float32\)"),
                             ({"a_in": [[{}]]}, r"Expected state a_in as numbers \(float32\)"),
                             ([("a_in", 1)], "Expected states as a mapping of state input name to array. Received: list"),
                             ({"a_in": np.ones((1, 1)), "nope": 1}, r"Expected states among \['a_in', 'b_in'\]")]:
            with pytest.raises(InputError, match=message) as caught:
                session.reset(bad)
            assert "\n" not in str(caught.value)
            assert session.states == {"a_in": [[7.0]], "b_in": [[7.0]]}
        assert session.step(np.ones((1, 2, 1), np.float32))["a_out"].tolist() == [[9.0]]


def test_a_step_written_into_the_bound_input_is_the_same_step():
    """`session.input` is the buffer ONNX Runtime reads: a step written there (no copy, no check) gives what
    the same step passed as an array gives, the states carried alike; a new chunk length binds a new buffer."""
    proto = export_model(MODELS["lstm"](), state_io=True).model
    x = np.random.default_rng(4).uniform(-1, 1, (1, 8, 4)).astype(np.float32)
    with toolkit.open_stream(proto) as by_array, toolkit.open_stream(proto) as in_place:
        assert in_place.input.shape == (1, 1, 4) and in_place.input.dtype == np.float32
        for t in range(5):
            in_place.input[...] = x[:, t:t + 1]
            got, expected = in_place.step(in_place.input), by_array.step(x[:, t:t + 1])
            assert all(np.array_equal(got[name], expected[name]) for name in expected)
        old = in_place.input
        in_place.step(x[:, 5:8])  # a chunk of 3: rebound, the states kept
        assert in_place.input is not old and in_place.input.shape == (1, 3, 4)
        by_array.step(x[:, 5:8])
        old[...] = 0.5  # the old buffer is an array like any other now: checked, copied
        got, expected = in_place.step(old), by_array.step(np.full((1, 1, 4), 0.5, np.float32))
        assert np.array_equal(got["lstm_1_sequence"], expected["lstm_1_sequence"])
    with pytest.raises(InputError, match="Expected batch and steps >= 1"):
        toolkit.open_stream(proto, steps=0)


@pytest.mark.parametrize("variant", ["bidirectional_concat", "lstm_go_backwards"])
def test_backward_layers_refuse_to_stream(variant):
    proto = export_model(build_stack(variant_config(variant, all_states=False)), state_io=True).model
    with pytest.raises(InputError, match="need the whole sequence"):
        toolkit.open_stream(proto)


def test_an_export_without_states_is_refused(tmp_path):
    path = export_model(MODELS["lstm"]()).save(tmp_path / "plain.onnx")
    with pytest.raises(InputError, match="Expected an export made with --state-io"):
        toolkit.open_stream(path)


def test_recorded_thread_count_is_used_and_a_given_one_wins():
    proto = export_model(MODELS["simple_rnn"](), state_io=True).model
    metadata.write_session_defaults(proto, metadata.SessionDefaults("onnxruntime", threads=2, batch=1, steps=1,
                                                                    stream=True, us=9.5))
    with toolkit.open_stream(proto) as session:
        assert session.threads == 2 and session.threads_from.startswith("recorded by bench (9.5 us")
    with toolkit.open_stream(proto, threads=1) as session:
        assert session.threads == 1 and session.threads_from == "given"
    metadata.write_entries(proto, {metadata.SESSION: {"runtime": "onnxruntime", "threads": "many"}})
    with pytest.raises(InputError, match="Expected metadata lstm_onnx.session as runtime, threads"):
        toolkit.open_stream(proto)


def _endless_loop_model(trips_from_state: bool = False) -> onnx.ModelProto:
    """A crafted file: a state map like a --state-io export's, and a Loop of 2**62 iterations (or of as many
    as the state's largest value: none from zero states)."""
    value = lambda name, shape: helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)  # noqa: E731
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond"], ["cond_out"]), helper.make_node("Add", ["s", "one"], ["s_out"])],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("cond", TensorProto.BOOL, []), value("s", ["batch", 2])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), value("s_out", ["batch", 2])],
        [helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])])
    counted = [helper.make_node("ReduceMax", ["state_in"], ["largest"], keepdims=0),
               helper.make_node("Cast", ["largest"], ["trips"], to=TensorProto.INT64)] if trips_from_state else []
    graph = helper.make_graph(
        [*counted, helper.make_node("Loop", ["trips", "keep", "state_in"], ["state_out"], body=body)], "endless",
        [value("input", ["batch", "time", 2]), value("state_in", ["batch", 2])], [value("state_out", ["batch", 2])],
        [helper.make_tensor("keep", TensorProto.BOOL, [], [True])]
        + ([] if trips_from_state else [helper.make_tensor("trips", TensorProto.INT64, [], [2**62])]))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    metadata.write_entries(model, {metadata.STATE_MAP: {"state_in": "state_out"}})
    return model


def test_a_step_past_its_deadline_is_stopped():
    start = time.monotonic()
    with pytest.raises(RuntimeFailure, match=r"Expected a run that ends within 0.3 s \(--timeout\)"):
        toolkit.open_stream(_endless_loop_model(), timeout=0.3)  # the probe run at open has the deadline too
    assert time.monotonic() - start < 10


def test_a_step_past_its_deadline_is_stopped_and_the_states_reset():
    session = toolkit.open_stream(_endless_loop_model(trips_from_state=True), timeout=0.3)
    x = np.zeros((1, 1, 2), np.float32)
    assert session.step(x)["state_out"].tolist() == [[0.0, 0.0]]  # zero states: no iteration
    session.reset({"state_in": np.full((1, 2), 1e18, np.float32)})
    start = time.monotonic()
    with pytest.raises(RuntimeFailure, match=r"Expected a run that ends within 0.3 s \(--timeout\)"):
        session.step(x)
    assert 0.3 <= time.monotonic() - start < 10
    assert not session.states["state_in"].any()
    assert session.step(x)["state_out"].tolist() == [[0.0, 0.0]]  # the session goes on, and is not stopped early
    session.close()


def _loop_of_input_trips() -> onnx.ModelProto:
    """The crafted endless Loop, its trip count the step input's largest value: a step of zeros is quick."""
    model = _endless_loop_model()
    graph = model.graph
    trips = [init for init in graph.initializer if init.name == "trips"][0]
    graph.initializer.remove(trips)
    graph.node.insert(0, helper.make_node("ReduceMax", ["input"], ["largest"], keepdims=0))
    graph.node.insert(1, helper.make_node("Cast", ["largest"], ["trips"], to=TensorProto.INT64))
    return model


def test_a_step_from_another_thread_while_one_runs_is_refused():
    """Before: both steps ran on the same side of the state buffers and a step was lost without a word
    (two threads of 20,000 counting steps counted 39,987), and the quick step's end cleared the long one's
    start: its deadline was never enforced."""
    import threading

    session = toolkit.open_stream(_loop_of_input_trips(), timeout=1.0)
    first: list[Exception] = []

    def long_step() -> None:  # runs to its deadline
        try:
            session.step(np.full((1, 1, 2), 1e18, np.float32))
        except RuntimeFailure as exc:
            first.append(exc)

    worker = threading.Thread(target=long_step, daemon=True)
    worker.start()
    while not session._turn.started and worker.is_alive():
        time.sleep(0.001)
    with pytest.raises(InputError, match="Expected one step at a time on a stream session"):
        session.step(np.zeros((1, 1, 2), np.float32))
    worker.join(10)
    assert first and "within 1 s" in str(first[0])
    assert session.step(np.zeros((1, 1, 2), np.float32))["state_out"].tolist() == [[0.0, 0.0]]  # it goes on
    session.close()


@pytest.mark.parametrize("timeout", [float("inf"), 1e300])
def test_an_endless_timeout_leaves_the_other_sessions_their_deadlines(timeout):
    """Before: the deadline thread waited a quarter of the smallest timeout, and a wait of inf or 2.5e299 s
    raised OverflowError in it: no session of the process was stopped any more, a crafted Loop ran for ever."""
    from toolkit.deploy.step_guard import GUARD as _GUARD

    with toolkit.open_stream(_counter_model(), timeout=timeout) as endless:
        endless.step(np.ones((1, 1, 1), np.float32))
        time.sleep(0.1)  # the guard has polled the sessions
        assert _GUARD._thread is not None and _GUARD._thread.is_alive()
        with toolkit.open_stream(_loop_of_input_trips(), timeout=0.3) as crafted:
            start = time.monotonic()
            with pytest.raises(RuntimeFailure, match=r"Expected a run that ends within 0.3 s"):
                crafted.step(np.full((1, 1, 2), 1e18, np.float32))  # stopped by the guard thread
        assert time.monotonic() - start < 10


def test_a_model_that_mixes_time_steps_across_a_chunk_is_refused():
    """Before: a causal Conv1D under the LSTM streamed silently wrong (its window crosses a chunk's edge; only
    the recurrent states are carried): 4.3e-2 off the whole sequence's run, step after step."""
    import keras

    x = keras.Input((None, 3), name="x")
    model = keras.Model(x, keras.layers.LSTM(5, name="l")(keras.layers.Conv1D(4, 2, padding="causal")(x)))
    set_deterministic_weights(model, 1)
    proto = export_model(model, state_io=True).model
    with pytest.raises(InputError, match=r"Expected a model whose run in chunks, carrying its recurrent states, is "
                                         r"its run on the whole sequence. Received: l_last off by .* a layer mixes"):
        toolkit.open_stream(proto)


@pytest.mark.parametrize("timeout", [None, "5", 0, -1.0, float("nan"), True])
def test_a_timeout_that_is_no_positive_number_is_one_line(timeout):
    """Before: None and "5" raised Python's TypeError from a comparison."""
    with pytest.raises(InputError, match=r"Expected a step timeout > 0 seconds. Received: "):
        toolkit.open_stream(_counter_model(), timeout=timeout)


def test_required_state_inputs_are_carried_too():
    """`initial_state` given as model inputs: with --state-io they are required inputs in the state map."""
    model = build_stack(variant_config("lstm_initial_state", all_states=False))
    proto = export_model(model, state_io=True).model
    x = np.random.default_rng(4).uniform(-1, 1, (1, 6, 4)).astype(np.float32)
    given = {"initial_h": np.full((1, 8), 0.5, np.float32), "initial_c": np.full((1, 8), -0.5, np.float32)}
    expected = np.asarray(model([x, given["initial_h"], given["initial_c"]], training=False)[0])
    with toolkit.open_stream(proto) as session:
        assert {"initial_h", "initial_c"} <= set(session.states)
        session.reset(given)
        got = np.concatenate([session.step(x[:, t:t + 1])["lstm_2_sequence"] for t in range(6)], axis=1)
    assert np.abs(got - expected).max() < 1e-5


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_the_op_alone_gives_the_files_outputs_at_batch_2_and_back_from_chunks(name):
    """The op alone against the file's graph over the same steps: GRU's bit for bit; LSTM's, its bias folded
    into W, within float32 rounding of it."""
    proto = export_model(MODELS[name](), state_io=True).model
    from toolkit.runtimes.onnxrt import OnnxRunner

    x = np.random.default_rng(5).uniform(-1, 1, (2, 7, 4)).astype(np.float32)
    whole = OnnxRunner(proto).run({"input": x})
    op = name.upper()
    with toolkit.open_stream(proto, batch=2, outputs=[o.name for o in proto.graph.output]) as session:
        assert session.graph.startswith(f"the {op} op alone")
        assert ("its bias folded into W" in session.graph) == (name == "lstm"), session.graph
        steps = [session.step(x[:, :1]), session.step(x[:, 1:4])]  # a chunk: the file's graph, states kept
        assert session.graph.startswith("the file's graph")
        steps += [session.step(x[:, t:t + 1]) for t in range(4, 7)]  # one step again: the op alone again
        assert session.graph.startswith(f"the {op} op alone")
    got = {"sequence": np.concatenate([s[f"{name}_1_sequence"] for s in steps], axis=1)}
    got.update({state: steps[-1][f"{name}_1_{state}"] for state in ("state_h", "state_c")[:2 if name == "lstm" else 1]})
    for key, value in got.items():
        expected = whole[f"{name}_1_{key}"]
        if name == "gru":
            assert np.array_equal(value, expected), key
        else:  # a few float32 ulps of values below 1
            assert np.abs(value - expected).max() <= 4e-7, (key, np.abs(value - expected).max())


def test_the_folded_bias_is_held_to_a_rounding_bound_that_a_broken_fold_fails():
    """The op alone with its bias folded into W (one more input column) differs from the file's graph by
    rounding only, and `fold_bound` says how much it may; a bias dropped, moved to another gate or negated
    is far outside it."""
    import onnxruntime as ort
    from onnx import numpy_helper

    from toolkit.deploy.step_graph import fold_bound, same_outputs, step_graph

    proto = export_model(MODELS["lstm"](), state_io=True).model
    units = {i.name: i.type.tensor_type.shape.dim[-1].dim_value for i in proto.graph.input}
    plan = step_graph(proto, 1, 1, units)
    assert plan.folded and not plan.model.graph.node[0].input[3]
    op = next(n for n in proto.graph.node if n.op_type == "LSTM")
    weights = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    folded = numpy_helper.to_array(next(t for t in plan.model.graph.initializer if t.name.endswith("_with_bias")))
    assert np.array_equal(folded[..., :-1], weights[op.input[1]])  # the file's W, bit for bit
    assert np.abs(weights[op.input[3]]).max() > 0.05  # a bias that matters

    rng = np.random.default_rng(0)
    feeds = {i.name: rng.uniform(-1, 1, [1 if not d.dim_value else d.dim_value for d in i.type.tensor_type.shape.dim])
             .astype(np.float32) for i in proto.graph.input}
    expected = dict(zip([o.name for o in proto.graph.output], ort.InferenceSession(proto.SerializeToString()).run(None, feeds)))
    ops = plan.op_feeds(feeds)
    bound = fold_bound(plan, ops)
    assert 1e-7 < bound < 1e-4

    def outputs(column: np.ndarray) -> dict[str, np.ndarray]:
        model = onnx.ModelProto()
        model.CopyFrom(plan.model)
        table = next(t for t in model.graph.initializer if t.name.endswith("_with_bias"))
        table.CopyFrom(numpy_helper.from_array(np.concatenate([folded[..., :-1], column[..., None]], axis=-1), table.name))
        session = ort.InferenceSession(model.SerializeToString())
        return dict(zip([o.name for o in session.get_outputs()], session.run(None, ops)))

    bias = folded[..., -1]
    assert same_outputs(plan, expected, outputs(bias), bound)
    for broken in (np.zeros_like(bias), np.roll(bias, 16, axis=-1), -bias):
        assert not same_outputs(plan, expected, outputs(broken), bound)


def test_a_session_is_freed_when_dropped_and_a_kept_step_is_refused_after_close():
    """`step` is a closure over the session's buffers (the fast path): it holds no reference to the session,
    so a session dropped without close() is freed at once, and a step kept past close() is refused."""
    import gc
    import weakref

    proto = export_model(MODELS["lstm"](), state_io=True).model
    x = np.zeros((1, 1, 4), np.float32)
    session = toolkit.open_stream(proto)
    session.step(x)
    gone = weakref.ref(session)
    gc.disable()
    try:
        del session
        assert gone() is None  # no reference cycle: freed without the garbage collector
    finally:
        gc.enable()
    session = toolkit.open_stream(proto)
    kept = session.step
    assert kept(x)["lstm_1_sequence"].shape == (1, 1, 16)
    session.close()
    for step in (kept, session.step):
        with pytest.raises(InputError, match=r"Expected an open stream session. Received: step\(\) after close\(\)"):
            step(x)
    del session, step  # the loop's last `step` was the session's method, which holds it
    with pytest.raises(InputError, match="Expected an open stream session. Received: step\\(\\) on a released session"):
        kept(x)
    # Kept from a session never closed, which is freed at once: refused too, not run on freed buffers.
    kept = toolkit.open_stream(proto).step
    with pytest.raises(InputError, match="Expected an open stream session. Received: step\\(\\) on a released session"):
        kept(x)


def test_a_step_kept_across_a_rebinding_runs_the_current_buffers():
    """A `step` closure kept from an earlier binding (a chunk of another length rebinds) goes to the method's
    path, which runs the current binding: before, it ran its own freed buffers (0.09 off from step 4 on)."""
    from toolkit.runtimes.onnxrt import OnnxRunner

    proto = export_model(MODELS["lstm"](), state_io=True).model
    x = np.random.default_rng(7).uniform(-1, 1, (1, 8, 4)).astype(np.float32)
    whole = OnnxRunner(proto).run({"input": x})["lstm_1_sequence"]
    with toolkit.open_stream(proto) as session:
        kept = session.step
        pieces = [kept(x[:, :1]), kept(x[:, 1:3])] + [kept(x[:, t:t + 1]) for t in range(3, 8)]
        got = np.concatenate([p["lstm_1_sequence"] for p in pieces], axis=1)
        assert np.abs(got - whole).max() <= 1e-6
        assert np.abs(session.states["lstm_1_initial_state_h"] - whole[:, -1]).max() <= 1e-6


def test_copy_false_returns_read_only_views():
    """With `copy=False` a step returns the session's buffers, the carried state's among them (the folded
    LSTM's main output is Y_h's buffer): read-only views, so a caller cannot change what the next step reads."""
    proto = export_model(MODELS["lstm"](), state_io=True).model
    x = np.zeros((1, 1, 4), np.float32)
    with toolkit.open_stream(proto, copy=False) as session:
        out = session.step(x)["lstm_1_sequence"]
        with pytest.raises(ValueError, match="read-only"):
            out[...] = 1
        session.reset({"lstm_1_initial_state_h": np.ones((1, 16), np.float32)})  # its own buffers stay writable
        assert session.states["lstm_1_initial_state_h"].all()
