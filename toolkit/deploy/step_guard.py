"""The deadline of a stream step: one guard thread for every open `StreamSession`.

A crafted graph can loop for ever, so a step has a deadline. Registering each call with a watchdog (a lock
and a dict entry per call, as `toolkit.runtimes.onnxrt.deadline` does for each run) costs more than a
one-step call can spare; here a step only writes its start time into its session's `Turn` and clears it,
and one daemon thread polls the open sessions and sets a late step's ONNX Runtime terminate flag.
"""

from __future__ import annotations

import threading
import time
import weakref
from typing import Any

STEP_TIMEOUT = 10.0  # seconds one step may run before it is stopped
MAX_WAIT = 60.0  # the longest the guard sleeps between polls (an infinite timeout: no deadline)


class Turn:
    """One session's turn: which binding runs next (`side`), when the running step started (0: none), what
    the guard needs to stop it (`timeout`, the run options whose terminate flag it sets), and `binding`: a
    token of the session's current binding, renewed at each, None once the session is closed or released. The
    session's `step` closure and the guard share it without holding the session itself; a closure runs only
    while the token it was made with is the current one."""

    __slots__ = ("side", "started", "timeout", "options", "binding", "busy", "__weakref__")

    def __init__(self, timeout: float, options: Any) -> None:
        self.side, self.started, self.timeout, self.options = 0, 0.0, timeout, options
        self.binding: object | None = None
        # Held by a running step. Two threads stepping one session at once read the same side of the state
        # buffers and both flip it: a step was lost without a word (20,000 + 20,000 counted 39,987). A
        # non-blocking acquire refuses the second (a blocking one would mix two callers' steps into one stream).
        self.busy = threading.Lock()


class Guard:
    """One daemon thread that stops a step once it has run past its session's timeout. A step only writes its
    start time and clears it (no lock, no allocation); the thread polls every open turn at a quarter of the
    smallest timeout, so a step is stopped between 1x and 1.25x its timeout. A turn is watched as long as
    anything holds it: its session, or a `step` a caller kept after dropping the session."""

    def __init__(self) -> None:
        self._turns: weakref.WeakSet[Turn] = weakref.WeakSet()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def watch(self, turn: Turn) -> None:
        with self._lock:
            self._turns.add(turn)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="lstm-onnx-stream-deadlines", daemon=True)
                self._thread.start()
        self._wake.set()

    def _loop(self) -> None:
        while True:
            turns = [t for t in list(self._turns) if t.binding is not None]
            if not turns:
                self._wake.wait()
                self._wake.clear()
                continue
            now = time.monotonic()
            for turn in turns:
                started = turn.started
                if started and now - started > turn.timeout:
                    turn.options.terminate = True
            # Bounded: a wait of an infinite (or 1e300 s) timeout's quarter raised OverflowError in this
            # thread, and no session of the process had a deadline any more.
            self._wake.wait(min(max(0.005, min(t.timeout for t in turns) / 4), MAX_WAIT))
            self._wake.clear()


GUARD = Guard()


def release(turn: Turn) -> None:
    """A closed or garbage-collected session's turn: a `step` kept from it runs no more."""
    turn.binding = None
