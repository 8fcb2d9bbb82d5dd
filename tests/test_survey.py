"""A survey: nights simulated on from each other, replayed into one catalogue; the recent window."""

from __future__ import annotations

import collections
import dataclasses
import sqlite3
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from association.alerts.packets import read_alerts
from association.cli.main import config_path
from association.nights.opsim import BUNDLED_DB, night_start
from association.nights.preload import preload, preload_note
from association.nights.replay import Replayer, ReplayError, ReplayOptions
from association.nights.report import build_report, catalogue_sizes, gate
from association.nights.sequence import replay_nights
from association.nights.simulate import NIGHT_ID_SHIFT, SimConfig, simulate
from association.nights.survey import SurveyError, survey_of
from association.storage import open_storage
from events.archive import Archive
from events.client import Injector
from events.envelope import Event
from events.types import SHUTDOWN
from framework.config import load_config
from framework.mpiexec import BIN
from framework.runner import InProcessPipeline
from tests.databases import PARAMS
from tests.nights import db_rows, kill_master, make_archive, outcomes, replay_cmd, truth

REGION = (326.16, -41.87, 2.0)
"""Two visits on each of the first three nights, the fields overlapping from night to night."""
NIGHTS = (60217.5, 60218.5, 60219.5)
WINDOW_DAYS = 1.5
"""The recent-history window of the replays: night 3 sees night 2's DIASources, not night 1's."""
SETS = (f"settings.recent_days={WINDOW_DAYS}",)


def _survey(base: Path) -> list[Path]:
    archives: list[Path] = []
    for i, night in enumerate(NIGHTS):
        after = archives[-1] if archives else None
        # statics detected more often than by default, so that some are seen on two nights
        sim = {} if after else {"p_detect_static": 0.05}
        archives.append(make_archive(base / f"n{i + 1}", REGION, None, night, after, **sim))
    return archives


@pytest.fixture(scope="module")
def survey(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three nights of one survey."""
    return _survey(tmp_path_factory.mktemp("survey"))


def _table(path: Path) -> dict[str, np.ndarray]:
    t = pq.read_table(path)
    return {c: t[c].to_numpy(zero_copy_only=False) for c in t.column_names}


def test_simulate_continues_the_sky(survey, tmp_path):
    n1, n2, n3 = survey
    # same seed, same earlier night: the same bytes
    again = make_archive(tmp_path / "n2", REGION, None, NIGHTS[1], n1)
    files = sorted(p.relative_to(n2) for p in n2.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in files:
        if rel.name != "manifest.json":
            assert (n2 / rel).read_bytes() == (again / rel).read_bytes(), rel

    m1, m2 = Archive(n1).manifest, Archive(n2).manifest
    assert m2["source"]["config"] == m1["source"]["config"]
    s2 = m2["source"]["survey"]
    assert s2["id"] == m1["source"]["survey"]["id"] and s2["night_index"] == 1
    assert s2["nights"] == [60217.5, 60218.5] and s2["after_night_mjd"] == 60217.5

    # Objects: the later night's catalogue is only the sky new to the survey
    cat1, cat2 = _table(n1 / "catalogue/objects.parquet"), _table(n2 / "catalogue/objects.parquet")
    assert len(cat2["diaObjectId"]) and not np.isin(cat2["diaObjectId"], cat1["diaObjectId"]).any()
    known = np.concatenate([cat1["diaObjectId"], cat2["diaObjectId"]])
    t1, t2 = truth(n1), truth(n2)
    star = np.isin(t2["kind"], ("static", "variable"))
    assert np.isin(t2["diaObjectId"][star], known).all()
    # the same Object seen on both nights: at its catalogue position both times
    both = np.intersect1d(t1["diaObjectId"][t1["kind"] == "variable"], t2["diaObjectId"])
    assert both.size > 100
    src2 = _sources(n2)
    at = np.searchsorted(cat1["diaObjectId"], both, sorter=np.argsort(cat1["diaObjectId"]))
    where = np.argsort(cat1["diaObjectId"])[at]
    first = np.array([np.flatnonzero(t2["diaObjectId"] == o)[0] for o in both])
    sep = _sep_arcsec(cat1["ra"][where], cat1["dec"][where], src2["ra"][first], src2["dec"][first])
    assert np.median(sep) < 0.3 and sep.max() < 3.0

    # movers go on along their orbits; the new ones are over the new sky, with new ids
    mv1, mv2 = _table(n1 / "truth/movers.parquet"), _table(n2 / "truth/movers.parquet")
    old = mv2["ssObjectId"] < 1 << NIGHT_ID_SHIFT
    for k in mv1:
        assert np.array_equal(mv2[k][old], mv1[k]), k
    assert (mv2["ssObjectId"][~old] >> NIGHT_ID_SHIFT == 1).all() and (~old).sum() > 0
    seen = (t2["kind"] == "mover") & (t2["ssObjectId"] < 1 << NIGHT_ID_SHIFT)
    assert seen.sum() > 20  # night 1's movers, detected on night 2 where their orbits took them

    # transients: night 1's that are still on, faded; the night's own, with new ids
    tr1, tr2 = _table(n1 / "truth/transients.parquet"), _table(n2 / "truth/transients.parquet")
    start2 = Archive(n2).events()[0].body["mjd"]
    carried = tr2["transientId"] < 1 << NIGHT_ID_SHIFT
    assert set(tr2["transientId"][carried]) == set(tr1["transientId"][tr1["mjdEnd"] > start2])
    assert (tr1["mjdEnd"] > tr1["mjdStart"]).all()
    assert (tr2["transientId"][~carried] >> NIGHT_ID_SHIFT == 1).all()
    assert set(t2["transientId"][t2["kind"] == "transient"]) & set(tr1["transientId"])

    # a survey keeps its settings and goes forward in time
    with pytest.raises(SurveyError, match="density_static_per_deg2"):
        simulate(BUNDLED_DB, tmp_path / "x", None, SimConfig(density_static_per_deg2=5.0), after=n1)
    with pytest.raises(SurveyError, match="does not come after"):
        make_archive(tmp_path / "y", REGION, None, NIGHTS[0], n2)
    cmd = [str(BIN / "nightpipe"), "simulate", str(tmp_path / "z"), "--after", str(n3)]
    bad = subprocess.run([*cmd, "--seed", "2"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "keeps the earlier night's seed" in bad.stderr


def _sources(archive: Path) -> dict[str, np.ndarray]:
    """Every DIASource of the night in the order of its truth file (visit by visit)."""
    parts = [
        _table(archive / f"data/visit_{int(v)}_diasources.parquet")
        for v in dict.fromkeys(truth(archive)["visit"].tolist())
    ]
    return {k: np.concatenate([p[k] for p in parts]) for k in ("diaSourceId", "ra", "dec")}


def _sep_arcsec(ra1, dec1, ra2, dec2) -> np.ndarray:
    a1, d1, a2, d2 = (np.radians(x) for x in (ra1, dec1, ra2, dec2))
    c = np.sin(d1) * np.sin(d2) + np.cos(d1) * np.cos(d2) * np.cos(a1 - a2)
    return np.degrees(np.arccos(np.clip(c, -1, 1))) * 3600


def test_a_night_out_of_order_is_refused(survey, tmp_path):
    n1, n2, n3 = survey
    with pytest.raises(ReplayError, match=r"n3 \(night 60219.5\) does not continue .*n1"):
        replay_nights(ReplayOptions(archive=n1, run_dir=tmp_path / "a"), [n1, n3])
    with pytest.raises(
        ReplayError, match=r"continues a survey from night 60217\.5, which database"
    ):
        Replayer(ReplayOptions(archive=n2, run_dir=tmp_path / "b")).preload()


def test_catalogue_size_at_each_store():
    """From the Stores' and loads' times and counts back from the Objects there now."""
    row = collections.namedtuple("row", "visit stored_at n_new_objects")
    stored = [row(1, 10.0, 5), row(3, 40.0, 2), row(2, 20.0, 3)]
    loads = [{"at": 5.0, "objects": 100}, {"at": 30.0, "objects": 50}, {"objects": 7}]
    assert catalogue_sizes(stored, loads, 167) == {1: 112, 2: 115, 3: 167}


# -- the survey replayed --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def survey_run(survey, tmp_path_factory) -> Path:
    """The three nights replayed into one run directory: 3 ranks, SQLite, a 1.5-day window."""
    run = tmp_path_factory.mktemp("survey-run") / "run"
    opts = ReplayOptions(archive=survey[0], run_dir=run, ranks=3, sets=list(SETS))
    summary = replay_nights(opts, survey)
    assert summary["failed"] == 0 and summary["done"] == 6, summary
    return run


def _db(run: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{run / 'nightpipe.sqlite'}?mode=ro", uri=True)


@pytest.mark.mpi
def test_three_nights_in_one_catalogue(survey, survey_run):
    rep = build_report(survey_run)
    assert rep["visits"]["done"] == 6 and [n["done"] for n in rep["nights"]] == [2, 2, 2]
    assert len(rep["quality"]["nights"]) == 3
    assert gate(rep) == []  # quality holds over the three nights and on each
    sizes = [n["catalogue_objects"] for n in rep["nights"]]
    assert sizes[0][0] < sizes[1][0] < sizes[2][0]  # the catalogue grows night by night

    tr = {k: np.concatenate([truth(a)[k] for a in survey]) for k in truth(survey[0])}
    night_of = dict.fromkeys(truth(survey[0])["visit"].tolist(), 1)
    night_of |= dict.fromkeys(truth(survey[1])["visit"].tolist(), 2)
    night_of |= dict.fromkeys(truth(survey[2])["visit"].tolist(), 3)
    night = np.array([night_of[v] for v in tr["visit"].tolist()])
    with _db(survey_run) as conn:
        got = dict(conn.execute("SELECT diaSourceId, diaObjectId FROM diasources WHERE visit >= 0"))
        moving = set(conn.execute("SELECT visit, ssObjectId, diaSourceId FROM moving_matches"))
        objects = {r[0] for r in conn.execute("SELECT diaObjectId FROM objects")}
    linked = np.array([got[s] for s in tr["diaSourceId"].tolist()])

    # a static Object of night 1 seen again on night 3 keeps its id
    for kind in ("static", "variable"):
        sel = tr["kind"] == kind
        again = np.intersect1d(tr["diaObjectId"][sel & (night == 1)], tr["diaObjectId"][night == 3])
        assert again.size >= (10 if kind == "static" else 100), kind
        rows = sel & np.isin(tr["diaObjectId"], again)
        assert np.array_equal(linked[rows], tr["diaObjectId"][rows]), kind
    # so does an Object the pipeline made on night 1 (a transient's), found again on night 3
    trans = tr["kind"] == "transient"
    both = np.intersect1d(tr["transientId"][trans & (night == 1)], tr["transientId"][night == 3])
    assert both.size >= 1
    for t in both:
        rows = np.flatnonzero(trans & (tr["transientId"] == t))
        made = tr["diaSourceId"][rows[0]]  # its first detection made it
        assert linked[rows[0]] == made and (linked[rows] == made).all()

    # a mover of night 1 is matched on night 2 to its prediction, not made an Object
    mover = (tr["kind"] == "mover") & tr["predicted"] & (night == 2)
    mover &= np.isin(tr["ssObjectId"], tr["ssObjectId"][(tr["kind"] == "mover") & (night == 1)])
    assert mover.sum() >= 20
    rows = zip(tr["visit"][mover], tr["ssObjectId"][mover], tr["diaSourceId"][mover], strict=True)
    for v, ss, s in rows:
        assert (int(v), int(ss), int(s)) in moving
        assert int(s) not in objects and got[int(s)] == 0


@pytest.mark.mpi
def test_the_recent_window_in_alerts_not_in_the_database(survey, survey_run):
    """Night 3's alerts carry night 2's DIASources of their Object, not night 1's (1.5 days)."""
    with _db(survey_run) as conn:
        mjd = dict(conn.execute("SELECT visit, mjd FROM visits"))
        history = {}
        for oid, t, s in conn.execute(
            "SELECT diaObjectId, midpointMjdTai, diaSourceId FROM diasources WHERE visit >= 0"
        ):
            history.setdefault(oid, []).append((t, s))
    nights = {v: night_start(m) for v, m in mjd.items()}
    older_in_db = newer_in_prv = 0
    for visit, start in sorted(nights.items()):
        for alert in read_alerts(survey_run / "alerts" / f"visit_{visit}.avro"):
            prv = {p["diaSourceId"]: p["midpointMjdTai"] for p in alert["prvDiaSources"]}
            # the window: nothing older than 1.5 days before the visit, whatever the database has
            assert all(t >= mjd[visit] - WINDOW_DAYS for t in prv.values()), alert["alertId"]
            oid = alert["diaSource"]["diaObjectId"]
            earlier = [(t, s) for t, s in history.get(oid, []) if t < start]
            if start == NIGHTS[2]:
                older = [s for t, s in earlier if t < mjd[visit] - WINDOW_DAYS]
                older_in_db += bool(older)  # night 1's DIASources: in the database only
                assert not set(older) & set(prv)
            if start == NIGHTS[1]:  # night 2: night 1's DIASources are within the window
                newer_in_prv += bool(earlier) and {s for _, s in earlier} <= set(prv)
    assert older_in_db >= 100 and newer_in_prv >= 100


@pytest.mark.mpi
def test_a_survey_resumes_after_a_crash_mid_sequence(survey, survey_run, tmp_path):
    """kill -9 while night 2 is being played; run again: night 1 is skipped, the rest resumes."""
    run = tmp_path / "run"
    cmd = replay_cmd(run, *survey, sets=SETS)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    first_of_night2 = Archive(survey[1]).events()[0].fov_id

    def night2_playing() -> bool:
        return (run / "endpoint.json").exists() and first_of_night2 in _started(run)

    kill_master(run, proc, night2_playing)
    assert len(outcomes(run)) < 6
    t0 = time.time()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "night 1 of 3 (n1, MJD 60217.5): its 2 visits finished before; skipped" in again.stderr
    assert set(outcomes(run).values()) == {"done"} and len(outcomes(run)) == 6
    assert db_rows(run) == db_rows(survey_run), f"resumed in {time.time() - t0:.0f} s"


def _started(run: Path) -> set[int]:
    """Visits whose telescope.next_visit the journal holds."""
    if not (run / "journal.sqlite").exists():
        return set()
    conn = sqlite3.connect(f"file:{run / 'journal.sqlite'}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT fov_id FROM events WHERE type = 'telescope.next_visit' AND direction = 'in'"
        )
        return {r[0] for r in rows}
    except sqlite3.OperationalError:  # the journal is being made
        return set()
    finally:
        conn.close()


def test_what_falls_out_of_the_window_leaves_memory(survey, tmp_path):
    """One pipeline, in this process, through the three nights: its Slices' memory, inspected.

    Night 1's DIASources are in memory on night 2 (within 1.5 days), gone on
    night 3, and still in the database.
    """
    run = tmp_path / "run"
    with open_storage(None, run, PARAMS, create=True) as storage:
        for archive in survey:  # the sky of all three nights, loaded before the first
            a = Archive(archive)
            s = survey_of(a.manifest)
            note = preload_note(s["night_index"], s["nights"][-1])
            files = a.files
            preload(storage, files["catalogue_objects"], files["catalogue_diasources"], None, note)
    settings = {"recent_days": WINDOW_DAYS, "data_roots": [str(survey[0].parent)]}
    config = load_config(config_path("association"), {"settings": settings})
    pipe = InProcessPipeline(config, run, n_slices=2).start()
    inj = Injector(pipe.master.endpoint.address, timeout=120)
    held = []
    try:
        for archive in survey:
            events = Archive(archive).events()
            for e in events:
                assert inj.send(dataclasses.replace(e, time=time.time()))["ok"]
            _wait_for(run, {e.fov_id for e in events})
            held.append(_held_recent(pipe))
    finally:
        inj.send(Event.new(SHUTDOWN, None, {"reason": "test done"}, source="test"))
        inj.close()
        assert pipe.join(120) == 0
    night1 = truth(survey[0])["diaSourceId"]
    assert np.isin(night1, held[1]).sum() > 1000  # night 2: night 1's DIASources in memory
    assert not np.isin(night1, held[2]).any()  # night 3: none of them
    with _db(run) as conn:
        stored = {r[0] for r in conn.execute("SELECT diaSourceId FROM diasources WHERE visit >= 0")}
    assert set(night1.tolist()) <= stored


def _held_recent(pipe: InProcessPipeline) -> np.ndarray:
    """Every recent DIASource id in the Slices' memory."""
    ids = []
    for s in pipe.slices:
        cat = s.shared.catalogue
        ids += [cat.chunk(c).recent["diaSourceId"] for c in cat.held()]
    return np.concatenate(ids)


def _wait_for(run: Path, visits: set[int], timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not visits <= set(outcomes(run)):
        assert time.time() < deadline, f"visits {visits - set(outcomes(run))} unfinished"
        time.sleep(0.1)
    assert {outcomes(run)[v] for v in visits} == {"done"}
