"""The front of `lstm-onnx serve`: nginx on 127.0.0.1, then the gate (`serve_gate.py`), then Triton.

Triton 2.51 dies on two requests any local user can send (issue 25, F1): a body sent as 1,000,455
one-byte chunks (SIGSEGV: a stack allocation sized by the chunk count, fixed in Triton 25.07) and a JSON
shape of [1, 2^40, 2] (SIGABRT: it allocates what the shape declares). Neither can be fixed in Triton
here, so nothing reaches Triton that a maintained HTTP server has not re-framed and the gate has not
checked:

    client --TCP 127.0.0.1:PORT--> nginx --Unix socket, 0700 folder--> gate --TCP, private netns--> Triton

nginx (Debian's, started as serve's child with a generated config in serve's workspace; no system
config, no daemon) buffers each body whole (`proxy_request_buffering on`), so the gate and Triton get a
Content-Length body, never chunked framing; refuses a body over the model's largest valid request (413)
and headers over 4 x 8 KiB (400/414); times out slow clients (`client_header_timeout`,
`client_body_timeout`, `send_timeout`) and idle keep-alive connections; caps connections; and passes
only the routes serve opens (everything else: 403 with a one-line JSON error).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import onnx

from toolkit.deploy.triton import TRITON_TYPES, dims, signature
from toolkit.errors import InputError
from toolkit.onnxfile.model import TensorInfo
from toolkit.process import Child, log_lines
from toolkit.text import first_line

GATE_SCRIPT = Path(__file__).with_name("gate.py")
TRITON_PORT = 8000  # inside serve's private network namespace: no other process can bind or reach it
# The most text one value takes in a JSON request: "-1.1754943508222875e-38, " is 25 bytes; a client's
# own spacing and nesting brackets fit in the rest. Plus the names, keys and outputs of a request.
JSON_BYTES_PER_VALUE = 32
REQUEST_OVERHEAD = 64 << 10
MAX_CONNECTIONS = 128  # nginx's open client connections (each may hold one body in a temp file)


@dataclass(frozen=True)
class RequestBounds:
    """What one request may hold (serve's options): the batch, time steps and values per input."""

    max_batch_size: int
    max_steps: int
    max_values: int


def input_spec(info: TensorInfo, batched: bool, bounds: RequestBounds) -> dict:
    """The gate's view of one input: Triton datatype, request dims (None: dynamic) and each axis' bound."""
    request_dims: list[int | None] = [None if d < 0 else d for d in dims(info, batched)]
    if batched:
        request_dims.insert(0, None)
    limits = []
    for axis, fixed in enumerate(request_dims):
        if fixed is not None:
            limits.append(fixed)
        elif axis == 0 and batched:
            limits.append(bounds.max_batch_size)
        elif axis == 1 and len(request_dims) >= 3:  # a time axis, as the backend counts it
            limits.append(bounds.max_steps)
        else:
            limits.append(bounds.max_values)
    return {"datatype": TRITON_TYPES[info.dtype].removeprefix("TYPE_"), "dims": request_dims, "bounds": limits}


def model_spec(model: onnx.ModelProto, bounds: RequestBounds) -> dict:
    sig = signature(model, implicit_states=False)
    return {"inputs": {t.name: input_spec(t, sig.batched, bounds) for t in sig.inputs}, "max_values": bounds.max_values}


def largest_request(spec: dict) -> int:
    """Bytes of the largest JSON request the gate would pass for this model (the binary form is smaller)."""
    values = sum(min(spec["max_values"], math.prod(entry["bounds"])) for entry in spec["inputs"].values())
    return values * JSON_BYTES_PER_VALUE + REQUEST_OVERHEAD


def gate_spec(models: dict[str, onnx.ModelProto], socket: Path, bounds: RequestBounds, statistics: bool) -> dict:
    specs = {name: model_spec(model, bounds) for name, model in models.items()}
    return {"socket": str(socket), "upstream_port": TRITON_PORT, "statistics": statistics, "models": specs,
            "max_body": max(largest_request(spec) for spec in specs.values())}


def find_nginx() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise InputError("Expected nginx for serve's front (scripts/setup_runtimes.sh installs Debian's). "
                         "Received: no nginx on PATH or in /usr/sbin")
    return found


CLOSED = "Expected inference, health or metadata requests. Received: a closed or unknown route"


def _error_pages(max_body: int, timeout_s: int) -> str:
    """nginx's own refusals as one-line JSON errors, like the gate's and Triton's."""
    messages = {
        400: "Expected a well-formed HTTP request with headers within 4 x 8 KiB. Received: a request nginx refused",
        403: CLOSED,
        408: f"Expected the request within {timeout_s} s. Received: a slow client",
        413: f"Expected a body of at most {max_body} bytes (the largest valid request). Received: a larger one",
        414: "Expected a request line within 8 KiB. Received: a longer one",
        502: "Expected the gate of serve to answer. Received: no answer",
        503: f"Expected at most {MAX_CONNECTIONS} connections at once. Received: more",
        504: "Expected Triton to answer within 600 s. Received: no answer",
    }
    # 494: nginx's own code for headers over the buffers, answered as 400.
    return "\n    error_page 494 /_error400;" + "".join(f"""
    error_page {code} /_error{code};
    location = /_error{code} {{ internal; return {code} '{{"error":"{text}"}}'; }}""" for code, text in messages.items())


def _locations(statistics: bool) -> str:
    """nginx's allowlist, on the decoded path; the gate checks the raw path Triton reads again."""
    model = r"^/v2/models/[^/]+(/versions/[0-9]+)?"
    stats = "proxy_pass http://gate;" if statistics else "return 403;"
    return f"""
    location = /v2 {{ limit_except GET {{ deny all; }} proxy_pass http://gate; }}
    location ~ ^/v2/health/(live|ready)$ {{ limit_except GET {{ deny all; }} proxy_pass http://gate; }}
    location ~ ^/v2/models(/[^/]+(/versions/[0-9]+)?)?/stats$ {{ limit_except GET {{ deny all; }} {stats} }}
    location ~ {model}(/ready)?$ {{ limit_except GET {{ deny all; }} proxy_pass http://gate; }}
    location ~ {model}/infer$ {{ limit_except POST {{ deny all; }} proxy_pass http://gate; }}
    location / {{ return 403; }}"""


def nginx_config(folder: Path, port: int, socket: Path, max_body: int, timeout_s: int, statistics: bool) -> str:
    """nginx's whole configuration: everything it writes stays in `folder`."""
    # As root, nginx's workers would switch to `nobody`; they must stay serve's user to open the socket.
    user = "user root root;\n" if os.geteuid() == 0 else ""
    routes = _locations(statistics) + _error_pages(max_body, timeout_s)
    temp = "\n".join(f"  {kind}_temp_path {folder / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""{user}daemon off;
master_process on;
worker_processes 1;
pid {folder / "nginx.pid"};
error_log {folder / "error.log"} warn;
events {{ worker_connections {MAX_CONNECTIONS * 2 + 16}; }}
http {{
  access_log off;
  server_tokens off;
{temp}
  client_header_buffer_size 1k;
  large_client_header_buffers 4 8k;
  client_max_body_size {max_body};
  client_body_buffer_size 1m;
  client_header_timeout {timeout_s}s;
  client_body_timeout {timeout_s}s;
  send_timeout {timeout_s}s;
  keepalive_timeout 30s;
  keepalive_requests 1000;
  reset_timedout_connection on;
  limit_conn_zone $server_name zone=clients:1m;
  upstream gate {{ server unix:{socket}; keepalive 16; keepalive_timeout 30s; }}
  server {{
    listen 127.0.0.1:{port};
    limit_conn clients {MAX_CONNECTIONS};
    default_type application/json;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host localhost;
    proxy_request_buffering on;
    proxy_connect_timeout 5s;
    proxy_send_timeout 600s;
    proxy_read_timeout 600s;
    proxy_next_upstream off;
    proxy_intercept_errors off;  # the gate's and Triton's own errors pass as they are{routes}
  }}
}}
"""


def write_gate_files(folder: Path, spec: dict) -> Path:
    """The gate's spec in `folder` (0700, serve's own); its path."""
    folder.mkdir(mode=0o700)
    path = folder / "spec.json"
    path.write_text(json.dumps(spec))
    return path


def nginx_failure(folder: Path) -> str:
    """Why nginx stopped: its first [emerg] line (later ones only repeat it: "still could not bind()")."""
    lines = log_lines(folder / "error.log")
    fatal = [line for line in lines if "[emerg]" in line]
    return first_line((fatal or lines or ["no log"])[0])


def start_nginx(folder: Path, config: str) -> Child:
    """nginx with `config`, its pid, log and temp files in `folder`; output in folder/nginx.out. Its own
    process group with a reaper (nginx forks its workers), dying with lstm-onnx (`toolkit.process.Child`)."""
    folder.mkdir(mode=0o700)
    (folder / "nginx.conf").write_text(config)
    return Child([find_nginx(), "-p", str(folder), "-c", str(folder / "nginx.conf"), "-e", str(folder / "error.log")],
                 "nginx", log=folder / "nginx.out", reaper=True)
