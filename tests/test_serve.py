"""`lstm-onnx serve`: a real Triton server (pytriton's tritonserver, Python backend, ONNX Runtime inside)
behind nginx and the gate, called with tritonclient over HTTP (gRPC is refused: issue 25). One server per
module; traffic to 127.0.0.1 only, bounded in count (a few hundred requests) and time (every client call
and thread has a timeout)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import assert_close, free_port

from toolkit.cli import cli
from toolkit.deploy.serve import ServeOptions, TritonServer, remove_stale
from toolkit.deploy.triton_build import server_environment, triton_distribution
from toolkit.errors import InputError
from toolkit.export.exporter import export_model
from toolkit.fileio import owner_pid
from toolkit.models.builder import StackConfig, build_stack
from toolkit.onnxfile.metadata import read_state_map as state_map
from toolkit.onnxfile.model import load_onnx
from toolkit.runtimes.keras import keras_outputs
from toolkit.runtimes.onnxrt import OnnxRunner

pytest.importorskip("pytriton")
httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SEEDS = sorted((ROOT / "exported").glob("*.onnx"))
MANIFEST = {m["file"]: m["config"] for m in json.loads((ROOT / "exported" / "manifest.json").read_text())["models"]}
STREAM_CONFIG = StackConfig(layers=2, units=4, features=2, timesteps=None, return_sequences=True, return_state=True)
CHUNKS = [1, 3, 2, 5, 1, 4, 2, 3, 1, 2, 4, 1, 3, 2, 5, 1, 2, 3, 1, 4]  # 20 uneven chunks, 50 steps
STREAMS = 16
TIMEOUT_S = 60


@pytest.fixture(scope="module")
def streaming(tmp_path_factory):
    model = build_stack(STREAM_CONFIG)
    path = tmp_path_factory.mktemp("serve") / "streaming.onnx"
    export_model(model, state_io=True).save(path)
    return model, path


@pytest.fixture(scope="module")
def server(streaming):
    # Statistics open: the load test counts requests and executions through them (closed by default).
    options = ServeOptions(http_port=free_port(), max_batch_size=64, statistics=True)
    with TritonServer([*SEEDS, streaming[1]], options) as running:
        yield running


def client(server):
    return httpclient.InferenceServerClient(server.http_url, connection_timeout=TIMEOUT_S, network_timeout=TIMEOUT_S)


def infer(server, binary, model, feeds):
    """One request with every input of `feeds` (binary tensors, or JSON); every output of the model back."""
    inputs = []
    for name, value in feeds.items():
        tensor = httpclient.InferInput(name, list(value.shape), "FP32" if value.dtype == np.float32 else "FP64")
        tensor.set_data_from_numpy(value, binary_data=binary)
        inputs.append(tensor)
    names = [t.name for t in OnnxRunner(server.models[model]).outputs]
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in names]
    result = client(server).infer(model, inputs, outputs=outputs)
    return {n: result.as_numpy(n) for n in names}


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("seed", SEEDS, ids=lambda p: p.stem)
def test_seed_exports_equal_onnx_runtime_and_keras(server, binary, seed):
    x = np.random.default_rng(1).normal(size=(5, 3, 1)).astype(np.float32)
    served = infer(server, binary, seed.stem, {"input": x})
    local = OnnxRunner(load_onnx(seed)).run({"input": x})
    expected = keras_outputs(build_stack(StackConfig(**MANIFEST[seed.name])), {"input": x})
    assert list(served) == list(local) and len(expected) == len(local)
    for (name, value), keras_value in zip(served.items(), expected):
        np.testing.assert_array_equal(value, local[name], err_msg=name)  # the same ONNX Runtime call
        assert_close(value, keras_value, name)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_state_io_stack_served_with_states_as_request_tensors(server, streaming, binary):
    model, path = streaming
    x = np.random.default_rng(2).normal(size=(3, 6, 2)).astype(np.float32)
    zeros = {name: np.zeros((3, 4), np.float32) for name in state_map(load_onnx(path))}
    served = infer(server, binary, "streaming", {"input": x, **zeros})
    for name, keras_value in zip(served, keras_outputs(model, {"input": x})):
        assert_close(served[name], keras_value, name)


def run_stream(server, binary, x, mapping):
    """One stream, chunk after chunk, each request carrying the states the previous response returned."""
    states = {name: np.zeros((1, 4), np.float32) for name in mapping}
    pieces, start, responses = [], 0, 0
    for size in CHUNKS:
        out = infer(server, binary, "streaming", {"input": x[None, start:start + size], **states})
        responses += 1
        pieces.append(out["lstm_2_sequence"])
        states = {state_in: out[state_out] for state_in, state_out in mapping.items()}
        start += size
    return responses, np.concatenate(pieces, axis=1)[0], out


def model_stats(server, name):
    stats = client(server).get_inference_statistics(name)["model_stats"][0]
    return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))


@pytest.mark.slow
def test_concurrent_streams_equal_keras_on_their_whole_sequence(server, streaming):
    model, path = streaming
    mapping = state_map(load_onnx(path))
    xs = np.random.default_rng(3).normal(size=(STREAMS, sum(CHUNKS), 2)).astype(np.float32)
    sequence, state_h, state_c = keras_outputs(model, {"input": xs})
    before = model_stats(server, "streaming")
    with ThreadPoolExecutor(STREAMS) as pool:
        futures = [pool.submit(run_stream, server, bool(s % 2), xs[s], mapping) for s in range(STREAMS)]
        results = [f.result(timeout=TIMEOUT_S * 2) for f in futures]
    after = model_stats(server, "streaming")
    for s, (responses, streamed, last) in enumerate(results):
        assert responses == len(CHUNKS)
        assert_close(streamed, sequence[s], f"stream {s}")
        assert_close(last["lstm_2_state_h"][0], state_h[s])
        assert_close(last["lstm_2_state_c"][0], state_c[s])
    inferences, executions = after[0] - before[0], after[1] - before[1]
    assert inferences == STREAMS * len(CHUNKS)  # no request lost, none counted twice
    # The dynamic batcher put chunks of different streams into one ONNX Runtime call.
    assert executions < inferences, (executions, inferences)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_malformed_requests_get_the_gates_error_and_the_server_keeps_serving(server, binary):
    good = np.zeros((2, 3, 1), np.float32)
    cases = {
        "unknown input": ({"inputs": good}, "Expected each input once, among ['input']. Received: 'inputs'"),
        "data type": ({"input": good.astype(np.float64)}, "Expected input 'input' of datatype FP32. Received: FP64"),
        "shape": ({"input": np.zeros((2, 4, 1), np.float32)}, "Expected input 'input' axis 1 of 3. Received: shape [2, 4, 1]"),
        "batch above the maximum": ({"input": np.zeros((65, 3, 1), np.float32)}, "axis 0 from 1 to 64. Received"),
    }
    for label, (feeds, message) in cases.items():
        with pytest.raises(InferenceServerException) as error:
            infer(server, binary, "case4_last", feeds)
        assert message in str(error.value), (label, str(error.value))
    assert infer(server, binary, "case4_last", {"input": good})["lstm_2_last"].shape == (2, 2)


def test_server_environment_puts_this_interpreter_first():
    env = server_environment(triton_distribution(), base={"PATH": "/usr/bin", "LD_LIBRARY_PATH": "/opt/x"})
    import sysconfig

    assert env["LD_LIBRARY_PATH"].split(os.pathsep)[0] == sysconfig.get_config_var("LIBDIR")
    assert env["LD_LIBRARY_PATH"].endswith("/opt/x")
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)


def test_serve_refuses_bad_input_in_one_line(tmp_path):
    runner = CliRunner()
    missing = runner.invoke(cli, ["serve", str(tmp_path / "nope.onnx")])
    grpc = runner.invoke(cli, ["serve", str(SEEDS[0]), "--grpc"])
    bad_name = runner.invoke(cli, ["serve", str(SEEDS[0]), "--name", "../x"])
    for result, message in ((missing, "Error: "), (grpc, "Expected serve without --grpc"),
                            (bad_name, "Expected a Triton model name")):
        assert result.exit_code == 1 and message in result.output and len(result.output.strip().splitlines()) == 1
    with pytest.raises(InputError, match="Expected one model with a name option"):
        TritonServer(SEEDS, ServeOptions(name="x"))


def descendants(pid):
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def exe_name(pid):
    """The program a process runs; "" once it has ended (serve's start runs short-lived probes)."""
    try:
        return Path(os.readlink(f"/proc/{pid}/exe")).name
    except OSError:
        return ""


def alive(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def cli_serve(model, port):
    """`lstm-onnx serve MODEL` in a child process, on the given HTTP port."""
    command = [sys.executable, "-m", "toolkit.cli", "serve", str(model), "--http-port", str(port)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def reap(process):
    """Whatever a test left running is killed: every test stops what it started."""
    if process.poll() is None:
        process.kill()
        process.wait()


def start_cli_server():
    port = free_port()
    process = cli_serve(SEEDS[-1], port)
    line = []
    reader = threading.Thread(target=lambda: line.append(process.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout=180)
    assert line and f"http://127.0.0.1:{port}" in line[0] and "behind nginx" in line[0], (line, process.poll())
    tree = descendants(process.pid)
    names = {exe_name(p) for p in tree if alive(p)}
    assert {"tritonserver", "triton_python_backend_stub", "nginx"} <= names
    return process, tree


def wait_gone(pids, seconds=15):
    deadline = time.monotonic() + seconds
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    return [p for p in pids if alive(p)]


@pytest.mark.slow
def test_cli_serves_until_sigterm_and_leaves_no_process():
    process, tree = start_cli_server()
    try:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, process.stderr.read()
        assert not wait_gone(tree)
    finally:
        reap(process)


@pytest.mark.slow
def test_sigterm_while_starting_stops_everything():
    process = cli_serve(SEEDS[0], free_port())
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any(
                exe_name(p) == "tritonserver" for p in descendants(process.pid) if alive(p)):
            time.sleep(0.05)
        tree = descendants(process.pid)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0 and "serving" not in out, (out, err)
        assert not wait_gone(tree)
    finally:
        reap(process)


@pytest.mark.slow
def test_server_dies_with_a_killed_serve_and_the_next_serve_removes_its_workspace():
    """SIGKILL leaves lstm-onnx no chance to stop the server: the kernel's parent-death signal does. Nor
    to remove its workspace and shared memory: the next serve does, knowing the owner from the name."""
    process, tree = start_cli_server()
    server_pid = next(p for p in tree if exe_name(p) == "tritonserver")
    args = Path(f"/proc/{server_pid}/cmdline").read_text().split("\0")
    workspace = Path(args[args.index("--model-repository") + 1]).parent
    assert workspace.name.startswith(f"lstm-onnx-serve-{process.pid}-")
    process.kill()
    process.wait()
    try:
        assert not wait_gone(tree)
        assert workspace.is_dir()  # nobody removed it: the owner was killed
        with TritonServer(SEEDS[0], ServeOptions(http_port=free_port())) as second:
            assert second.running() and not workspace.exists()
            assert not list(Path("/dev/shm").glob(f"lstm-onnx-{process.pid}-*"))
    finally:
        shutil.rmtree(workspace, ignore_errors=True)


def test_remove_stale_takes_only_what_a_dead_owner_left(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that ran and is gone (reaped)
    shm = tmp_path / "shm"
    shm.mkdir()
    stale = tmp_path / f"lstm-onnx-serve-{dead.pid}-abc"
    live = tmp_path / f"lstm-onnx-serve-{os.getppid()}-abc"  # our parent: alive
    older = tmp_path / "lstm-onnx-serve-abc12345"  # an older serve's name, without a pid: left alone
    region, live_region = shm / f"lstm-onnx-{dead.pid}-00ff-region", shm / f"lstm-onnx-{os.getppid()}-00ff-region"
    for folder in (stale, live, older):
        (folder / "repo").mkdir(parents=True)
    region.write_bytes(b"x")
    live_region.write_bytes(b"x")
    assert sorted(remove_stale(tmp_path, shm)) == sorted([stale, region])
    assert not stale.exists() and not region.exists()
    assert live.is_dir() and older.is_dir() and live_region.exists()
    assert owner_pid("lstm-onnx-serve-12345678", "lstm-onnx-serve-") is None
    assert owner_pid("lstm-onnx-serve-42-x", "lstm-onnx-serve-") == 42


def test_serve_keeps_tensorflow_out():
    code = "import sys, toolkit.cli, toolkit.deploy.serve, toolkit.cli.serve; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.strip() == "False", out.stderr
