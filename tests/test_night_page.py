"""The live night page: what it reads from a run directory, what it serves, and how it holds up."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from association.cli.main import main as nightpipe
from association.nights.page import panels, render_page
from association.nights.serve import NightServer, ServeError
from association.nights.watch import RunWatcher
from events.deadletter import DeadLetters
from events.envelope import Event
from events.journal import Journal
from events.types import (
    ALERTS_READY,
    DIASOURCES_READY,
    NEXT_VISIT,
    VISIT_DONE,
    VISIT_FAILED,
)
from framework.status import write_status

TIMINGS = {"load": 0.5, "sources": 0.1, "crossmatch": 0.2, "moving": 0.1, "update": 0.05}
TIMINGS["store"] = 0.3
EVIL = "<script>alert('x')</script> & more"


def start(j: Journal, fov: int) -> None:
    body = {"mjd": 60218.0 + fov / 100, "ra": 10.0 + fov, "dec": -30.0, "filter": "r"}
    assert j.accept([Event.new(NEXT_VISIT, fov, body)]) == [True]


def finish(j: Journal, fov: int) -> None:
    j.accept([Event.new(DIASOURCES_READY, fov, {"paths": ["d.parquet"]})])
    j.record_out(Event.new(ALERTS_READY, fov, {"path": "a.avro", "n_alerts": 4, "n_sources": 5}))
    done = Event.new(VISIT_DONE, fov, {"timings": {**TIMINGS, "total": 2.0}})
    assert j.record_outcome(fov, "done", done)


def fail(j: Journal, fov: int) -> None:
    body = {"stage": "moving", "hook": "process", "rank": 2, "error": EVIL}
    assert j.record_outcome(fov, "failed", Event.new(VISIT_FAILED, fov, body))


def status(run: Path, master_state: str = "running", executions: int = 1) -> None:
    now = time.time()
    slice_board = {"rank": 1, "state": "busy", "exec": 3, "stage": "load", "hook": "process"}
    slice_board |= {"started": now - 10.0, "updated": now, "busy_seconds": 5.0, "items_done": 7}
    slice_board |= {"catalogue_objects": 1234, "observed": [[1, "db_read", 0.1]]}
    write_status(
        run,
        {
            "pipeline": "association",
            "time": now,
            "state": master_state,
            "in_flight": executions,
            "ranks": {"0": {"rank": 0, "state": master_state}, "1": slice_board},
            "executions": [{"key": 3, "stage": "load", "phase": "dispatched"}][:executions],
        },
    )


def test_watcher_reads_the_run_directory_as_it_grows(tmp_path: Path):
    run = tmp_path / "run"
    watcher = RunWatcher(run)
    snap = watcher.snapshot()
    assert snap["state"] == "waiting" and snap["visits"]["known"] == 0
    run.mkdir()
    (run / "replay.json").write_text(json.dumps({"visits": 5, "speed": "max"}))
    with Journal(run / "journal.sqlite") as j:
        for fov in (1, 2, 3):
            start(j, fov)
        snap = watcher.snapshot()
        assert snap["visits"] | {} == {
            "expected": 5,
            "known": 3,
            "done": 0,
            "failed": 0,
            "in_flight": 0,
            "queued": 3,
            "unfinished": 3,
        }
        assert snap["night"]["label"] == "night 2023-09-30 (MJD 60217.5)"
        status(run)
        finish(j, 1)
        fail(j, 2)
        j.accept([Event.new(DIASOURCES_READY, 9, {"paths": []})])  # never starts
        assert len(j.expire_fovs([9], NEXT_VISIT)) == 1
        with DeadLetters(run / "deadletter.jsonl") as dead:
            dead.write(b"{not json", "not JSON", "endpoint")
            dead.write(b"{}", EVIL, "endpoint")
        with (run / "deadletter.jsonl").open("a") as f:
            f.write('{"reason": "half a line')  # being written: not read yet
        snap = watcher.snapshot()
    v = snap["visits"]
    assert (v["done"], v["failed"], v["in_flight"], v["queued"]) == (1, 1, 1, 0)
    assert snap["state"] == "running" and snap["pipeline"] == "association"
    assert snap["rate_per_min"] > 0 and snap["eta_s"] > 0
    assert snap["latency"]["processing"]["p50"] == pytest.approx(0.75)  # sources..store
    assert snap["latency"]["queue_wait"]["n"] == 1
    assert [f["fov_id"] for f in snap["failures"]] == [2] and snap["failures"][0]["error"] == EVIL
    assert snap["events"]["expired"] == 1
    assert snap["rejected"]["n"] == 2 and snap["rejected"]["recent"][0]["message"] == EVIL
    slice_rank = snap["ranks"][1]
    assert slice_rank["role"] == "slice 0" and slice_rank["busy_fraction"] == pytest.approx(0.5)
    assert slice_rank["other"] == {"catalogue_objects": 1234}
    with (run / "deadletter.jsonl").open("a") as f:
        f.write('"}\n')
    status(run, master_state="stopped", executions=0)
    snap = watcher.snapshot()
    assert snap["rejected"]["n"] == 3
    assert snap["state"] == "stopped" and snap["visits"]["in_flight"] == 0
    watcher.close()
    json.dumps(snap, allow_nan=False)


def test_page_escapes_what_it_shows_and_marks_each_finished_visit(tmp_path: Path):
    run = tmp_path / "run"
    run.mkdir()
    with Journal(run / "journal.sqlite") as j:
        for fov in (1, 2, 3, 4):
            start(j, fov)
        finish(j, 1)
        fail(j, 2)
        finish(j, 3)
    with DeadLetters(run / "deadletter.jsonl") as dead:
        dead.write(b"{}", EVIL, "endpoint")
    status(run)
    snap = RunWatcher(run).snapshot()
    html = panels(snap)
    page = render_page(snap, 2.0)
    assert "<script>alert" not in page and "&lt;script&gt;alert" in html["failures"]
    assert "&lt;script&gt;alert" in html["rejected"]
    svg = html["latency"]
    assert svg.count('class="visit done"') == 2 and svg.count('class="visit failed"') == 1
    assert svg.count('class="queue"') == 2
    assert 'id="visits-done">2<' in html["summary"] and 'id="visits-expected">4<' in html["summary"]
    for panel in ("summary", "latency", "stages", "ranks", "failures", "rejected", "quality"):
        assert f'id="{panel}"' in page
    assert page.count("<script") == 1 and '<script src="page.js">' in page


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_server_routes_and_many_clients(tmp_path: Path):
    run = tmp_path / "run"
    run.mkdir()
    with Journal(run / "journal.sqlite") as j:
        start(j, 1)
        finish(j, 1)
    status(run)
    with NightServer(run, "127.0.0.1:0", refresh=1.0, min_interval=0.5) as server:
        url = server.url
        code, headers, body = get(url)
        assert code == 200 and headers["Content-Type"].startswith("text/html")
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        assert b'id="visits-done">1<' in body
        code, headers, body = get(url + "api/night")
        got = json.loads(body)
        assert code == 200 and got["night"]["visits"]["done"] == 1
        assert set(got["html"]) >= {"summary", "latency", "ranks"}
        assert get(url + "page.js")[0] == 200 and get(url + "style.css")[0] == 200
        assert get(url + "report/sky.png")[0] == 404
        (run / "report").mkdir()
        (run / "report" / "sky.png").write_bytes(b"\x89PNG\r\n\x1a\nfake")
        code, headers, body = get(url + "report/sky.png")
        assert code == 200 and headers["Content-Type"] == "image/png"
        for path in (
            "nope",
            "report/../journal.sqlite",
            "report/journal.sqlite",
            "..%2fstatus.json",
        ):
            assert get(url + path)[0] == 404, path

        # a client that connects and sends nothing holds one thread, not the server
        slow = socket.create_connection(("127.0.0.1", int(server.address.rsplit(":", 1)[1])))
        slow.sendall(b"GET / HTTP/1.1\r\n")
        t0 = time.perf_counter()
        with ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(lambda _: get(url + "api/night"), range(100)))
        elapsed = time.perf_counter() - t0
        slow.close()
        assert all(code == 200 for code, _, _ in answers)
        made = {json.loads(body)["night"]["time"] for _, _, body in answers}
        # the run directory was read at most once per min_interval, however many asked
        assert len(made) <= elapsed / 0.5 + 2
        assert elapsed < 10.0


def test_serve_command_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    code = nightpipe(["serve", str(tmp_path), "--address", "localhost:1", "--nice", "0"])
    assert code == 2
    assert "--address: host 'localhost' is not an IP address" in capsys.readouterr().err
    with pytest.raises(ServeError, match="refresh must be > 0"):
        NightServer(tmp_path, refresh=0)
