"""The WAL checkpointer keeps the WAL short under steady Stores and overlapping reads."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from sqlalchemy import create_engine

from association.storage.sqlite.checkpoint import WalCheckpointer

COMMITS = 240
ROWS_PER_COMMIT = 20  # a 3 KiB blob each: about a page per row


def _wal_frames_under_load(path: Path, restart_frames: int) -> tuple[int, WalCheckpointer]:
    """Commit steadily while two readers keep a snapshot open at all times.

    Returns the most frames the WAL held at once, as seen after each commit.
    """
    setup = sqlite3.connect(path)
    setup.execute("PRAGMA journal_mode=wal")
    setup.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
    setup.commit()
    setup.close()
    engine = create_engine(f"sqlite:///{path}")
    writer = sqlite3.connect(path, isolation_level=None)
    checkpointer = WalCheckpointer(path, interval_s=0.01, restart_frames=restart_frames)
    checkpointer.attach(engine, writer)
    stop = threading.Event()

    def read(offset_s: float) -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        time.sleep(offset_s)
        while not stop.is_set():  # short reads, one after the other, each a snapshot
            conn.execute("BEGIN")
            conn.execute("SELECT count(*) FROM t").fetchone()
            time.sleep(0.004)
            conn.execute("COMMIT")
        conn.close()

    readers = [threading.Thread(target=read, args=(d,)) for d in (0.0, 0.002)]
    for r in readers:
        r.start()
    most = 0
    try:
        blob = b"x" * 3000
        for i in range(COMMITS):
            writer.execute("BEGIN IMMEDIATE")
            writer.executemany(
                "INSERT INTO t (k, v) VALUES (?, ?)",
                [(i * ROWS_PER_COMMIT + j, blob) for j in range(ROWS_PER_COMMIT)],
            )
            writer.execute("COMMIT")
            # The frames of the WAL now: its header's count, read without a checkpoint.
            most = max(most, _frames(path))
            time.sleep(0.002)
    finally:
        stop.set()
        for r in readers:
            r.join()
        writer.close()
        checkpointer.close()
        engine.dispose()
    return most, checkpointer


def _frames(path: Path) -> int:
    """Frames in the WAL's current run, from the wal-index header (``-shm``)."""
    shm = Path(f"{path}-shm").read_bytes()[:48]
    return int.from_bytes(shm[16:20], "little")  # mxFrame, native order on x86/arm


def test_the_wal_is_started_over_while_readers_keep_coming(tmp_path: Path) -> None:
    most, cp = _wal_frames_under_load(tmp_path / "a.sqlite", restart_frames=400)
    grown, never = _wal_frames_under_load(tmp_path / "b.sqlite", restart_frames=1 << 40)
    total = COMMITS * ROWS_PER_COMMIT
    # Without the RESTART, the WAL holds every page written (the readers never let
    # a PASSIVE checkpoint start it over): the comparison shows the test can fail.
    assert never.restarts == 0
    assert grown > 0.8 * total, grown
    assert cp.restarts >= 3
    assert most < grown / 2, (most, grown)
    with sqlite3.connect(tmp_path / "a.sqlite") as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == total


def test_a_restart_that_holds_the_store_off_is_warned_of(tmp_path: Path, caplog) -> None:
    """A reader keeps its snapshot 0.6 s: the RESTART waits for it, and says so."""
    path = tmp_path / "c.sqlite"
    setup = sqlite3.connect(path, isolation_level=None)
    setup.execute("PRAGMA journal_mode=wal")
    setup.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
    engine = create_engine(f"sqlite:///{path}")
    writer = sqlite3.connect(path, isolation_level=None)
    writer.executemany("INSERT INTO t VALUES (?, ?)", [(i, b"x" * 3000) for i in range(40)])
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM t").fetchone()  # a snapshot in the WAL
    checkpointer = WalCheckpointer(path, interval_s=0.05, restart_frames=10)
    try:
        with caplog.at_level("WARNING", logger="association.storage.sqlite.checkpoint"):
            checkpointer.attach(engine, writer)
            time.sleep(0.6)
            reader.execute("COMMIT")
            time.sleep(0.3)
    finally:
        reader.close()
        writer.close()
        checkpointer.close()
        engine.dispose()
        setup.close()
    assert checkpointer.longest_restart_s >= 0.25
    assert any("held the writer off" in r.getMessage() for r in caplog.records)
