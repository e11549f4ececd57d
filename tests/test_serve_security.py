"""Issues 18 and 25: `serve` on a machine shared with other local users, and a served model that survives
any request (the requests that killed Triton itself: tests/test_serve_proxy.py). The attacker is another
local user (`runuser -u nobody`, the system `python3`, standard library only: tests/local_attacker.py);
every server here listens on 127.0.0.1 and is stopped by its test."""

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_close, free_port, run_as_nobody

from toolkit.deploy.sandbox import backend_stubs
from toolkit.deploy.serve import ServeOptions, TritonServer
from toolkit.export.exporter import export_model
from toolkit.models.builder import StackConfig, build_stack
from toolkit.runtimes.keras import keras_outputs

pytest.importorskip("pytriton")

ROOT = Path(__file__).resolve().parent.parent
CONFIG = StackConfig(layers=2, units=4, features=2, timesteps=None, return_sequences=True, return_state=True)
MAX_VALUES = 10_000  # a small request bound, so a request beyond it stays a small body
MAX_STEPS = 2_000
MARKER = np.array([1234.5678, -8765.4321, 4242.4242, 1.5, -2.5, 3.5], np.float32).reshape(1, 3, 2)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    model = build_stack(CONFIG)
    path = tmp_path_factory.mktemp("guarded") / "stream.onnx"
    export_model(model, state_io=True).save(path)
    options = ServeOptions(http_port=free_port(), max_request_values=MAX_VALUES,
                           max_request_steps=MAX_STEPS)
    with TritonServer(path, options) as server:
        yield model, server


def post(server, path, body, headers=None, timeout=30):
    """Status and body of one raw HTTP request; (0, reason) when the server drops the connection."""
    connection = http.client.HTTPConnection("127.0.0.1", server.options.http_port, timeout=timeout)
    try:
        connection.request("POST", path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    except (OSError, http.client.HTTPException) as exc:
        return 0, type(exc).__name__
    finally:
        connection.close()


def tensor(name, array, datatype=None):
    return {"name": name, "shape": list(array.shape), "datatype": datatype or "FP32", "data": array.ravel().tolist()}


def request(x, states=None, datatype=None):
    batch = x.shape[0] if x.ndim else 1
    zeros = np.zeros((max(batch, 1), 4), np.float32) if states is None else states
    names = ["lstm_1_initial_state_h", "lstm_1_initial_state_c", "lstm_2_initial_state_h", "lstm_2_initial_state_c"]
    return json.dumps({"inputs": [tensor("input", x, datatype), *[tensor(n, zeros) for n in names]]}).encode()


def infer_good(model, server, x):
    status, text = post(server, f"/v2/models/{server.name}/infer", request(x))
    assert status == 200, text
    outputs = {o["name"]: np.array(o["data"], np.float32).reshape(o["shape"]) for o in json.loads(text)["outputs"]}
    for name, expected in zip(("lstm_2_sequence", "lstm_2_state_h", "lstm_2_state_c"), keras_outputs(model, {"input": x})):
        assert_close(outputs[name], expected, name)


needs_root = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("runuser"),
                                reason="runs the attacker as another local user (runuser, as root)")


@needs_root
def test_another_user_cannot_register_shared_memory_crash_the_server_or_read_requests(served):
    model, server = served
    status, text = post(server, f"/v2/models/{server.name}/infer", request(MARKER))
    assert status == 200, text  # the marker went through the backend's shared memory
    seen = run_as_nobody("serve", server.options.http_port, server.name, MARKER.tobytes().hex())
    assert seen["uid"] != os.getuid()
    assert not seen["readable"] and not seen["marker_seen"], seen  # before: the region, mode 0644, and the marker
    assert seen["register"][0] == 403, seen["register"]  # before: 200, then a write into the backend's region
    assert seen["write_into_region"][0] >= 400
    for api in ("logging", "repository", "unload", "config", "statistics", "trace"):
        assert seen[api][0] == 403, (api, seen[api])
    assert seen["ready"][0] == 200
    server.check_backend()
    infer_good(model, server, np.random.default_rng(4).normal(size=(2, 5, 2)).astype(np.float32))


def test_no_region_of_the_server_is_in_the_shared_dev_shm(served):
    _, server = served
    assert not list(Path("/dev/shm").glob(server._shm_prefix + "*"))


def test_grpc_and_metrics_are_off(served):
    """Only Triton's HTTP port listens, and only inside its network namespace (its own /proc/PID/net)."""
    _, server = served
    listening = [line.split()[1] for line in Path(f"/proc/{server.process.pid}/net/tcp").read_text().splitlines()[1:]
                 if line.split()[3] == "0A"]
    assert listening == ["0100007F:1F40"], listening  # 127.0.0.1:8000, no gRPC (8001) or metrics (8002)


def hostile_requests(name):
    """(label, path, body, headers): every way a request body can be wrong that we know of."""
    infer = f"/v2/models/{name}/infer"
    long_steps = np.zeros((1, MAX_STEPS + 1, 2), np.float32)
    many_values = np.zeros((3, 1_700, 2), np.float32)  # 10,200 values, every axis within its bound
    return [
        ("time axis 0", infer, request(np.zeros((1, 0, 2), np.float32)), {}),
        ("batch 0", infer, request(np.zeros((0, 3, 2), np.float32), np.zeros((0, 4), np.float32)), {}),
        ("float64", infer, request(np.zeros((1, 3, 2)), datatype="FP64"), {}),
        ("int32", infer, request(np.zeros((1, 3, 2), np.int32), datatype="INT32"), {}),
        ("wrong features", infer, request(np.zeros((1, 3, 5), np.float32)), {}),
        ("steps beyond the bound", infer, request(long_steps), {}),
        ("values beyond the bound", infer, request(many_values), {}),
        ("batch sizes differ", infer, request(np.zeros((2, 3, 2), np.float32), np.zeros((3, 4), np.float32)), {}),
        ("malformed JSON", infer, b'{"inputs": [', {}),
        ("not UTF-8", infer, bytes(range(256)) * 4, {}),
        ("data shorter than the shape", infer, json.dumps({"inputs": [{"name": "input", "shape": [1, 3, 2],
                                                                     "datatype": "FP32", "data": [1]}]}).encode(), {}),
        ("negative axis", infer, json.dumps({"inputs": [{"name": "input", "shape": [1, -3, 2],
                                                        "datatype": "FP32", "data": [1]}]}).encode(), {}),
        ("strings as data", infer, json.dumps({"inputs": [{"name": "input", "shape": [1, 3, 2], "datatype": "FP32",
                                                          "data": ["a"] * 6}]}).encode(), {}),
        ("binary header past the body", infer, b"{}", {"Inference-Header-Content-Length": "999999"}),
        ("8 MB of garbage", infer, os.urandom(8 << 20), {}),
        ("unknown output", infer, json.dumps({"inputs": [], "outputs": [{"name": "nope"}]}).encode(), {}),
    ]


def test_a_hundred_hostile_requests_then_keras_numbers(served):
    """Before: one request with a time axis of 0 killed the backend for good (every later request HTTP 500,
    the model still 'ready', serve silent)."""
    model, server = served
    cases = hostile_requests(server.name)
    rng = np.random.default_rng(5)
    answered = {}
    for i in range(100):
        label, path, body, headers = cases[i % len(cases)]
        status, text = post(server, path, body, headers)
        assert status >= 400 or status == 0, (label, status, text[:200])
        assert status == 0 or "error" in text, (label, text[:200])
        answered[label] = text[:160]
        if i % 10 == 9:  # a good request between the hostile ones
            infer_good(model, server, rng.normal(size=(3, 7, 2)).astype(np.float32))
    server.check_backend()
    assert "Expected input 'input' axis 1 from 1 to 2000. Received: shape [1, 0, 2]" in answered["time axis 0"]
    assert f"axis 1 from 1 to {MAX_STEPS}. Received: shape [1, {MAX_STEPS + 1}, 2]" in answered["steps beyond the bound"]
    assert f"Expected at most {MAX_VALUES} values" in answered["values beyond the bound"]
    assert "Expected a body of at most" in answered["8 MB of garbage"]  # nginx's 413, before a byte reached Triton
    infer_good(model, server, rng.normal(size=(2, 11, 2)).astype(np.float32))


def _kill_stub(server_pid, workspace):
    os.kill(backend_stubs(server_pid)[0], signal.SIGKILL)


def _kill_gate(server_pid, workspace):
    os.kill(int((workspace / "gate" / "gate.pid").read_text()), signal.SIGKILL)


def _kill_nginx(server_pid, workspace):
    os.kill(int((workspace / "nginx" / "nginx.pid").read_text()), signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.parametrize("kill,message", [
    (_kill_stub, "Error: Expected the model's backend process to keep running."),
    (_kill_gate, "Error: Expected serve's gate to keep running."),
    (_kill_nginx, "Error: Expected nginx to keep running."),
], ids=["stub", "gate", "nginx"])
def test_serve_stops_saying_so_when_a_process_of_it_dies(served, tmp_path, kill, message):
    """If the backend, the gate or nginx dies anyway (here: killed), `serve` does not go on answering errors."""
    copy = tmp_path / "stream.onnx"
    copy.write_bytes(served[1].models[served[1].name].SerializeToString())
    command = [sys.executable, "-m", "toolkit.cli", "serve", str(copy), "--http-port", str(free_port())]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert "serving" in process.stdout.readline()
        server_pid = next(int(p.name) for p in Path("/proc").glob("[0-9]*") if _parent(p) == process.pid
                          and _exe_name(p) == "tritonserver")
        args = Path(f"/proc/{server_pid}/cmdline").read_text().split("\0")
        kill(server_pid, Path(args[args.index("--model-repository") + 1]).parent)
        _, err = process.communicate(timeout=60)
        assert process.returncode == 1, err
        assert err.startswith(message) and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _exe_name(proc):
    try:
        return Path(os.readlink(proc / "exe")).name
    except OSError:  # ended meanwhile
        return ""


def _parent(proc):
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None
