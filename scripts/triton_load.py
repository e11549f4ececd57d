"""Load benchmark (not a test): an export served by `lstm-onnx serve`'s Triton next to the same model
called in-process with ONNX Runtime, at several concurrencies.

Each client sends batch-1 HTTP requests (binary tensors, through serve's nginx and gate) back to back for
a fixed time; requests/s and the p50/p99 latency are measured on the client. For the server, Triton's own
statistics give the mean batch its dynamic batcher formed (inferences per ONNX Runtime execution). Traffic goes to 127.0.0.1 only.

    .venv/bin/python scripts/triton_load.py            # a seed export and a larger built stack
    .venv/bin/python scripts/triton_load.py --model m.onnx --seconds 10 --concurrency 1,8,32

The seed exports are tiny (2 units, 3 steps): their figures are the serving overhead. The larger stack
(2 LSTM layers of 128 units, 32 features, 32 steps) is where batching many clients' requests into one
ONNX Runtime call can pay.

Results: scripts/results/triton_load.json and triton_load.md (a markdown table, also printed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from toolkit.deploy.serve import ServeOptions, TritonServer  # noqa: E402
from toolkit.onnxfile.model import load_onnx  # noqa: E402
from toolkit.runtimes.onnxrt import OnnxRunner  # noqa: E402


@dataclass(frozen=True)
class LoadResult:
    target: str  # "triton (http, via nginx)" or "in-process"
    concurrency: int
    requests: int
    seconds: float
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    mean_batch: float | None  # Triton only: inferences per execution during the run


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


LARGE = {"layers": 2, "units": 128, "features": 32, "timesteps": None}
STEPS = 32  # the length of a request on a variable-length export


def build_large(folder: Path) -> Path:
    """Export the larger stack (TensorFlow is imported only here)."""
    from toolkit.export.exporter import export_model
    from toolkit.models.builder import StackConfig, build_stack

    path = folder / "large_stack.onnx"
    export_model(build_stack(StackConfig(**LARGE))).save(path)
    return path


def feeds_for(runner: OnnxRunner, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A batch-1 request: every dynamic axis but the batch is STEPS long."""
    feeds = {}
    for info in runner.inputs:
        shape = [1] + [d if isinstance(d, int) else STEPS for d in info.shape[1:]]
        feeds[info.name] = rng.normal(size=shape).astype(info.dtype)
    return feeds


def drive(call: Callable[[], None], concurrency: int, seconds: float) -> tuple[list[float], float]:
    """`concurrency` threads calling `call` back to back for `seconds`; every latency, and the wall time."""
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    deadline = time.perf_counter() + seconds

    def worker(index: int) -> None:
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            call()
            latencies[index].append(time.perf_counter() - start)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + 120)
    return [x for per in latencies for x in per], time.perf_counter() - began


def summarize(target: str, concurrency: int, latencies: list[float], wall: float, mean_batch: float | None) -> LoadResult:
    ms = np.array(latencies) * 1000
    return LoadResult(target, concurrency, len(latencies), round(wall, 2), round(len(latencies) / wall, 1),
                      round(float(np.percentile(ms, 50)), 3), round(float(np.percentile(ms, 99)), 3),
                      None if mean_batch is None else round(mean_batch, 2))


def triton_stats(client, name: str) -> tuple[int, int]:
    stats = client.get_inference_statistics(name)["model_stats"][0]
    return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))


def run_triton(server: TritonServer, feeds: dict[str, np.ndarray], concurrency: int, seconds: float) -> LoadResult:
    import tritonclient.http as httpclient

    local = threading.local()

    def call() -> None:
        if not hasattr(local, "client"):
            local.client = httpclient.InferenceServerClient(server.http_url, network_timeout=30)
        inputs = []
        for name, value in feeds.items():
            tensor = httpclient.InferInput(name, list(value.shape), "FP32")
            tensor.set_data_from_numpy(value)  # binary tensor data
            inputs.append(tensor)
        local.client.infer(server.name, inputs)

    stats_client = httpclient.InferenceServerClient(server.http_url)
    before = triton_stats(stats_client, server.name)
    latencies, wall = drive(call, concurrency, seconds)
    after = triton_stats(stats_client, server.name)
    executions = max(after[1] - before[1], 1)
    return summarize("triton (http, via nginx)", concurrency, latencies, wall, (after[0] - before[0]) / executions)


def run_in_process(runner: OnnxRunner, feeds: dict[str, np.ndarray], concurrency: int, seconds: float) -> LoadResult:
    latencies, wall = drive(lambda: runner.run(feeds), concurrency, seconds)
    return summarize("in-process", concurrency, latencies, wall, None)


def markdown(results: list[tuple[str, LoadResult]]) -> str:
    lines = [f"Batch-1 requests, back to back per client, {platform.machine()} with {os.cpu_count()} cores.", "",
             "| model | target | clients | requests/s | p50 ms | p99 ms | mean batch formed |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for model, r in results:
        batch = "" if r.mean_batch is None else f"{r.mean_batch:.2f}"
        lines.append(f"| {model} | {r.target} | {r.concurrency} | {r.requests_per_s:.1f} | {r.p50_ms:.2f} | "
                     f"{r.p99_ms:.2f} | {batch} |")
    return "\n".join(lines) + "\n"


def measure(model: Path, levels: list[int], seconds: float, max_batch_size: int) -> list[LoadResult]:
    runner = OnnxRunner(load_onnx(model))
    feeds = feeds_for(runner, np.random.default_rng(0))
    results: list[LoadResult] = []
    options = ServeOptions(http_port=free_port(), max_batch_size=max_batch_size, statistics=True)
    with TritonServer(model, options) as server:
        for level in levels:
            results.append(run_triton(server, feeds, level, seconds))
            results.append(run_in_process(runner, feeds, level, seconds))
            print(model.name, results[-2], results[-1], sep="\n", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, action="append", help="an export (repeatable); default: see above")
    parser.add_argument("--seconds", type=float, default=5.0, help="per concurrency level and target")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=ROOT / "scripts" / "results")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    with tempfile.TemporaryDirectory() as scratch:
        models = args.model or [ROOT / "exported" / "case3_sequences_state.onnx", build_large(Path(scratch))]
        results = [(m.name, r) for m in models for r in measure(m, levels, args.seconds, args.max_batch_size)]
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {"seconds_per_level": args.seconds, "steps_per_request": STEPS, "large_stack": LARGE,
               "cores": os.cpu_count(), "results": [{"model": m, **asdict(r)} for m, r in results]}
    (args.out / "triton_load.json").write_text(json.dumps(payload, indent=2) + "\n")
    table = markdown(results)
    (args.out / "triton_load.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
