"""The runtime under a real mpiexec, 4 ranks: every must-show of the runtime."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from events.client import Injector
from events.envelope import Event
from events.journal import Journal
from framework.mpiexec import BIN
from tests.mpirun import MpiPipeline
from tests.pipelines.trace_stages import check_barriers, config_text, read_trace

pytestmark = pytest.mark.mpi

NV, DET, PRED = "telescope.next_visit", "detection.diasources_ready", "nightmops.predictions_ready"
VISIT = {"mjd": 60218.0, "ra": 10.0, "dec": -20.0, "filter": "r"}
PATHS = {"paths": ["x.parquet"]}

STAGES = [
    {"name": "a", "config": {"sleep": 0.02, "fail_fov": 13, "fail_slice": 1}},
    {
        "name": "b",
        "wait": {"event": PRED, "timeout": 6, "policy": "fail"},
        "config": {"array_size": 100000},
    },
    {"name": "c", "wait": {"event": DET, "timeout": 3, "policy": "continue"}},
]


def _failed_body(run_dir, fov) -> dict:
    with Journal(run_dir / "journal.sqlite") as j:
        (entry,) = j.entries(direction="out", type="trace.execution_failed", fov_id=fov)
    return entry.event.body


def test_night_of_runtime_features(tmp_path):
    cfg = tmp_path / "p.toml"
    cfg.write_text(config_text(STAGES))
    run = tmp_path / "run"
    p = MpiPipeline(cfg, run, n=4).start()
    try:
        # 2. interleaving: A waits for its predictions while B runs to the end
        p.send(NV, 10, VISIT)
        p.send(NV, 11, VISIT, id="start-11")
        p.send(PRED, 11, PATHS)
        p.send(DET, 11, PATHS)
        assert p.wait_outcomes([11])[11] == "done"
        assert 10 not in p.outcomes()
        # out of order: detection and predictions before the telescope event
        p.send(DET, 12, PATHS)
        p.send(PRED, 12, PATHS)
        p.send(NV, 12, VISIT)
        # 4. failure isolation: process raises on slice 1 for fov 13 only
        p.send(NV, 13, VISIT)
        p.send(PRED, 13, PATHS)
        # 3. timeouts: 14 never gets predictions (fail), 15 never gets detections (continue)
        p.send(NV, 14, VISIT)
        p.send(NV, 15, VISIT)
        p.send(PRED, 15, PATHS)
        # 6. duplicates
        dup = p.send(NV, 11, VISIT, id="start-11")
        assert dup["ok"] and dup["duplicate"]
        # 5. bad events: rejected with a reason, dead-lettered, pipeline goes on
        bad = {
            "not json": b"{not json",
            "unknown type": Event.new("telescope.coffee", 1, {}).to_json(),
            "missing field": Event.new(NV, 1, {"ra": 1.0, "dec": 2.0, "filter": "r"}).to_json(),
            "wrong type": Event.new(NV, 1, {**VISIT, "ra": "ten"}).to_json(),
            "oversize": Event.new(PRED, 1, {"paths": ["x" * 100_000]}).to_json(),
        }
        reasons = {k: p.send_raw(v) for k, v in bad.items()}
        assert all(not r["ok"] for r in reasons.values()), reasons
        assert "JSON" in reasons["not json"]["error"]
        assert "telescope.coffee" in reasons["unknown type"]["error"]
        assert "body.mjd" in reasons["missing field"]["error"]
        assert "body.ra" in reasons["wrong type"]["error"]
        assert "bytes" in reasons["oversize"]["error"]
        dead = (run / "deadletter.jsonl").read_text().splitlines()
        assert len(dead) == 5
        # 5. an event injected from another process (the CLI) reaches the pipeline
        cli = subprocess.run(
            [
                str(BIN / "nightpipe"),
                "inject",
                PRED,
                "--fov-id",
                "10",
                "--paths",
                "p.parquet",
                "--run-dir",
                str(run),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cli.returncode == 0 and "accepted" in cli.stdout, cli.stderr
        p.send(DET, 10, PATHS)
        got = p.wait_outcomes([10, 12, 13, 14, 15], timeout=60)
        assert got == {10: "done", 11: "done", 12: "done", 13: "failed", 14: "failed", 15: "done"}
        # 6. a burst of 1,000 events, as fast as possible: all journaled
        burst = [Event.new(DET, 100_000 + i, PATHS, source="burst") for i in range(1000)]
        with Injector(p.info["address"]) as inj:
            replies = inj.send_many(burst)
        assert all(r["ok"] and not r["duplicate"] for r in replies)
        with Journal(run / "journal.sqlite") as j:
            assert j.count(direction="in", type=DET) == 1000 + 3  # fovs 10, 11, 12
        # 9. status: every rank's board
        time.sleep(0.5)
        st = subprocess.run(
            [str(BIN / "nightpipe"), "status", str(run)], capture_output=True, text=True, timeout=60
        )
        assert st.returncode == 0, st.stderr
        for rank in range(4):
            assert f"rank {rank} (" in st.stdout
        assert "items_done=" in st.stdout and "accepted=" in st.stdout
        # 8. graceful shutdown through control.shutdown
        assert p.stop() == 0
    finally:
        p.close()

    body = _failed_body(run, 13)
    assert (body["stage"], body["hook"], body["rank"]) == ("a", "process", 2)
    body = _failed_body(run, 14)
    assert body["stage"] == "b" and "timed out after 6 s" in body["error"]
    log = (run / "nightpipe.log").read_text()
    assert "rank=2 exec=13 ERROR" in log and "stage 'a' hook process on rank 2" in log
    trace = read_trace(run)
    # 1. barriers, on every execution and stage, and postprocess saw every slice
    assert check_barriers(trace, ["a", "b", "c"], 3) >= 8
    assert all(d["ok"] for d in trace if d["what"] == "post")
    assert sum(d["what"] == "shutdown" for d in trace) == 3 * 4  # 3 stages on 4 ranks
    # c of fov 15 ran without its detection event (continue policy)
    assert any(d["fov"] == 15 and d["stage"] == "c" and d["what"] == "post" for d in trace)


def test_sigterm_drains_and_exits_zero(tmp_path):
    cfg = tmp_path / "p.toml"
    cfg.write_text(config_text([{"name": "a", "config": {"sleep": 1.0}}]))
    run = tmp_path / "run"
    p = MpiPipeline(cfg, run, n=3).start()
    try:
        p.send(NV, 1, VISIT)
        time.sleep(0.3)
        p.proc.send_signal(signal.SIGTERM)  # to mpiexec, which forwards it
        assert p.wait(60) == 0
    finally:
        p.close()
    assert Journal(run / "journal.sqlite").outcomes() == {1: "done"}
    log = (run / "nightpipe.log").read_text()
    assert "SIGTERM: draining 1 execution(s)" in log


def test_resume_after_kill9(tmp_path):
    cfg = tmp_path / "p.toml"
    cfg.write_text(
        config_text([{"name": "a", "config": {"sleep": 0.4}}, {"name": "b"}], max_in_flight=2)
    )
    run = tmp_path / "run"
    fovs = list(range(1, 9))
    p = MpiPipeline(cfg, run, n=3).start()
    try:
        for f in fovs:
            p.send(NV, f, VISIT)
        p.wait_outcomes([1])
        p.kill9()  # visits in flight and queued
    finally:
        p.close()
    before = Journal(run / "journal.sqlite").outcomes()
    assert 0 < len(before) < len(fovs)
    p = MpiPipeline(cfg, run, n=3).start()
    try:
        got = p.wait_outcomes(fovs, timeout=90)
        assert set(got.values()) == {"done"}
        assert p.stop() == 0
    finally:
        p.close()
    with Journal(run / "journal.sqlite") as j:
        for f in fovs:
            out = j.entries(direction="out", fov_id=f)
            n = sum(e.event.type.startswith("trace.execution_") for e in out)
            assert n == 1, f"fov {f}: {n} outcomes"
    assert "resuming" in (run / "nightpipe.log").read_text()
