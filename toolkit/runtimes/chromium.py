"""onnxruntime-web (WASM) in a real headless Chromium page, served from 127.0.0.1.

The runner starts a small HTTP server on an ephemeral port of 127.0.0.1 that serves `js/page.html`,
`js/protocol.mjs`, onnxruntime-web's dist files (from where `js.npm_package` finds it) and the model, then launches
Debian's `chromium-headless-shell` (or `chromium`) with a temporary profile. The page long-polls `/next`
for a request and posts the answer to `/result`.

Every local user reaches a port on 127.0.0.1 and reads every command line (`/proc/PID/cmdline`), so the
browser starts on `about:blank` and is told the page's URL, which carries a random per-run token, over
`--remote-debugging-pipe`: a pipe only this process and the browser hold. The first request (the page
itself) sets the token as an HttpOnly cookie, so the page's module imports, ONNX Runtime's WASM and
`/model.onnx` carry it too; `/next` and each POST carry it as a header. Every path, the model included,
is refused without it (another local process forging a passing answer, or downloading the model), and a
POST is judged by its path, token and declared length before a byte of its body is read.
`close()` tells the page to stop, kills the browser's whole
process group, shuts the server down and removes the profile. The browser dies with lstm-onnx (a parent-death
signal, and SIGTERM closes the runners), and a profile left by a run that died anyway is removed at the
next start.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import queue
import secrets
import select
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import onnx

from toolkit.errors import InputError, RuntimeFailure, overrun
from toolkit.fileio import remove_stale
from toolkit.process import Child, close_runners_on_sigterm
from toolkit.runtimes.base import START_TIMEOUT, Runner, model_bytes
from toolkit.runtimes.js import JS_DIR, npm_package
from toolkit.runtimes.wire import decode_answer, encode_feeds
from toolkit.text import safe_text

BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser")
POLL_SECONDS = 10.0  # how long /next holds a request open before the page asks again
PROFILE_PREFIX = "lstm-onnx-chromium-"  # + the owning process id + "-": a dead owner's profile is removed
TOKEN_HEADER = "X-Lstm-Onnx-Token"
TOKEN_COOKIE = "lstm_onnx_token"
MAX_BODY = 1 << 30  # bytes of one POST: the base64 answer of outputs far above any parity case
TYPES = {".html": "text/html", ".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm",
         ".json": "application/json", ".onnx": "application/octet-stream"}


def browser_flags(profile: str) -> list[str]:
    """How every headless Chromium lstm-onnx starts runs: its own temporary profile, nothing fetched in the
    background (the runtime check and the page tests alike, `toolkit.pages.browser`)."""
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
    raise InputError(f"Expected a headless Chromium ({' or '.join(BROWSERS)}) on PATH. Received: none "
                     "(not installed: `lstm-onnx setup --runtimes chromium`)")


def installed() -> bool:
    """A headless Chromium on PATH and onnxruntime-web where the runtimes look (nothing is started)."""
    from toolkit.runtimes.js import npm_installed

    return any(shutil.which(name) for name in BROWSERS) and npm_installed("onnxruntime-web")


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


def carries_token(headers: Mapping[str, str], raw_path: str, token: str) -> bool:
    """The run's token in the header, in the cookie the page got with it, or (the page itself) the query."""
    given = [headers.get(TOKEN_HEADER, "")]
    for part in headers.get("Cookie", "").split(";"):
        name, _, value = part.strip().partition("=")
        given += [value] if name == TOKEN_COOKIE else []
    given += parse_qs(urlsplit(raw_path).query).get("token", [])[:1]
    return any(secrets.compare_digest(value.encode(), token.encode()) for value in given)


def declared_length(headers: Mapping[str, str]) -> int | None:
    """A POST's Content-Length when it is given and at most MAX_BODY; None otherwise (refused unread)."""
    length = headers.get("Content-Length", "")
    return int(length) if length.isdigit() and int(length) <= MAX_BODY else None


def _handler(mailbox: Mailbox) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # the page's requests are not news
            pass

        def _send(self, body: bytes, content_type: str, status: int = 200, cookie: bool = False) -> None:
            self.send_response(status)
            if cookie:  # the page's own load: its later requests (imports, WASM, model) carry the token
                self.send_header("Set-Cookie", f"{TOKEN_COOKIE}={mailbox.token}; HttpOnly; SameSite=Strict; Path=/")
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):  # the page went away (close() killed the browser)
                pass

        def _from_page(self) -> bool:
            return carries_token(self.headers, self.path, mailbox.token)

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            if not self._from_page():
                self._send(b"forbidden", "text/plain", 403)  # not our page: another local process
                return
            if path == "/next":
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
            self._send(body, TYPES.get(Path(path).suffix, "text/html"), cookie=path == "/")

        def do_POST(self) -> None:
            # Judged from the headers alone: a body is read only from our page, and only up to MAX_BODY.
            if self.path not in ("/ready", "/result") or not self._from_page():
                self._send(b"forbidden", "text/plain", 403)  # not our page: another local process
                return
            length = declared_length(self.headers)
            if length is None:
                self._send(b"length required, at most 1 GiB", "text/plain", 413)
                return
            body = self.rfile.read(length)
            try:
                message = json.loads(body or b"{}")
            except ValueError:
                message = None
            if not isinstance(message, dict):
                message = {"error": "the page posted a body that is not a JSON object"}
            mailbox.answers.put(message)
            self._send(b"{}", "application/json")

    return Handler



class DevToolsPipe:
    """Chromium's DevTools protocol over `--remote-debugging-pipe`: the browser reads commands on its fd 3
    and writes replies and events on fd 4, each a JSON message ended by a NUL byte. Only this process holds
    the other ends, so what crosses it (the page's URL and token) is no other user's to read. The one DevTools
    client: the Chromium runner opens its page with it, the page tests drive theirs (`toolkit.pages.browser`)."""

    def __init__(self) -> None:
        self._to_browser_r, self._to_browser_w = os.pipe()
        self._from_browser_r, self._from_browser_w = os.pipe()
        self._buffer = b""  # what the browser wrote after the last whole message

    def in_child(self) -> None:
        """Before exec: the pipe ends on fds 3 and 4, where Chromium looks for them."""
        # Through fds above 4 first: a pipe end may itself be fd 3 or 4, and one dup2 would close the other.
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (self._to_browser_r, self._from_browser_w)]
        os.dup2(high[0], 3)  # inheritable: the browser keeps them across exec
        os.dup2(high[1], 4)

    def close_child_ends(self) -> None:
        for fd in (self._to_browser_r, self._from_browser_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def write(self, message: dict) -> None:
        """One protocol message to the browser."""
        os.write(self._to_browser_w, json.dumps(message).encode() + b"\0")

    def read(self, deadline: float) -> dict:
        """The browser's next message (a reply or an event), by `deadline` (`time.monotonic()`)."""
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser_r], [], [], left)[0]:
                raise RuntimeFailure("Expected an answer from Chromium's DevTools pipe. Received none in time")
            chunk = os.read(self._from_browser_r, 1 << 20)
            if not chunk:
                raise RuntimeFailure("Expected Chromium to keep running. Received: its DevTools pipe closed")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def open_page(self, url: str, timeout: float = START_TIMEOUT) -> None:
        """Open `url` in a new page (`Target.createTarget`), and wait for the browser's reply."""
        self.write({"id": 1, "method": "Target.createTarget", "params": {"url": url}})
        try:
            reply = self.read(time.monotonic() + timeout)
        except RuntimeFailure as exc:
            why = "the pipe closed" if "closed" in str(exc) else "no reply"
            raise RuntimeFailure(f"Expected Chromium to open the page over its DevTools pipe. Received: {why}") from None
        if "error" in reply:
            raise RuntimeFailure(f"Expected Chromium to open the page. Received: {safe_text(reply['error'], 200)}")

    def close(self) -> None:
        for fd in (self._to_browser_w, self._from_browser_r):
            with contextlib.suppress(OSError):
                os.close(fd)


def launch_browser(binary: str, profile: str, devtools: DevToolsPipe, extra: Sequence[str] = ()) -> Child:
    """Headless Chromium as lstm-onnx starts every browser (the runner and the page tests): `browser_flags`
    with its own `profile`, `devtools` on fds 3 and 4 (`--remote-debugging-pipe`), `about:blank` first (a
    tokened URL goes over the pipe, never on a command line others can read), its own process group with a
    group reaper (Debian's `chromium` is a wrapper that forks the browser) and a parent-death signal."""
    try:
        return Child([binary, *browser_flags(profile), "--remote-debugging-pipe", *extra, "about:blank"], "Chromium",
                     reaper=True, in_child=devtools.in_child, close_fds=False)
    finally:
        devtools.close_child_ends()


def remove_stale_profiles(folder: Path | None = None) -> list[Path]:
    """Remove the profiles of runs whose lstm-onnx process is gone (killed before its close()); ours only."""
    return remove_stale((entry, PROFILE_PREFIX) for entry in Path(folder or tempfile.gettempdir()).glob(PROFILE_PREFIX + "*-*"))


class ChromiumRunner(Runner):
    """One model loaded by onnxruntime-web in a headless Chromium page; a run past its deadline leaves the
    runner broken (the page cannot be interrupted) until it is closed."""

    name = "chromium"

    def __init__(self, path: Path, model: onnx.ModelProto):
        binary = browser_binary()
        mailbox = Mailbox(model_bytes(model, self.name))  # external data inside: the page gets one buffer
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
        self.devtools = DevToolsPipe()
        self.browser = launch_browser(binary, self.profile, self.devtools)
        self.devtools.open_page(self.url)  # the token travels over the pipe, never on a command line

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/?token={self.mailbox.token}"

    @property
    def pid(self) -> int:
        return self.browser.pid

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
        raise overrun(timeout)

    def _log_tail(self) -> str:
        return self.browser.log_tail()

    def _run(self, feeds: dict[str, np.ndarray], timeout: float) -> dict[str, np.ndarray]:
        message = encode_feeds(feeds)
        self._check_in_step()  # before sending: nothing is sent that a stale answer could be taken for
        self.mailbox.requests.put(message)
        return decode_answer(self._answer(timeout), self.name, self.output_names)

    def _stop(self) -> None:
        if hasattr(self, "server"):
            self.mailbox.requests.put({"stop": True})
        if hasattr(self, "browser"):
            self.browser.stop()
        if hasattr(self, "devtools"):
            self.devtools.close()
        if hasattr(self, "server"):
            if not sys.is_finalizing():  # at exit daemon threads are frozen: shutdown() would wait forever
                self.server.shutdown()
            self.server.server_close()
            self.server_thread.join(5.0)
        if hasattr(self, "profile"):
            shutil.rmtree(self.profile, ignore_errors=True)


def open_chromium(path: Path, model: onnx.ModelProto) -> ChromiumRunner:
    return ChromiumRunner(path, model)
