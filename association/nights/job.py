"""An ``mpiexec`` job that a replay starts, and its end however the replay ends.

MPICH's ``mpiexec`` starts ``hydra_pmi_proxy`` and the ranks each in a session
of their own, so neither a process group nor the process tree (once
``mpiexec`` is gone) reaches them all. Every process of a job therefore
carries a token in its environment (``NIGHTPIPE_JOB``; mpiexec passes its
environment on), and ending the job means ending every process that carries
it, found by scanning ``/proc``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from types import FrameType

TOKEN_VAR = "NIGHTPIPE_JOB"
"""The environment variable whose value marks every process of one job."""


class Terminated(BaseException):
    """SIGTERM arrived; like KeyboardInterrupt, it is not an `Exception`."""


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated` in the main thread (as SIGINT raises
    KeyboardInterrupt), so ``finally`` clauses run. Elsewhere than the main thread, nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Terminated(f"signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def processes_with(var: str, value: str) -> list[int]:
    """Pids of this user's processes whose environment holds ``var=value`` (Linux ``/proc``)."""
    needle = f"{var}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone, or not ours
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU time used so far by the processes `pids` (those still there)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


class Job:
    """A command started in a session of its own, all of whose processes carry a token.

    Parameters
    ----------
    cmd : sequence of str
        The command, e.g. ``mpiexec -n 3 nightpipe run ...``.
    log : Path
        Its stdout and stderr are appended here.
    """

    def __init__(self, cmd: Sequence[str], log: Path) -> None:
        self.token = uuid.uuid4().hex
        env = dict(os.environ, PYTHONUNBUFFERED="1", **{TOKEN_VAR: self.token})
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                list(cmd), stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

    def alive(self) -> bool:
        """Whether the command itself (``mpiexec``) is still running."""
        return self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        """The command's exit code once it has ended."""
        return self.proc.poll()

    def pids(self) -> list[int]:
        """Every process of the job still there."""
        return processes_with(TOKEN_VAR, self.token)

    def cpu_seconds(self) -> float:
        """CPU time its processes still there have used."""
        return cpu_seconds(self.pids())

    def wait(self, timeout: float) -> int | None:
        """Wait up to `timeout` s for the command to end; its exit code, or None."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def end(self, grace: float, say: Callable[[str], None] = lambda _m: None) -> None:
        """Stop the job: SIGTERM first (mpiexec passes it to the ranks, and the
        master drains), then after `grace` seconds SIGKILL to every process left.

        A KeyboardInterrupt or `Terminated` during the grace period cuts it short.
        """
        try:
            if self.alive():
                say(f"stopping the pipeline (SIGTERM; killed if still running in {grace:g} s)")
                self.proc.send_signal(signal.SIGTERM)
                deadline = time.monotonic() + grace
                while self.alive() and time.monotonic() < deadline:
                    time.sleep(0.1)
        except (KeyboardInterrupt, Terminated):
            say("interrupted again: killing the pipeline now")
        finally:
            self.kill()

    def kill(self) -> None:
        """SIGKILL every process of the job, and reap the command.

        SIGINT and SIGTERM wait until it is done (then they act as usual).
        """
        held = {signal.SIGINT, signal.SIGTERM}
        signal.pthread_sigmask(signal.SIG_BLOCK, held)
        try:
            self._kill_all()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, held)

    def _kill_all(self) -> None:
        for _ in range(50):  # a process may start while the last ones are killed
            left = self.pids()
            if self.alive() and self.proc.pid not in left:
                left.append(self.proc.pid)
            if not left:
                break
            for pid in left:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.wait(1.0)
            time.sleep(0.05)
        self.wait(10.0)
