"""Nights: replay timing, kill -9 and resume, quality on a real-cadence night, demo."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from association.nights.replay import Replayer, ReplayError, ReplayOptions
from events.journal import Journal
from framework.mpiexec import BIN
from tests.nights import db_rows, kill_master, make_archive, outcomes, replay, replay_cmd

pytestmark = pytest.mark.mpi

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pole(pole_archive) -> Path:
    return pole_archive


def test_replay_keeps_the_scaled_schedule(tmp_path):
    archive = make_archive(tmp_path / "a", max_visits=6)
    events = [json.loads(x) for x in (archive / "events.jsonl").read_text().splitlines()]
    span = events[-1]["time"] - events[0]["time"]
    speed = span / 3.0  # the night's first 6 visits in about 3 s
    summary = replay(archive, tmp_path / "run", ranks=3, speed=speed)
    assert summary["failed"] == 0
    sends = [
        json.loads(x) for x in (tmp_path / "run" / "replay_sends.jsonl").read_text().splitlines()
    ]
    assert len(sends) == len(events)
    due = {e["id"]: (e["time"] - events[0]["time"]) / speed for e in events}
    late = np.array([s["sent"] - due[s["id"]] for s in sends])
    # Each send is timed from the start, so one the OS held back delays no other:
    # most are on time to a few ms and a rare one is late by a scheduling hiccup.
    assert np.median(np.abs(late)) <= 0.020, (
        f"median deviation {np.median(np.abs(late)) * 1e3:.1f} ms"
    )
    assert np.abs(late).max() <= 0.5, f"worst deviation {np.abs(late).max() * 1e3:.1f} ms"
    # A send waits for the master to journal the one before (an fsync, which a busy
    # disk can hold up for tens of ms); counted from when it could go, each is on time.
    free = np.array([due[s["id"]] for s in sends])
    free[1:] = np.maximum(free[1:], [s["acked"] for s in sends[:-1]])
    own = np.array([s["sent"] for s in sends]) - free
    assert np.quantile(np.abs(own), 0.9) <= 0.050, f"own delays {np.sort(own) * 1e3} ms"
    assert all(s["acked"] >= s["sent"] for s in sends)
    assert max(s["due"] for s in sends) > 2.5  # the spacing was kept, not collapsed


def test_replay_refuses_a_fine_order_its_catalogue_was_not_made_with(pole, tmp_path):
    opts = ReplayOptions(archive=pole, run_dir=tmp_path / "run", sets=["settings.fine_order=18"])
    with pytest.raises(ReplayError) as err:
        Replayer(opts).preload()
    assert "fine indexes are of fine_order=20; the pipeline says fine_order=18" in str(err.value)
    assert not (tmp_path / "run").exists()


def _replay_cmd(archive: Path, run: Path) -> list[str]:
    return replay_cmd(run, archive)


def _kill_when(run: Path, proc: subprocess.Popen, n: int) -> int:
    """kill -9 the master once `n` visits have ended; how many had."""

    def ready() -> bool:
        if not (run / "endpoint.json").exists() or not (run / "journal.sqlite").exists():
            return False
        with Journal(run / "journal.sqlite") as j:
            return len(j.outcomes()) >= n and j.count(direction="in") > 0

    kill_master(run, proc, ready, timeout=120)
    return len(outcomes(run))


def test_kill9_during_replay_then_resume(pole, pole_reference, tmp_path):
    """Killed right after start, then mid-night, then near the end; each time resumed."""
    run = tmp_path / "run"
    visits = _visits(pole)
    seen = []
    for kill_after in (0, 6, 13):
        proc = subprocess.Popen(
            _replay_cmd(pole, run), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        seen.append(_kill_when(run, proc, kill_after))
    assert seen[-1] < visits
    again = subprocess.run(_replay_cmd(pole, run), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    with Journal(run / "journal.sqlite") as j:
        outcomes = j.outcomes()
        sent = [e.event for e in j.entries(direction="out")]
    per_visit = Counter(e.fov_id for e in sent if e.type.startswith("association.visit_"))
    assert len(outcomes) == visits and set(outcomes.values()) == {"done"}
    assert set(per_visit.values()) == {1}  # each visit's outcome exactly once
    assert db_rows(run) == db_rows(pole_reference)


def _visits(archive: Path) -> int:
    lines = (archive / "events.jsonl").read_text().splitlines()
    return len({json.loads(x)["fov_id"] for x in lines})


@pytest.fixture(scope="module")
def night200(tmp_path_factory) -> tuple[Path, Path]:
    """200 visits of the real cadence, default sky and noise, replayed: 3 ranks, SQLite."""
    base = tmp_path_factory.mktemp("night200")
    archive = make_archive(base / "archive", region=None, max_visits=200)
    run = base / "run"
    summary = replay(archive, run, ranks=3)
    assert summary["visits"] == 200
    return archive, run


def test_quality_on_a_real_cadence_night(night200):
    from association.nights.report import build_report

    archive, run = night200
    rep = build_report(run, archive)
    assert rep["visits"]["done"] == 200 and rep["visits"]["failed"] == 0
    q = rep["quality"]
    for kind in ("static", "variable"):
        c = q["completeness"][kind]
        assert c["n"] > 100 and c["fraction"] >= 0.99, (kind, c)
    assert q["purity"]["fraction"] >= 0.99, q["purity"]
    assert q["movers"]["recovery"]["n"] > 1000
    assert q["movers"]["recovery"]["fraction"] >= 0.95, q["movers"]
    assert q["new_objects"]["false_preloaded"] == 0
    text = subprocess.run(
        [str(BIN / "nightpipe"), "report", str(run), "--no-plots"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert text.returncode == 0 and "completeness" in text.stdout, text.stderr


def test_same_night_on_postgres(pg_server, tmp_path):
    """The first 50 visits of the real cadence (overlaps, revisits), on both backends.

    A quarter of the default sky density: the same cadence, a quarter of the catalogue to load.
    """
    archive = make_archive(
        tmp_path / "archive", region=None, max_visits=50, density_static_per_deg2=500.0
    )
    assert replay(archive, tmp_path / "sqlite", ranks=3)["failed"] == 0
    url = pg_server.create_database("night50")
    summary = replay(archive, tmp_path / "run", ranks=3, db_url=url)
    assert summary["failed"] == 0
    assert db_rows(tmp_path / "run", url) == db_rows(tmp_path / "sqlite")
