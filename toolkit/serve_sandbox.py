"""What keeps `lstm-onnx serve` to itself on a machine shared with other local users.

Binding to 127.0.0.1 keeps the network out, not the other users of this machine: every local process
reaches the port, and `/dev/shm` is one folder for all. Triton 2.51 (pytriton 0.7's build) predates the
fix of the CVE-2025-23319/23320/23334 chain, in which any client registers the Python backend's own
shared-memory region as a "system shared memory" region and has the server write into it (measured here:
the server aborts, exit -6). Three measures, each checked by `tests/test_serve_security.py` as `nobody`:

- **Closed APIs.** Everything but inference, health and metadata goes behind Triton's restricted-API
  check (`--http-restricted-api`, `--grpc-restricted-protocol`) with a header name that holds a line
  break. No HTTP/1.1 request and no gRPC call can carry such a header, so those APIs are closed to every
  client, lstm-onnx included. A secret header value would not do: the server's command line, where the
  value would have to go, is readable by every local user in `/proc/PID/cmdline`.
- **A private `/dev/shm`.** The backend creates its region mode 0644 and chmods it so, whatever the umask
  (measured with strace: `openat(... O_EXCL, 0644)`, `fchmod(3, 0644)`), so another user could read
  every request tensor. The server runs in its own mount namespace (a user namespace too, when not root)
  with a fresh tmpfs on `/dev/shm`, mode 0700: no other process sees the regions or their names. Where
  the kernel refuses namespaces, serve warns and makes each region 0600 once the server is ready.
- **A watched backend.** ONNX Runtime inside the backend's stub process can abort on input nobody
  foresaw; Triton 2.51 then keeps reporting the model ready and answers HTTP 500 forever. serve watches
  the stubs and stops with a one-line error the moment one ends (`watch_stubs`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

# Triton's API groups besides inference, health and metadata (its protocol customization guide).
CLOSED_APIS = ("shared-memory", "model-config", "model-repository", "statistics", "trace", "logging")
# A header name no client can send: a line break ends a header in HTTP/1.1, gRPC keys are [0-9a-z_.-].
UNSENDABLE_HEADER = "lstm-onnx\nclosed"
STUB_NAME = "triton_python_backend_stub"
# Mount a private tmpfs on /dev/shm, then become the server (same pid: the parent's signals reach it).
_PRIVATE_SHM = 'mount -t tmpfs -o mode=0700,nosuid,nodev tmpfs /dev/shm && exec "$0" "$@"'


def restricted_api_flags(open_statistics: bool = False) -> list[str]:
    """Triton flags that close every API a client of an inference server does not need."""
    apis = ",".join(api for api in CLOSED_APIS if not (open_statistics and api == "statistics"))
    setting = f"{apis}:{UNSENDABLE_HEADER}=closed"
    return [f"--http-restricted-api={setting}", f"--grpc-restricted-protocol={setting}"]


def namespace_prefix() -> list[str]:
    """`unshare` arguments that give the command a private /dev/shm, or [] where the kernel (or a
    container's seccomp profile) refuses a mount namespace."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return []
    prefix = [unshare, "--mount", "--propagation", "private"]
    if os.geteuid() != 0:
        prefix[1:1] = ["--user", "--map-root-user"]
    probe = [*prefix, "/bin/sh", "-c", _PRIVATE_SHM, "true"]
    try:
        done = subprocess.run(probe, stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [*prefix, "/bin/sh", "-c", _PRIVATE_SHM] if done.returncode == 0 else []


def restrict_regions(prefix: str, shm_dir: Path = Path("/dev/shm")) -> list[Path]:
    """Fallback without a namespace: make the backend's regions (in the shared /dev/shm) 0600."""
    regions = list(shm_dir.glob(prefix + "*"))
    for region in regions:
        os.chmod(region, 0o600)
    return regions


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
