"""The event journal: group commit, duplicates, durability, the queue queries, outcomes."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from events import types as T
from events.envelope import Event
from events.journal import Journal


def visit(fov: int, id: str | None = None) -> Event:
    return Event.new(
        T.NEXT_VISIT, fov, {"mjd": 60000.0, "ra": 1.0, "dec": 2.0, "filter": "r"}, id=id
    )


def sources(fov: int, id: str | None = None) -> Event:
    return Event.new(T.DIASOURCES_READY, fov, {"paths": [f"v{fov}.parquet"]}, id=id)


def preds(fov: int, id: str | None = None) -> Event:
    return Event.new(T.PREDICTIONS_READY, fov, {"paths": []}, id=id)


def done(fov: int) -> Event:
    return Event.new(T.VISIT_DONE, fov, {"counts": {"n": 1}})


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "journal.sqlite"


@pytest.fixture
def journal(path: Path) -> Iterator[Journal]:
    with Journal(path) as j:
        yield j


def test_accept_new_and_duplicates(journal: Journal) -> None:
    a, b, c = visit(1, "a"), sources(1, "b"), preds(1, "c")
    assert journal.accept([a, b]) == [True, True]
    assert journal.accept([b, c, c, a]) == [False, True, False, False]
    assert journal.accept([]) == []
    assert journal.count() == 3
    assert journal.count(direction="in", type=T.DIASOURCES_READY) == 1


def test_duplicate_id_keeps_first_content(journal: Journal) -> None:
    first = visit(1, "same")
    journal.accept([first])
    assert journal.accept([visit(2, "same")]) == [False]
    assert journal.events_for(1) == [first]
    assert journal.events_for(2) == []


def test_durable_across_reopen(path: Path) -> None:
    events = [visit(1, "a"), sources(1, "b"), Event.new(T.SHUTDOWN, None, {"reason": "x"})]
    j = Journal(path)
    j.accept(events)
    assert j.record_outcome(1, "done", done(1))
    j.close()
    with Journal(path) as again:
        assert again.count(direction="in") == 3
        assert again.events_for(1) == events[:2]
        assert again.outcomes() == {1: "done"}
        assert again.accept([events[0]]) == [False]
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_events_round_trip_exactly(journal: Journal) -> None:
    e = Event.new(T.NEXT_VISIT, 5, {"mjd": 60000.123456789, "ra": 0.1, "dec": -0.3, "filter": "z"})
    journal.accept([e])
    assert journal.events_for(5) == [e]


def test_pending_starts(journal: Journal) -> None:
    journal.accept([sources(9, "s9"), visit(3, "v3"), visit(1, "v1"), visit(2, "v2")])
    journal.accept([visit(3, "v3-again"), visit(4, "v4")])  # second start of fov 3: not listed
    ids = [e.id for e in journal.pending_starts(T.NEXT_VISIT, exclude=(), limit=10)]
    assert ids == ["v3", "v1", "v2", "v4"]
    ids = [e.id for e in journal.pending_starts(T.NEXT_VISIT, exclude={1}, limit=2)]
    assert ids == ["v3", "v2"]
    assert journal.pending_starts(T.NEXT_VISIT, exclude=(), limit=0) == []
    journal.record_outcome(3, "failed", Event.new(T.VISIT_FAILED, 3, {}))
    ids = [e.id for e in journal.pending_starts(T.NEXT_VISIT, exclude=[2], limit=10)]
    assert ids == ["v1", "v4"]


def test_events_for(journal: Journal) -> None:
    evs = [visit(1, "a"), sources(2, "x"), sources(1, "b"), preds(1, "c")]
    journal.accept(evs)
    journal.record_out(done(1))
    assert [e.id for e in journal.events_for(1)] == ["a", "b", "c"]
    assert [e.id for e in journal.events_for(1, [T.PREDICTIONS_READY, T.NEXT_VISIT])] == ["a", "c"]
    assert journal.events_for(1, []) == []
    assert journal.events_for(42) == []


def test_record_out(journal: Journal) -> None:
    out = Event.new(T.ALERTS_READY, 1, {"path": "p", "n_alerts": 1})
    journal.record_out(out)
    journal.record_out(out)
    assert journal.count(direction="out") == 1
    assert journal.count(direction="in") == 0
    assert journal.events_for(1) == []


def test_record_outcome_exactly_once(journal: Journal) -> None:
    first, second = done(1), Event.new(T.VISIT_FAILED, 1, {"error": "late"})
    assert journal.outcome(1) is None
    assert journal.record_outcome(1, "done", first) is True
    assert journal.record_outcome(1, "failed", second) is False
    assert journal.outcome(1) == "done"
    assert journal.count(direction="out") == 1
    assert journal.count(type=T.VISIT_FAILED) == 0
    assert journal.record_outcome(2, "failed", second) is True
    assert journal.outcomes() == {1: "done", 2: "failed"}
    with pytest.raises(ValueError, match="outcome must be one of"):
        journal.record_outcome(3, "maybe", done(3))
    assert journal.outcome(3) is None


def test_expire_orphans(journal: Journal) -> None:
    journal.accept([sources(1, "orphan-s"), preds(1, "orphan-p")])  # fov 1 never starts
    journal.accept([visit(2, "v2"), sources(2, "s2")])  # fov 2 started
    journal.accept([sources(3, "s3")])  # fov 3 done (outcome without start)
    journal.record_outcome(3, "failed", Event.new(T.VISIT_FAILED, 3, {}))
    journal.accept([Event.new(T.SHUTDOWN, None, {}, id="stop")])

    assert journal.orphan_fovs(T.NEXT_VISIT) == [1]
    assert journal.expire_fovs([], T.NEXT_VISIT) == []
    expired = journal.expire_fovs([1, 2, 3], T.NEXT_VISIT)
    assert [e.id for e in expired] == ["orphan-s", "orphan-p"]
    assert journal.expire_fovs([1, 2, 3], T.NEXT_VISIT) == []
    assert journal.orphan_fovs(T.NEXT_VISIT) == []
    assert journal.events_for(1) == []
    assert journal.count(direction="in") == 6

    journal.accept([visit(1, "v1-late")])  # a late start sees only its own, new events
    assert [e.id for e in journal.events_for(1)] == ["v1-late"]
    assert [e.id for e in journal.pending_starts(T.NEXT_VISIT, (), 10)] == ["v2", "v1-late"]


def test_expire_touches_only_the_fovs_named(journal: Journal) -> None:
    journal.accept([sources(1, "old")])
    journal.accept([sources(2, "new")])
    assert journal.orphan_fovs(T.NEXT_VISIT) == [1, 2]
    assert [e.id for e in journal.expire_fovs([1], T.NEXT_VISIT)] == ["old"]
    assert journal.orphan_fovs(T.NEXT_VISIT) == [2]


def test_accept_is_fast(journal: Journal) -> None:
    times = []
    for i in range(50):
        t0 = time.perf_counter()
        journal.accept([sources(i)])
        times.append(time.perf_counter() - t0)
    times.sort()
    assert times[len(times) // 2] < 0.02  # target is a few ms; generous for slow CI disks


def test_failed_batch_writes_nothing(journal: Journal) -> None:
    bad = Event(id="bad", type=T.VISIT_DONE, time=0.0, source="t", fov_id=1, body={"x": {1, 2}})
    with pytest.raises(TypeError):
        journal.accept([visit(1, "ok"), bad])
    assert journal.count() == 0
    assert journal.accept([visit(1, "ok")]) == [True]
