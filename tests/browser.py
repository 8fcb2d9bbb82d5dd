"""A throwaway headless Chromium for the tests, driven over the DevTools protocol.

`Browser` starts Debian's ``chromium-headless-shell`` (or ``chromium --headless``)
with a fresh profile in a temporary directory and a DevTools port on 127.0.0.1,
and talks to its one page over a websocket (``websocket-client``).
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import websocket

INSTALL_HINT = (
    "no headless Chromium found (chromium-headless-shell or chromium on PATH); install it "
    "with `apt-get install chromium chromium-headless-shell`, as `make install` does"
)
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-extensions",
    "--no-first-run",
    "--hide-scrollbars",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)


class BrowserError(RuntimeError):
    """The browser could not be started or did not answer."""


def find_chromium() -> str:
    """The headless shell if installed, else the full Chromium."""
    for name in ("chromium-headless-shell", "chromium"):
        found = shutil.which(name)
        if found:
            return found
    raise BrowserError(INSTALL_HINT)


class Browser:
    """One headless Chromium with one page; a context manager.

    Parameters
    ----------
    width, height : int
        The window, in CSS pixels.
    """

    def __init__(self, width: int = 1280, height: int = 1600) -> None:
        self.binary = find_chromium()
        self.size = (width, height)
        self.profile: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.ws: websocket.WebSocket | None = None
        self._ids = itertools.count(1)

    def __enter__(self) -> Browser:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 30.0) -> None:
        """Start the browser and attach to its page."""
        self.profile = Path(tempfile.mkdtemp(prefix="nightpipe-chromium-"))
        cmd = [
            self.binary,
            *FLAGS,
            f"--user-data-dir={self.profile}",
            f"--window-size={self.size[0]},{self.size[1]}",
            "about:blank",
        ]
        log = (self.profile / "chromium.log").open("wb")
        # A group of its own: Debian's launcher is a script that does not exec the browser,
        # and the browser has helper processes; `stop` ends the whole group.
        self.proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.time() + timeout
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None:
                raise BrowserError(
                    f"{self.binary} exited with {self.proc.returncode}: {self.log()}"
                )
            if time.time() > deadline:
                raise BrowserError(f"{self.binary} opened no DevTools port in {timeout} s")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            pages = [t for t in json.load(r) if t.get("type") == "page"]
        if not pages:
            raise BrowserError("the browser has no page")
        self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=30)

    def log(self) -> str:
        """The browser's own output so far (for error messages)."""
        path = self.profile / "chromium.log" if self.profile else None
        return path.read_text(errors="replace")[-2000:] if path and path.exists() else ""

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one DevTools command and wait for its answer (events in between are dropped)."""
        if self.ws is None:
            raise BrowserError("the browser is not started")
        ident = next(self._ids)
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") != ident:
                continue
            if "error" in msg:
                raise BrowserError(f"{method}: {msg['error']}")
            return msg.get("result", {})

    def navigate(self, url: str, timeout: float = 15.0) -> None:
        """Open `url` and wait until its document has loaded."""
        self.call("Page.navigate", url=url)
        deadline = time.time() + timeout
        while (
            self.evaluate("document.readyState") != "complete"
            or self.evaluate("location.href") != url
        ):
            if time.time() > deadline:
                raise BrowserError(f"{url} did not load within {timeout} s")
            time.sleep(0.05)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        got = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in got:
            raise BrowserError(f"{expression}: {got['exceptionDetails']}")
        return got["result"].get("value")

    def screenshot(self, path: Path) -> Path:
        """A PNG of the whole page."""
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(data["data"]))
        return path

    def _group_gone(self, group: int, timeout: float) -> bool:
        """Wait until no process of `group` is left (reaping the launcher); True if none is."""
        assert self.proc is not None
        deadline = time.time() + timeout
        while time.time() < deadline:
            self.proc.poll()
            try:
                os.killpg(group, 0)
            except ProcessLookupError:
                return True
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        """Close the connection, end the browser, delete its profile."""
        if self.ws is not None:
            self.ws.close()
            self.ws = None
        if self.proc is not None:
            group = self.proc.pid  # its own session: the group id is its pid
            for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(group, sig)
                if self._group_gone(group, wait):
                    break
            self.proc.wait(10)
            self.proc = None
        if self.profile is not None:
            shutil.rmtree(self.profile, ignore_errors=True)
            self.profile = None
