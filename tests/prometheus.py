"""A throwaway Prometheus server for the tests.

`PrometheusServer` runs Debian's ``prometheus`` on a free 127.0.0.1 port with a
config and a data directory in a temporary directory, scraping the given
targets every second, and answers queries through its HTTP API.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from tests.pgserver import free_port

INSTALL_HINT = (
    "prometheus not found on PATH; install it with `apt-get install prometheus`, "
    "as `make install` does"
)
CONFIG = """global:
  scrape_interval: {interval}
  scrape_timeout: {interval}
  evaluation_interval: {interval}
scrape_configs:
  - job_name: nightpipe
    static_configs:
      - targets: [{targets}]
"""


class PrometheusError(RuntimeError):
    """The throwaway server could not be set up, or a query failed."""


class PrometheusServer:
    """A Prometheus scraping `targets` (``HOST:PORT`` each); a context manager."""

    def __init__(self, targets: list[str], interval: str = "1s") -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise PrometheusError(INSTALL_HINT)
        self.binary = binary
        self.targets = targets
        self.interval = interval
        self.base: Path | None = None
        self.port: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PrometheusServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        """Write the config, start the server, wait until it is ready."""
        self.base = Path(tempfile.mkdtemp(prefix="nightpipe-prometheus-"))
        config = self.base / "prometheus.yml"
        targets = ", ".join(f"'{t}'" for t in self.targets)
        config.write_text(CONFIG.format(interval=self.interval, targets=targets))
        self.port = free_port()
        cmd = [
            self.binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={self.base / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        log = (self.base / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while True:
            if self.proc.poll() is not None:
                raise PrometheusError(
                    f"prometheus exited with {self.proc.returncode}: {self.log()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if time.time() > deadline:
                raise PrometheusError(f"prometheus not ready within {timeout} s: {self.log()}")
            time.sleep(0.1)

    def log(self) -> str:
        """The server's output so far."""
        path = self.base / "prometheus.log" if self.base else None
        return path.read_text(errors="replace")[-2000:] if path and path.exists() else ""

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector of a PromQL expression: ``[{"metric": {...}, "value": [t, "v"]}]``."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
        with urllib.request.urlopen(url, timeout=10) as r:
            got = json.load(r)
        if got.get("status") != "success":
            raise PrometheusError(f"query {expr!r}: {got}")
        return got["data"]["result"]

    def value(self, expr: str) -> float | None:
        """The single value of `expr`, or None while it has none."""
        result = self.query(expr)
        if not result:
            return None
        if len(result) > 1:
            raise PrometheusError(f"query {expr!r}: {len(result)} series, expected one")
        return float(result[0]["value"][1])

    def stop(self) -> None:
        """Stop the server and delete its files."""
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            self.proc = None
        if self.base is not None:
            shutil.rmtree(self.base, ignore_errors=True)
            self.base = None
