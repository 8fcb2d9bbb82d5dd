"""A night as it stands: the run directory's files read into one summary, again and again.

`RunWatcher` reads only what the pipeline and the replay already write, and only
for reading: ``journal.sqlite`` (new rows since the last look, over a read-only
connection), ``status.json``, ``replay.json``, ``deadletter.jsonl`` (new lines
since the last look) and ``report.json``. It opens no database and writes nothing,
so a watcher never holds up the pipeline's writers. The live page
(`association.nights.serve`) shows what `RunWatcher.snapshot` returns.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections import deque
from pathlib import Path
from typing import Any

from association.nights.report import (
    EVENT_COLUMNS,
    event_row,
    summarize,
)
from association.rundir import NightRunDir
from events.archive import Archive, ArchiveError
from events.types import NEXT_VISIT
from framework.status import OBSERVED

PLOTS = ("sky.png", "latency.png", "stages.png", "store.png")
"""The report's plots, shown on the page once ``nightpipe report`` has made them."""
RATE_WINDOW_S = 300.0
"""The rate (and so the ETA) is taken over the visits finished in the last this many seconds."""
RECENT_REJECTED = 50
MESSAGE_CHARS = 300
STALE_STATUS_S = 30.0
"""A status file not rewritten for this long belongs to a master that is gone."""
RANK_KEYS = ("state", "exec", "stage", "hook", "items_done", "busy_seconds", "last_seconds")
HIDDEN_RANK_KEYS = {"rank", "pid", "started", "updated", "last_error", OBSERVED, *RANK_KEYS}


class RunWatcher:
    """Reads a run directory incrementally; `snapshot` sums it up (one caller at a time).

    Parameters
    ----------
    run_dir : str or Path
        The pipeline's run directory; it need not exist yet.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir).resolve()
        self._conn: sqlite3.Connection | None = None
        self._journal_id: tuple[int, int] | None = None
        self._events: list[dict[str, Any]] = []
        self._last_seq = 0
        self._dead_offset = 0
        self._dead_count = 0
        self._dead_recent: deque[dict[str, Any]] = deque(maxlen=RECENT_REJECTED)
        self._json_cache: dict[str, tuple[float, Any]] = {}
        self._expected_from_archive: dict[str, int | None] = {}

    # -- reading ---------------------------------------------------------------------------

    def _journal(self) -> tuple[dict[int, str], dict[int, float], int]:
        """New events into `_events`; every outcome and its time; the number expired."""
        path = NightRunDir(self.run_dir).journal
        try:
            st = path.stat()
        except FileNotFoundError:
            self._close()
            return {}, {}, 0
        if self._journal_id != (st.st_dev, st.st_ino):  # first look, or a new journal
            self._close()
            self._conn = sqlite3.connect(
                f"file:{path}?mode=ro", uri=True, timeout=1.0, check_same_thread=False
            )
            self._journal_id = (st.st_dev, st.st_ino)
        assert self._conn is not None
        try:
            rows = self._conn.execute(
                f"SELECT {EVENT_COLUMNS} FROM events WHERE seq > ? ORDER BY seq", (self._last_seq,)
            ).fetchall()
            outcomes = self._conn.execute("SELECT fov_id, outcome, time FROM outcomes").fetchall()
            expired = self._conn.execute("SELECT COUNT(*) FROM events WHERE expired = 1").fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):  # the master is creating it
                return {}, {}, 0
            raise
        for row in rows:
            self._events.append(event_row(row))
        if rows:
            self._last_seq = int(rows[-1][0])
        return (
            {int(f): str(o) for f, o, _ in outcomes},
            {int(f): float(t) for f, _, t in outcomes},
            int(expired[0]),
        )

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None
        self._journal_id = None
        self._events = []
        self._last_seq = 0

    def _json(self, name: str) -> Any:
        """A JSON file of the run directory, re-read when it changed; None when absent."""
        path = self.run_dir / name
        try:
            mtime = path.stat().st_mtime_ns
        except FileNotFoundError:
            self._json_cache.pop(name, None)
            return None
        cached = self._json_cache.get(name)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        try:
            value = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return cached[1] if cached else None  # caught mid-write: the last good one
        self._json_cache[name] = (mtime, value)
        return value

    def _dead_letters(self) -> None:
        """New complete lines of the dead-letter log."""
        path = NightRunDir(self.run_dir).deadletters
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return
        if size < self._dead_offset:  # a new log
            self._dead_offset, self._dead_count = 0, 0
            self._dead_recent.clear()
        if size == self._dead_offset:
            return
        with path.open("rb") as f:
            f.seek(self._dead_offset)
            chunk = f.read(size - self._dead_offset)
        end = chunk.rfind(b"\n") + 1
        self._dead_offset += end
        for line in chunk[:end].splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                rec = {
                    "reason": "unreadable",
                    "message": line[:MESSAGE_CHARS].decode(errors="replace"),
                }
            self._dead_count += 1
            self._dead_recent.append(
                {
                    "time": rec.get("time"),
                    "source": rec.get("source"),
                    "reason": rec.get("reason"),
                    "event_id": rec.get("event_id"),
                    "message": str(rec.get("message", ""))[:MESSAGE_CHARS],
                }
            )

    def _expected(self, replay: dict[str, Any] | None, known: int) -> int:
        """Visits expected tonight: the replay's count, else its archive's, else those known."""
        if replay:
            for value in (replay.get("visits"), (replay.get("summary") or {}).get("visits")):
                if isinstance(value, int):
                    return max(value, known)
            archive = replay.get("archive")
            if archive:
                if archive not in self._expected_from_archive:
                    try:
                        counts = Archive(archive).manifest.get("counts") or {}
                        n = counts.get("visits")
                    except (ArchiveError, OSError):
                        n = None
                    self._expected_from_archive[archive] = n if isinstance(n, int) else None
                n = self._expected_from_archive[archive]
                if n is not None:
                    return max(n, known)
        return known

    # -- the summary -----------------------------------------------------------------------

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        """Everything the page shows, as JSON-able values.

        Returns
        -------
        dict
            ``run_dir``, ``run``, ``night``, ``time``, ``state``, ``pipeline``,
            ``visits`` (expected, known, done, failed, in_flight, queued,
            unfinished), ``rate_per_min``, ``eta_s``, ``latency``, ``stages``,
            ``totals``, ``per_visit`` (time, outcome and latencies of each),
            ``failures``, ``ranks``, ``executions``, ``events`` (accepted by type,
            expired), ``rejected`` (count and the latest) and ``quality``
            (from ``report.json``, when a report was made).
        """
        now = time.time() if now is None else now
        outcomes, ended, expired = self._journal()
        status = self._json(NightRunDir(self.run_dir).status.name)
        replay = self._json(NightRunDir(self.run_dir).replay.name)
        report = self._json(NightRunDir(self.run_dir).report_json.name)
        self._dead_letters()
        base = summarize(self.run_dir, self._events, outcomes, replay)
        visits = base["per_visit"]
        state, status_age = _state(status, replay, self._conn is not None, now)
        in_flight = int((status or {}).get("in_flight") or 0) if state != "stopped" else 0
        started = [v for v in visits if v["events"].get(NEXT_VISIT)]  # not orphans
        unfinished = sum(v["outcome"] is None for v in started)
        n_finished = len(outcomes)
        expected = self._expected(replay, len(started))
        t_end = now if state in ("running", "draining") else max(ended.values(), default=now)
        rate = _rate(list(ended.values()), base["wall"]["first"], t_end)
        left = max(expected - n_finished, 0)
        return {
            "run_dir": base["run_dir"],
            "run": base["run"],
            "night": base["night"],
            "time": now,
            "state": state,
            "status_age_s": status_age,
            "pipeline": (status or {}).get("pipeline"),
            "visits": {
                "expected": expected,
                "known": len(started),
                "done": base["visits"]["done"],
                "failed": base["visits"]["failed"],
                "in_flight": in_flight,
                "queued": max(unfinished - in_flight, 0),
                "unfinished": unfinished,
            },
            "rate_per_min": rate,
            "eta_s": (60.0 * left / rate if rate else None) if left else 0.0,
            "latency": base["latency"],
            "stages": base["stages"],
            "totals": base["totals"],
            "per_visit": [
                {
                    "fov_id": v["fov_id"],
                    "mjd": v["mjd"],
                    "outcome": v["outcome"],
                    "ended": ended.get(v["fov_id"]),
                    "detection_received": v["detection_received"],
                    "processing_s": v["processing_s"],
                    "queue_wait_s": v["queue_wait_s"],
                    "end_to_end_s": v["end_to_end_s"],
                    "n_alerts": v["n_alerts"],
                    "error": (v["failure"] or {}).get("error"),
                }
                for v in visits
            ],
            "failures": [
                {**f, "error": str(f["error"])[:MESSAGE_CHARS], "ended": ended.get(f["fov_id"])}
                for f in base["failures"]
            ],
            "ranks": _ranks(status, now),
            "executions": (status or {}).get("executions", []) if state != "stopped" else [],
            "events": {"in": base["events"]["in"], "expired": expired},
            "rejected": {"n": self._dead_count, "recent": list(self._dead_recent)[::-1]},
            "quality": (report or {}).get("quality"),
            "plots": [n for n in PLOTS if (NightRunDir(self.run_dir).report_dir / n).is_file()],
        }

    def close(self) -> None:
        """Close the journal connection."""
        self._close()


def _state(
    status: dict[str, Any] | None, replay: dict[str, Any] | None, journal: bool, now: float
) -> tuple[str, float | None]:
    """``waiting`` (nothing yet), ``running``, ``draining``, ``stopped``; the status file's age."""
    if status is None:
        return ("stopped" if journal and (replay or {}).get("finished") else "waiting"), None
    age = now - float(status.get("time", now))
    master = (status.get("ranks") or {}).get("0") or {}
    if master.get("state") == "stopped" or (replay or {}).get("finished"):
        return "stopped", age
    if age > STALE_STATUS_S:
        return "stopped", age
    return str(status.get("state") or "running"), age


def _rate(ended: list[float], first: float | None, t_end: float) -> float | None:
    """Visits finished per minute over the last `RATE_WINDOW_S` before `t_end`."""
    if not ended or first is None:
        return None
    window = min(RATE_WINDOW_S, t_end - first)
    if window <= 0:
        return None
    n = sum(t_end - window <= t <= t_end for t in ended)
    return 60.0 * n / window


def _ranks(status: dict[str, Any] | None, now: float) -> list[dict[str, Any]]:
    """Every rank's board: what it is doing, how busy it has been, and its other figures."""
    out = []
    for rank, board in sorted(
        ((status or {}).get("ranks") or {}).items(), key=lambda kv: int(kv[0])
    ):
        r = int(rank)
        started, updated = board.get("started"), board.get("updated")
        busy = board.get("busy_seconds")
        up = (
            (updated - started)
            if isinstance(started, float) and isinstance(updated, float)
            else None
        )
        out.append(
            {
                "rank": r,
                "role": "master" if r == 0 else f"slice {r - 1}",
                **{k: board.get(k) for k in RANK_KEYS},
                "busy_fraction": busy / up if isinstance(busy, float) and up else None,
                "seen_s_ago": now - updated if isinstance(updated, float) else None,
                "last_error": board.get("last_error"),
                "other": {k: v for k, v in sorted(board.items()) if k not in HIDDEN_RANK_KEYS},
            }
        )
    return out
