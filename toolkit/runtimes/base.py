"""What every runtime runner shares: the result of `open`, the wire form of tensors, a child process.

A runner is one open session of one runtime on one model (the interface `toolkit.verify` names
`Runner`): `run(feeds)` returns `{graph output name: array}` in graph order, `close()` stops whatever it
started and may be called twice, and it is a context manager. The JavaScript runtimes run in a child
process (Node) or a browser page; tensors cross to them as JSON `{name, dtype, shape, data}` with `data`
the base64 of the array's little-endian bytes (`js/protocol.mjs` reads and writes the same form).
"""

from __future__ import annotations

import base64
import ctypes
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

import numpy as np
import onnx

from toolkit.errors import InputError
from toolkit.runner import first_line, graph_inputs, graph_outputs, optional_inputs, with_zero_states

# dtypes both sides can carry; ONNX Runtime's JavaScript API names them as numpy does.
WIRE_DTYPES = ("float32", "float64", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "bool")
# How long a runtime may take to load a model or run one batch before we call it stuck (seconds). A cold
# Chromium start with the WASM binary takes about 3 s on this machine's 2 shared cores.
START_TIMEOUT = 120.0
RUN_TIMEOUT = 120.0


def valid_everywhere(model: onnx.ModelProto) -> str | None:
    """The `problem` of a runtime with no known defect on our exports."""
    return None


class RuntimeFailure(InputError):
    """A runtime refused or failed to run a model it was given (the message is its own, first line)."""


def encode_tensor(name: str, array: np.ndarray) -> dict:
    array = np.asarray(array)
    if array.dtype.name not in WIRE_DTYPES:
        raise InputError(f"Expected input {name!r} of a dtype among {list(WIRE_DTYPES)}. Received: {array.dtype.name}")
    little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    return {"name": name, "dtype": array.dtype.name, "shape": list(array.shape),
            "data": base64.b64encode(little.tobytes()).decode("ascii")}


def decode_tensor(spec: Mapping) -> np.ndarray:
    dtype = np.dtype(spec["dtype"]).newbyteorder("<")
    flat = np.frombuffer(base64.b64decode(spec["data"]), dtype=dtype)
    return flat.astype(dtype.newbyteorder("="), copy=True).reshape(spec["shape"])


def encode_feeds(feeds: Mapping[str, np.ndarray]) -> dict:
    return {"feeds": [encode_tensor(name, value) for name, value in feeds.items()]}


def decode_answer(answer: Mapping, runtime: str, expected: Sequence[str]) -> dict[str, np.ndarray]:
    """The outputs of one run, in graph order, or the runtime's own error as a one-line `RuntimeFailure`."""
    if "error" in answer:
        raise RuntimeFailure(f"Expected a run in {runtime}. Received its error: {first_line(answer['error'])}")
    outputs = {spec["name"]: decode_tensor(spec) for spec in answer["outputs"]}
    if list(outputs) != list(expected):
        raise RuntimeFailure(f"Expected outputs {list(expected)} from {runtime}. Received: {list(outputs)}")
    return outputs


class RunnerBase:
    """What every runner shares, the Python ones of `toolkit.verify` too: a name, an idempotent `close()`
    that calls `_stop()` once, a context manager, and a `close()` on garbage collection (a forgotten
    close must not leave a process behind)."""

    name: str = "runtime"
    closed: bool = False

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _stop(self) -> None:
        """Stop what this runner started (called once)."""

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._stop()

    def __enter__(self) -> RunnerBase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not self.closed:
            self.close()


class ModelRunner(RunnerBase):
    """A deploy runtime's runner of one ONNX model: its graph inputs, outputs and zero states."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.inputs = graph_inputs(model)  # what a caller must feed, as the Python runners list them
        self.outputs = graph_outputs(model)
        self.output_names = [t.name for t in self.outputs]
        self.states = optional_inputs(model)  # initial-state inputs: zeros unless fed

    def with_states(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The feeds, with zeros for each state input not given (as the Python runners do)."""
        if self.closed:
            raise InputError(f"Expected an open {self.name} runner. Received: run() after close()")
        return with_zero_states(self.states, feeds)


def process_alive(pid: int) -> bool:
    """Whether `pid` runs (another user's process counts as running: we may not signal it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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


class FailedRunner(ModelRunner):
    """A runtime that could not load a model it is valid for: every run fails with its error, so `verify`
    reports that runtime as failing, saying why, and still compares the others."""

    def __init__(self, name: str, model: onnx.ModelProto, error: RuntimeFailure):
        super().__init__(model)
        self.name = name
        self.error = error

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise self.error


def open_or_failed(name: str, opener: Callable, path: Path, model: onnx.ModelProto) -> RunnerBase:
    """`opener(path, model)`, or a `FailedRunner` when the runtime refuses the model. A runtime that is
    not installed still raises its one-line `InputError`: that is the user's to fix, not a result."""
    try:
        return opener(path, model)
    except RuntimeFailure as exc:
        return FailedRunner(name, model, exc)


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

    def __init__(self, command: Sequence[str], runtime: str, cwd: Path | None = None):
        self.runtime = runtime
        self.stderr: IO[bytes] = tempfile.TemporaryFile()
        close_runners_on_sigterm()
        self.process = subprocess.Popen(list(command), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
                                        cwd=cwd, start_new_session=True, preexec_fn=die_with_parent)
        self.broken = ""  # why later requests cannot be trusted (an earlier one timed out)
        self.lines: queue.Queue[bytes] = queue.Queue()
        self.reader = threading.Thread(target=self._read, args=(self.process.stdout,), daemon=True)
        self.reader.start()

    def _read(self, stream: IO[bytes]) -> None:
        for line in stream:
            self.lines.put(line)
        self.lines.put(b"")  # end of output: the process exited

    def stderr_tail(self) -> str:
        self.stderr.seek(0)
        text = self.stderr.read().decode("utf-8", "replace").strip()
        return first_line(text.splitlines()[-1] if text else "no output on stderr")

    def receive(self, timeout: float) -> dict:
        """The next answer line. After a timeout the child may still answer that request, and its late
        line would be taken for the next request's answer: the process is marked broken instead, and
        every later request fails saying so."""
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            self.broken = f"a request timed out after {timeout:g} s"
            raise RuntimeFailure(f"Expected an answer from {self.runtime} within {timeout:g} s. Received none") from None
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
