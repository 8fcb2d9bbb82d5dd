"""SQLite WAL checkpoints in a thread of their own, off the Store's path."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event

_log = logging.getLogger(__name__)

NO_AUTOCHECKPOINT = "PRAGMA wal_autocheckpoint=0"
LONG_RESTART_S = 0.25
"""A WAL restart this long or longer is warned of: the Store waited behind it."""


class WalCheckpointer:
    """Copies a SQLite WAL into the database file every ``interval_s`` seconds.

    A commit that crosses SQLite's auto-checkpoint threshold otherwise does
    the copy itself, with random writes and an fsync of the database file,
    inside the Store of whichever visit it happened to be. `attach` switches
    that off on an engine's connections; this thread then checkpoints on its
    own connection (PASSIVE: it never blocks a writer or a reader). SQLite
    releases the GIL while it works.

    A PASSIVE checkpoint never starts the WAL over: under a steady stream of
    Stores and reads some reader always holds a snapshot in it, so it would
    grow all night (4.5 GB in a full-density night), and every page read and
    written slows down with it, as SQLite looks a page up in the WAL's index
    block by block. Once the WAL holds ``restart_frames`` frames, a RESTART
    checkpoint waits up to ``restart_wait_s`` for the readers to leave the WAL
    (holding off the writer meanwhile) so that the next Store writes it from
    its start again.

    Parameters
    ----------
    path : Path
        The SQLite database file.
    interval_s : float
        Seconds between checkpoints.
    restart_frames : int
        WAL frames (pages) past which the WAL is started over.
    restart_wait_s : float
        How long a RESTART waits for readers and the writer.
    """

    def __init__(
        self,
        path: str | Path,
        interval_s: float = 0.5,
        restart_frames: int = 1 << 16,
        restart_wait_s: float = 2.0,
    ) -> None:
        self.path = Path(path)
        self.interval_s = interval_s
        self.restart_frames = restart_frames
        self.restart_wait_s = restart_wait_s
        self.checkpoints = 0
        self.restarts = 0
        self.longest_restart_s = 0.0
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
        conn = sqlite3.connect(self.path, timeout=self.restart_wait_s)
        try:
            at = self.restart_frames
            while not self._stop.wait(self.interval_s):
                frames = self._checkpoint(conn, "PASSIVE")
                if frames < at:
                    continue
                t0 = time.perf_counter()
                left = self._checkpoint(conn, "RESTART")
                self._restart_took(time.perf_counter() - t0, frames, left)
                if left == 0:
                    self.restarts += 1
                    at = self.restart_frames
                else:  # a reader held on: not again before as many more frames
                    at = frames + self.restart_frames
        finally:
            conn.close()

    def _restart_took(self, seconds: float, frames: int, left: int) -> None:
        """Note a RESTART's duration: the Store waits for as long."""
        self.longest_restart_s = max(self.longest_restart_s, seconds)
        if seconds >= LONG_RESTART_S:
            _log.warning(
                "%s: WAL restart of %d frames held the writer off %.2f s (%s)",
                self.path.name,
                frames,
                seconds,
                "started over" if left == 0 else "readers held on",
            )

    def _checkpoint(self, conn: sqlite3.Connection, mode: str) -> int:
        """Checkpoint in ``mode``; the frames the WAL holds after it (0 once started over)."""
        try:
            busy, frames, _done = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        except sqlite3.Error as exc:
            # The next round tries again; the WAL only grows meanwhile.
            _log.warning("%s: WAL checkpoint (%s) failed: %s", self.path, mode, exc)
            return -1
        self.checkpoints += 1
        return frames if busy or mode != "RESTART" else 0
