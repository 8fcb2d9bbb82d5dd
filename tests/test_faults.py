"""Faults a real night meets, under a real mpiexec: each ends in the same database as no fault.

The reference is the south-pole night of `conftest.pole_reference`, replayed
once without any fault.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

from events.client import Injector
from events.curve import ClientKeys, make_keys
from events.envelope import Event
from events.journal import Journal
from framework.mpiexec import BIN, run_command
from framework.status import process_alive
from tests.faketime import faketime_env
from tests.mpirun import MpiPipeline
from tests.nights import copy_archive, db_rows, replay

NV = "telescope.next_visit"
VISIT = {"mjd": 60218.1, "ra": 10.0, "dec": -30.0, "filter": "r"}


def _events(archive: Path) -> list[dict]:
    return [json.loads(x) for x in (archive / "events.jsonl").read_text().splitlines()]


def _span(archive: Path) -> float:
    ev = _events(archive)
    return ev[-1]["time"] - ev[0]["time"]


def _replay(archive: Path, run: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    """``nightpipe replay`` as a process of its own (in its own session: all of it can end)."""
    cmd = [str(BIN / "nightpipe"), "replay", str(archive), "--run-dir", str(run), *args]
    return subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )


def _finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    return proc.returncode, out.decode(errors="replace")


def _wait_outcomes(run: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (run / "journal.sqlite").exists():
            with Journal(run / "journal.sqlite") as j:
                if len(j.outcomes()) >= n:
                    return
        assert proc.poll() is None, proc.stdout.read().decode()
        time.sleep(0.05)
    raise TimeoutError(f"fewer than {n} outcomes in {timeout} s")


def _running_on(run: Path) -> list[str]:
    """Command lines of the processes that name `run` (a job left behind)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if str(run) in cmd:
                found.append(cmd)
    return found


def _outcomes(run: Path) -> dict[int, str]:
    if not (run / "journal.sqlite").exists():
        return {}
    with Journal(run / "journal.sqlite") as j:
        return j.outcomes()


def _run_cmd(run: Path, n: int, *args: str) -> list[str]:
    return run_command(n, "association", run, *args)


# -- one master, one replay per run directory --------------------------------------------------


def test_second_master_refused_and_a_new_one_allowed_after_kill9(tmp_path):
    run = tmp_path / "run"
    first = MpiPipeline("association", run, n=2).start()
    try:
        t0 = time.monotonic()
        second = subprocess.run(_run_cmd(run, 2), capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr
        assert time.monotonic() - t0 < 60
        assert f"pid {first.info['pid']}" in second.stderr and "in use" in second.stderr
        assert "Traceback" not in second.stderr
        assert json.loads((run / "endpoint.json").read_text())["pid"] == first.info["pid"]
        first.kill9()
        again = MpiPipeline("association", run, n=2).start()
        assert again.info["pid"] != first.info["pid"]
        assert again.stop() == 0
    finally:
        first.close()


def test_second_replay_refused(pole_archive, tmp_path):
    run = tmp_path / "run"
    slow = f"{_span(pole_archive) / 30:g}"  # about 30 s of events
    first = _replay(pole_archive, run, "--speed", slow, "--ranks", "2")
    try:
        _wait_outcomes(run, 1, first)
        second = _replay(pole_archive, run, "--speed", "max", "--ranks", "2")
        code, out = _finish(second, timeout=60)
        assert code != 0 and "in use" in out and "replay" in out, out
    finally:
        first.send_signal(signal.SIGTERM)  # the replay ends its pipeline's job, then itself
        _finish(first, timeout=120)
    assert not _running_on(run)


# -- a master that cannot start -------------------------------------------------------------------


def test_a_master_that_cannot_start_says_why_in_one_paragraph(tmp_path):
    t0 = time.monotonic()
    done = subprocess.run(
        _run_cmd(tmp_path / "run", 3, "--db", "postgresql+psycopg://nobody@127.0.0.1:9/none"),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert time.monotonic() - t0 < 120  # the job ends; nothing hangs
    paragraph = [x for x in done.stderr.splitlines() if x.startswith("nightpipe:")]
    assert paragraph and "could not start" in paragraph[0] and "127.0.0.1" in paragraph[0]
    assert "Traceback" not in done.stderr
    assert "Traceback" in (tmp_path / "run" / "nightpipe.log").read_text()


def test_a_database_made_with_another_partition_is_refused_at_start(tmp_path):
    run = tmp_path / "run"
    first = MpiPipeline("association", run, n=2).start()
    assert first.stop() == 0  # the database is made, with fine_order 20
    done = subprocess.run(
        _run_cmd(run, 2, "--set", "settings.fine_order=18"),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "was made with fine_order=20; the config says fine_order=18" in done.stderr
    assert "Traceback" not in done.stderr


# -- a crash during preload -----------------------------------------------------------------------


def test_a_preload_cut_short_is_redone_on_resume(pole_archive, pole_reference, tmp_path):
    import sqlite3

    run = tmp_path / "run"
    proc = _replay(pole_archive, run, "--speed", "max")
    db = run / "nightpipe.sqlite"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.1) as conn:
                if conn.execute("SELECT 1 FROM objects LIMIT 1").fetchone():
                    break
        except sqlite3.Error:
            pass
        assert proc.poll() is None, proc.stdout.read().decode()
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)  # the replay and its preload process, mid-preload
    proc.wait(30)
    with sqlite3.connect(db) as conn:
        notes = conn.execute("SELECT count(*) FROM notes").fetchone()[0]
        history = conn.execute("SELECT count(*) FROM diasources").fetchone()[0]
    assert notes == 0  # not marked complete: the resume must not skip it
    summary = replay(pole_archive, run, ranks=3)
    assert summary["failed"] == 0
    assert db_rows(run) == db_rows(pole_reference), f"{history} history rows at the kill"


# -- a hung Slice ---------------------------------------------------------------------------------


def test_a_stopped_slice_is_detected_named_and_the_restart_completes_the_night(
    pole_archive, pole_reference, tmp_path
):
    run = tmp_path / "run"
    timeout = 4.0
    slow = f"{_span(pole_archive) / 25:g}"
    proc = _replay(pole_archive, run, "--speed", slow, "--set", f"runtime.slice_timeout={timeout}")
    victim = None
    try:
        _wait_outcomes(run, 3, proc)
        status = json.loads((run / "status.json").read_text())
        victim = int(status["ranks"]["1"]["pid"])
        os.kill(victim, signal.SIGSTOP)
        stopped = time.time()
        code, out = _finish(proc, timeout=180)
        down = not process_alive(victim)
    finally:
        if victim is not None and process_alive(victim):
            os.kill(victim, signal.SIGKILL)
    assert code != 0, out
    assert down, "the stopped Slice outlived the job"
    status = json.loads((run / "status.json").read_text())
    assert status["ranks"]["1"]["state"] == "hung", status["ranks"]["1"]
    assert "rank 1" in status["ranks"]["0"]["error"]
    log = (run / "nightpipe.log").read_text().splitlines()
    line = next(x for x in log if "has not answered" in x)
    said = datetime.fromisoformat(line.split(" ")[0]).timestamp()
    # The deadline runs from the first work sent to the stopped Slice: at the latest,
    # that of the first event after the stop (the night's schedule may have a gap there).
    with Journal(run / "journal.sqlite") as journal:
        after = [e.received for e in journal.entries(direction="in") if e.received >= stopped]
    work = min(after, default=stopped)
    assert said - work < timeout + 5.0, (said - stopped, work - stopped)
    (run / "endpoint.json").unlink(missing_ok=True)
    summary = replay(pole_archive, run, ranks=3)
    assert summary["failed"] == 0
    assert db_rows(run) == db_rows(pole_reference)


# -- the database goes away -----------------------------------------------------------------------


def test_postgres_restarted_and_stopped_mid_night_every_visit_stored(
    pole_archive, pole_reference, pg_server, tmp_path
):
    url = pg_server.create_database("faults")
    run = tmp_path / "run"
    span = 24.0
    result: dict = {}

    def night() -> None:
        result.update(
            replay(pole_archive, run, ranks=3, db_url=url, speed=_span(pole_archive) / span)
        )

    t = threading.Thread(target=night)
    t.start()
    try:
        deadline = time.monotonic() + 120  # the faults hit visits in flight, not the preload
        while not _outcomes(run) and time.monotonic() < deadline:
            time.sleep(0.05)
        pg_server.restart()
        time.sleep(span / 4)
        pg_server.pause()
        time.sleep(10.0)
        pg_server.resume()
    finally:
        t.join(600)
    assert result["failed"] == 0 and result["done"] == result["visits"], result
    assert db_rows(run, url) == db_rows(pole_reference)
    log = (run / "nightpipe.log").read_text()
    assert "retry" in log  # the outage was met, and outlived


# -- an event that never comes --------------------------------------------------------------------


def test_a_visit_whose_detections_never_come_holds_back_no_overlapping_visit(
    pole_archive, tmp_path
):
    from association.sky.fov import fov_resources

    arch = copy_archive(pole_archive, tmp_path / "arch")
    events = _events(arch)
    starts = {e["fov_id"]: Event.from_dict(e) for e in events if e["type"] == NV}
    order = list(starts)
    lost, later = next(
        (a, b)
        for i, a in enumerate(order)
        for b in order[i + 1 :]
        if not fov_resources(starts[a]).isdisjoint(fov_resources(starts[b]))
    )
    det = "detection.diasources_ready"
    keep = [e for e in events if not (e["fov_id"] == lost and e["type"] == det)]
    (arch / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in keep))
    from association.cli.main import PIPELINES

    wait = 15.0
    cfg = tmp_path / "short_wait.toml"
    text = (PIPELINES / "association.toml").read_text()
    cfg.write_text(text.replace("timeout = 600.0", f"timeout = {wait}"))
    summary = replay(arch, tmp_path / "run", ranks=3, config=str(cfg))
    assert summary["failed"] == 1
    with Journal(tmp_path / "run" / "journal.sqlite") as j:
        received = j.entries(type=det, fov_id=later)[0].received
        done = j.outcome_times()
        failed = j.entries(type="association.visit_failed", fov_id=lost)[0].event.body
    assert f"timed out after {wait:g} s" in failed["error"]
    assert done[later] - received < 10.0  # its own processing, not the other's wait
    assert done[lost] > done[later]
    (arch / "events.jsonl").write_text(
        "".join(json.dumps(e) + "\n" for e in keep if e["fov_id"] != lost)
    )
    serial = replay(arch, tmp_path / "serial", ranks=3, max_in_flight=1)
    assert serial["failed"] == 0
    assert db_rows(tmp_path / "run") == db_rows(tmp_path / "serial")


# -- the wall clock jumps -------------------------------------------------------------------------


@pytest.mark.parametrize("step", ["+1h", "-1h"])
def test_a_clock_step_mid_night_changes_nothing(pole_archive, pole_reference, tmp_path, step):
    stamp = tmp_path / "faketime"
    stamp.write_text("+0\n")
    env = faketime_env(stamp)
    run = tmp_path / "run"
    slow = f"{_span(pole_archive) / 8:g}"  # the night in about 8 s
    proc = _replay(pole_archive, run, "--speed", slow, env=env)
    _wait_outcomes(run, 4, proc)
    stamp.write_text(f"{step}\n")
    code, out = _finish(proc)
    assert code == 0, out
    assert db_rows(run) == db_rows(pole_reference)
    with Journal(run / "journal.sqlite") as j:
        assert set(j.outcomes().values()) == {"done"}


# -- who may talk to a master ---------------------------------------------------------------------


def test_curve_endpoint_lets_in_only_clients_with_keys(tmp_path):
    keys = make_keys(tmp_path / "keys")
    run = tmp_path / "run"
    p = MpiPipeline("association", run, n=2, args=("--curve-keys", str(keys)))
    p.start(connect=False)
    try:
        server = p.info["server_key"]
        ev = Event.new(NV, 1, VISIT, source="test")
        with Injector(p.info["address"], timeout=2) as stranger, pytest.raises(TimeoutError):
            stranger.send(ev)
        client = ClientKeys.load(keys / "client.key_secret", server)
        with Injector(p.info["address"], timeout=10, keys=client) as friend:
            assert friend.send(ev)["ok"]
            stop = Event.new("control.shutdown", None, {}, source="test")
            assert friend.send(stop)["ok"]
        assert p.wait(60) == 0
        with Journal(run / "journal.sqlite") as j:
            assert j.ids("in") == {ev.id, stop.id}
    finally:
        p.close()


def test_listening_beyond_loopback_without_keys_is_refused(tmp_path):
    done = subprocess.run(
        _run_cmd(tmp_path / "run", 2, "--endpoint", "tcp://0.0.0.0:0"),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 2
    assert "refusing to listen on tcp://0.0.0.0:0 without authentication" in done.stderr
    assert "nightpipe keys" in done.stderr
