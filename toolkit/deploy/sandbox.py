"""What keeps `lstm-onnx serve` to itself on a machine shared with other local users.

Binding to 127.0.0.1 keeps the network out, not the other users of this machine: every local process
reaches the port, and `/dev/shm` is one folder for all. Triton 2.51 (pytriton 0.7's build) predates the
fix of the CVE-2025-23319/23320/23334 chain, in which any client registers the Python backend's own
shared-memory region as a "system shared memory" region and has the server write into it (measured here:
the server aborts, exit -6), and two more requests kill it (issue 25). Four measures, each checked by
`tests/test_serve_security.py` and `tests/test_serve_proxy.py` as `nobody`:

- **A private network namespace.** Triton and the gate (`toolkit.deploy.gate`) run in their own network
  namespace (a user namespace too, when not root) with only a loopback interface: no other process
  reaches Triton's port, which does not exist in the host's namespace at all. nginx, the one listener on
  127.0.0.1 (`toolkit.deploy.proxy`), reaches the gate over a Unix socket in serve's 0700 workspace.
  Where the kernel refuses the namespaces, serve refuses to start (one line): Triton would be open to
  every local user.
- **Closed APIs.** Everything but inference, health and metadata is closed by nginx's and the gate's
  route lists, and again inside Triton by its restricted-API check (`--http-restricted-api`) with a
  header name that holds a line break: no HTTP/1.1 request can carry such a header. (A secret header
  value would be on the server's command line, readable by every local user in `/proc/PID/cmdline`.)
- **A private `/dev/shm`.** The backend creates its region mode 0644 and chmods it so, whatever the umask
  (measured with strace: `openat(... O_EXCL, 0644)`, `fchmod(3, 0644)`), so another user could read
  every request tensor. The server's mount namespace has a fresh tmpfs on `/dev/shm`, mode 0700: no
  other process sees the regions or their names.
- **A watched backend.** ONNX Runtime inside the backend's stub process can abort on input nobody
  foresaw; Triton 2.51 then keeps reporting the model ready and answers HTTP 500 forever. serve watches
  the stubs (and the gate, and nginx) and stops with a one-line error the moment one ends.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from toolkit.errors import LstmOnnxError


class ServeError(LstmOnnxError):
    """The Triton server did not start, or stopped on its own."""


# Triton's API groups besides inference, health and metadata (its protocol customization guide).
CLOSED_APIS = ("shared-memory", "model-config", "model-repository", "statistics", "trace", "logging")
# A header name no client can send: a line break ends a header in HTTP/1.1, gRPC keys are [0-9a-z_.-].
UNSENDABLE_HEADER = "lstm-onnx\nclosed"
STUB_NAME = "triton_python_backend_stub"
# In the namespaces: a private tmpfs on /dev/shm, then the loopback interface up (a new network namespace
# starts with it down; Triton and the gate talk over 127.0.0.1 inside). Python's SIOCSIFFLAGS ioctl
# (IFF_UP | IFF_LOOPBACK | IFF_RUNNING) does it without needing iproute2.
_SETUP = 'mount -t tmpfs -o mode=0700,nosuid,nodev tmpfs /dev/shm && "$py" -I -S -c "$up"'
_GATE = '{ "$py" -I -S "$gate" "$spec" >"$log" 2>&1 & echo $! >"$pidfile"; }'
LOOPBACK_UP = ("import fcntl, socket, struct; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
               "fcntl.ioctl(s, 0x8914, struct.pack('16sH22x', b'lo', 0x1 | 0x8 | 0x40))")


@dataclass(frozen=True)
class GateCommand:
    """Where the gate's script, spec, log and pid file are (`toolkit.deploy.gate`)."""

    script: Path
    spec: Path
    log: Path
    pid_file: Path


def restricted_api_flags(open_statistics: bool = False) -> list[str]:
    """Triton flags that close every API a client of an inference server does not need."""
    apis = ",".join(api for api in CLOSED_APIS if not (open_statistics and api == "statistics"))
    setting = f"{apis}:{UNSENDABLE_HEADER}=closed"
    return [f"--http-restricted-api={setting}", f"--grpc-restricted-protocol={setting}"]


def _unshare() -> list[str]:
    unshare = shutil.which("unshare")
    if unshare is None:
        raise ServeError("Expected util-linux's unshare for serve's private namespaces. Received: none on PATH")
    prefix = [unshare, "--net", "--mount", "--propagation", "private"]
    if os.geteuid() != 0:
        prefix[1:1] = ["--user", "--map-root-user"]
    return prefix


def check_namespaces() -> None:
    """ServeError where the kernel (or a container's seccomp profile) refuses the namespaces: serving
    without them would put Triton's port, which two requests kill, in every local user's reach."""
    probe = [*_unshare(), "/bin/sh", "-c", "py=$1 up=$2; " + _SETUP, "lstm-onnx-probe", sys.executable, LOOPBACK_UP]
    try:
        done = subprocess.run(probe, stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ServeError(f"Expected private network and mount namespaces for tritonserver. Received: {exc}") from None
    if done.returncode != 0:
        why = (done.stderr.decode(errors="replace").strip().splitlines() or ["no output"])[-1][:200]
        raise ServeError("Expected private network and mount namespaces for tritonserver (unshare --net --mount). "
                         f"Received: {why}")


def sandboxed(server: Sequence[str], gate: GateCommand) -> list[str]:
    """The server's command inside private network and mount namespaces: a private /dev/shm, loopback up,
    the gate started in the background, then the server itself (same pid: the parent's signals reach it)."""
    script = "py=$1 up=$2 gate=$3 spec=$4 log=$5 pidfile=$6; shift 6; " + _SETUP + " && " + _GATE + ' && exec "$@"'
    return [*_unshare(), "/bin/sh", "-c", script, "lstm-onnx-sandbox", sys.executable, LOOPBACK_UP,
            str(gate.script), str(gate.spec), str(gate.log), str(gate.pid_file), *server]


def gate_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text())
    except (OSError, ValueError):  # not written yet
        return None


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended while we looked
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    return children


def backend_stubs(server_pid: int) -> list[int]:
    """The Python-backend stub processes the server started (its children named like the stub binary)."""
    found = []
    for pid in _children().get(server_pid, []):
        try:
            if Path(f"/proc/{pid}/exe").resolve().name == STUB_NAME:
                found.append(pid)
        except OSError:
            continue
    return found


def ended_stubs(stubs: Sequence[int]) -> list[int]:
    """Those of `stubs` that no longer run (a zombie counts as ended)."""
    ended = []
    for pid in stubs:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            state = "X"
        if state in ("Z", "X"):
            ended.append(pid)
    return ended
