"""onnxruntime-web (WASM) in a real headless Chromium page, served from 127.0.0.1.

The runner starts a small HTTP server on an ephemeral port of 127.0.0.1 that serves `js/page.html`,
`js/protocol.mjs`, onnxruntime-web's dist files from `js/node_modules` and the model, then launches
Debian's `chromium-headless-shell` (or `chromium`) on that page with a temporary profile. The page
long-polls `/next` for a request and posts the answer to `/result`. The page's URL carries a random
token per run, which the page sends back on every `/next` and POST: a request without it (another local
process forging a passing answer) is refused. `close()` tells the page to stop, kills the browser's whole
process group, shuts the server down and removes the profile. The browser dies with lstm-onnx (a parent-death
signal, and SIGTERM closes the runners), and a profile left by a run that died anyway is removed at the
next start.
"""

from __future__ import annotations

import json
import os
import queue
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import onnx

from toolkit.errors import InputError
from toolkit.runtimes.base import (
    RUN_TIMEOUT,
    START_TIMEOUT,
    ModelRunner,
    RuntimeFailure,
    close_runners_on_sigterm,
    decode_answer,
    die_with_parent,
    encode_feeds,
    process_alive,
    start_group_reaper,
    stop_process,
    stop_reaper,
)
from toolkit.runtimes.js import JS_DIR, SETUP_HINT, npm_package

BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser")
POLL_SECONDS = 10.0  # how long /next holds a request open before the page asks again
PROFILE_PREFIX = "lstm-onnx-chromium-"  # + the owning process id + "-": a dead owner's profile is removed
TOKEN_HEADER = "X-Lstm-Onnx-Token"
TYPES = {".html": "text/html", ".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm",
         ".json": "application/json", ".onnx": "application/octet-stream"}


def browser_flags(profile: str) -> list[str]:
    """How every headless Chromium lstm-onnx starts runs: its own temporary profile, nothing fetched in the
    background (the runtime check and the page tests alike, `toolkit.runtimes.devtools`)."""
    flags = ["--headless", f"--user-data-dir={profile}", "--disable-gpu", "--no-first-run",
             "--disable-extensions", "--disable-background-networking", "--no-default-browser-check"]
    if os.geteuid() == 0:
        flags.append("--no-sandbox")  # Chromium refuses to start its sandbox as root
    return flags


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
        self.token = secrets.token_urlsafe(24)  # the page's URL carries it; requests without it are refused


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

        def _from_page(self) -> bool:
            return secrets.compare_digest(self.headers.get(TOKEN_HEADER, ""), mailbox.token)

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            if path == "/next":
                if not self._from_page():
                    self._send(b"forbidden", "text/plain", 403)
                    return
                try:
                    request = mailbox.requests.get(timeout=POLL_SECONDS)
                except queue.Empty:
                    request = {"wait": True}
                self._send(json.dumps(request).encode(), "application/json")
                return
            served = mailbox.files.get(path)
            if served is None:  # only the files listed in the mailbox: no path reaches the disk otherwise
                self._send(b"not found", "text/plain", 404)
                return
            body = served if isinstance(served, bytes) else served.read_bytes()
            self._send(body, TYPES.get(Path(path).suffix, "text/html"))

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0") or "0")
            body = self.rfile.read(length)
            if self.path not in ("/ready", "/result") or not self._from_page():
                self._send(b"forbidden", "text/plain", 403)  # not our page: another local process
                return
            try:
                message = json.loads(body or b"{}")
            except ValueError:
                message = None
            if not isinstance(message, dict):
                message = {"error": "the page posted a body that is not a JSON object"}
            mailbox.answers.put(message)
            self._send(b"{}", "application/json")

    return Handler



def remove_stale_profiles(folder: Path | None = None) -> list[Path]:
    """Remove the profiles of runs whose lstm-onnx process is gone (killed before its close()); ours only."""
    removed = []
    for profile in Path(folder or tempfile.gettempdir()).glob(PROFILE_PREFIX + "*-*"):
        owner = profile.name[len(PROFILE_PREFIX):].split("-", 1)[0]
        try:
            if not owner.isdigit() or profile.lstat().st_uid != os.getuid() or process_alive(int(owner)):
                continue
        except OSError:  # removed meanwhile by another run's cleanup
            continue
        shutil.rmtree(profile, ignore_errors=True)
        removed.append(profile)
    return removed


class ChromiumRunner(ModelRunner):
    """One model loaded by onnxruntime-web in a headless Chromium page."""

    name = "chromium"

    def __init__(self, path: Path, model: onnx.ModelProto):
        binary = browser_binary()
        mailbox = Mailbox(Path(path).read_bytes())
        super().__init__(model)
        self.mailbox = mailbox
        self.broken = ""  # why later answers cannot be trusted (an earlier request timed out)
        remove_stale_profiles()
        close_runners_on_sigterm()
        try:
            self._start(binary)
            ready = self._answer(START_TIMEOUT)
            if "error" in ready:
                raise RuntimeFailure(f"Expected Chromium to load {Path(path).name}. Received its error: {ready['error']}")
        except BaseException:
            self.close()  # whatever started so far: server thread, profile, browser
            raise

    def _start(self, binary: str) -> None:
        self.profile = tempfile.mkdtemp(prefix=f"{PROFILE_PREFIX}{os.getpid()}-")
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.mailbox))
        self.server.daemon_threads = True
        self.server_thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.server_thread.start()
        self.log = tempfile.TemporaryFile()
        try:
            self.browser = subprocess.Popen(self._command(binary), stdin=subprocess.DEVNULL, stdout=self.log,
                                            stderr=self.log, start_new_session=True, preexec_fn=die_with_parent)
        except OSError as exc:  # not executable, vanished, out of processes
            raise RuntimeFailure(f"Expected Chromium to start. Received: {binary} failed to start: "
                                 f"{exc.strerror or type(exc).__name__}") from None
        self.reaper = start_group_reaper(self.browser.pid)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/?token={self.mailbox.token}"

    @property
    def pid(self) -> int:
        return self.browser.pid

    def _command(self, binary: str) -> list[str]:
        return [binary, *browser_flags(self.profile), self.url]

    def _check_in_step(self) -> None:
        if self.broken:
            raise RuntimeFailure(f"Expected the Chromium page to answer in step. Received: no trustworthy answer "
                                 f"since {self.broken}")

    def _answer(self, timeout: float) -> dict:
        """The page's next message; fails fast if the browser died instead of waiting out the timeout.
        After a timeout the page may still answer that request, and its late answer would be taken for
        the next one's: the runner is marked broken instead, and every later run fails saying so."""
        self._check_in_step()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                return self.mailbox.answers.get(timeout=min(0.5, timeout))
            except queue.Empty:
                if self.browser.poll() is not None:
                    raise RuntimeFailure(f"Expected Chromium to keep running. Received: it exited with code "
                                         f"{self.browser.returncode}: {self._log_tail()}") from None
        self.broken = f"a request timed out after {timeout:g} s"
        raise RuntimeFailure(f"Expected an answer from the Chromium page within {timeout:g} s. Received none")

    def _log_tail(self) -> str:
        self.log.seek(0)
        lines = self.log.read().decode("utf-8", "replace").strip().splitlines()
        return lines[-1][:300] if lines else "no output"

    def run(self, feeds: Mapping[str, np.ndarray], timeout: float = RUN_TIMEOUT) -> dict[str, np.ndarray]:
        message = encode_feeds(self.with_states(feeds))
        self._check_in_step()  # before sending: nothing is sent that a stale answer could be taken for
        self.mailbox.requests.put(message)
        return decode_answer(self._answer(timeout), self.name, self.output_names)

    def _stop(self) -> None:
        if hasattr(self, "server"):
            self.mailbox.requests.put({"stop": True})
        if hasattr(self, "browser"):
            stop_process(self.browser)
        if hasattr(self, "reaper"):
            stop_reaper(self.reaper)
        if hasattr(self, "log"):
            self.log.close()
        if hasattr(self, "server"):
            if not sys.is_finalizing():  # at exit daemon threads are frozen: shutdown() would wait forever
                self.server.shutdown()
            self.server.server_close()
            self.server_thread.join(5.0)
        if hasattr(self, "profile"):
            shutil.rmtree(self.profile, ignore_errors=True)


def open_chromium(path: Path, model: onnx.ModelProto) -> ChromiumRunner:
    return ChromiumRunner(path, model)
