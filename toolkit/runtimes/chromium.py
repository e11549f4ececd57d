"""onnxruntime-web (WASM) in a real headless Chromium page, served from 127.0.0.1.

The runner starts a small HTTP server on an ephemeral port of 127.0.0.1 that serves `js/page.html`,
`js/protocol.mjs`, onnxruntime-web's dist files from `js/node_modules` and the model, then launches
Debian's `chromium-headless-shell` (or `chromium`) on that page with a temporary profile. The page
long-polls `/next` for a request and posts the answer to `/result`. `close()` tells the page to stop,
kills the browser's whole process group, shuts the server down and removes the profile.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import onnx

from toolkit.errors import InputError
from toolkit.runtimes.base import (
    RUN_TIMEOUT,
    START_TIMEOUT,
    RunnerBase,
    RuntimeFailure,
    decode_answer,
    encode_feeds,
    stop_process,
)
from toolkit.runtimes.js import JS_DIR, SETUP_HINT, npm_package

BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser")
POLL_SECONDS = 10.0  # how long /next holds a request open before the page asks again
TYPES = {".html": "text/html", ".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm",
         ".json": "application/json", ".onnx": "application/octet-stream"}


def browser_binary() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    raise InputError(f"Expected a headless Chromium ({' or '.join(BROWSERS)}) on PATH. Received: none ({SETUP_HINT})")


class Mailbox:
    """What the HTTP handlers and the runner exchange: the files served, requests out, answers in."""

    def __init__(self, model_bytes: bytes):
        dist = npm_package("onnxruntime-web") / "dist"
        self.files: dict[str, Path | bytes] = {"/": JS_DIR / "page.html", "/js/protocol.mjs": JS_DIR / "protocol.mjs",
                                               "/model.onnx": model_bytes}
        self.files.update({f"/ort/{p.name}": p for p in dist.iterdir() if p.suffix in (".mjs", ".wasm")})
        self.requests: queue.Queue[dict] = queue.Queue()
        self.answers: queue.Queue[dict] = queue.Queue()


def _handler(mailbox: Mailbox) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # the page's requests are not news
            pass

        def _send(self, body: bytes, content_type: str, status: int = 200) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):  # the page went away (close() killed the browser)
                pass

        def do_GET(self) -> None:
            if self.path == "/next":
                try:
                    request = mailbox.requests.get(timeout=POLL_SECONDS)
                except queue.Empty:
                    request = {"wait": True}
                self._send(json.dumps(request).encode(), "application/json")
                return
            served = mailbox.files.get(self.path)
            if served is None:  # only the files listed in the mailbox: no path reaches the disk otherwise
                self._send(b"not found", "text/plain", 404)
                return
            body = served if isinstance(served, bytes) else served.read_bytes()
            self._send(body, TYPES.get(Path(self.path).suffix, "text/html"))

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            message = json.loads(self.rfile.read(length) or b"{}")
            if self.path in ("/ready", "/result"):
                mailbox.answers.put(message)
            self._send(b"{}", "application/json")

    return Handler


class ChromiumRunner(RunnerBase):
    """One model loaded by onnxruntime-web in a headless Chromium page."""

    name = "chromium"

    def __init__(self, path: Path, model: onnx.ModelProto):
        binary = browser_binary()
        mailbox = Mailbox(Path(path).read_bytes())
        super().__init__(model)
        self.mailbox = mailbox
        self.profile = tempfile.mkdtemp(prefix="lstm-onnx-chromium-")
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(mailbox))
        self.server.daemon_threads = True
        self.server_thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.server_thread.start()
        self.log = tempfile.TemporaryFile()
        self.browser = subprocess.Popen(self._command(binary), stdin=subprocess.DEVNULL, stdout=self.log,
                                        stderr=self.log, start_new_session=True)
        try:
            ready = self._answer(START_TIMEOUT)
            if "error" in ready:
                raise RuntimeFailure(f"Expected Chromium to load {Path(path).name}. Received its error: {ready['error']}")
        except BaseException:
            self.close()
            raise
        self.listed_inputs: list[str] = ready["inputs"]

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/"

    @property
    def pid(self) -> int:
        return self.browser.pid

    def _command(self, binary: str) -> list[str]:
        flags = ["--headless", f"--user-data-dir={self.profile}", "--disable-gpu", "--no-first-run",
                 "--disable-extensions", "--disable-background-networking", "--no-default-browser-check"]
        if os.geteuid() == 0:
            flags.append("--no-sandbox")  # Chromium refuses to start its sandbox as root
        return [binary, *flags, self.url]

    def _answer(self, timeout: float) -> dict:
        """The page's next message; fails fast if the browser died instead of waiting out the timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                return self.mailbox.answers.get(timeout=0.5)
            except queue.Empty:
                if self.browser.poll() is not None:
                    raise RuntimeFailure(f"Expected Chromium to keep running. Received: it exited with code "
                                         f"{self.browser.returncode}: {self._log_tail()}") from None
        raise RuntimeFailure(f"Expected an answer from the Chromium page within {timeout:g} s. Received none")

    def _log_tail(self) -> str:
        self.log.seek(0)
        lines = self.log.read().decode("utf-8", "replace").strip().splitlines()
        return lines[-1][:300] if lines else "no output"

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.mailbox.requests.put(encode_feeds(self.with_states(feeds)))
        return decode_answer(self._answer(RUN_TIMEOUT), self.name, self.output_names)

    def _stop(self) -> None:
        if not hasattr(self, "server"):
            return
        self.mailbox.requests.put({"stop": True})
        if hasattr(self, "browser"):
            stop_process(self.browser)
            self.log.close()
        self.server.shutdown()
        self.server.server_close()
        self.server_thread.join(5.0)
        shutil.rmtree(self.profile, ignore_errors=True)


def open_chromium(path: Path, model: onnx.ModelProto) -> ChromiumRunner:
    return ChromiumRunner(path, model)
