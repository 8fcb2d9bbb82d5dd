"""The durable event journal: every accepted event, every sent event, each visit's outcome.

It is the master's queue as well as its log: events wait here, not in memory,
so a restarted master resumes from the file alone.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from os import PathLike
from types import TracebackType
from typing import Any

from events.envelope import Event

OUTCOMES = ("done", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    fov_id INTEGER,
    time REAL NOT NULL,
    received REAL NOT NULL,
    direction TEXT NOT NULL CHECK (direction IN ('in', 'out')),
    json TEXT NOT NULL,
    expired INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS events_fov ON events (fov_id, seq);
CREATE INDEX IF NOT EXISTS events_type ON events (type, direction, expired);
CREATE TABLE IF NOT EXISTS outcomes (
    fov_id INTEGER PRIMARY KEY,
    outcome TEXT NOT NULL CHECK (outcome IN ('done', 'failed')),
    event_id TEXT NOT NULL,
    time REAL NOT NULL
);
"""

_INSERT = (
    "INSERT OR IGNORE INTO events (id, type, fov_id, time, received, direction, json)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)


class Journal:
    """Event journal in one SQLite file (WAL, ``synchronous=FULL``).

    Every write is one transaction, durable when the call returns.

    Parameters
    ----------
    path : str or path-like
        The SQLite file, normally the run directory's ``journal.sqlite``;
        created if missing, reopened (and resumed from) if present.
    """

    def __init__(self, path: str | PathLike[str]) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        with self._tx() as db:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def accept(self, events: Sequence[Event]) -> list[bool]:
        """Journal inbound events in one transaction (group commit).

        Parameters
        ----------
        events : sequence of Event
            Validated events, in arrival order.

        Returns
        -------
        list of bool
            Per event: True if new, False if its id was already journaled
            (earlier, or earlier in this batch).
        """
        if not events:
            return []
        received = time.time()
        with self._tx() as db:
            return [db.execute(_INSERT, _row(e, received, "in")).rowcount == 1 for e in events]

    def record_out(self, event: Event) -> None:
        """Journal an outbound event; a repeated id is ignored."""
        with self._tx() as db:
            db.execute(_INSERT, _row(event, time.time(), "out"))

    def record_outcome(self, fov_id: int, outcome: str, event: Event) -> bool:
        """Record a visit's outcome and its outbound event, exactly once.

        Parameters
        ----------
        fov_id : int
            The visit.
        outcome : {'done', 'failed'}
            How it ended.
        event : Event
            The outbound event announcing it, journaled in the same transaction.

        Returns
        -------
        bool
            False, and nothing written, if the visit already has an outcome.
        """
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, got {outcome!r}")
        now = time.time()
        with self._tx() as db:
            if db.execute("SELECT 1 FROM outcomes WHERE fov_id = ?", (fov_id,)).fetchone():
                return False
            db.execute(_INSERT, _row(event, now, "out"))
            db.execute(
                "INSERT INTO outcomes (fov_id, outcome, event_id, time) VALUES (?, ?, ?, ?)",
                (fov_id, outcome, event.id, now),
            )
            return True

    def outcome(self, fov_id: int) -> str | None:
        """The visit's outcome, or None if it has none yet."""
        row = self._query("SELECT outcome FROM outcomes WHERE fov_id = ?", (fov_id,))
        return str(row[0][0]) if row else None

    def outcomes(self) -> dict[int, str]:
        """Every visit's outcome."""
        rows = self._query("SELECT fov_id, outcome FROM outcomes", ())
        return {int(fov): str(outcome) for fov, outcome in rows}

    def pending_starts(self, start_type: str, exclude: Collection[int], limit: int) -> list[Event]:
        """Visits waiting to start: their first start event, in arrival order.

        Parameters
        ----------
        start_type : str
            The type that starts a visit (``telescope.next_visit``).
        exclude : collection of int
            fov_ids to skip, typically those already in flight.
        limit : int
            At most this many events.

        Returns
        -------
        list of Event
            Inbound, non-expired start events of visits without an outcome.
        """
        if limit <= 0:
            return []
        sql = (
            "SELECT e.json, e.fov_id FROM events e"
            " JOIN (SELECT MIN(seq) AS seq FROM events"
            "       WHERE type = ? AND direction = 'in' AND expired = 0 GROUP BY fov_id) f"
            " ON e.seq = f.seq"
            " WHERE NOT EXISTS (SELECT 1 FROM outcomes o WHERE o.fov_id = e.fov_id)"
            " ORDER BY e.seq"
        )
        skip = set(exclude)
        out: list[Event] = []
        with self._lock:
            for text, fov_id in self._db.execute(sql, (start_type,)):
                if fov_id in skip:
                    continue
                out.append(_event(text))
                if len(out) >= limit:
                    break
        return out

    def events_for(self, fov_id: int, types: Collection[str] | None = None) -> list[Event]:
        """Inbound, non-expired events of one visit, in arrival order."""
        sql = "SELECT json FROM events WHERE fov_id = ? AND direction = 'in' AND expired = 0"
        params: list[object] = [fov_id]
        if types is not None:
            types = list(types)
            if not types:
                return []
            sql += f" AND type IN ({', '.join('?' * len(types))})"
            params.extend(types)
        return [_event(t) for (t,) in self._query(sql + " ORDER BY seq", params)]

    def expire_orphans(self, start_type: str, older_than: float) -> list[Event]:
        """Expire inbound events of visits that never started.

        Parameters
        ----------
        start_type : str
            The type that starts a visit.
        older_than : float
            Unix time; only events received before it are expired.

        Returns
        -------
        list of Event
            The events just marked expired: non-start inbound events whose
            visit has neither a start event nor an outcome.
        """
        where = (
            " WHERE e.direction = 'in' AND e.expired = 0 AND e.type != ? AND e.received < ?"
            " AND e.fov_id IS NOT NULL"
            " AND NOT EXISTS (SELECT 1 FROM events s WHERE s.fov_id = e.fov_id"
            "                 AND s.type = ? AND s.direction = 'in' AND s.expired = 0)"
            " AND NOT EXISTS (SELECT 1 FROM outcomes o WHERE o.fov_id = e.fov_id)"
        )
        params = (start_type, older_than, start_type)
        with self._tx() as db:
            rows = db.execute(f"SELECT e.seq, e.json FROM events e{where} ORDER BY e.seq", params)
            rows = rows.fetchall()
            db.executemany("UPDATE events SET expired = 1 WHERE seq = ?", [(s,) for s, _ in rows])
        return [_event(t) for _, t in rows]

    def count(self, direction: str | None = None, type: str | None = None) -> int:
        """Number of journaled events (expired included), optionally filtered."""
        conds, params = [], []
        if direction is not None:
            conds.append("direction = ?")
            params.append(direction)
        if type is not None:
            conds.append("type = ?")
            params.append(type)
        where = f" WHERE {' AND '.join(conds)}" if conds else ""
        return int(self._query(f"SELECT COUNT(*) FROM events{where}", params)[0][0])

    def close(self) -> None:
        """Close the file; the journal is unusable afterwards."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _query(self, sql: str, params: Iterable[object]) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, tuple(params)).fetchall()


def _row(event: Event, received: float, direction: str) -> tuple[object, ...]:
    return (
        event.id,
        event.type,
        event.fov_id,
        event.time,
        received,
        direction,
        event.to_json(),
    )


def _event(text: str) -> Event:
    return Event.from_dict(json.loads(text))
