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
from dataclasses import dataclass
from os import PathLike
from types import TracebackType
from typing import Any

from events.envelope import Event

OUTCOMES = ("done", "failed")

WAIT_EXPIRED = "control.wait_expired"
"""Type of the journal's own record that a visit's wait for an event ran out."""

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
    time REAL NOT NULL,
    retriable INTEGER NOT NULL DEFAULT 0
);
"""

_INSERT = (
    "INSERT OR IGNORE INTO events (id, type, fov_id, time, received, direction, json)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)


_ORPHANS = (
    " WHERE e.direction = 'in' AND e.expired = 0 AND e.type != ?"
    " AND e.fov_id IS NOT NULL"
    " AND NOT EXISTS (SELECT 1 FROM events s WHERE s.fov_id = e.fov_id"
    "                 AND s.type = ? AND s.direction = 'in' AND s.expired = 0)"
    " AND NOT EXISTS (SELECT 1 FROM outcomes o WHERE o.fov_id = e.fov_id)"
)

_PENDING_STARTS = (
    "SELECT e.json, e.fov_id FROM events e"
    " JOIN (SELECT MIN(seq) AS seq FROM events"
    "       WHERE type = ? AND direction = 'in' AND expired = 0 GROUP BY fov_id) f"
    " ON e.seq = f.seq"
    " WHERE NOT EXISTS (SELECT 1 FROM outcomes o WHERE o.fov_id = e.fov_id)"
    " ORDER BY e.seq"
)
"""Each visit's first live start event, if it has no outcome, in arrival order."""


@dataclass(frozen=True)
class Entry:
    """One journaled event: its place in the journal, when and which way it went."""

    seq: int
    received: float
    direction: str
    event: Event


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
            columns = {row[1] for row in db.execute("PRAGMA table_info(outcomes)")}
            if "retriable" not in columns:  # a journal written before retries existed
                db.execute("ALTER TABLE outcomes ADD COLUMN retriable INTEGER NOT NULL DEFAULT 0")

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
        return [seq is not None for seq in self.accept_seq(events)]

    def accept_seq(self, events: Sequence[Event]) -> list[int | None]:
        """As `accept`, but per event its journal position, or None for a duplicate."""
        if not events:
            return []
        received = time.time()
        out: list[int | None] = []
        with self._tx() as db:
            for e in events:
                cur = db.execute(_INSERT, _row(e, received, "in"))
                out.append(cur.lastrowid if cur.rowcount == 1 else None)
        return out

    def record_expiry(self, fov_id: int, event_type: str) -> int:
        """Journal that a visit's wait for `event_type` ran out; its journal position.

        The record is a ``control.wait_expired`` event of the visit, so that a
        resumed run goes on without waiting again, at the same place in the order.
        """
        ev = Event(
            id=f"expired:{fov_id}:{event_type}",
            type=WAIT_EXPIRED,
            time=time.time(),
            source="journal",
            fov_id=fov_id,
            body={"event": event_type},
        )
        with self._tx() as db:
            db.execute(_INSERT, _row(ev, ev.time, "in"))
            (seq,) = db.execute("SELECT seq FROM events WHERE id = ?", (ev.id,)).fetchone()
        return int(seq)

    def record_out(self, event: Event) -> None:
        """Journal an outbound event; a repeated id is ignored."""
        with self._tx() as db:
            db.execute(_INSERT, _row(event, time.time(), "out"))

    def record_outcome(
        self, fov_id: int, outcome: str, event: Event, retriable: bool = False
    ) -> bool:
        """Record a visit's outcome and its outbound event, exactly once.

        Parameters
        ----------
        fov_id : int
            The visit.
        outcome : {'done', 'failed'}
            How it ended.
        event : Event
            The outbound event announcing it, journaled in the same transaction.
        retriable : bool
            A failure for a passing reason (a database outage, a shutdown):
            `reopen_retriable` takes it back, so that the next run retries it.

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
                "INSERT INTO outcomes (fov_id, outcome, event_id, time, retriable)"
                " VALUES (?, ?, ?, ?, ?)",
                (fov_id, outcome, event.id, now, int(retriable and outcome == "failed")),
            )
            return True

    def reopen_retriable(self) -> list[int]:
        """Take back the outcomes of visits that failed for a passing reason; their FOVs.

        Their events are still journaled, so they run again.
        """
        with self._tx() as db:
            rows = db.execute("SELECT fov_id FROM outcomes WHERE retriable = 1").fetchall()
            db.execute("DELETE FROM outcomes WHERE retriable = 1")
        return sorted(int(f) for (f,) in rows)

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
        skip = set(exclude)
        out: list[Event] = []
        with self._lock:
            for text, fov_id in self._db.execute(_PENDING_STARTS, (start_type,)):
                if fov_id in skip:
                    continue
                out.append(_event(text))
                if len(out) >= limit:
                    break
        return out

    def count_pending_starts(self, start_type: str, exclude: Collection[int]) -> int:
        """How many visits `pending_starts` would list without a limit."""
        rows = self._query(f"SELECT fov_id FROM ({_PENDING_STARTS})", (start_type,))
        skip = set(exclude)
        return sum(fov_id not in skip for (fov_id,) in rows)

    def events_for(self, fov_id: int, types: Collection[str] | None = None) -> list[Event]:
        """Inbound, non-expired events of one visit, in arrival order."""
        return [e.event for e in self.entries_for(fov_id, types)]

    def entries_for(self, fov_id: int, types: Collection[str] | None = None) -> list[Entry]:
        """Inbound, non-expired events of one visit with their journal positions, in order."""
        sql = (
            "SELECT seq, received, direction, json FROM events"
            " WHERE fov_id = ? AND direction = 'in' AND expired = 0"
        )
        params: list[object] = [fov_id]
        if types is not None:
            types = list(types)
            if not types:
                return []
            sql += f" AND type IN ({', '.join('?' * len(types))})"
            params.extend(types)
        rows = self._query(sql + " ORDER BY seq", params)
        return [Entry(int(s), float(r), str(d), _event(j)) for s, r, d, j in rows]

    def orphan_fovs(self, start_type: str) -> list[int]:
        """FOVs with live inbound events but neither a start event nor an outcome."""
        rows = self._query(f"SELECT DISTINCT e.fov_id FROM events e{_ORPHANS}", (start_type,) * 2)
        return sorted(int(f) for (f,) in rows)

    def expire_fovs(self, fov_ids: Collection[int], start_type: str) -> list[Event]:
        """Expire the inbound events of these FOVs if they are still orphans.

        Parameters
        ----------
        fov_ids : collection of int
            FOVs whose events waited too long for a start event.
        start_type : str
            The type that starts a visit.

        Returns
        -------
        list of Event
            The events just marked expired: non-start inbound events whose
            visit has neither a start event nor an outcome.
        """
        fovs = sorted(set(fov_ids))
        if not fovs:
            return []
        where = f"{_ORPHANS} AND e.fov_id IN ({', '.join('?' * len(fovs))})"
        params = (start_type, start_type, *fovs)
        with self._tx() as db:
            rows = db.execute(f"SELECT e.seq, e.json FROM events e{where} ORDER BY e.seq", params)
            rows = rows.fetchall()
            db.executemany("UPDATE events SET expired = 1 WHERE seq = ?", [(s,) for s, _ in rows])
        return [_event(t) for _, t in rows]

    def entries(
        self,
        direction: str | None = None,
        type: str | None = None,
        fov_id: int | None = None,
    ) -> list[Entry]:
        """Journaled events (expired included) with their place and time, in order."""
        conds, params = _filters(direction, type)
        if fov_id is not None:
            conds.append("fov_id = ?")
            params.append(fov_id)
        where = f" WHERE {' AND '.join(conds)}" if conds else ""
        rows = self._query(f"SELECT seq, received, direction, json FROM events{where}", params)
        return [Entry(int(s), float(r), str(d), _event(j)) for s, r, d, j in rows]

    def has_id(self, event_id: str) -> bool:
        """Whether an event with this id is journaled."""
        return bool(self._query("SELECT 1 FROM events WHERE id = ?", (event_id,)))

    def ids(self, direction: str | None = None) -> set[str]:
        """The ids of every journaled event, or of one direction."""
        conds, params = _filters(direction, None)
        where = f" WHERE {' AND '.join(conds)}" if conds else ""
        return {str(i) for (i,) in self._query(f"SELECT id FROM events{where}", params)}

    def outcome_times(self) -> dict[int, float]:
        """When each visit's outcome was recorded (Unix time)."""
        return {int(f): float(t) for f, t in self._query("SELECT fov_id, time FROM outcomes", ())}

    def count(self, direction: str | None = None, type: str | None = None) -> int:
        """Number of journaled events (expired included), optionally filtered."""
        conds, params = _filters(direction, type)
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


def _filters(direction: str | None, type: str | None) -> tuple[list[str], list[object]]:
    conds: list[str] = []
    params: list[object] = []
    if direction is not None:
        conds.append("direction = ?")
        params.append(direction)
    if type is not None:
        conds.append("type = ?")
        params.append(type)
    return conds, params


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
