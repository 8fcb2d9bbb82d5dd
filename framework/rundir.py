"""The run directory: where a pipeline keeps its journal, log, status and address."""

from __future__ import annotations

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

    @property
    def lock(self) -> Path:
        """Held by the one master running on this directory."""
        return self.path / "master.lock"
