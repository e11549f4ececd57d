"""Child processes, one layer for all: start one in a process group of its own that dies with its parent
(and a group reaper where it forks), talk to it in frames under a deadline per request and one for its
whole life, bound its resident memory, quote its log's tail in one-line errors, and stop its whole group.
(What a killed run left behind, named by its pid, is removed by `toolkit.fileio.remove_stale`.)

Every managed child goes through `Child`: Node and OpenVINO (`LineProcess`), a SavedModel's signature
(`runtimes/keras2_child.py`), Chromium (`runtimes/chromium.py` `launch_browser`, for the runner and the
page tests), tritonserver and nginx (`deploy/`). One-shot `subprocess.run` commands are not managed here.

The framing (`write_frame`, `read_frame`): each message is one JSON object on one line; a message that
carries bytes says how many in its `"bytes"` key, and exactly that many raw bytes follow the line. So a
child that never sends bytes speaks plain JSON lines (the Node harness, the OpenVINO child), and a large
blob (a converted ONNX graph) crosses without base64's third more bytes and its cost. Tensors travel
inside the JSON, in the one wire form of `toolkit/runtimes/wire.py`. Nothing is pickled.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import queue
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from toolkit.errors import RuntimeFailure, overrun
from toolkit.text import first_line

POLL_SECONDS = 0.1  # how often a wait with a memory limit measures the child
MAX_LINE_BYTES = 1 << 30  # a header line: base64 answers far above any parity case (Chromium's MAX_BODY too)
MAX_PAYLOAD_BYTES = (2 << 30) - 1  # raw bytes after it: protobuf's limit, the largest converted graph


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
    with contextlib.suppress(subprocess.TimeoutExpired):
        reaper.wait(5.0)  # it exits at the end of its input
    stop_process(reaper, grace=0)


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


def resident_bytes(pid: int) -> int:
    """A process's resident memory, from /proc/PID/statm (0 once it has ended)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def stop_process(process: subprocess.Popen, grace: float = 5.0) -> None:
    """Terminate a child started in its own session (`grace` 0: kill it at once), then its whole process
    group (a browser forks), and wait until none of the group runs."""
    if process.poll() is None and grace > 0:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            pass  # the group's SIGKILL follows
    deadline = time.monotonic() + max(grace, 1.0)
    while live_group_members(process.pid) and time.monotonic() < deadline:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # what is left of the group: renderers, zygotes, workers
        except ProcessLookupError:
            break
        time.sleep(0.05)
    if process.poll() is None:
        process.kill()
        process.wait(max(grace, 1.0))


class Child:
    """One child process in a process group of its own (pid = group id) that dies with its parent: a
    parent-death signal, and with `reaper` a group reaper too (the child forks, or enters a namespace,
    which clears the signal). Its output goes to `log` (a path) or a temporary file, whose last line ends
    its errors. `in_child` runs in the child before exec (Chromium's DevTools pipe onto fds 3 and 4, kept
    with `close_fds=False`). `pipes`: stdin and stdout are pipes to talk over (`LineProcess`)."""

    def __init__(self, command: Sequence[str], name: str, *, cwd: Path | None = None,
                 env: Mapping[str, str] | None = None, log: Path | None = None, reaper: bool = False,
                 pipes: bool = False, in_child: Callable[[], None] | None = None, close_fds: bool = True):
        self.name = name
        self.log: IO[bytes] | Path = log if log is not None else tempfile.TemporaryFile()
        self.reaper: subprocess.Popen | None = None

        def before_exec() -> None:
            if in_child is not None:
                in_child()
            die_with_parent()

        out = open(log, "wb") if log is not None else self.log  # noqa: SIM115 - the child holds it from here
        try:
            self.process = subprocess.Popen(
                list(command), stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
                stdout=subprocess.PIPE if pipes else out, stderr=out, cwd=cwd, env=None if env is None else dict(env),
                start_new_session=True, close_fds=close_fds, preexec_fn=before_exec)
        except OSError as exc:  # not executable, vanished, out of processes
            self.close_log()
            raise RuntimeFailure(f"Expected {name} to start. Received: {command[0]} failed to start: "
                                 f"{exc.strerror or type(exc).__name__}") from None
        finally:
            if log is not None:
                out.close()
        if reaper:
            self.reaper = start_group_reaper(self.process.pid)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def poll(self) -> int | None:
        return self.process.poll()

    def log_tail(self, empty: str = "no output") -> str:
        return log_tail(self.log, empty)

    def close_log(self) -> None:
        if not isinstance(self.log, Path):
            self.log.close()

    def stop(self, grace: float = 5.0) -> None:
        """Stop the child and its whole group (SIGTERM, SIGKILL after `grace`; 0: SIGKILL at once), then
        its reaper; close the log. Safe to call twice."""
        stop_process(self.process, grace)
        if self.reaper is not None:
            stop_reaper(self.reaper)
            self.reaper = None
        self.close_log()


@dataclass(frozen=True)
class Frame:
    """One message: its JSON header (None when the line was not a JSON object), the raw line, the payload."""

    header: dict | None
    line: bytes
    payload: bytes = b""


def frame_bytes(header: Mapping[str, Any], payload: bytes = b"") -> bytes:
    """One message (see the module docstring): the header's JSON line, then the payload's bytes if any."""
    return json.dumps({**header, "bytes": len(payload)} if payload else dict(header)).encode() + b"\n" + payload


def write_frame(stream: IO[bytes], header: Mapping[str, Any], payload: bytes = b"") -> None:
    stream.write(frame_bytes(header, payload))
    stream.flush()


def read_frame(stream: IO[bytes]) -> Frame | None:
    """The next message, or None at the end of the stream (also when it ends inside a payload); a line or a
    payload past its bound is a frame with no header (the reader is then no longer in step)."""
    line = stream.readline(MAX_LINE_BYTES)
    if not line:
        return None
    try:
        header = json.loads(line)
    except ValueError:  # JSONDecodeError, bytes that are not UTF-8, a line cut at its bound
        header = None
    size = header.get("bytes", 0) if isinstance(header, dict) else None
    if not isinstance(size, int) or not 0 <= size <= MAX_PAYLOAD_BYTES:
        return Frame(None, line)
    payload = stream.read(size) if size else b""
    return Frame(header, line, payload) if len(payload) == size else None


class ChildStopped(RuntimeFailure):
    """A child that failed or passed a bound, stopped; `why` says what happened in a few words ("it ran
    past 90 s in all"), for a caller that words its own refusal."""

    def __init__(self, message: str, why: str):
        super().__init__(message)
        self.why = why


@dataclass(frozen=True)
class Deadline:
    """When a child's whole life ends (`time.monotonic()`), and how a refusal names that bound."""

    at: float
    label: str


class LineProcess(Child):
    """A child that answers each message with one (the framing above), awaited under the request's
    deadline, the child's `life` deadline and its `max_rss` bytes of resident memory (measured from /proc
    every 0.1 s); past any of them the child's group is stopped and the error is one line.

    A reader thread moves frames into a queue so every wait has a timeout; stderr goes to a temporary file
    (a pipe nobody reads would fill up and hang the child) and its last line is quoted on failure. After
    a stop the child is marked broken: a late answer must never be taken for the next request's, so every
    later request fails saying so.
    """

    def __init__(self, command: Sequence[str], runtime: str, cwd: Path | None = None,
                 env: Mapping[str, str] | None = None, *, life: Deadline | None = None, max_rss: int | None = None):
        close_runners_on_sigterm()
        super().__init__(command, runtime, cwd=cwd, env=env, pipes=True)
        self.runtime = runtime
        self.life, self.max_rss = life, max_rss
        self.broken = ""  # why later requests cannot be trusted (an earlier one was stopped)
        self.frames: queue.Queue[Frame | None] = queue.Queue()
        self.reader = threading.Thread(target=self._read, args=(self.process.stdout,), daemon=True)
        self.reader.start()

    def _read(self, stream: IO[bytes]) -> None:
        try:
            while (frame := read_frame(stream)) is not None:
                self.frames.put(frame)
        except (OSError, ValueError, MemoryError):  # the stream was closed under the reader; no room
            pass
        self.frames.put(None)  # end of output: the process exited

    def stderr_tail(self) -> str:
        return self.log_tail("no output on stderr")

    def _past_bound(self, timeout: float, label: str, own: bool, past: bool) -> ChildStopped:
        """Stop the child at a bound it passed: its one-line error (a request's own deadline: `overrun`)."""
        memory = f"{(self.max_rss or 0) >> 20} MiB of memory"
        why = f"it ran past {label}" if past else f"it grew past {memory}"
        self.broken = f"a request timed out after {timeout:g} s" if past and own else why
        stop_process(self.process, grace=1.0)  # a crafted Loop would run on
        message = f"Expected {self.runtime} to finish within {label if past else memory}. Received: stopped, {why}"
        return ChildStopped(str(overrun(timeout)) if past and own else message, why)

    def _bounds(self, timeout: float, start: float | None) -> tuple[float, str, bool]:
        """When a request started at `start` (now if None) must be answered, that bound's name, and whether
        it is the request's own (else the child's life)."""
        end = (time.monotonic() if start is None else start) + timeout
        if self.life is not None and self.life.at < end:
            return self.life.at, self.life.label, False
        return end, f"{timeout:g} s", True

    def _send(self, data: bytes, timeout: float, start: float) -> None:
        """Write under the request's bounds too: a child that stops reading its input cannot hold us."""
        assert self.process.stdin is not None
        end, label, own = self._bounds(timeout, start)
        fd = self.process.stdin.fileno()
        os.set_blocking(fd, False)  # our end only: the child reads from its own
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:
                if not select.select([], [fd], [], max(end - time.monotonic(), 0.0))[1]:
                    raise self._past_bound(timeout, label, own, True) from None

    def receive_frame(self, timeout: float, start: float | None = None) -> Frame:
        """The next message, awaited under every bound (see the class docstring)."""
        end, label, own = self._bounds(timeout, start)
        while True:
            try:
                left = max(end - time.monotonic(), 0.0)
                frame = self.frames.get(timeout=min(left, POLL_SECONDS) if self.max_rss else left)
                break
            except queue.Empty:
                pass
            past = time.monotonic() >= end
            if past or (self.max_rss and resident_bytes(self.pid) > self.max_rss):
                raise self._past_bound(timeout, label, own, past) from None
        if frame is None:
            code = self._exit_code()
            raise ChildStopped(f"Expected {self.runtime} to keep running. Received: it exited (code {code}): "
                               f"{self.stderr_tail()}", f"it exited with {code}: {self.stderr_tail()}")
        if frame.header is None:
            self.broken = "it wrote a line that is not a JSON object"
            raise ChildStopped(f"Expected a JSON object line from {self.runtime}. Received: "
                               f"{first_line(frame.line.decode('utf-8', 'replace'), 120)!r}", self.broken)
        return frame

    def _exit_code(self) -> int | None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5.0)
        stop_process(self.process, grace=1.0)  # where it closed its output yet runs on
        return self.process.returncode

    def receive(self, timeout: float) -> dict:
        return self.receive_frame(timeout).header or {}  # a child that sends no bytes: its next JSON line

    def exchange(self, message: Mapping[str, Any], timeout: float, payload: bytes = b"") -> Frame:
        """Send one message (with `payload` bytes if any) and await the answer."""
        if self.broken:
            raise ChildStopped(f"Expected {self.runtime} to answer in step. Received: no trustworthy answer "
                               f"since {self.broken}", self.broken)
        if self.process.poll() is not None:
            raise ChildStopped(f"Expected {self.runtime} to be running. Received: it exited: {self.stderr_tail()}",
                               f"it exited with {self.process.returncode}: {self.stderr_tail()}")
        start = time.monotonic()
        try:
            self._send(frame_bytes(message, payload), timeout, start)
        except ChildStopped:  # past a bound while writing (itself a ValueError, as every InputError)
            raise
        except (BrokenPipeError, ValueError):  # ValueError: the pipe was closed
            raise ChildStopped(f"Expected {self.runtime} to be running. Received: it closed its input: "
                               f"{self.stderr_tail()}", "it exited") from None
        return self.receive_frame(timeout, start)

    def ask(self, message: Mapping[str, Any], timeout: float) -> dict:
        return self.exchange(message, timeout).header or {}

    def stop(self, grace: float = 5.0) -> None:
        """Close the child's input (it exits at end of input), give it `grace` seconds, then stop its group."""
        if self.process.stdin is not None and not self.process.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self.process.stdin.close()
        if grace > 0:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(grace)
        super().stop(grace)
        self.reader.join(5.0)
        if self.process.stdout is not None and not self.reader.is_alive():
            self.process.stdout.close()
