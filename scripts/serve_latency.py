"""Latency benchmark (not a test): one good request through `serve`'s front (nginx, then the gate) next to
the same request straight to Triton, on the same server, with the same client code.

Triton listens only inside serve's private network namespace, so the direct figures come from the client
run in that namespace (`nsenter --net`, root only); the proxied ones from the host's 127.0.0.1. Each
client sends its requests one after another on one kept-alive connection (after a warm-up); the two
alternate in rounds so that load from other work on the machine hits both alike.

    .venv/bin/python scripts/serve_latency.py [--requests 200] [--rounds 5]

Results: scripts/results/serve_latency.json and serve_latency.md (a markdown table, also printed).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WARM_UP = 20


def client(address: str, path: str, body_file: str, requests: int, header_length: str) -> None:
    """The measuring client (both sides run this): one connection, `requests` POSTs, latencies in ms."""
    host, port = address.rsplit(":", 1)
    body = Path(body_file).read_bytes()
    headers = {"Content-Type": "application/json"}
    if header_length:
        headers["Inference-Header-Content-Length"] = header_length
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    latencies = []
    for index in range(WARM_UP + requests):
        start = time.perf_counter()
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise SystemExit(f"Expected 200. Received: {response.status}")
        if index >= WARM_UP:
            latencies.append((time.perf_counter() - start) * 1000)
    print(json.dumps(latencies))


def run_client(prefix: list[str], address: str, path: str, body_file: Path, requests: int, header_length: str) -> list[float]:
    command = [*prefix, sys.executable, __file__, "--client", address, path, str(body_file), str(requests), header_length]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=True)
    return json.loads(done.stdout)


def request_bodies(scratch: Path) -> list[tuple[str, Path, bytes, str]]:
    """(label, model, body, binary header length): a seed export (the front's fixed cost) and a larger
    request on a variable-length export (what the gate's JSON parse costs per byte)."""
    import numpy as np

    from toolkit.export.exporter import export_model
    from toolkit.models.builder import StackConfig, build_stack

    seed = ROOT / "exported" / "case4_last.onnx"
    long = scratch / "long_input.onnx"
    export_model(build_stack(StackConfig(layers=1, units=8, features=8, timesteps=None))).save(long)
    x = np.random.default_rng(0).normal(size=(1, 1000, 8)).astype(np.float32)
    small = {"inputs": [{"name": "input", "shape": [1, 3, 1], "datatype": "FP32", "data": [0.1, 0.2, 0.3]}]}
    big = {"inputs": [{"name": "input", "shape": [1, 1000, 8], "datatype": "FP32", "data": x.ravel().tolist()}]}
    header = json.dumps({"inputs": [{"name": "input", "shape": [1, 1000, 8], "datatype": "FP32",
                                     "parameters": {"binary_data_size": x.nbytes}}]}).encode()
    return [("seed case4_last, JSON [1, 3, 1]", seed, json.dumps(small).encode(), ""),
            ("LSTM(8), JSON [1, 1000, 8]", long, json.dumps(big).encode(), ""),
            ("LSTM(8), binary [1, 1000, 8]", long, header + x.tobytes(), str(len(header)))]


def summary(latencies: list[float]) -> dict:
    ordered = sorted(latencies)
    return {"requests": len(ordered), "p50_ms": round(statistics.median(ordered), 3),
            "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1], 3), "mean_ms": round(statistics.fmean(ordered), 3)}


def measure(label: str, model: Path, body: bytes, header_length: str, scratch: Path, requests: int, rounds: int) -> dict:
    from toolkit.deploy.proxy import TRITON_PORT
    from toolkit.deploy.serve import ServeOptions, TritonServer

    body_file = scratch / "body"
    body_file.write_bytes(body)
    with TritonServer(model, ServeOptions(http_port=free_port())) as server:
        path = f"/v2/models/{server.name}/infer"
        netns = ["nsenter", f"--net=/proc/{server.process.pid}/ns/net"]
        proxied: list[float] = []
        direct: list[float] = []
        for _ in range(rounds):
            proxied += run_client([], server.http_url, path, body_file, requests, header_length)
            direct += run_client(netns, f"127.0.0.1:{TRITON_PORT}", path, body_file, requests, header_length)
    result = {"request": label, "body_bytes": len(body), "direct": summary(direct), "via_nginx_and_gate": summary(proxied)}
    result["p50_added_ms"] = round(result["via_nginx_and_gate"]["p50_ms"] - result["direct"]["p50_ms"], 3)
    print(json.dumps(result), flush=True)
    return result


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def markdown(results: list[dict]) -> str:
    lines = [f"One client, requests one after another, {platform.machine()} with {os.cpu_count()} cores.", "",
             "| request | body bytes | direct p50 / p99 ms | via nginx + gate p50 / p99 ms | p50 added ms |",
             "|---|---:|---:|---:|---:|"]
    for r in results:
        d, p = r["direct"], r["via_nginx_and_gate"]
        lines.append(f"| {r['request']} | {r['body_bytes']} | {d['p50_ms']:.2f} / {d['p99_ms']:.2f} | "
                     f"{p['p50_ms']:.2f} / {p['p99_ms']:.2f} | {r['p50_added_ms']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="per round and side")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "scripts" / "results")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("Expected root (nsenter into serve's network namespace for the direct figures). Received: "
                         f"uid {os.geteuid()}")
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        results = [measure(label, model, body, header, scratch, args.requests, args.rounds)
                   for label, model, body, header in request_bodies(scratch)]
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {"requests_per_round": args.requests, "rounds": args.rounds, "cores": os.cpu_count(), "results": results}
    (args.out / "serve_latency.json").write_text(json.dumps(payload, indent=2) + "\n")
    table = markdown(results)
    (args.out / "serve_latency.md").write_text(table)
    print(table)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        client(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6] if len(sys.argv) > 6 else "")
    else:
        main()
