"""The night report on a hand-built run directory: journal, database, archive with truth."""

from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import events.journal
from association.columns import DIASOURCE_DTYPE, OBJECT_DTYPE
from association.nights import report as rep
from association.storage import VisitRecord, open_storage
from events.archive import ArchiveWriter
from events.envelope import Event
from events.journal import Journal
from events.types import (
    ALERTS_READY,
    DIASOURCES_READY,
    NEXT_VISIT,
    PREDICTIONS_READY,
    SHUTDOWN,
    VISIT_DONE,
    VISIT_FAILED,
)
from tests.databases import PARAMS

T0 = 1_700_000_000.0
TIMINGS = {
    1: {"load": 0.5, "sources": 0.1, "crossmatch": 0.2, "moving": 0.1, "update": 0.05, "store": 0.3}
    | {"total": 3.5},
    2: {"load": 1.0, "sources": 0.2, "crossmatch": 0.4, "moving": 0.3, "update": 0.1, "store": 0.6}
    | {"total": 5.0},
}
# fov -> the database transaction's seconds (in the store stage's, beside its wait)
WRITE_S = {1: 0.25, 2: 0.45}
# fov -> (mjd, ra, dec) of the visit
FIELDS = {1: (60218.01, 10.0, -30.0), 2: (60218.02, 12.0, -31.0), 3: (60218.03, 359.0, -29.0)}
FIELDS[4] = (60218.04, 1.0, -30.5)
# DIASources stored: fov -> [(diaSourceId, diaObjectId, ssObjectId)]
STORED = {
    1: [(11, 100, 0), (12, 200, 0), (13, 13, 0), (14, 0, 5)],
    2: [(21, 100, 0), (22, 22, 0), (23, 300, 0)],
}
# truth: diaSourceId, visit, kind, diaObjectId, ssObjectId, transientId, predicted
TRUTH = [
    (11, 1, "variable", 100, 0, 0, False),
    (12, 1, "variable", 200, 0, 0, False),
    (13, 1, "spurious", 0, 0, 0, False),
    (14, 1, "mover", 0, 5, 0, True),
    (21, 2, "variable", 100, 0, 0, False),
    (22, 2, "transient", 0, 0, 1, False),
    (23, 2, "variable", 200, 0, 0, False),  # linked to 300: wrong
    (31, 3, "variable", 100, 0, 0, False),  # visit 3 failed
    (32, 3, "spurious", 0, 0, 0, False),
]


class Clock:
    """Stands in for the journal's clock so every ``received`` is known."""

    def __init__(self) -> None:
        self.now = T0

    def time(self) -> float:
        return self.now


def write_archive(path: Path) -> None:
    out = ArchiveWriter(path)
    cols = list(zip(*TRUTH, strict=True))
    names = ("diaSourceId", "visit", "kind", "diaObjectId", "ssObjectId", "transientId")
    truth = {n: list(c) for n, c in zip(names, cols, strict=False)}
    truth["predicted"] = list(cols[6])
    pq.write_table(pa.table(truth), out.path_for("truth/diasources.parquet"))
    pq.write_table(
        pa.table({"diaObjectId": np.array([100, 200, 300], dtype="i8")}),
        out.path_for("catalogue/objects.parquet"),
    )
    out.write_manifest(
        catalogue_objects="catalogue/objects.parquet",
        truth={"diasources": "truth/diasources.parquet"},
    )


def store(run_dir: Path) -> None:
    storage = open_storage(None, run_dir, PARAMS, create=True)
    for fov, rows in STORED.items():
        src = np.zeros(len(rows), DIASOURCE_DTYPE)
        src["visit"] = fov
        src["diaSourceId"], src["diaObjectId"], src["ssObjectId"] = np.array(rows).T
        n_new = sum(s == o for s, o, _ in rows)
        n_moving = sum(ss != 0 for *_, ss in rows)
        mjd, ra, dec = FIELDS[fov]
        record = VisitRecord(
            fov, mjd, ra, dec, "r", len(rows), len(rows) - n_moving, n_new, n_moving
        )
        mov = src[src["ssObjectId"] != 0]  # as the pipeline stores them: one row per match
        moving = (mov["visit"], mov["ssObjectId"], mov["diaSourceId"])
        storage.store_visit(record, src, np.zeros(0, OBJECT_DTYPE), moving=moving)
    storage.close()


def at(clock: Clock, t: float) -> Clock:
    clock.now = T0 + t
    return clock


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Four visits: 1 and 2 done, 3 failed in moving, 4 never finished; truth for all."""
    clock = Clock()
    monkeypatch.setattr(events.journal, "time", types.SimpleNamespace(time=clock.time))
    run = tmp_path / "run"
    run.mkdir()
    write_archive(tmp_path / "archive")
    (run / "replay.json").write_text(
        json.dumps(
            {
                "archive": str(tmp_path / "archive"),
                "db_url": None,
                "ranks": 3,
                "speed": "max",
                "started": T0,
                "finished": T0 + 70,
            }
        )
    )
    with Journal(run / "journal.sqlite") as j:

        def inbound(t: float, kind: str, fov: int | None, body: dict) -> None:
            at(clock, t)
            assert j.accept([Event.new(kind, fov, body, time=T0 + t)]) == [True]

        for fov, start in ((1, 0.0), (2, 20.0), (3, 40.0), (4, 60.0)):
            mjd, ra, dec = FIELDS[fov]
            body = {"mjd": mjd, "ra": ra, "dec": dec, "filter": "r", "radius": 1.75}
            inbound(start, NEXT_VISIT, fov, body)
            if fov == 4:
                continue
            inbound(start + 10, DIASOURCES_READY, fov, {"paths": ["x.parquet"]})
            if fov == 3:
                at(clock, start + 12)
                failure = {
                    "stage": "moving",
                    "hook": "process",
                    "rank": 2,
                    "error": "ValueError: bad predictions\nmore",
                }
                j.record_outcome(fov, "failed", Event.new(VISIT_FAILED, fov, failure))
                continue
            inbound(start + 11, PREDICTIONS_READY, fov, {"paths": []})
            rows = STORED[fov]
            n_new = sum(s == o for s, o, _ in rows)
            n_moving = sum(ss != 0 for *_, ss in rows)
            counts = {
                "path": "a.avro",
                "n_alerts": len(rows) - n_moving,
                "n_sources": len(rows),
                "n_new_objects": n_new,
                "n_moving": n_moving,
                "write_s": WRITE_S[fov],
            }
            at(clock, start + 10 + (3.0 if fov == 1 else 5.0))
            j.record_out(Event.new(ALERTS_READY, fov, counts))
            at(clock, start + 14)
            done = Event.new(VISIT_DONE, fov, {"timings": TIMINGS[fov]})
            j.record_outcome(fov, "done", done)
        inbound(70.0, SHUTDOWN, None, {})
    store(run)
    return run


def test_figures(run_dir: Path):
    r = rep.build_report(run_dir)
    json.dumps(r, allow_nan=False)
    assert r["events"]["in"] == {
        NEXT_VISIT: 4,
        DIASOURCES_READY: 3,
        PREDICTIONS_READY: 2,
        SHUTDOWN: 1,
    }
    assert r["events"]["out"] == {ALERTS_READY: 2, VISIT_DONE: 2, VISIT_FAILED: 1}
    assert r["visits"] == {"n": 4, "done": 2, "failed": 1, "unfinished": 1}
    assert r["wall"]["seconds"] == pytest.approx(70.0)
    assert r["wall"]["visits_per_minute"] == pytest.approx(2 / (70 / 60))
    assert r["totals"] == {"n_sources": 7, "n_alerts": 6, "n_new_objects": 2, "n_moving": 1}

    assert r["night"] == {
        "mjd": 60217.5,
        "date": "2023-09-30",
        "label": "night 2023-09-30 (MJD 60217.5)",
        "nights": [60217.5],
    }
    assert r["run"] == f"{run_dir.parent.name}/run"
    lat = r["latency"]["end_to_end"]  # detection received -> alerts received, queue included
    assert lat["n"] == 2
    assert lat["p50"] == pytest.approx(4.0)
    assert lat["p95"] == pytest.approx(4.9)
    assert lat["max"] == pytest.approx(5.0)
    # own work from sources ([runtime] latency_from: it waits for the detections) to store
    proc = r["latency"]["processing"]
    assert proc["n"] == 2
    assert proc["p50"] == pytest.approx((0.75 + 1.6) / 2)
    assert proc["max"] == pytest.approx(1.6)
    # start event -> execution start (outcome time less the total timing)
    queue = r["latency"]["queue_wait"]
    assert queue["n"] == 2
    assert queue["p50"] == pytest.approx((10.5 + 9.0) / 2)
    assert queue["max"] == pytest.approx(10.5)

    assert list(r["stages"]) == [
        "load",
        "sources",
        "crossmatch",
        "moving",
        "update",
        "store",
        "total",
    ]
    assert r["stages"]["load"]["p50"] == pytest.approx(0.75)
    assert r["stages"]["load"]["p95"] == pytest.approx(0.975)
    assert r["stages"]["total"]["max"] == pytest.approx(5.0)
    assert all(s["n"] == 2 for s in r["stages"].values())

    assert r["failures"] == [
        {
            "fov_id": 3,
            "stage": "moving",
            "hook": "process",
            "rank": 2,
            "error": "ValueError: bad predictions\nmore",
        }
    ]
    by_fov = {v["fov_id"]: v for v in r["per_visit"]}
    assert [v["fov_id"] for v in r["per_visit"]] == [1, 2, 3, 4]
    assert by_fov[1]["events"] == {NEXT_VISIT: 1, DIASOURCES_READY: 1, PREDICTIONS_READY: 1}
    assert by_fov[1]["end_to_end_s"] == pytest.approx(3.0)
    assert by_fov[2]["end_to_end_s"] == pytest.approx(5.0)
    assert by_fov[1]["processing_s"] == pytest.approx(0.75)
    assert by_fov[1]["queue_wait_s"] == pytest.approx(10.5)
    assert by_fov[1]["started"] == pytest.approx(T0 + 10.5)
    assert by_fov[3]["end_to_end_s"] is None and by_fov[3]["outcome"] == "failed"
    assert by_fov[3]["processing_s"] is None and by_fov[3]["queue_wait_s"] is None
    assert by_fov[4]["outcome"] is None and by_fov[4]["events"] == {NEXT_VISIT: 1}
    assert (by_fov[1]["n_alerts"], by_fov[1]["n_new_objects"], by_fov[1]["n_moving"]) == (3, 1, 1)
    assert by_fov[2]["timings"] == TIMINGS[2]
    assert [by_fov[f]["stored"] for f in (1, 2, 3, 4)] == [True, True, False, False]
    assert r["database"]["visits_stored"] == 2
    assert [by_fov[f]["write_s"] for f in (1, 2, 3, 4)] == [0.25, 0.45, None, None]
    (night,) = r["nights"]
    assert (night["store"]["p50"], night["store"]["max"]) == (pytest.approx(0.45), 0.6)
    assert (night["write"]["n"], night["write"]["p50"]) == (2, pytest.approx(0.35))
    assert night["write"]["max"] == 0.45


def test_quality_from_the_replayed_archive(run_dir: Path):
    q = rep.build_report(run_dir)["quality"]
    assert q["processed"]["visits"] == 2
    assert q["not_processed"] == {
        "visits": 1,
        "diasources": 2,
        "by_kind": {"variable": 1, "static": 0, "transient": 0, "mover": 0, "spurious": 1},
    }
    assert q["completeness"]["all"] == {"n": 4, "ok": 3, "fraction": 0.75}
    assert q["purity"] == {
        "n": 4,
        "ok": 3,
        "fraction": 0.75,
        "wrong_by_kind": {"variable": 1, "static": 0, "transient": 0, "mover": 0, "spurious": 0},
    }
    assert q["movers"]["recovery"]["fraction"] == 1.0
    assert q["new_objects"]["n"] == 2 and q["new_objects"]["false"] == 0


def test_text(run_dir: Path):
    text = rep.format_report(rep.build_report(run_dir))
    assert "visits: 2 done, 1 failed, 1 unfinished; wall 70.0 s" in text
    assert "1.7 visits/min" in text
    assert "night 2023-09-30 (MJD 60217.5)" in text
    lines = {line.split(":")[0].strip(): line for line in text.splitlines() if ":" in line}
    assert lines["end to end"].split()[-4:] == ["2", "4.000", "4.900", "5.000"]
    assert lines["processing"].split()[-4:] == ["2", "1.175", "1.558", "1.600"]
    assert lines["queue wait"].split()[-4:] == ["2", "9.750", "10.425", "10.500"]
    assert "ValueError: bad predictions" in text and "more" not in text
    assert "completeness (true links made)" in text
    lines = text.splitlines()
    assert len(lines) < 60
    assert max(len(line) for line in lines) < 140


def test_plots(run_dir: Path, tmp_path: Path):
    r = rep.build_report(run_dir)
    paths = rep.write_plots(run_dir, r)
    assert [p.name for p in paths] == ["sky.png", "latency.png", "stages.png", "store.png"]
    for p in paths:
        assert p.parent == run_dir / "report"
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert p.stat().st_size > 10_000


def test_command_line(run_dir: Path, capsys: pytest.CaptureFixture[str]):
    assert rep.main([str(run_dir), "--json", "--no-plots"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["visits"]["done"] == 2 and got["plots"] == []
    assert json.loads((run_dir / "report.json").read_text()) == got
    assert rep.main([str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert str(run_dir / "report" / "latency.png") in out


def test_archive_argument_and_no_database(run_dir: Path, tmp_path: Path):
    (run_dir / "replay.json").unlink()
    r = rep.build_report(run_dir)
    assert r["quality"] is None and r["replay"] is None
    assert r["totals"]["n_alerts"] == 6  # from the events
    r = rep.build_report(run_dir, archive=tmp_path / "archive")
    assert r["quality"]["completeness"]["all"]["ok"] == 3
    for f in run_dir.glob("nightpipe.sqlite*"):
        f.unlink()
    r = rep.build_report(run_dir, archive=tmp_path / "archive")
    assert r["database"] is None and r["quality"] is None
    assert any("no database" in n for n in r["notes"])
    assert r["per_visit"][0]["n_alerts"] == 3


def test_missing_journal_and_empty_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert rep.main([str(tmp_path / "nowhere")]) == 2
    assert "no journal" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    Journal(tmp_path / "empty" / "journal.sqlite").close()
    r = rep.build_report(tmp_path / "empty")
    assert r["visits"]["n"] == 0
    assert all(s["p50"] is None for s in r["latency"].values())
    assert "visits: 0 done" in rep.format_report(r)
    assert all(p.stat().st_size > 0 for p in rep.write_plots(tmp_path / "empty", r))
