"""Launch pipelines under a real mpiexec for end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from association.nights.job import Job
from events.client import Injector
from events.envelope import Event
from events.journal import Journal
from framework.mpiexec import run_command


class MpiPipeline:
    """A pipeline running under ``mpiexec -n N nightpipe run CONFIG``."""

    def __init__(self, config: Path, run_dir: Path, n: int = 4, args: tuple[str, ...] = ()) -> None:
        self.run_dir = Path(run_dir)
        self.cmd = run_command(n, config, run_dir, *args)
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0, connect: bool = True) -> MpiPipeline:
        """Start the job and wait for its endpoint; `connect` an injector to it."""
        (self.run_dir / "endpoint.json").unlink(missing_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.job = Job(self.cmd, self.run_dir / "mpiexec.out")
        self.proc = self.job.proc
        deadline = time.time() + timeout
        while not (self.run_dir / "endpoint.json").exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"pipeline exited {self.proc.returncode}: {self.output()}")
            if time.time() > deadline:
                raise TimeoutError(f"pipeline did not start in {timeout} s: {self.output()}")
            time.sleep(0.05)
        self.info = json.loads((self.run_dir / "endpoint.json").read_text())
        self.injector = Injector(self.info["address"], timeout=10) if connect else None
        return self

    def output(self) -> str:
        p = self.run_dir / "mpiexec.out"
        return p.read_text(errors="replace")[-5000:] if p.exists() else ""

    def send(
        self, type: str, fov: int | None, body: dict | None = None, id: str | None = None
    ) -> dict:
        return self.injector.send(Event.new(type, fov, body or {}, source="test", id=id))

    def send_raw(self, raw) -> dict:
        return self.injector.send(raw)

    def outcomes(self) -> dict[int, str]:
        with Journal(self.run_dir / "journal.sqlite") as j:
            return j.outcomes()

    def wait_outcomes(self, fovs, timeout: float = 60.0) -> dict[int, str]:
        deadline = time.time() + timeout
        while True:
            got = self.outcomes()
            if all(f in got for f in fovs):
                return got
            if self.proc.poll() is not None:
                raise RuntimeError(f"pipeline exited {self.proc.returncode}: {self.output()}")
            if time.time() > deadline:
                raise TimeoutError(f"outcomes {got} lack some of {fovs}: {self.output()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 60.0) -> int:
        """Send control.shutdown and wait for the job to end; returns its exit code."""
        self.send("control.shutdown", None, {"reason": "test done"})
        return self.wait(timeout)

    def wait(self, timeout: float = 60.0) -> int:
        try:
            code = self.proc.wait(timeout)
        finally:
            self.close()
        return code

    def kill9(self) -> None:
        """kill -9 the master; mpiexec then takes the whole job down."""
        os.kill(self.info["pid"], signal.SIGKILL)
        self.job.wait(30)
        self.close()

    def close(self) -> None:
        """End every process of the job still there (MPICH starts each rank in a session of its own)."""
        if getattr(self, "injector", None):
            self.injector.close()
            self.injector = None
        if getattr(self, "job", None) is not None:
            self.job.kill()
