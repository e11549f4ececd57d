"""`lstm-onnx serve`: a real Triton Inference Server serving an export, on this machine, behind nginx.

The server is the `tritonserver` that nvidia-pytriton ships, with its Python backend (pytriton has no
onnxruntime backend): ONNX Runtime runs inside a Python-backend model (`toolkit/deploy/triton_backend/model.py`)
with Triton's dynamic batcher in front. lstm-onnx starts the binary itself, in a throw-away workspace
(0700):

    WORK/backends/python/   the backend library, its utils module and the stub for this interpreter
    WORK/repo/NAME/         config.pbtxt, 1/model.py, 1/model.onnx
    WORK/tritonserver.log   the server's log (its tail is in any error)
    WORK/gate/              the gate's spec, socket, log and pid (`toolkit.deploy.gate`)
    WORK/nginx/             nginx's config, pid, error log and body buffers (`toolkit.deploy.proxy`)

Only nginx listens where clients can reach it (127.0.0.1:--http-port). Triton (HTTP only: gRPC and
metrics off) and the gate run in a private network namespace (`toolkit.deploy.sandbox`); nginx reaches
the gate over a Unix socket in WORK/gate. Triton 2.51 dies on requests the front refuses (issue 25).

The Triton build itself (its files, the environment its stub needs) is `toolkit.deploy.triton_build`.

`stop` ends nginx, then the server, then anything left of its process group (the stubs, the gate), and
removes the workspace (the socket with it) and the backend's shared-memory regions. A serve killed with
SIGKILL cannot: nginx and the server get a parent-death signal and a group reaper; the workspace and
regions carry its pid in their names, and the next `start` removes those whose owner is dead
(`remove_stale`).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx

from toolkit.deploy.proxy import (
    GATE_SCRIPT,
    TRITON_PORT,
    RequestBounds,
    find_nginx,
    gate_spec,
    nginx_config,
    nginx_failure,
    start_nginx,
    write_gate_files,
)
from toolkit.deploy.sandbox import (
    GateCommand,
    ServeError,
    backend_stubs,
    check_namespaces,
    ended_stubs,
    gate_pid,
    restricted_api_flags,
    sandboxed,
)
from toolkit.deploy.triton import MAX_BATCH_SIZE, check_max_batch_size, check_model_name, quote, signature, tensor_section
from toolkit.deploy.triton_build import TritonDistribution, server_environment, triton_distribution
from toolkit.errors import InputError
from toolkit.fileio import remove_stale as remove_stale_entries
from toolkit.onnxfile.model import load_onnx
from toolkit.process import Child, log_lines, log_tail
from toolkit.progress import Progress

HOST = "127.0.0.1"
EXIT_TIMEOUT_S = 5  # the server's own grace period for in-flight requests on shutdown
BACKEND_MODEL = Path(__file__).parent / "triton_backend" / "model.py"
# Workspaces are TMPDIR/lstm-onnx-serve-<owner pid>-<random>, shared-memory regions
# /dev/shm/lstm-onnx-<owner pid>-<random>-...: the owner's pid, in the name from the first instant.
WORKSPACE_PREFIX = "lstm-onnx-serve-"
SHM_PREFIX = "lstm-onnx-"
SHM_DIR = Path("/dev/shm")
# What one request may hold, checked by the backend before ONNX Runtime sees it: values per input
# (64 Mi: 256 MB as float32) and steps of a variable time axis (the export's --max-timesteps default).
MAX_REQUEST_VALUES = 1 << 26
MAX_REQUEST_STEPS = 100_000


@dataclass(frozen=True)
class ServeOptions:
    name: str | None = None  # default: the export's file stem
    http_port: int = 8000  # nginx's, on 127.0.0.1; Triton's own port is in a private network namespace
    grpc: bool = False  # refused: the gate checks HTTP/JSON requests only (see check)
    max_batch_size: int = MAX_BATCH_SIZE
    ready_timeout_s: float = 180.0
    statistics: bool = False  # open Triton's statistics API too (a load test's counts; any local user reads them)
    max_request_values: int = MAX_REQUEST_VALUES
    max_request_steps: int = MAX_REQUEST_STEPS
    client_timeout_s: int = 10  # nginx's limit on a client's silence while it sends a request or reads one

    def check(self) -> None:
        if not 1 <= self.http_port <= 65535:
            raise InputError(f"Expected --http-port between 1 and 65535. Received: {self.http_port}")
        if self.grpc:
            raise InputError("Expected serve without --grpc: gRPC requests cannot be checked before Triton 2.51 "
                             "parses them (issue 25); use HTTP. Received: --grpc")
        check_max_batch_size(self.max_batch_size)
        for label, bound in (("max_request_values", self.max_request_values),
                             ("max_request_steps", self.max_request_steps),
                             ("client_timeout_s", self.client_timeout_s)):
            if not isinstance(bound, int) or bound < 1:
                raise InputError(f"Expected {label} >= 1. Received: {bound!r}")


def python_config_text(name: str, model: onnx.ModelProto, options: ServeOptions) -> str:
    """The Python-backend config: every graph input (a state-io export's states too) is a request input;
    the request bounds go to the backend as parameters."""
    sig = signature(model, implicit_states=False)
    bounds = {"max_request_values": options.max_request_values, "max_request_steps": options.max_request_steps}
    parameters = " ".join(f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}'
                          for key, value in bounds.items())
    parts = [f"name: {quote(name)}", 'backend: "python"',
             f"max_batch_size: {options.max_batch_size if sig.batched else 0}",
             tensor_section("input", sig.inputs, sig.batched), tensor_section("output", sig.outputs, sig.batched),
             "instance_group [ { kind: KIND_CPU count: 1 } ]", parameters]
    if sig.batched:
        parts.append("dynamic_batching { }")
    return "\n".join(parts) + "\n"


def prepare_workspace(folder: Path, models: dict[str, onnx.ModelProto], options: ServeOptions,
                      dist: TritonDistribution) -> None:
    backend = folder / "backends" / "python"
    backend.mkdir(parents=True)
    for source in (*dist.backend_files, dist.stub):
        (backend / source.name).symlink_to(source)
    for name, model in models.items():
        version = folder / "repo" / name / "1"
        version.mkdir(parents=True)
        (folder / "repo" / name / "config.pbtxt").write_text(python_config_text(name, model, options))
        shutil.copyfile(BACKEND_MODEL, version / "model.py")
        (version / "model.onnx").write_bytes(model.SerializeToString())


def remove_stale(temp_dir: Path | None = None, shm_dir: Path = SHM_DIR) -> list[Path]:
    """Remove the workspaces and shared-memory regions of serves that died without `stop` (SIGKILL):
    ours (this user's), named with an owner pid that no longer runs. Returns what was removed."""
    found = [(entry, WORKSPACE_PREFIX) for entry in Path(temp_dir or tempfile.gettempdir()).glob(WORKSPACE_PREFIX + "*")]
    found += [(entry, SHM_PREFIX) for entry in shm_dir.glob(SHM_PREFIX + "*")] if shm_dir.is_dir() else []
    return remove_stale_entries(found)


def _get(url: str) -> int:
    """HTTP status of a GET to the local server; 0 when it does not answer (yet)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy
    try:
        with opener.open(url, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return 0


class TritonServer:
    """One tritonserver process serving exports (each under its file stem, or `options.name` for a single
    one) behind nginx and the gate (`toolkit.deploy.proxy`); a context manager (`with TritonServer(path)`)."""

    def __init__(self, model_paths: str | Path | Sequence[str | Path], options: ServeOptions = ServeOptions()):
        options.check()
        paths = [Path(model_paths)] if isinstance(model_paths, (str, os.PathLike)) else [Path(p) for p in model_paths]
        if options.name is not None and len(paths) != 1:
            raise InputError(f"Expected one model with a name option. Received: {len(paths)} models")
        self.models = {check_model_name(options.name or p.stem): load_onnx(p) for p in paths}
        if len(self.models) != len(paths) or not paths:
            raise InputError(f"Expected models with distinct file names. Received: {[str(p) for p in paths]}")
        self.name = next(iter(self.models))
        self.options = options
        self.process: Child | None = None  # tritonserver (the gate is its sibling in the group)
        self.nginx: Child | None = None
        self.workspace: Path | None = None
        self._shm_prefix = f"{SHM_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-"
        self.stubs: list[int] = []  # the backend's stub processes, watched by `check_backend`
        self.gate: int | None = None  # the gate's pid

    @property
    def http_url(self) -> str:
        return f"{HOST}:{self.options.http_port}"

    @property
    def log_path(self) -> Path | None:
        return self.workspace / "tritonserver.log" if self.workspace else None

    def gate_command(self) -> GateCommand:
        assert self.workspace is not None
        folder = self.workspace / "gate"
        return GateCommand(GATE_SCRIPT, folder / "spec.json", folder / "gate.log", folder / "gate.pid")

    def command(self, dist: TritonDistribution) -> list[str]:
        """The server's command line, inside its namespaces. Every other user can read it
        (/proc/PID/cmdline): it holds no secret."""
        assert self.workspace is not None
        server = [str(dist.server), "--model-repository", str(self.workspace / "repo"),
                  "--backend-directory", str(self.workspace / "backends"),
                  "--http-address", HOST, "--http-port", str(TRITON_PORT), "--allow-grpc", "false",
                  "--allow-metrics", "false", "--disable-auto-complete-config",
                  # A prefix of our own: servers side by side must not share the backend's shared memory.
                  "--backend-config", f"python,shm-region-prefix-name={self._shm_prefix}",
                  "--exit-timeout-secs", str(EXIT_TIMEOUT_S), "--log-verbose", "0",
                  *restricted_api_flags(open_statistics=self.options.statistics)]
        return sandboxed(server, self.gate_command())

    def start(self, cancel: threading.Event | None = None, progress: Progress = Progress()) -> TritonServer:
        """Start Triton with the gate, then nginx, and return once the models answer ready through nginx,
        or as soon as `cancel` is set; ServeError (with a log's tail) if they do not."""
        dist = triton_distribution()
        check_namespaces()
        find_nginx()  # before anything starts: a missing nginx is a one-line error, not a started Triton
        remove_stale()
        self.workspace = Path(tempfile.mkdtemp(prefix=f"{WORKSPACE_PREFIX}{os.getpid()}-"))
        try:
            prepare_workspace(self.workspace, self.models, self.options, dist)
            gate = self.gate_command()
            bounds = RequestBounds(self.options.max_batch_size, self.options.max_request_steps,
                                   self.options.max_request_values)
            spec = gate_spec(self.models, gate.spec.parent / "gate.sock", bounds, self.options.statistics)
            write_gate_files(gate.spec.parent, spec)
            # Entering a user namespace clears the parent-death signal: the reaper still ends the group.
            self.process = Child(self.command(dist), "tritonserver", env=server_environment(dist),
                                 log=self.workspace / "tritonserver.log", reaper=True)
            config = nginx_config(self.workspace / "nginx", self.options.http_port, Path(spec["socket"]),
                                  spec["max_body"], self.options.client_timeout_s, self.options.statistics)
            self.nginx = start_nginx(self.workspace / "nginx", config)
            self._wait_ready(cancel or threading.Event(), progress)
            self.stubs = backend_stubs(self.process.pid) if self.running() else []
            self.gate = gate_pid(gate.pid_file)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, cancel: threading.Event, progress: Progress) -> None:
        """Poll the models' ready URLs through nginx and the gate; `progress` counts the polls (4 a second)
        up to the deadline."""
        started = time.monotonic()
        deadline = started + self.options.ready_timeout_s
        progress.begin(int(self.options.ready_timeout_s / 0.25), "starting tritonserver")
        urls = [f"http://{self.http_url}/v2/models/{urllib.parse.quote(name, safe='')}/ready" for name in self.models]
        while time.monotonic() < deadline and not cancel.is_set():
            self._check_started()
            if all(_get(url) == 200 for url in urls):
                progress.end()
                return
            time.sleep(0.25)
            progress.advance(f"{time.monotonic() - started:.0f} s")
        progress.end()
        if cancel.is_set():
            return
        raise ServeError(f"Expected tritonserver ready within {self.options.ready_timeout_s:.0f} s. "
                         f"Received: not ready; log: {self.log_tail()}")

    def _check_started(self) -> None:
        assert self.process is not None and self.nginx is not None and self.workspace is not None
        if self.process.poll() is not None:
            raise ServeError(f"Expected tritonserver to start. Received: exit code {self.process.returncode}; "
                             f"log: {self.log_tail()}")
        if self.nginx.poll() is not None:
            raise ServeError(f"Expected nginx to start on {self.http_url}. Received: exit code {self.nginx.returncode}; "
                             f"log: {nginx_failure(self.workspace / 'nginx')}")
        pid = gate_pid(self.gate_command().pid_file)
        if pid is not None and ended_stubs([pid]):
            raise ServeError(f"Expected serve's gate to start. Received: it ended; "
                             f"log: {log_tail(self.gate_command().log)}")

    def log_tail(self, lines: int = 3) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        text = log_lines(self.log_path)
        # E lines, but not the ones every CPU-only machine logs (no CUDA driver, no NVML).
        errors = [line for line in text if (line.startswith("E") or "rror" in line)
                  and not any(noise in line for noise in ("CudaDriverHelper", "NVML", "CUDA", "GPU"))]
        return " | ".join((errors or text)[-lines:])[-600:]

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def check_backend(self) -> None:
        """ServeError when the server, a backend stub it started, the gate or nginx has ended. Triton 2.51
        keeps calling a model whose stub died ready and answers every request with HTTP 500: serving on
        would hide that."""
        if not self.running():
            raise ServeError(f"Expected tritonserver to keep running. Received: exit code "
                             f"{self.process.returncode if self.process else None}; log: {self.log_tail()}")
        ended = ended_stubs(self.stubs)
        if ended:
            raise ServeError(f"Expected the model's backend process to keep running. Received: process {ended[0]} "
                             f"ended; serve stops rather than answer every request with an error; "
                             f"log: {self.log_tail()}")
        if self.gate is None or ended_stubs([self.gate]):
            raise ServeError(f"Expected serve's gate to keep running. Received: it ended; "
                             f"log: {log_tail(self.gate_command().log)}")
        if self.nginx is None or self.nginx.poll() is not None:
            raise ServeError(f"Expected nginx to keep running. Received: exit code "
                             f"{self.nginx.returncode if self.nginx else None}")

    def stop(self) -> None:
        """End nginx (no new requests), then the server (SIGTERM, then SIGKILL after its grace period) and
        whatever is left of its process group (the stubs, the gate), their shared memory and the workspace
        (the gate's socket with it). Safe to call twice."""
        if self.nginx is not None:
            self.nginx.stop()
        if self.process is not None:  # the stubs are in the server's session: nothing of it may outlive `stop`
            self.process.stop(grace=EXIT_TIMEOUT_S + 10)
        for region in Path("/dev/shm").glob(self._shm_prefix + "*"):
            region.unlink(missing_ok=True)
        if self.workspace is not None:
            shutil.rmtree(self.workspace, ignore_errors=True)
            self.workspace = None

    def __enter__(self) -> TritonServer:
        return self.start() if not self.running() else self

    def __exit__(self, *_: object) -> None:
        self.stop()


def serve_forever(model_path: str | Path, options: ServeOptions, echo: Callable[[str], None] = print,
                  progress: Progress = Progress()) -> None:
    """Serve until SIGINT (Ctrl-C) or SIGTERM, also while starting, then stop cleanly; ServeError if the
    server, the gate or nginx dies first."""
    server = TritonServer(model_path, options)
    stopping = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stopping.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.start(cancel=stopping, progress=progress)
        if not stopping.is_set():
            echo(f"serving {server.name!r} on Triton behind nginx: http://{server.http_url} "
                 f"(max batch {options.max_batch_size}; Ctrl-C stops)")
        while not stopping.wait(0.5):
            server.check_backend()
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
