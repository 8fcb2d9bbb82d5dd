"""The runtime in one process (in-process transport): every feature, quickly.

The same features run under a real mpiexec in test_runtime_mpi.py.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest

from events.client import Injector
from events.envelope import Event
from events.journal import Journal
from framework.config import load_config
from framework.runner import InProcessPipeline
from tests.pipelines.trace_stages import check_barriers, config_text, read_trace

NV, DET, PRED = "telescope.next_visit", "detection.diasources_ready", "nightmops.predictions_ready"
VISIT = {"mjd": 60218.0, "ra": 10.0, "dec": -20.0, "filter": "r"}


class Running:
    def __init__(self, tmp_path: Path, stages: list[dict], n_slices: int = 2, **pipeline) -> None:
        cfg_path = tmp_path / "p.toml"
        cfg_path.write_text(config_text(stages, **pipeline))
        self.run_dir = tmp_path / "run"
        self.stage_names = [s["name"] for s in stages]
        self.n_slices = n_slices
        self.pipe = InProcessPipeline(load_config(cfg_path), self.run_dir, n_slices).start()
        self.inj = Injector(self.pipe.master.endpoint.address)

    def send(self, type, fov, body=None, id=None) -> dict:
        if body is None:
            body = VISIT if type == NV else {"paths": ["x"]}
        return self.inj.send(Event.new(type, fov, body, source="test", id=id))

    def outcomes(self) -> dict[int, str]:
        with Journal(self.run_dir / "journal.sqlite") as j:
            return j.outcomes()

    def wait(self, fovs, timeout=20.0) -> dict[int, str]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            got = self.outcomes()
            if all(f in got for f in fovs):
                return got
            time.sleep(0.01)
        raise TimeoutError(f"{self.outcomes()} lacks some of {fovs}")

    def stop(self) -> int:
        self.send("control.shutdown", None, {})
        self.inj.close()
        return self.pipe.join(30)

    def log(self) -> str:
        return (self.run_dir / "nightpipe.log").read_text()

    def failed_event(self, fov) -> dict:
        failed = self.pipe.config.failed_event
        with Journal(self.run_dir / "journal.sqlite") as j:
            (entry,) = j.entries(direction="out", type=failed, fov_id=fov)
        return entry.event.body


@pytest.fixture
def start(tmp_path):
    runs = []

    def _start(stages, **kw):
        r = Running(tmp_path, stages, **kw)
        runs.append(r)
        return r

    yield _start
    for r in runs:
        if r.pipe.exit_code is None:
            with contextlib.suppress(Exception):
                r.stop()


def test_barriers_and_postprocess_sees_every_slice(start):
    r = start([{"name": s, "config": {"sleep": 0.01}} for s in "abc"], n_slices=3)
    for fov in (1, 2, 3):
        r.send(NV, fov)
    assert r.wait([1, 2, 3]) == {1: "done", 2: "done", 3: "done"}
    assert r.stop() == 0
    trace = read_trace(r.run_dir)
    assert check_barriers(trace, list("abc"), 3) == 6
    posts = [d for d in trace if d["what"] == "post"]
    assert len(posts) == 9 and all(d["ok"] and d["slices"] == [0, 1, 2] for d in posts)
    # the clipboard carries what earlier stages of the same execution left
    assert {d["what"] for d in trace if d["rank"] == 1} >= {
        "setup",
        "start",
        "end",
        "finish",
        "shutdown",
    }


def test_interleaving_and_out_of_order(start):
    r = start(
        [{"name": "a"}, {"name": "b", "wait": {"event": PRED, "timeout": 30, "policy": "fail"}}]
    )
    r.send(NV, 10)  # A: will wait for predictions at b
    r.send(NV, 11)  # B
    r.send(PRED, 11)
    assert r.wait([11]) == {11: "done"}  # B ran to the end while A waits
    r.send(PRED, 12)  # out of order: predictions before the telescope event
    time.sleep(0.1)
    assert 12 not in r.outcomes()
    r.send(NV, 12)
    assert r.wait([12])[12] == "done"
    assert 10 not in r.outcomes()
    r.send(PRED, 10)
    assert r.wait([10])[10] == "done"
    assert r.stop() == 0


def test_timeouts_both_policies(start):
    r = start(
        [
            {"name": "a"},
            {"name": "b", "wait": {"event": PRED, "timeout": 0.3, "policy": "fail"}},
            {"name": "c", "wait": {"event": DET, "timeout": 0.3, "policy": "continue"}},
        ]
    )
    r.send(NV, 1)  # no predictions: fails at b
    r.send(NV, 2)
    r.send(PRED, 2)  # no detection: c goes on without it
    assert r.wait([1, 2]) == {1: "failed", 2: "done"}
    body = r.failed_event(1)
    assert body["stage"] == "b" and body["hook"] == "wait"
    assert "timed out after 0.3 s waiting for nightmops.predictions_ready" in body["error"]
    trace = read_trace(r.run_dir)
    assert any(d["fov"] == 2 and d["stage"] == "c" and d["what"] == "post" for d in trace)
    assert r.stop() == 0


@pytest.mark.parametrize("hook", ["process", "preprocess", "postprocess"])
def test_failure_isolation(start, hook):
    r = start(
        [
            {"name": "a"},
            {"name": "b", "config": {"fail_fov": 5, "fail_slice": 1, "fail_hook": hook}},
        ]
    )
    for fov in (4, 5, 6):
        r.send(NV, fov)
    assert r.wait([4, 5, 6]) == {4: "done", 5: "failed", 6: "done"}
    body = r.failed_event(5)
    assert body["stage"] == "b" and body["hook"] == hook
    assert body["rank"] == (2 if hook == "process" else 0)
    assert "injected failure in b." + hook in body["error"]
    assert "Traceback" in body["traceback"]
    log = r.log()
    assert "exec=5 ERROR" in log and f"stage 'b' hook {hook} on rank" in log
    # the Slice stayed up: later work still runs
    r.send(NV, 7)
    assert r.wait([7])[7] == "done"
    trace = read_trace(r.run_dir)
    assert any(d["fov"] == 5 and d["what"] == "finish" and d["ok"] is False for d in trace)
    assert r.stop() == 0


def slow_one_then_two(r: Running) -> None:
    """Send visit 1, then 2 and 3; check that these end while 1 has not."""
    r.send(NV, 1)
    time.sleep(0.2)
    for fov in (2, 3):
        r.send(NV, fov)
    assert r.wait([2, 3]) == {2: "done", 3: "done"}
    assert 1 not in r.outcomes()


@pytest.mark.parametrize("fail", [False, True])
def test_later_preprocess_leaves_the_master_free(start, fail):
    """A preprocess that returns `Later` finishes in its thread while other visits go on."""
    config = {"later_fov": 1, "later_s": 1.0}
    if fail:
        config |= {"fail_fov": 1, "fail_hook": "preprocess"}
    r = start([{"name": "a"}, {"name": "b", "config": config}])
    slow_one_then_two(r)  # 1 still in b's preprocess, in its thread
    assert r.wait([1])[1] == ("failed" if fail else "done")
    trace = read_trace(r.run_dir)
    if fail:
        body = r.failed_event(1)
        assert body["stage"] == "b" and body["hook"] == "preprocess" and body["rank"] == 0
        assert "injected failure in b.preprocess" in body["error"]
        assert not any(d["fov"] == 1 and d["stage"] == "b" and d["what"] == "start" for d in trace)
    else:
        # its payload reached the Slices (process checks it), then postprocess saw both
        assert any(d["fov"] == 1 and d["stage"] == "b" and d["what"] == "post" for d in trace)
    assert r.stop() == 0


@pytest.mark.parametrize("fail", ["", "work", "then"])
def test_background_process_leaves_the_slice_free(start, fail):
    """A process that returns `Background` is answered later; the Slice serves others meanwhile."""
    config = {"background_fov": 1, "background_s": 1.0, "background_fail": fail}
    r = start([{"name": "a"}, {"name": "b", "config": config}])
    slow_one_then_two(r)  # 1's work still under way on both Slices
    assert r.wait([1])[1] == ("failed" if fail else "done")
    trace = read_trace(r.run_dir)
    for rank in (1, 2):
        mine = [d for d in trace if d["rank"] == rank and d["stage"] == "b"]
        began = next(d["t"] for d in mine if d["fov"] == 1 and d["what"] == "start")
        others = [d["t"] for d in mine if d["fov"] in (2, 3) and d["what"] == "end"]
        assert len(others) == 2 and all(t > began for t in others)
    if fail:
        body = r.failed_event(1)
        assert body["stage"] == "b" and body["hook"] == "process" and body["rank"] in (1, 2)
        assert f"injected failure in b background {fail}" in body["error"]
        assert "Traceback" in body["traceback"]
    else:
        ends = [d for d in trace if d["fov"] == 1 and d["stage"] == "b" and d["what"] == "end"]
        assert len(ends) == 2  # `then` ran on both Slices; postprocess checked their arrays
    r.send(NV, 4)  # the Slices stayed up
    assert r.wait([4])[4] == "done"
    assert r.stop() == 0


def test_duplicates_ignored_and_cap_respected(start):
    r = start([{"name": "a", "config": {"sleep": 0.05}}], max_in_flight=2)
    first = r.send(NV, 1, id="visit-1")
    again = r.send(NV, 1, id="visit-1")
    assert first == {"ok": True, "id": "visit-1", "duplicate": False}
    assert again["ok"] and again["duplicate"] is True
    for fov in range(2, 7):
        r.send(NV, fov)
    assert set(r.wait(range(1, 7)).values()) == {"done"}
    trace = read_trace(r.run_dir)
    live, peak = set(), 0
    for d in trace:
        if d["rank"] == 0 and d["what"] == "pre":
            live.add(d["fov"])
        if d["rank"] == 0 and d["what"] == "finish":
            live.discard(d["fov"])
        peak = max(peak, len(live))
    assert peak == 2
    with Journal(r.run_dir / "journal.sqlite") as j:
        assert j.count(direction="in", type=NV) == 6  # the duplicate was not journaled twice
    assert r.stop() == 0


def test_shutdown_drains_in_flight(start):
    r = start([{"name": "a", "config": {"sleep": 0.3}}])
    r.send(NV, 1)
    time.sleep(0.05)
    r.send("control.shutdown", None, {"reason": "end of night"})
    refused = r.send(NV, 2)
    assert not refused["ok"] and "shutting down" in refused["error"]
    assert r.pipe.join(30) == 0
    assert r.outcomes() == {1: "done"}
    trace = read_trace(r.run_dir)
    assert sum(d["what"] == "shutdown" for d in trace) == 3  # every rank
