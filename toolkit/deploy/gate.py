"""The gate: what checks every request between `serve`'s nginx and Triton, and the only way to Triton.

Triton 2.51's HTTP JSON path allocates what a request's shape declares before it looks at the data, and
aborts on `[1, 2^40, 2]`; nginx cannot read JSON. So this small process sits between them: nginx hands it
each request, already bounded and de-chunked (Content-Length, at most the model's largest valid request),
over a Unix socket in serve's private 0700 folder; the gate runs in Triton's private network namespace
and is the only process that connects to Triton's port. Per request it:

- routes exactly what serve opens (health, server and model metadata, ready, infer; statistics only
  when asked) on the raw path Triton will read, and only for the served models;
- parses the JSON (the body is bounded; nesting is bounded by the parser's recursion limit, an error,
  not a crash) and checks every input against the model: a known name, once; the model's datatype;
  the model's rank and fixed axes; every dynamic axis from 1 to serve's bound (batch, time steps) and
  at most `max_values` values; `data` holding exactly that many values, or for the binary-tensor
  extension a `binary_data_size` of exactly the tensor's bytes, all sizes adding up to the body;
- refuses compressed bodies (Triton would inflate what the gate never saw) and shared-memory
  parameters (the shared-memory API is closed);
- forwards the body unchanged with Content-Length, or answers with a one-line JSON error.

Run by path with `python -I` (standard library only, like the backend's model.py): `serve_gate.py SPEC`,
SPEC being the JSON that `toolkit.deploy.proxy.gate_spec` writes.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socketserver
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler
from typing import Any

ITEM_BYTES = {"FP32": 4, "FP64": 8, "FP16": 2, "INT32": 4, "INT64": 8, "BOOL": 1}
MODEL_ROUTE = re.compile(r"^/v2/models/([^/]+)(?:/versions/[0-9]+)?(/ready|/infer|/stats)?$")
OPEN_GETS = ("/v2", "/v2/health/live", "/v2/health/ready")
REQUEST_KEYS = {"id", "parameters", "inputs", "outputs"}
INPUT_KEYS = {"name", "shape", "datatype", "parameters", "data"}
BODY_BUDGET = 1 << 30  # bytes of request bodies held at once, all processes (waiting requests queue, not fail)
MAX_PROCESSES = 4
UPSTREAM_TIMEOUT_S = 600.0
FORWARDED = ("Content-Type", "Inference-Header-Content-Length")


class Refused(Exception):
    """A request the gate answers itself: an HTTP status and a one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _count(data: Any) -> int:
    """Values in a (possibly nested) JSON data list; Refused for anything else."""
    if not isinstance(data, list):
        raise Refused(400, f"Expected 'data' as a JSON list. Received: {type(data).__name__}")
    count, todo = 0, [data]
    while todo:
        for item in todo.pop():
            if isinstance(item, list):
                todo.append(item)
            else:
                count += 1
    return count


def _check_shape(where: str, shape: Any, spec: dict, max_values: int) -> int:
    """The number of values `shape` declares, once it fits the model's input; Refused otherwise."""
    dims, bounds = spec["dims"], spec["bounds"]
    if not isinstance(shape, list) or any(not isinstance(d, int) or isinstance(d, bool) for d in shape):
        raise Refused(400, f"Expected {where} shape as a list of integers. Received: {str(shape)[:80]}")
    if len(shape) != len(dims):
        raise Refused(400, f"Expected {where} of rank {len(dims)}. Received: shape {shape}")
    values = 1
    for axis, (got, fixed, bound) in enumerate(zip(shape, dims, bounds)):
        if fixed is not None and got != fixed:
            raise Refused(400, f"Expected {where} axis {axis} of {fixed}. Received: shape {shape}")
        if not 1 <= got <= bound:
            raise Refused(400, f"Expected {where} axis {axis} from 1 to {bound}. Received: shape {shape}")
        values *= got
    if values > max_values:
        raise Refused(400, f"Expected at most {max_values} values in {where}. Received: shape {shape}")
    return values


def _check_input(entry: Any, model: dict, seen: set[str]) -> int:
    """Check one input; the binary bytes it declares (0 for JSON data)."""
    if not isinstance(entry, dict) or set(entry) - INPUT_KEYS:
        raise Refused(400, f"Expected each input an object with keys among {sorted(INPUT_KEYS)}. "
                           f"Received: {str(entry)[:80]}")
    name = entry.get("name")
    if name not in model["inputs"] or name in seen:
        raise Refused(400, f"Expected each input once, among {sorted(model['inputs'])}. Received: {str(name)[:80]!r}")
    seen.add(name)
    spec, where = model["inputs"][name], f"input {name!r}"
    if entry.get("datatype") != spec["datatype"]:
        raise Refused(400, f"Expected {where} of datatype {spec['datatype']}. Received: {str(entry.get('datatype'))[:20]}")
    values = _check_shape(where, entry.get("shape"), spec, model["max_values"])
    parameters = entry.get("parameters", {})
    if not isinstance(parameters, dict) or set(parameters) - {"binary_data_size"}:
        raise Refused(400, f"Expected {where} parameters among ['binary_data_size'] (shared memory is closed). "
                           f"Received: {str(parameters)[:80]}")
    if "binary_data_size" in parameters:
        size, want = parameters["binary_data_size"], values * ITEM_BYTES[spec["datatype"]]
        if "data" in entry or size != want or isinstance(size, bool):
            raise Refused(400, f"Expected {where} binary_data_size {want} and no 'data'. Received: {str(size)[:20]}")
        return want
    count = _count(entry.get("data"))
    if count != values:
        raise Refused(400, f"Expected {values} values in {where} (shape {entry['shape']}). Received: {count}")
    return 0


def _no_shared_memory(parameters: Any, where: str) -> None:
    if parameters is None:
        return
    if not isinstance(parameters, dict) or any(str(key).startswith("shared_memory") for key in parameters):
        raise Refused(400, f"Expected {where} parameters without shared memory (closed). Received: {str(parameters)[:80]}")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    """An object without repeated keys. Python keeps a repeated key's last value, Triton's parser may take
    the first: the gate would check one shape and Triton allocate another."""
    found = dict(pairs)
    if len(found) != len(pairs):
        raise ValueError("a key repeated in one object")
    return found


def check_infer(body: bytes, header_length: str | None, model: dict) -> None:
    """Refused unless `body` is an inference request Triton may parse for `model` (the spec's entry)."""
    split = len(body)
    if header_length is not None:
        if not header_length.isdigit() or not 0 < int(header_length) <= len(body):
            raise Refused(400, f"Expected Inference-Header-Content-Length from 1 to {len(body)}. "
                               f"Received: {header_length[:20]}")
        split = int(header_length)
    try:
        request = json.loads(body[:split].decode("utf-8"), object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as exc:  # not JSON, not UTF-8, or nested past the parser's limit
        raise Refused(400, f"Expected a JSON inference request. Received: {type(exc).__name__}: "
                           f"{str(exc).splitlines()[0][:80] if str(exc) else ''}") from None
    if not isinstance(request, dict) or set(request) - REQUEST_KEYS or not isinstance(request.get("inputs"), list):
        raise Refused(400, f"Expected a JSON object with 'inputs' and keys among {sorted(REQUEST_KEYS)}. "
                           f"Received: {str(request)[:80]}")
    _no_shared_memory(request.get("parameters"), "request")
    seen: set[str] = set()
    binary = sum(_check_input(entry, model, seen) for entry in request["inputs"])
    outputs = request.get("outputs", [])
    # Outputs by name, binary or JSON: no shared memory, no classification (a class count Triton would size).
    good = [isinstance(o, dict) and set(o) <= {"name", "parameters"} and isinstance(o.get("parameters", {}), dict)
            and set(o.get("parameters", {})) <= {"binary_data"} for o in outputs] if isinstance(outputs, list) else [False]
    if not all(good):
        raise Refused(400, "Expected 'outputs' as a list of {name, parameters: {binary_data}} objects. "
                           f"Received: {str(outputs)[:80]}")
    if binary != len(body) - split:
        raise Refused(400, f"Expected {binary} bytes of binary tensor data after the JSON header. "
                           f"Received: {len(body) - split}")


class ByteBudget:
    """Bytes of request bodies held at once: a request waits until its body fits (one larger than the
    whole budget waits to be alone). Counted per body, not per request: small requests never queue
    behind the model's largest possible one, so Triton's batcher still sees concurrent requests."""

    def __init__(self, budget: int):
        self.budget, self.used = budget, 0
        self.changed = threading.Condition()

    def acquire(self, size: int) -> int:
        size = min(size, self.budget)
        with self.changed:
            self.changed.wait_for(lambda: self.used + size <= self.budget)
            self.used += size
        return size

    def release(self, size: int) -> None:
        with self.changed:
            self.used -= size
            self.changed.notify_all()


class Gate:
    """The spec, the bounds on what is held at once, and one upstream connection per thread."""

    def __init__(self, spec: dict, budget: int = BODY_BUDGET):
        self.spec = spec
        self.in_flight = ByteBudget(budget)
        self.checking = threading.Lock()  # one parse at a time: CPU-bound anyway, and it bounds memory
        self.local = threading.local()

    def route(self, method: str, path: str) -> str | None:
        """The model a request is for ('' for none); Refused for what serve does not open."""
        if method == "GET" and path in OPEN_GETS:
            return ""
        if method == "GET" and path == "/v2/models/stats" and self.spec["statistics"]:
            return ""
        match = MODEL_ROUTE.match(path)
        action = match.group(2) if match else "closed"
        allowed = {"POST": ("/infer",), "GET": (None, "/ready", *(("/stats",) if self.spec["statistics"] else ()))}
        if action not in allowed.get(method, ()):
            raise Refused(403, f"Expected inference, health or metadata requests. Received: {method} {path[:80]}")
        name = urllib.parse.unquote(match.group(1))
        if name not in self.spec["models"]:
            raise Refused(404, f"Expected a served model among {sorted(self.spec['models'])}. Received: {name[:80]!r}")
        return name

    def forward(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> http.client.HTTPResponse:
        """Send to Triton on this thread's connection; a fresh one once if a kept one was closed meanwhile."""
        for attempt in range(2):
            connection = getattr(self.local, "connection", None)
            reused = connection is not None
            if connection is None:
                connection = http.client.HTTPConnection("127.0.0.1", self.spec["upstream_port"], timeout=UPSTREAM_TIMEOUT_S)
                self.local.connection = connection
            try:
                connection.request(method, path, body=body, headers=headers)
                return connection.getresponse()
            except (OSError, http.client.HTTPException):
                connection.close()
                self.local.connection = None
                if not reused or attempt:
                    raise
        raise AssertionError("unreachable")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # nginx keeps its upstream connections alive
    timeout = 120  # longer than nginx's upstream keepalive_timeout: nginx closes idle connections first
    gate: Gate

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's signature
        pass  # a line per request would grow the log without bound

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def _handle(self, method: str) -> None:
        self.body_read = method == "GET" and self.headers.get("Content-Length", "0") == "0" \
            and "Transfer-Encoding" not in self.headers
        try:
            name = self.gate.route(method, self.path)
            if method == "GET":
                if not self.body_read:  # unread, it would be taken for the connection's next request
                    raise Refused(400, "Expected a GET without a body. Received: a body")
                self._relay(self.gate.forward("GET", self.path, None, {}))
                return
            held = self.gate.in_flight.acquire(self._length())
            try:
                body = self._body()
                with self.gate.checking:
                    check_infer(body, self.headers.get("Inference-Header-Content-Length"), self.gate.spec["models"][name])
                headers = {key: self.headers[key] for key in FORWARDED if key in self.headers}
                self._relay(self.gate.forward("POST", self.path, body, headers))
            finally:
                self.gate.in_flight.release(held)
        except Refused as refused:
            self._answer(refused.status, {"error": str(refused)})
        except (OSError, http.client.HTTPException) as exc:
            self._answer(502, {"error": f"Expected Triton to answer. Received: {type(exc).__name__}"})

    def _length(self) -> int:
        """The body's declared length, once it is one the gate reads."""
        if self.headers.get("Transfer-Encoding") or self.headers.get("Content-Encoding", "identity") != "identity":
            raise Refused(415, "Expected an uncompressed body with Content-Length. Received: "
                               f"{self.headers.get('Transfer-Encoding') or self.headers.get('Content-Encoding')}")
        length = self.headers.get("Content-Length", "")
        if not length.isdigit() or int(length) > self.gate.spec["max_body"]:
            raise Refused(413, f"Expected a body of at most {self.gate.spec['max_body']} bytes. Received: {length[:20]!r}")
        return int(length)

    def _body(self) -> bytes:
        body = self.rfile.read(self._length())
        self.body_read = True
        return body

    def _relay(self, response: http.client.HTTPResponse) -> None:
        body = response.read()
        self.send_response(response.status)
        for key in FORWARDED:
            if response.getheader(key) is not None:
                self.send_header(key, response.getheader(key))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _answer(self, status: int, message: dict) -> None:
        body = json.dumps(message).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if not self.body_read or status == 502:  # an unread body (or a lost Triton): end this connection
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)


class GateServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    request_queue_size = 128


def main(spec_path: str) -> None:
    """Bind the socket, then serve it from up to MAX_PROCESSES processes, one per core (forked before any
    thread starts): in one Python process, one GIL would serialize every request's parse and relay."""
    with open(spec_path) as file:
        spec = json.load(file)
    if os.path.exists(spec["socket"]):
        os.unlink(spec["socket"])
    os.umask(0o077)  # the socket 0600, in a 0700 folder: only serve's user (nginx's workers) connects
    processes = max(1, min(MAX_PROCESSES, os.cpu_count() or 1))
    Handler.gate = Gate(spec, BODY_BUDGET // processes)
    with GateServer(spec["socket"], Handler) as server:
        for _ in range(processes - 1):
            if os.fork() == 0:  # a child: the same listening socket, its own threads; killed with the group
                break
        server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1])
