"""A headless Chromium page driven over the DevTools protocol on a pipe: what the page tests and the README
screenshots use to open lstm-onnx's HTML pages in the real browser.

The browser is the one `toolkit.runtimes.chromium` runs, started by the same launcher (`launch_browser`: its
own profile, its own process group, a reaper and a parent-death signal), with `--remote-debugging-pipe`: the
protocol's JSON messages, each ended by a NUL byte, travel on file descriptors 3 (to the browser) and 4
(from it), so no port is opened; the messages go through the one DevTools client,
`toolkit.runtimes.chromium.DevToolsPipe`. The page records every request's URL and every console error or
uncaught exception while it runs. `serve_folder` serves a folder on 127.0.0.1 for it.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from toolkit.errors import RuntimeFailure
from toolkit.runtimes.chromium import (
    PROFILE_PREFIX,
    DevToolsPipe,
    browser_binary,
    launch_browser,
    remove_stale_profiles,
)


class DevToolsPage:
    """One browser with one page; `send` a protocol command, `evaluate` JavaScript, `close` stops it all."""

    def __init__(self, width: int = 1200, height: int = 900):
        binary = browser_binary()
        remove_stale_profiles()
        self.profile = tempfile.mkdtemp(prefix=f"{PROFILE_PREFIX}{os.getpid()}-")
        self.requests: list[str] = []  # every URL the page asked for
        self.errors: list[str] = []  # console errors and uncaught exceptions
        self._next_id, self._events = 0, []
        self.pipe = DevToolsPipe()
        self.browser = launch_browser(binary, self.profile, self.pipe, [f"--window-size={width},{height}"])
        try:
            self._attach()
        except BaseException:
            self.close()
            raise

    def _attach(self) -> None:
        targets = self.send("Target.getTargets", session=False)["targetInfos"]
        page = next(t["targetId"] for t in targets if t["type"] == "page")
        self.session = self.send("Target.attachToTarget", {"targetId": page, "flatten": True}, session=False)["sessionId"]
        for domain in ("Page", "Runtime", "Network", "Log"):
            self.send(f"{domain}.enable")

    def send(self, method: str, params: dict | None = None, session: bool = True, timeout: float = 60.0) -> dict:
        """One command; its result (events that arrive meanwhile are recorded)."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        self.pipe.write(message)
        deadline = time.monotonic() + timeout
        while True:
            answer = self.pipe.read(deadline)
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise RuntimeFailure(f"Expected DevTools to run {method}. Received: {answer['error']}")
                return answer.get("result", {})
            self._record(answer)

    def _record(self, event: dict) -> None:
        method, params = event.get("method", ""), event.get("params", {})
        self._events.append(method)
        if method == "Network.requestWillBeSent":
            self.requests.append(params["request"]["url"])
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            self.errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            self.errors.append(details.get("exception", {}).get("description") or details.get("text", "exception"))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            self.errors.append(params["entry"].get("text", "error"))

    def navigate(self, url: str, timeout: float = 60.0) -> None:
        """Open `url` and wait for its load event."""
        self._events.clear()
        self.send("Page.navigate", {"url": url})
        self.wait_for_event("Page.loadEventFired", timeout)

    def wait_for_event(self, method: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while method not in self._events:
            self._record(self.pipe.read(deadline))

    def evaluate(self, expression: str, timeout: float = 60.0) -> Any:
        """The value of a JavaScript expression in the page (a promise is awaited)."""
        result = self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True, "returnByValue": True},
                           timeout=timeout)
        if "exceptionDetails" in result:
            raise RuntimeFailure(f"Expected {expression[:80]!r} to run. Received: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def wait_until(self, expression: str, timeout: float = 60.0) -> Any:
        """Poll a JavaScript expression until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.1)
        raise RuntimeFailure(f"Expected {expression[:80]!r} to hold within {timeout:g} s. Received: it did not")

    def screenshot(self, path: str | Path, width: int = 1200) -> Path:
        """A PNG of the whole page, `width` CSS pixels wide."""
        height = int(self.evaluate("document.documentElement.scrollHeight"))
        self.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                         "mobile": False})
        data = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})["data"]
        Path(path).write_bytes(base64.b64decode(data))
        return Path(path)

    def close(self) -> None:
        """Stop the browser's whole process group, its reaper and the pipes; remove the profile. Idempotent."""
        if getattr(self, "browser", None) is not None:
            self.browser.stop()
            self.browser = None
        if getattr(self, "pipe", None) is not None:
            self.pipe.close()
            self.pipe = None
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> DevToolsPage:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # the page's requests are not news
        pass


@contextlib.contextmanager
def serve_folder(folder: str | Path) -> Iterator[str]:
    """Serve `folder` on an ephemeral port of 127.0.0.1 while the block runs; yields the base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield f"http://{host}:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5.0)
