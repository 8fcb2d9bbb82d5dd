"""SQLite WAL checkpoints in a thread of their own, off the Store's path."""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event

_log = logging.getLogger(__name__)

NO_AUTOCHECKPOINT = "PRAGMA wal_autocheckpoint=0"


class WalCheckpointer:
    """Copies a SQLite WAL into the database file every ``interval_s`` seconds.

    A commit that crosses SQLite's auto-checkpoint threshold otherwise does
    the copy itself, with random writes and an fsync of the database file,
    inside the Store of whichever visit it happened to be. `attach` switches
    that off on an engine's connections; this thread then checkpoints on its
    own connection (PASSIVE: it never blocks a writer or a reader). SQLite
    releases the GIL while it works.

    Parameters
    ----------
    path : Path
        The SQLite database file.
    interval_s : float
        Seconds between checkpoints.
    """

    def __init__(self, path: str | Path, interval_s: float = 0.5) -> None:
        self.path = Path(path)
        self.interval_s = interval_s
        self.checkpoints = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wal-checkpoint", daemon=True)

    def attach(self, engine: Engine, *connections: Any) -> None:
        """Switch off auto-checkpoints on ``engine``'s and ``connections``, then start.

        ``connections`` are other open connections to the file that write,
        such as a `association.storage.sqlite.native.Connection`.
        """

        @event.listens_for(engine, "connect")
        def _no_autocheckpoint(dbapi_conn, _record) -> None:
            dbapi_conn.execute(NO_AUTOCHECKPOINT)

        engine.dispose()  # pooled connections opened before would still checkpoint
        for conn in connections:
            conn.execute(NO_AUTOCHECKPOINT)
        self._thread.start()

    def close(self) -> None:
        """Stop the thread, then checkpoint the whole WAL and truncate it."""
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join()
        conn = sqlite3.connect(self.path, timeout=2.0)
        try:
            self._checkpoint(conn, "TRUNCATE")
        finally:
            conn.close()

    def _run(self) -> None:
        conn = sqlite3.connect(self.path, timeout=2.0)
        try:
            while not self._stop.wait(self.interval_s):
                self._checkpoint(conn, "PASSIVE")
        finally:
            conn.close()

    def _checkpoint(self, conn: sqlite3.Connection, mode: str) -> None:
        try:
            conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchall()
            self.checkpoints += 1
        except sqlite3.Error as exc:
            # The next round tries again; the WAL only grows meanwhile.
            _log.warning("%s: WAL checkpoint (%s) failed: %s", self.path, mode, exc)
