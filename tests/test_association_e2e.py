"""The association pipeline end to end under mpiexec, on a simulated night near the pole.

The night: 18 visits of the real cadence around the south pole, straddling
RA 0 and revisiting fields, with variables, transients, movers (predicted and
not) and spurious detections. Every run replays it into a new
``mpiexec -n N nightpipe run association`` job.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import fastavro
import numpy as np
import pytest

from association.alerts.avro import alert_schema
from association.alerts.packets import read_alerts
from association.sky.fov import fov_resources
from events.archive import Archive
from events.journal import Journal
from tests.nights import copy_archive, db_rows, replay, truth

pytestmark = pytest.mark.mpi

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def archive(pole_archive) -> Path:
    return pole_archive


@pytest.fixture(scope="session")
def reference(pole_reference) -> tuple[Path, dict]:
    summary = json.loads((pole_reference / "replay.json").read_text())["summary"]
    return pole_reference, summary


def _visits(archive: Path) -> list[int]:
    return sorted({e.fov_id for e in Archive(archive).events() if e.type == "telescope.next_visit"})


def test_night_end_to_end(archive, reference):
    run, summary = reference
    visits = _visits(archive)
    assert summary["done"] == len(visits) and summary["failed"] == 0
    rows = db_rows(run)
    t = truth(archive)
    # every DIASource of the night stored once, with its association
    stored = {r[0]: r for r in rows["diasources"] if r[1] != -1}  # -1: preloaded history
    assert set(stored) == set(t["diaSourceId"].tolist())
    cols = ["diaSourceId", "visit", "diaObjectId", "ssObjectId"]
    got = {sid: dict(zip(cols, r[:4], strict=True)) for sid, r in stored.items()}
    kind = dict(zip(t["diaSourceId"].tolist(), t["kind"].tolist(), strict=True))
    true_obj = dict(zip(t["diaSourceId"].tolist(), t["diaObjectId"].tolist(), strict=True))
    true_ss = dict(zip(t["diaSourceId"].tolist(), t["ssObjectId"].tolist(), strict=True))
    predicted = dict(zip(t["diaSourceId"].tolist(), t["predicted"].tolist(), strict=True))
    known = [s for s in got if kind[s] in ("variable", "static")]
    assert known, "the night has sources of known Objects"
    linked = sum(got[s]["diaObjectId"] == true_obj[s] for s in known)
    assert linked / len(known) >= 0.99
    movers = [s for s in got if kind[s] == "mover" and predicted[s]]
    assert movers, "the night has predicted movers"
    found = sum(got[s]["ssObjectId"] == true_ss[s] for s in movers)
    assert found / len(movers) >= 0.95
    assert all(got[s]["diaObjectId"] == 0 for s in got if got[s]["ssObjectId"])
    # new Objects: made from DIASources that matched nothing, id = the source's id
    objects = {r[0] for r in rows["objects"]}
    new = [s for s in got if got[s]["diaObjectId"] == s]
    assert new and all(s in objects for s in new)
    assert {kind[s] for s in new} <= {"transient", "spurious", "mover"}
    # one alert per DIASource not taken by a moving-object match; files valid Avro
    alert_ids = {r[0] for r in rows["alerts"]}
    assert alert_ids == {s for s in got if got[s]["ssObjectId"] == 0}
    schema = alert_schema()
    n_files = 0
    for v in visits:
        packets = read_alerts(run / "alerts" / f"visit_{v}.avro")
        n_files += 1
        for p in packets:
            assert fastavro.validation.validate(p, schema, raise_errors=True)
            src = p["diaSource"]
            assert src["visit"] == v and p["alertId"] == src["diaSourceId"]
            assert p["diaObject"]["diaObjectId"] == got[src["diaSourceId"]]["diaObjectId"]
            assert all(prv["visit"] != v for prv in p["prvDiaSources"])
        visit_row = next(r for r in rows["visits"] if r[0] == v)
        names = [
            "visit",
            "mjd",
            "ra",
            "dec",
            "filter",
            "n_sources",
            "n_alerts",
            "n_new_objects",
            "n_moving",
        ]
        vr = dict(zip(names, visit_row, strict=False))
        assert vr["n_alerts"] == len(packets)
        assert vr["n_sources"] == sum(1 for s in got.values() if s["visit"] == v)
    assert n_files == len(visits)
    # the outbound events: alerts_ready per visit, with its counts
    with Journal(run / "journal.sqlite") as j:
        ready = [e.event for e in j.entries(type="association.alerts_ready")]
        done = {e.event.fov_id: e.event.body for e in j.entries("out", "association.visit_done")}
    assert sorted(e.fov_id for e in ready) == visits
    body = ready[0].body
    assert Path(body["path"]).exists()
    # the transaction's own time, within the store stage's (which adds the wait behind others)
    for e in ready:
        assert 0 < e.body["write_s"] <= done[e.fov_id]["timings"]["store"]


@pytest.mark.parametrize("ranks", [2, 5])
def test_same_catalogue_for_1_2_and_4_slices(archive, reference, tmp_path, ranks):
    run = tmp_path / f"run{ranks}"
    summary = replay(archive, run, ranks=ranks)
    assert summary["failed"] == 0
    assert db_rows(run) == db_rows(reference[0])


def test_postgres_gives_the_same_database(archive, reference, pg_server, tmp_path):
    url = pg_server.create_database("night_e2e")
    summary = replay(archive, tmp_path / "run", ranks=3, db_url=url)
    assert summary["failed"] == 0
    assert db_rows(tmp_path / "run", url) == db_rows(reference[0])


def test_overlapping_visits_in_flight_equal_one_at_a_time(archive, reference, tmp_path):
    run, _ = reference
    # the reference run had overlapping visits in flight at once
    with Journal(run / "journal.sqlite") as j:
        starts = {
            e.event.fov_id: (e.received, e.event) for e in j.entries(type="telescope.next_visit")
        }
        ends = j.outcome_times()
    res = {f: fov_resources(ev) for f, (_, ev) in starts.items()}
    overlapping_in_flight = [
        (a, b)
        for a in starts
        for b in starts
        if starts[a][0] < starts[b][0] < ends[a] and not res[a].isdisjoint(res[b])
    ]
    assert overlapping_in_flight, "the night should put overlapping visits in flight together"
    serial = replay(archive, tmp_path / "serial", ranks=3, max_in_flight=1)
    assert serial["failed"] == 0
    assert db_rows(tmp_path / "serial") == db_rows(run)


def _drop_visits(archive: Path, fovs: set[int]) -> None:
    lines = (archive / "events.jsonl").read_text().splitlines()
    keep = [x for x in lines if json.loads(x)["fov_id"] not in fovs]
    (archive / "events.jsonl").write_text("\n".join(keep) + "\n")


def _failures(run: Path) -> dict[int, dict]:
    with Journal(run / "journal.sqlite") as j:
        rows = j.entries(type="association.visit_failed")
    return {e.event.fov_id: e.event.body for e in rows}


def test_bad_files_and_failures_fail_only_their_visit(archive, tmp_path):
    """Bad files fail their visit at read; a failure after the update is rolled back.

    The bad files: missing, a column missing, a NaN, a duplicate id, and a
    symlink out of the data roots (refused before it is opened).

    Either way nothing of the visit is stored and the other visits end exactly as
    in the same night without the failed visits.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    bad = copy_archive(archive, tmp_path / "bad")
    visits = _visits(bad)
    v_missing, v_column, v_nan, v_dup, v_empty = (
        visits[2],
        visits[5],
        visits[8],
        visits[11],
        visits[14],
    )
    victim = visits[4]  # fails in a stage after update, before its changes are decided
    v_link = visits[16]  # its file a symlink out of the archive (the data root)

    def path(v: int) -> Path:
        return bad / "data" / f"visit_{v}_diasources.parquet"

    path(v_missing).unlink()
    t = pq.read_table(path(v_column))
    pq.write_table(t.drop(["psfFlux"]), path(v_column))
    t = pq.read_table(path(v_nan))
    dec = t.column("dec").to_numpy().copy()
    dec[3] = np.nan
    pq.write_table(t.set_column(t.column_names.index("dec"), "dec", pa.array(dec)), path(v_nan))
    t = pq.read_table(path(v_dup))
    ids = t.column("diaSourceId").to_numpy().copy()
    ids[7] = ids[2]
    pq.write_table(t.set_column(0, "diaSourceId", pa.array(ids)), path(v_dup))
    t = pq.read_table(path(v_empty))
    pq.write_table(t.slice(0, 0), path(v_empty))
    outside = tmp_path / "elsewhere.parquet"
    path(v_link).rename(outside)
    path(v_link).symlink_to(outside)

    text = (ROOT / "association" / "pipelines" / "association.toml").read_text()
    boom = (
        '[[stages]]\nname = "boom"\n'
        f'class = "{ROOT / "tests" / "pipelines" / "trace_stages.py"}:Trace"\n'
        f"config = {{ fail_fov = {victim}, fail_slice = 0 }}\n\n"
    )
    text = text.replace('[[stages]]\nname = "share"', boom + '[[stages]]\nname = "share"')
    cfg = tmp_path / "boom.toml"
    cfg.write_text(text)
    assert [s["name"] for s in tomllib.loads(text)["stages"]][-3:] == ["boom", "share", "store"]

    summary = replay(bad, tmp_path / "run", ranks=3, config=str(cfg))
    failed = _failures(tmp_path / "run")
    assert set(failed) == {v_missing, v_column, v_nan, v_dup, victim, v_link}
    assert summary["done"] == len(visits) - 6
    for v in (v_missing, v_column, v_nan, v_dup):
        assert failed[v]["stage"] == "sources" and failed[v]["hook"] == "preprocess"
        assert f"visit_{v}_diasources.parquet" in failed[v]["error"]
    assert "column 'psfFlux'" in failed[v_column]["error"]
    assert "column 'dec', row 3" in failed[v_nan]["error"]
    assert "column 'diaSourceId', row 7: duplicate value" in failed[v_dup]["error"]
    assert "already in row 2" in failed[v_dup]["error"]
    assert (
        "InputError" in failed[v_missing]["error"] and "no such file" in failed[v_missing]["error"]
    )
    assert (failed[victim]["stage"], failed[victim]["hook"]) == ("boom", "process")
    assert f"resolves to '{outside}', outside the data roots" in failed[v_link]["error"]
    assert failed[v_link]["stage"] == "sources"
    log = (tmp_path / "run" / "nightpipe.log").read_text()
    assert f"exec={victim} INFO" in log and "catalogue changes rolled back" in log
    rows = db_rows(tmp_path / "run")
    empty_row = next(r for r in rows["visits"] if r[0] == v_empty)
    assert empty_row[5:7] == (0, 0)  # no sources, no alerts: fine
    assert read_alerts(tmp_path / "run" / "alerts" / f"visit_{v_empty}.avro") == []
    # nothing of a failed visit is stored, and the others are exactly as without them
    ref = copy_archive(bad, tmp_path / "ref")
    _drop_visits(ref, {v_missing, v_column, v_nan, v_dup, victim, v_link})
    assert replay(ref, tmp_path / "refrun", ranks=3)["failed"] == 0
    assert rows == db_rows(tmp_path / "refrun")


def test_a_stage_added_through_the_toml_alone(pole_archive, tmp_path):
    """A toy stage reads the typed visit state and puts its figures in the outcome."""
    from association.cli.main import PIPELINES

    toy = Path(__file__).parent / "pipelines" / "band_counts.py"
    cfg = tmp_path / "association_plus.toml"
    cfg.write_text(
        (PIPELINES / "association.toml").read_text()
        + f'\n[[stages]]\nname = "bands"\nclass = "{toy}:BandCounts"\n'
    )
    summary = replay(pole_archive, tmp_path / "run", ranks=2, config=str(cfg))
    assert summary["failed"] == 0, summary
    with Journal(tmp_path / "run" / "journal.sqlite") as j:
        done = {e.event.fov_id: e.event.body for e in j.entries("out", "association.visit_done")}
        ready = {e.event.fov_id: e.event.body for e in j.entries("out", "association.alerts_ready")}
    assert len(done) == summary["visits"] > 0
    for fov, body in done.items():
        per_band = {k: v for k, v in body["counts"].items() if k.startswith("band_")}
        assert per_band and set(per_band) <= {f"band_{b}" for b in "ugrizy"}
        assert sum(per_band.values()) == ready[fov]["n_sources"]
        assert "bands" in body["timings"]
