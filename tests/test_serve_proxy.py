"""Issue 25, F1: `serve` puts nginx and the gate in front of Triton 2.51, which two requests killed (a body
in 1,000,455 one-byte chunks: SIGSEGV; a JSON shape of [1, 2^40, 2]: SIGABRT). The attacker is another
local user (`runuser -u nobody`, tests/local_attacker.py); every server listens on 127.0.0.1 and is
stopped by its test."""

import http.client
import json
import os
import socket
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import assert_close, free_port, run_as_nobody

from toolkit.cli import cli
from toolkit.deploy.gate import Refused, check_infer
from toolkit.deploy.proxy import RequestBounds, model_spec
from toolkit.deploy.sandbox import backend_stubs
from toolkit.deploy.serve import ServeError, ServeOptions, TritonServer
from toolkit.export.exporter import export_model
from toolkit.models.builder import StackConfig, build_stack
from toolkit.onnxfile.model import load_onnx
from toolkit.runtimes.keras import keras_outputs

pytest.importorskip("pytriton")

CONFIG = StackConfig(layers=1, units=2, features=2, timesteps=None, return_sequences=True, return_state=True)
MAX_VALUES = 40_000  # the largest valid request is then about 1.3 MB: nginx takes the 1,000,455-byte body
MAX_STEPS = 5_000
CLIENT_TIMEOUT_S = 2
CHUNKED_STEPS = 2_000
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="runs the attacker as another local user (runuser, as root)")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    model = build_stack(CONFIG)
    path = tmp_path_factory.mktemp("proxied") / "victim.onnx"
    export_model(model).save(path)
    options = ServeOptions(http_port=free_port(), max_request_values=MAX_VALUES, max_request_steps=MAX_STEPS,
                           client_timeout_s=CLIENT_TIMEOUT_S)
    with TritonServer(path, options) as server:
        yield model, server


def post(server, body, headers=None, path=None):
    connection = http.client.HTTPConnection("127.0.0.1", server.options.http_port, timeout=60)
    try:
        connection.request("POST", path or f"/v2/models/{server.name}/infer", body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def outputs_of(text):
    return {o["name"]: np.array(o["data"], np.float32).reshape(o["shape"]) for o in json.loads(text)["outputs"]}


def assert_keras(model, server, x, text):
    outputs = outputs_of(text)
    names = [o.name for o in load_onnx_outputs(server)]
    for name, expected in zip(names, keras_outputs(model, {"input": x})):
        assert_close(outputs[name], expected, name)


def load_onnx_outputs(server):
    from toolkit.runtimes.onnxrt import OnnxRunner

    return OnnxRunner(server.models[server.name]).outputs


def infer_good(model, server, x):
    body = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.ravel().tolist()}]}).encode()
    status, text = post(server, body)
    assert status == 200, text
    assert_keras(model, server, x, text)


def triton_pid(server):
    assert Path(f"/proc/{server.process.pid}/exe").resolve().name == "tritonserver"
    return server.process.pid


@needs_root
def test_both_killing_requests_from_another_user_then_a_good_request(served):
    model, server = served
    pid = triton_pid(server)
    seen = run_as_nobody("kill", server.options.http_port, server.name, CHUNKED_STEPS)
    assert seen["uid"] != os.getuid() and seen["chunks"] == 1_000_455
    # Before: tritonserver died with SIGSEGV. nginx took the chunks and Triton got one Content-Length body.
    status, text = seen["chunked"]
    assert status == 200, seen["chunked"]
    x = np.array([((i * 7) % 17) / 17 - 0.5 for i in range(CHUNKED_STEPS * 2)], np.float32).reshape(1, -1, 2)
    assert_keras(model, server, x, text)
    # Before: SIGABRT. The gate refuses the shape before Triton parses it.
    status, text = seen["huge_shape"]
    assert status == 400 and "Expected input 'input' axis 1 from 1 to 5000" in text, seen["huge_shape"]
    assert len(text.strip().splitlines()) == 1
    status, text = seen["repeated_key"]
    assert status == 400 and "a key repeated in one object" in text, seen["repeated_key"]
    server.check_backend()
    assert server.process.pid == pid and server.running()
    infer_good(model, server, np.random.default_rng(1).normal(size=(3, 7, 2)).astype(np.float32))


def test_oversized_body_is_refused_413_and_the_next_request_answered(served):
    model, server = served
    spec = json.loads((server.workspace / "gate" / "spec.json").read_text())
    assert spec["max_body"] == MAX_VALUES * 32 + (64 << 10)  # the largest valid request: the input's values
    connection = socket.create_connection(("127.0.0.1", server.options.http_port), timeout=30)
    with connection:
        connection.sendall(f"POST /v2/models/{server.name}/infer HTTP/1.1\r\nHost: x\r\n"
                           f"Content-Length: {spec['max_body'] + 1}\r\n\r\n".encode() + b" " * 1000)
        response = http.client.HTTPResponse(connection)
        response.begin()
        text = response.read().decode()
    assert response.status == 413 and f"Expected a body of at most {spec['max_body']} bytes" in text
    status, text = post(server, b"x" * (spec["max_body"] + 1))  # sent whole, too
    assert status == 413
    infer_good(model, server, np.random.default_rng(2).normal(size=(2, 4, 2)).astype(np.float32))


def test_headers_over_the_bound_are_refused(served):
    _, server = served
    status, text = post(server, b"{}", headers={"X-Big": "a" * 9000})
    assert status == 400 and json.loads(text)["error"].startswith("Expected a well-formed HTTP request")


def until_closed(sock):
    """What the server sends before it closes (or resets: `reset_timedout_connection`) the connection."""
    answer = b""
    try:
        while chunk := sock.recv(1000):
            answer += chunk
    except ConnectionResetError:
        pass
    return answer


def test_slow_clients_are_timed_out_while_others_are_served(served):
    model, server = served
    port = server.options.http_port
    header = socket.create_connection(("127.0.0.1", port), timeout=30)
    body = socket.create_connection(("127.0.0.1", port), timeout=30)
    started = time.monotonic()
    with header, body:
        header.sendall(b"POST /v2/models/x/infer HTTP/1.1\r\nHost: x\r\n")  # and never the rest
        body.sendall(f"POST /v2/models/{server.name}/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{"
                     .encode())  # 1 byte of 100
        infer_good(model, server, np.random.default_rng(3).normal(size=(1, 5, 2)).astype(np.float32))
        assert until_closed(header) == b""  # dropped without an answer
        closed_after = time.monotonic() - started
        answer = until_closed(body)
        body_closed_after = time.monotonic() - started
    for seconds in (closed_after, body_closed_after):
        assert CLIENT_TIMEOUT_S - 0.5 <= seconds <= CLIENT_TIMEOUT_S + 5, (closed_after, body_closed_after)
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer[:300]
    server.check_backend()


def test_a_body_on_a_get_cannot_smuggle_a_request_past_the_gate(served):
    """A GET's body, unread on a kept-alive connection, would be parsed as the connection's next request."""
    _, server = served
    smuggled = b"POST /v2/models/x/infer HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"
    with socket.create_connection(("127.0.0.1", server.options.http_port), timeout=30) as sock:
        sock.sendall(b"GET /v2 HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(smuggled), smuggled)
                     + b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = until_closed(sock)
    assert answer.count(b"HTTP/1.1 ") == 2 and answer.startswith(b"HTTP/1.1 400"), answer
    assert b"Expected a GET without a body" in answer and answer.split(b"}", 1)[1].startswith(b"HTTP/1.1 200 OK")


def test_binary_tensor_requests_are_checked_and_served(served):
    model, server = served
    x = np.random.default_rng(4).normal(size=(2, 6, 2)).astype(np.float32)
    header = json.dumps({"inputs": [{"name": "input", "shape": [2, 6, 2], "datatype": "FP32",
                                     "parameters": {"binary_data_size": x.nbytes}}]}).encode()
    headers = {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"}
    status, text = post(server, header + x.tobytes(), headers)
    assert status == 200, text
    assert_keras(model, server, x, text)
    # The declared size of a tensor of 2^40 steps, or a size that does not match the shape: refused.
    for shape, size in (([1, 2**40, 2], 8 * 2**40), ([2, 6, 2], x.nbytes - 4)):
        bad = json.dumps({"inputs": [{"name": "input", "shape": shape, "datatype": "FP32",
                                      "parameters": {"binary_data_size": size}}]}).encode()
        status, text = post(server, bad + x.tobytes(), {**headers, "Inference-Header-Content-Length": str(len(bad))})
        assert status == 400 and b"Expected" in text, text
    server.check_backend()


def listening_inodes():
    """Socket inodes listening in this process's network namespace (the host's)."""
    found = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # TCP_LISTEN
                found.add(int(fields[9]))
    return found


def socket_inodes(pid):
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(int(target[8:-1]))
    return found


@needs_root
def test_triton_listens_only_in_its_own_network_namespace(served):
    _, server = served
    pid = triton_pid(server)
    assert os.stat(f"/proc/{pid}/ns/net").st_ino != os.stat("/proc/self/ns/net").st_ino
    assert socket_inodes(pid) and not socket_inodes(pid) & listening_inodes()
    assert not socket_inodes(server.gate) & listening_inodes()
    gate_socket = server.workspace / "gate" / "gate.sock"
    assert oct(gate_socket.parent.stat().st_mode & 0o777) == "0o700"
    seen = run_as_nobody("reach", gate_socket, pid)
    assert seen == {"gate_socket": "PermissionError", "netns": "PermissionError", "uid": seen["uid"]}, seen


def test_every_process_and_file_of_a_server_is_gone_after_stop(served, tmp_path):
    model_path = tmp_path / "m.onnx"
    model_path.write_bytes(served[1].models[served[1].name].SerializeToString())
    server = TritonServer(model_path, ServeOptions(http_port=free_port())).start()
    try:
        nginx = [server.nginx.pid, *[int(p) for p in _children(server.nginx.pid)]]
        gate = [server.gate, *[int(p) for p in _children(server.gate)]]  # the gate forks one process per core
        pids = [triton_pid(server), *gate, *backend_stubs(server.process.pid), *nginx]
        assert len(gate) == min(4, os.cpu_count()) and len(pids) >= 5, pids  # and a stub, nginx's master and worker
        workspace = server.workspace
    finally:
        server.stop()
    deadline = time.monotonic() + 10  # an orphan's zombie waits for init to reap it
    while [p for p in pids if _alive(p)] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in pids if _alive(p)]
    assert not workspace.exists()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.options.http_port), timeout=5).close()


def _alive(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _children(pid):
    return [p.name for p in Path("/proc").glob("[0-9]*") if _parent(p) == pid]


def _parent(proc):
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def test_a_port_in_use_is_a_one_line_startup_error_and_nothing_is_left(tmp_path):
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        server = TritonServer(Path(__file__).resolve().parent.parent / "exported" / "case4_last.onnx",
                              ServeOptions(http_port=port))
        with pytest.raises(ServeError, match=rf"^Expected nginx to start on 127.0.0.1:{port}\. Received: exit code 1; "
                                             r"log: .*Address already in use"):
            server.start()
    assert server.workspace is None and not server.running() and server.nginx.poll() is not None


def test_grpc_is_refused_in_one_line():
    result = CliRunner().invoke(cli, ["serve", "exported/case4_last.onnx", "--grpc"])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert "Expected serve without --grpc" in result.output


@pytest.fixture(scope="module")
def spec():
    model = load_onnx(Path(__file__).resolve().parent.parent / "exported" / "case1_sequences.onnx")
    return model_spec(model, RequestBounds(max_batch_size=8, max_steps=100, max_values=1_000))


def tensor(shape, data=None, **extra):
    values = int(np.prod(shape)) if all(isinstance(d, int) and d >= 0 for d in shape) else 1
    return {"name": "input", "shape": shape, "datatype": "FP32", "data": [0.5] * values if data is None else data, **extra}


@pytest.mark.parametrize("label,body,header_length", [
    ("2^40 steps", {"inputs": [tensor([1, 2**40, 1], [1])]}, None),
    ("batch over the bound", {"inputs": [tensor([9, 3, 1])]}, None),
    ("wrong fixed axis", {"inputs": [tensor([1, 4, 1])]}, None),
    ("axis of 0", {"inputs": [tensor([0, 3, 1])]}, None),
    ("negative axis", {"inputs": [tensor([1, -3, 1], [1])]}, None),
    ("rank", {"inputs": [tensor([3, 1])]}, None),
    ("bool axis", {"inputs": [tensor([True, 3, 1], [1, 2, 3])]}, None),
    ("datatype", {"inputs": [{**tensor([1, 3, 1]), "datatype": "FP64"}]}, None),
    ("unknown input", {"inputs": [{**tensor([1, 3, 1]), "name": "other"}]}, None),
    ("input twice", {"inputs": [tensor([1, 3, 1]), tensor([1, 3, 1])]}, None),
    ("data shorter than the shape", {"inputs": [tensor([2, 3, 1], [1, 2])]}, None),
    ("nested data longer", {"inputs": [tensor([1, 3, 1], [[1, 2], [3, [4]]])]}, None),
    ("data not a list", {"inputs": [tensor([1, 3, 1], "abc")]}, None),
    ("shared memory input", {"inputs": [tensor([1, 3, 1], parameters={"shared_memory_region": "x"})]}, None),
    ("shared memory output", {"inputs": [tensor([1, 3, 1])],
                              "outputs": [{"name": "o", "parameters": {"shared_memory_region": "x"}}]}, None),
    ("classification", {"inputs": [tensor([1, 3, 1])],
                        "outputs": [{"name": "o", "parameters": {"classification": 1 << 40}}]}, None),
    ("unknown key", {"inputs": [tensor([1, 3, 1])], "extra": 1}, None),
    ("binary size wrong", {"inputs": [{**tensor([1, 3, 1]), "data": None, "parameters": {"binary_data_size": 8}}]}, None),
    ("header past the body", {"inputs": [tensor([1, 3, 1])]}, "999999"),
])
def test_the_gate_refuses_what_triton_must_not_parse(spec, label, body, header_length):
    raw = json.dumps(body).replace(', "data": null', "").encode()
    with pytest.raises(Refused, match=r"^Expected .*Received"):
        check_infer(raw, header_length, spec)


def test_the_gate_refuses_repeated_keys_and_other_encodings(spec):
    """Python's parser keeps a repeated key's last value; Triton's may take the first one."""
    good, huge = json.dumps(tensor([1, 3, 1])), json.dumps(tensor([1, 2**40, 1], [1]))
    for raw in (f'{{"inputs": [{huge}], "inputs": [{good}]}}',
                f'{{"inputs": [{{"name": "input", "shape": [1, 1099511627776, 1], {good[1:]}]}}'):
        with pytest.raises(Refused, match="Received: ValueError: a key repeated in one object"):
            check_infer(raw.encode(), None, spec)
    with pytest.raises(Refused, match="Received: UnicodeDecodeError"):  # Python reads UTF-16 JSON; Triton not
        check_infer(json.dumps({"inputs": [tensor([1, 3, 1])]}).encode("utf-16"), None, spec)


def test_the_gate_refuses_deep_nesting_and_passes_good_requests(spec):
    with pytest.raises(Refused, match="Expected a JSON inference request. Received: RecursionError"):  # not a crash
        check_infer(b"[" * 100_000 + b"]" * 100_000, None, spec)
    check_infer(json.dumps({"inputs": [tensor([8, 3, 1])]}).encode(), None, spec)
    check_infer(json.dumps({"inputs": [tensor([2, 3, 1], [[[1], [2], [3]], [[4], [5], [6]]])]}).encode(), None, spec)
    header = json.dumps({"inputs": [{**tensor([2, 3, 1]), "parameters": {"binary_data_size": 24}}]})
    header = header.replace(', "data": [0.5, 0.5, 0.5, 0.5, 0.5, 0.5]', "").encode()
    check_infer(header + struct.pack("6f", *range(6)), str(len(header)), spec)
