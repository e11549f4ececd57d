"""The one child-process layer (`toolkit.process`, issue 26): real children, no mocks. A child past its
request deadline, its life deadline or its memory limit is stopped with a one-line error; stopping a child
that forked leaves nothing of its process group (checked in /proc); a SIGKILLed parent leaves no child; the
framing carries a JSON header and raw bytes both ways; a child's stderr tail ends its one-line error."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from toolkit.errors import RuntimeFailure
from toolkit.fileio import process_alive
from toolkit.process import (
    Child,
    ChildStopped,
    Deadline,
    LineProcess,
    live_group_members,
    read_frame,
    write_frame,
)

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}

# A child speaking the framing: echoes each message's header with the length of its payload, and the
# payload reversed; "sleep" sleeps first, "grow" holds that many MiB resident, "die" writes to stderr and exits.
ECHO = """
import sys, time
from toolkit.process import read_frame, write_frame
held = []
while (frame := read_frame(sys.stdin.buffer)) is not None:
    header = frame.header
    if "sleep" in header:
        time.sleep(header["sleep"])
    if "grow" in header:
        held.append(b"\\1" * (header["grow"] << 20))
        time.sleep(60)
    if "die" in header:
        sys.stderr.write("first line\\nthe child's last words\\n")
        sys.exit(3)
    write_frame(sys.stdout.buffer, {"got": len(frame.payload)}, frame.payload[::-1])
"""


def _echo(**bounds) -> LineProcess:
    return LineProcess([sys.executable, "-c", ECHO], "echo-child", env=ENV, **bounds)


def _gone(pids: list[int], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not any(process_alive(pid) and not _zombie(pid) for pid in pids):
            return True
        time.sleep(0.1)
    return False


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_frames_carry_a_header_and_raw_bytes_both_ways():
    child = _echo()
    try:
        blob = bytes(range(256)) * 4096 + b"\n\n"  # newlines inside a payload are bytes, not frame ends
        answer = child.exchange({"op": "echo"}, timeout=60, payload=blob)
        assert answer.header == {"got": len(blob), "bytes": len(blob)} and answer.payload == blob[::-1]
        assert child.ask({"op": "plain"}, timeout=60) == {"got": 0}  # no payload: a plain JSON line
    finally:
        child.stop()


def test_a_frame_cut_short_is_the_end_of_the_stream():
    read, write = os.pipe()
    with os.fdopen(write, "wb") as out:
        write_frame(out, {"a": 1}, b"xyz")
        out.write(b'{"bytes": 3000000000}\n{"bytes": 10}\nabc')
    with os.fdopen(read, "rb") as stream:
        first = read_frame(stream)
        assert first is not None and first.header == {"a": 1, "bytes": 3} and first.payload == b"xyz"
        huge = read_frame(stream)  # past the payload bound (protobuf's 2 GiB): not a frame to read on from
        assert huge is not None and huge.header is None and huge.payload == b""
        assert read_frame(stream) is None


def test_a_child_past_its_request_deadline_is_stopped_in_one_line():
    child = _echo()
    try:
        with pytest.raises(RuntimeFailure, match=r"^Expected a run that ends within 0.5 s") as caught:
            child.ask({"sleep": 60}, timeout=0.5)
        assert "\n" not in str(caught.value) and caught.value.why == "it ran past 0.5 s"
        assert live_group_members(child.pid) == []
        with pytest.raises(RuntimeFailure, match="no trustworthy answer since a request timed out after 0.5 s"):
            child.ask({"op": "again"}, timeout=5)
    finally:
        child.stop()


def test_a_child_that_stops_reading_cannot_hold_a_request_past_its_deadline():
    """A request larger than the pipe holds, to a child that never reads: the write is under the deadline too."""
    child = LineProcess([sys.executable, "-c", "import time; time.sleep(300)"], "deaf-child", env=ENV)
    try:
        start = time.monotonic()
        with pytest.raises(RuntimeFailure, match=r"^Expected a run that ends within 1 s"):
            child.exchange({"op": "big"}, timeout=1.0, payload=b"x" * (8 << 20))
        assert time.monotonic() - start < 10 and live_group_members(child.pid) == []
    finally:
        child.stop()


def test_a_child_past_its_life_deadline_is_stopped_whatever_each_request_allows():
    child = _echo(life=Deadline(time.monotonic() + 1.5, "1.5 s in all"))
    try:
        child.ask({"sleep": 0.5}, timeout=60)
        with pytest.raises(ChildStopped, match=r"^Expected echo-child to finish within 1.5 s in all. Received: "
                                               r"stopped, it ran past 1.5 s in all$"):
            child.ask({"sleep": 60}, timeout=60)
        assert live_group_members(child.pid) == []
    finally:
        child.stop()


def test_a_child_past_its_memory_limit_is_stopped_in_one_line():
    child = _echo(max_rss=200 << 20)
    try:
        start = time.monotonic()
        with pytest.raises(ChildStopped, match=r"^Expected echo-child to finish within 200 MiB of memory. "
                                               r"Received: stopped, it grew past 200 MiB of memory$") as caught:
            child.ask({"grow": 400}, timeout=60)
        assert caught.value.why == "it grew past 200 MiB of memory" and time.monotonic() - start < 30
        assert live_group_members(child.pid) == []
        with pytest.raises(RuntimeFailure, match="no trustworthy answer since it grew past 200 MiB of memory$"):
            child.ask({"op": "again"}, timeout=5)
    finally:
        child.stop()


def test_a_child_that_exits_ends_its_one_line_error_with_its_stderr_tail():
    child = _echo()
    try:
        with pytest.raises(ChildStopped, match=r"it exited \(code 3\): the child's last words$") as caught:
            child.ask({"die": True}, timeout=60)
        assert "\n" not in str(caught.value)
    finally:
        child.stop()


def test_stopping_a_child_that_forked_leaves_nothing_of_its_group():
    child = Child(["/bin/sh", "-c", "sleep 300 & sleep 300 & (sleep 300 &) ; wait"], "forking-child", reaper=True)
    try:
        deadline = time.monotonic() + 10
        while len(live_group_members(child.pid)) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        members = live_group_members(child.pid)
        assert len(members) >= 4, members  # the shell and its three sleeps (one re-parented away from it)
    finally:
        child.stop()
    assert live_group_members(child.pid) == []
    assert _gone(members, 0.1)
    assert child.reaper is None


def test_a_start_that_fails_is_one_line():
    with pytest.raises(RuntimeFailure, match=r"^Expected no-such to start. Received: /nonexistent/binary failed to "
                                             r"start: No such file or directory$"):
        Child(["/nonexistent/binary"], "no-such")


KILLED_PARENT = """
import sys, time
from toolkit.process import Child, LineProcess
talking = LineProcess([sys.executable, "-c", "import sys; sys.stdin.read()"], "talker")
forking = Child(["/bin/sh", "-c", "sleep 300 & sleep 300 & wait"], "forker", reaper=True)
time.sleep(1.0)  # the forks have happened
from toolkit.process import live_group_members
pids = [talking.pid, *live_group_members(forking.pid)]
print(" ".join(map(str, pids)), flush=True)
time.sleep(300)
"""


def test_a_parent_killed_with_sigkill_leaves_no_child():
    parent = subprocess.Popen([sys.executable, "-c", KILLED_PARENT], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) >= 4 and all(process_alive(pid) for pid in pids), pids
        parent.send_signal(signal.SIGKILL)
        parent.wait(30)
        assert _gone(pids), [pid for pid in pids if process_alive(pid) and not _zombie(pid)]
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        parent.stdout.close()
