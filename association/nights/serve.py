"""``nightpipe serve RUN_DIR``: the live night page, on a loopback address by default.

A separate process that only reads the run directory (`RunWatcher`), so the night
goes on at its own pace however many clients look and however slowly they read.
Snapshots are made at most once per `NightServer.min_interval` whatever the number
of requests, and every request is answered from the last one on a thread of its own.

Routes: ``/`` the page, ``/api/night`` its data and panels as JSON (the page polls
it), ``/page.js``, ``/style.css``, and ``/report/{sky,latency,stages,store}.png`` once
``nightpipe report`` has made them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from association.nights.page import SCRIPT, STYLE, panels, render_page
from association.nights.watch import PLOTS, RunWatcher
from association.rundir import NightRunDir
from framework.metrics import MetricsError, parse_address

CLIENT_TIMEOUT_S = 10.0
"""A client that sends nothing for this long is dropped, so that it holds no thread."""
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
        " connect-src 'self'; base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class ServeError(RuntimeError):
    """The page cannot be served; the message says why."""


class NightServer:
    """Serves the live page of one run directory from a thread.

    Parameters
    ----------
    run_dir : str or Path
        The run directory; it may not exist yet (the page waits for it).
    address : str
        ``HOST:PORT``; port 0 picks a free one.
    refresh : float
        Seconds between the page's polls.
    min_interval : float
        The run directory is read at most once per this many seconds.
    """

    def __init__(
        self,
        run_dir: str | Path,
        address: str = "127.0.0.1:8765",
        refresh: float = 2.0,
        min_interval: float = 0.5,
    ) -> None:
        if refresh <= 0 or min_interval < 0:
            raise ServeError(
                f"refresh must be > 0 and min_interval >= 0, got {refresh}, {min_interval}"
            )
        try:
            self.host, self.port = parse_address(address, "--address")
        except MetricsError as exc:
            raise ServeError(str(exc)) from None
        self.run_dir = Path(run_dir).resolve()
        self.refresh = refresh
        self.min_interval = min_interval
        self.watcher = RunWatcher(self.run_dir)
        self._lock = threading.Lock()
        self._made = -float("inf")
        self._cached: dict[str, bytes] = {}
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.address: str | None = None

    # -- content -----------------------------------------------------------------------------

    def content(self, name: str) -> bytes:
        """``page`` (HTML) or ``json`` of a snapshot at most `min_interval` old."""
        with self._lock:
            now = time.monotonic()
            if now - self._made >= self.min_interval:
                snap = self.watcher.snapshot()
                self._cached = {
                    "page": render_page(snap, self.refresh).encode(),
                    "json": json.dumps(
                        {"night": snap, "html": panels(snap)}, allow_nan=False, default=str
                    ).encode(),
                }
                self._made = now
            return self._cached[name]

    # -- serving -----------------------------------------------------------------------------

    def start(self) -> str:
        """Listen and serve from a thread; returns the bound ``HOST:PORT``."""
        if self._httpd is not None:
            raise ServeError(f"already serving on {self.address}")
        handler = type("Handler", (_Handler,), {"night": self})
        try:
            self._httpd = ThreadingHTTPServer((self.host, self.port), handler)
        except OSError as exc:
            raise ServeError(f"cannot listen on {self.host}:{self.port}: {exc}") from None
        self._httpd.daemon_threads = True
        host, port = self._httpd.server_address[:2]
        self.address = f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="night-page", daemon=True
        )
        self._thread.start()
        return self.address

    @property
    def url(self) -> str:
        """``http://HOST:PORT/``."""
        return f"http://{self.address}/"

    def stop(self) -> None:
        """Stop serving and close the journal."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            if self._thread is not None:
                self._thread.join(5.0)
        self._httpd = self._thread = None
        with self._lock:
            self.watcher.close()

    def __enter__(self) -> NightServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    night: NightServer
    timeout = CLIENT_TIMEOUT_S
    server_version = "nightpipe"

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _answer(self, body: bool) -> None:
        path = self.path.split("?", 1)[0]
        try:
            kind, data = self._route(path)
        except Exception as exc:  # a bad moment in the run directory must not kill the page
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, "text/plain", f"{exc!r}\n".encode(), body)
            return
        if data is None:
            self._send(HTTPStatus.NOT_FOUND, "text/plain", f"no {path} here\n".encode(), body)
            return
        self._send(HTTPStatus.OK, kind, data, body)

    def _route(self, path: str) -> tuple[str, bytes | None]:
        night = self.night
        if path in ("/", "/index.html"):
            return "text/html; charset=utf-8", night.content("page")
        if path == "/api/night":
            return "application/json", night.content("json")
        if path == "/page.js":
            return "text/javascript; charset=utf-8", SCRIPT.encode()
        if path == "/style.css":
            return "text/css; charset=utf-8", STYLE.encode()
        report_dir = NightRunDir(night.run_dir).report_dir
        name = path.removeprefix(f"/{report_dir.name}/")
        if name in PLOTS:
            plot = report_dir / name
            return "image/png", plot.read_bytes() if plot.is_file() else None
        return "text/plain", None

    def _send(self, status: HTTPStatus, kind: str, data: bytes, body: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        for key, value in SECURITY_HEADERS.items():
            self.send_header(key, value)
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per poll would drown the terminal


# -- command line -----------------------------------------------------------------------------


def command(args: argparse.Namespace) -> int:
    """Serve until interrupted."""
    if args.nice > 0:
        os.nice(args.nice)
    try:
        server = NightServer(args.run_dir, args.address, args.refresh)
        server.start()
    except ServeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"serving {server.run_dir} on {server.url} (Ctrl-C stops)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0
