"""The dead-letter log: rejected events, one JSON line each, kept for inspection."""

from __future__ import annotations

import json
import os
import threading
import time
from os import PathLike
from types import TracebackType
from typing import Any

from events.validate import EventError

RAW_LIMIT = 4096


class DeadLetters:
    """Append-only JSON-lines file of rejected events.

    Parameters
    ----------
    path : str or path-like
        The file, normally the run directory's ``deadletter.jsonl``; appended to.
    """

    def __init__(self, path: str | PathLike[str]) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for appends

    def write(self, raw: bytes | str | Any, error: EventError | str, source: str) -> None:
        """Append one rejected event; durable (flushed and fsynced) on return.

        Parameters
        ----------
        raw : bytes or str
            What was received; the first 4 KiB is kept, as text.
        error : EventError or str
            Why it was rejected.
        source : str
            Where it came from, e.g. the endpoint or an archive file.
        """
        raw_bytes = _as_bytes(raw)
        record = {
            "time": time.time(),
            "source": source,
            "reason": error.reason if isinstance(error, EventError) else str(error),
            "event_id": error.event_id if isinstance(error, EventError) else None,
            "field": error.field if isinstance(error, EventError) else None,
            "message": str(error),
            "size": len(raw_bytes),
            "raw": raw_bytes[:RAW_LIMIT].decode("utf-8", errors="replace"),
        }
        line = json.dumps(record, ensure_ascii=True) + "\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._file.close()

    def __enter__(self) -> DeadLetters:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _as_bytes(raw: Any) -> bytes:
    if isinstance(raw, bytes | bytearray | memoryview):
        return bytes(raw)
    if isinstance(raw, str):
        return raw.encode("utf-8", errors="replace")
    try:
        return json.dumps(raw, default=repr).encode("utf-8", errors="replace")
    except (TypeError, ValueError, RecursionError):
        return repr(raw).encode("utf-8", errors="replace")
