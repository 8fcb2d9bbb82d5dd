"""kill -9 while visits are decided but not written: the next run writes them, once, the same.

The test holds the database's write lock (``BEGIN EXCLUSIVE`` on RUN/nightpipe.sqlite),
so the pipeline's writer waits while later visits go through the ordered section
and are decided on what it has not written; then it kills the master, lets go of
the lock and resumes. The database must end as an uninterrupted run's.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from events.journal import Journal
from tests.nights import db_rows, kill_master, outcomes, replay_cmd

pytestmark = pytest.mark.mpi

VISITS = 18
"""Visits of the pole night (`pole_archive`)."""


def _decided_unwritten(run: Path) -> set[int]:
    """Visits in the store stage on the status board: decided, their write waiting."""
    try:
        status = json.loads((run / "status.json").read_text())
    except (OSError, ValueError):
        return set()
    return {e["key"] for e in status.get("executions", []) if e.get("stage") == "store"}


def _lock(run: Path) -> sqlite3.Connection:
    """Take the database's write lock from outside the pipeline, once the database is there."""
    db = run / "nightpipe.sqlite"
    deadline = time.time() + 120
    while not db.exists():
        assert time.time() < deadline, "no database"
        time.sleep(0.05)
    conn = sqlite3.connect(db, timeout=60, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    return conn


KILLS = ((0, 3), (6, 3), (12, 4))
"""When to kill: once this many visits have ended, with this many decided and not written."""


def test_kill9_between_decided_and_written(pole_archive, pole_reference, tmp_path):
    """Killed three times with visits decided but not written; each resumed; same database."""
    run = tmp_path / "run"
    cmd = replay_cmd(run, pole_archive)
    for after, decided in KILLS:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.time() + 180
        while not ((run / "endpoint.json").exists() and len(outcomes(run)) >= after):
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.time() < deadline, f"{after} visits did not end in time"
            time.sleep(0.02)
        hold = _lock(run)
        try:
            stored = _stored(run)
            # Not the journal's outcomes: a visit written just before the lock was
            # taken may not have its outcome journaled yet.
            want = min(decided, VISITS - len(stored))
            # later visits are decided on the unwritten ones; then the master dies
            kill_master(run, proc, lambda w=want: len(_decided_unwritten(run)) >= w)
            assert _stored(run) == stored  # nothing written while the lock was held
        finally:
            hold.rollback()
            hold.close()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    with Journal(run / "journal.sqlite") as j:
        done = j.outcomes()
        sent = [e.event for e in j.entries(direction="out")]
    assert len(done) == VISITS and set(done.values()) == {"done"}
    per_visit = Counter(e.fov_id for e in sent if e.type.startswith("association.visit_"))
    assert set(per_visit.values()) == {1}  # each visit's outcome exactly once
    assert db_rows(run) == db_rows(pole_reference)


def _stored(run: Path) -> set[int]:
    """The visits the database holds (read while another connection holds the write lock)."""
    conn = sqlite3.connect(f"file:{run / 'nightpipe.sqlite'}?mode=ro", uri=True, timeout=30)
    try:
        return {r[0] for r in conn.execute("SELECT visit FROM visits")}
    finally:
        conn.close()
