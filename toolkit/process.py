"""Child processes and servers, one home for all: start one that dies with its parent, read the tail of its
log, stop it and its whole process group, and remove what a killed run left behind.

Used by the Node and OpenVINO runners (`LineProcess`), Chromium (`runtimes/chromium.py`,
`runtimes/devtools.py`) and `lstm-onnx serve` (`serve.py`).
"""

from __future__ import annotations

import ctypes
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO

from toolkit.errors import RuntimeFailure, overrun
from toolkit.text import first_line


def process_alive(pid: int) -> bool:
    """Whether `pid` runs (another user's process counts as running: we may not signal it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owner_pid(name: str, prefix: str) -> int | None:
    """The pid in `<prefix><pid>-<rest>`, or None for a name of another form."""
    pid, dash, _ = name.removeprefix(prefix).partition("-") if name.startswith(prefix) else ("", "", "")
    return int(pid) if dash and pid.isdigit() else None


def remove_stale(entries: Iterable[tuple[Path, str]]) -> list[Path]:
    """Remove each `(path, prefix)` named `<prefix><owner pid>-...` whose owner no longer runs: what a
    killed run (SIGKILL, no `stop`) left behind. Only this user's; never this process's own."""
    removed = []
    for entry, prefix in entries:
        pid = owner_pid(entry.name, prefix)
        try:
            mine = entry.lstat().st_uid == os.getuid()
        except OSError:  # removed meanwhile (its owner's `stop`, another run's cleanup)
            continue
        if pid is None or not mine or pid == os.getpid() or process_alive(pid):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def log_lines(log: IO[bytes] | Path) -> list[str]:
    """The lines of a child's log: a temporary file it writes to, or a path."""
    if isinstance(log, Path):
        return log.read_text(errors="replace").strip().splitlines() if log.exists() else []
    log.seek(0)
    return log.read().decode("utf-8", "replace").strip().splitlines()


def log_tail(log: IO[bytes] | Path, empty: str = "no output") -> str:
    """The last line of a child's log, one line of at most 300 characters, for an error message."""
    lines = log_lines(log)
    return first_line(lines[-1] if lines else empty)


def die_with_parent() -> None:
    """In a child before exec: SIGTERM it when its parent dies, even by SIGKILL (Linux prctl). The signal
    comes when the thread that started the child ends: runners are opened on the main thread."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


# Kills a process group once its stdin reaches end of file: when lstm-onnx exits, however it dies, the
# kernel closes the pipe's other end. Needed beside the parent-death signal because the signal reaches
# only the direct child: Debian's /usr/bin/chromium* are `sh -e` wrappers that run the browser as their
# own child, which a SIGKILLed verify would otherwise leave running (measured: browser, zygotes, renderer).
_REAPER = 'read _ ; kill -KILL -"$1" 2>/dev/null'  # dash's kill takes no --


def start_group_reaper(pgid: int) -> subprocess.Popen:
    """A `sh` that kills process group `pgid` when this process ends; close its stdin (`stop_reaper`)
    after stopping the group yourself."""
    return subprocess.Popen(["/bin/sh", "-c", _REAPER, "lstm-onnx-reaper", str(pgid)], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    # No parent-death signal here: it would end the reaper before it reads the end of file.


def stop_reaper(reaper: subprocess.Popen) -> None:
    if reaper.stdin is not None and not reaper.stdin.closed:
        reaper.stdin.close()
    try:
        reaper.wait(5.0)
    except subprocess.TimeoutExpired:
        reaper.kill()
        reaper.wait()


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds every `with`, so each runner's close() stops its child


def close_runners_on_sigterm() -> None:
    """Make SIGTERM unwind (SystemExit) instead of ending the process at once, so a terminated `verify`
    closes its runners: browser, profile and Node children go with it. Only where SIGTERM still has its
    default action and only on the main thread (where Python runs signal handlers); a handler the caller
    set is left alone."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _exit_on_sigterm)


def live_group_members(pgid: int) -> list[int]:
    """Processes of a process group that still run (zombies excluded: they hold no resources but a pid)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def stop_process(process: subprocess.Popen, grace: float = 5.0) -> None:
    """Terminate a child started in its own session, then its whole process group (a browser forks), and
    wait until none of the group runs."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    deadline = time.monotonic() + grace
    while live_group_members(process.pid) and time.monotonic() < deadline:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # what is left of the group: renderers, zygotes, workers
        except ProcessLookupError:
            break
        time.sleep(0.05)
    if process.poll() is None:
        process.wait(grace)


class LineProcess:
    """A child process that answers one JSON line on stdout per JSON line on stdin.

    A reader thread moves stdout lines into a queue so every wait has a timeout; stderr goes to a
    temporary file (a pipe nobody reads would fill up and hang the child) and is quoted on failure.
    """

    def __init__(self, command: Sequence[str], runtime: str, cwd: Path | None = None,
                 env: Mapping[str, str] | None = None):
        self.runtime = runtime
        self.stderr: IO[bytes] = tempfile.TemporaryFile()
        close_runners_on_sigterm()
        self.process = subprocess.Popen(list(command), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
                                        cwd=cwd, env=None if env is None else dict(env), start_new_session=True,
                                        preexec_fn=die_with_parent)
        self.broken = ""  # why later requests cannot be trusted (an earlier one timed out)
        self.lines: queue.Queue[bytes] = queue.Queue()
        self.reader = threading.Thread(target=self._read, args=(self.process.stdout,), daemon=True)
        self.reader.start()

    def _read(self, stream: IO[bytes]) -> None:
        for line in stream:
            self.lines.put(line)
        self.lines.put(b"")  # end of output: the process exited

    def stderr_tail(self) -> str:
        return log_tail(self.stderr, "no output on stderr")

    def receive(self, timeout: float) -> dict:
        """The next answer line. After a timeout the child is stopped (a crafted Loop would run on) and
        marked broken: a late line must never be taken for the next request's answer, so every later
        request fails saying so."""
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            self.broken = f"a request timed out after {timeout:g} s"
            stop_process(self.process, grace=1.0)
            raise overrun(timeout) from None
        if not line:
            raise RuntimeFailure(f"Expected {self.runtime} to keep running. Received: it exited "
                                 f"(code {self.process.wait()}): {self.stderr_tail()}")
        try:
            answer = json.loads(line)
        except ValueError:  # JSONDecodeError, or bytes that are not UTF-8
            answer = None
        if not isinstance(answer, dict):
            self.broken = "it wrote a line that is not a JSON object"
            raise RuntimeFailure(f"Expected a JSON object line from {self.runtime}. Received: "
                                 f"{first_line(line.decode('utf-8', 'replace'), 120)!r}")
        return answer

    def ask(self, message: Mapping, timeout: float) -> dict:
        if self.broken:
            raise RuntimeFailure(f"Expected {self.runtime} to answer in step. Received: no trustworthy answer "
                                 f"since {self.broken}")
        if self.process.poll() is not None:
            raise RuntimeFailure(f"Expected {self.runtime} to be running. Received: it exited: {self.stderr_tail()}")
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps(message).encode() + b"\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            raise RuntimeFailure(f"Expected {self.runtime} to be running. Received: it closed its input: "
                                 f"{self.stderr_tail()}") from None
        return self.receive(timeout)

    def stop(self) -> None:
        if self.process.stdin is not None and not self.process.stdin.closed:
            try:
                self.process.stdin.close()  # the harness exits at end of input
            except BrokenPipeError:
                pass
        try:
            self.process.wait(5.0)
        except subprocess.TimeoutExpired:
            pass
        stop_process(self.process)
        self.reader.join(5.0)
        self.stderr.close()
