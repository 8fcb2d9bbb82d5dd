"""The run directory: where a pipeline keeps its journal, log, status and address."""

from __future__ import annotations

import fcntl
import os
import socket
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunDir:
    """The files of a run directory, named in one place.

    Parameters
    ----------
    path : Path
        The directory; a master started on it again resumes from its journal.
    """

    path: Path

    def __init__(self, path: str | Path) -> None:
        object.__setattr__(self, "path", Path(path))

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def journal(self) -> Path:
        """Every accepted event, every event sent, each execution's outcome."""
        return self.path / "journal.sqlite"

    @property
    def deadletters(self) -> Path:
        """Rejected events and why, one JSON line each."""
        return self.path / "deadletter.jsonl"

    @property
    def log(self) -> Path:
        """One log for all ranks."""
        return self.path / "nightpipe.log"

    @property
    def status(self) -> Path:
        """The status board, rewritten once a second."""
        return self.path / "status.json"

    @property
    def endpoint(self) -> Path:
        """The addresses the master listens and publishes on, and its pid."""
        return self.path / "endpoint.json"

    def lock(self, role: str = "master") -> RunDirLock:
        """The lock held by the one `role` (master, replay) running on this directory."""
        return RunDirLock(self.path / f"{role}.lock", role)


class RunDirBusy(RuntimeError):
    """Another live process holds the run directory's lock."""


class RunDirLock:
    """An exclusive lock on a file of the run directory.

    The kernel frees it when the holder exits, however it exits (kill -9
    included), so a stale lock never blocks a restart. The file names the
    holder for the message a second process gets.

    Parameters
    ----------
    path : Path
        The lock file.
    role : str
        What holds it (``master``, ``replay``), for messages.
    """

    def __init__(self, path: Path, role: str) -> None:
        self.path = Path(path)
        self.role = role
        self._fd: int | None = None

    def acquire(self) -> RunDirLock:
        """Take the lock at once or raise `RunDirBusy` naming the holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunDirBusy(
                f"{self.path.parent} is in use: another {self.role} holds {self.path.name} "
                f"({holder}); stop it first, or use another run directory"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Free the lock (the file stays)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunDirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
