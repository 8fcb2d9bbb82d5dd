"""The master feeds its metrics: a pipeline in one process, scraped over HTTP as it runs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from events.envelope import Event
from events.journal import Journal
from events.types import SHUTDOWN
from framework.config import ConfigError, load_config
from framework.master import SetupError
from framework.metrics import Metrics
from framework.runner import InProcessPipeline
from framework.status import read_status
from tests.pipelines.trace_stages import config_text
from tests.test_metrics import scrape
from tests.test_runtime_inprocess import DET, NV, Running

WAIT_S = 1.0
"""How long visit 1 waits for its detections while visit 2 waits in the queue."""


def one(got: dict, metric: str, **labels: str) -> float:
    return got[(metric, tuple(sorted(labels.items())))]


def endpoint_info(run_dir: Path, timeout: float = 30.0) -> dict:
    """``endpoint.json`` once the master has written it (after its set-up)."""
    path = run_dir / "endpoint.json"
    deadline = time.time() + timeout
    while not path.exists():
        assert time.time() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.02)
    return json.loads(path.read_text())


@pytest.fixture
def night(tmp_path):
    stages = [
        {"name": "a", "config": {"sleep": 0.05, "observe": "db_read"}},
        {"name": "b", "wait": {"event": DET, "timeout": 30, "policy": "fail"}},
        {"name": "c", "config": {"sleep": 0.1, "fail_fov": 3}},
    ]
    runtime = {"metrics_noun": "visits", "latency_from": "b"}
    r = Running(tmp_path, stages, max_in_flight=1, runtime=runtime)
    yield r
    if r.pipe.exit_code is None:
        r.stop()


def test_the_master_feeds_its_metrics(night):
    r = night
    address = endpoint_info(r.run_dir)["metrics"]
    assert address == r.pipe.master.metrics.address and address.startswith("127.0.0.1:")
    first = scrape(address)
    assert one(first, "nightpipe_visits_done_total") == 0
    assert one(first, "nightpipe_slices") == 2  # their Ready boards

    t_wait = time.time()
    r.send(NV, 1)
    r.send(NV, 2)  # max_in_flight = 1: queued behind visit 1
    r.send(DET, 2)
    time.sleep(0.3)
    got = scrape(address)
    assert one(got, "nightpipe_visits_in_flight") == 1
    assert one(got, "nightpipe_visits_queued") == 1
    assert read_status(r.run_dir)["queued_start"] == 1
    time.sleep(max(WAIT_S - (time.time() - t_wait), 0.0))
    r.send(DET, 1)  # visit 1 waited WAIT_S for this: not processing latency
    busy, deadline = set(), time.time() + 30
    while (
        len(r.outcomes()) < 2 and time.time() < deadline
    ):  # stage c sleeps on both Slices: they have work in hand
        busy.add(one(scrape(address), "nightpipe_slices_busy"))
    assert r.wait([1, 2]) == {1: "done", 2: "done"}
    assert 2 in busy, busy
    r.send(NV, 3, id="visit-3")
    r.send(NV, 3, id="visit-3")  # a duplicate
    r.send(DET, 3)
    assert r.wait([3]) == {1: "done", 2: "done", 3: "failed"}
    bad = r.inj.send({"id": "x", "type": "no.such_type", "time": 0, "source": "t", "body": {}})
    assert not bad["ok"]
    time.sleep(0.5)  # a status write: the gauges
    got = scrape(address)

    assert one(got, "nightpipe_visits_done_total") == 2
    assert one(got, "nightpipe_visits_failed_total", stage="c") == 1
    assert one(got, "nightpipe_visits_failed_total", stage="a") == 0
    assert one(got, "nightpipe_events_accepted_total") == 6
    assert one(got, "nightpipe_events_duplicate_total") == 1
    assert one(got, "nightpipe_events_rejected_total") == 1
    assert one(got, "nightpipe_visits_in_flight") == 0
    assert one(got, "nightpipe_visits_queued") == 0
    assert one(got, "nightpipe_slices_busy") == 0
    # processing latency: stages b and c only, without the wait for the detections
    assert one(got, "nightpipe_processing_latency_seconds_count") == 2
    latency = one(got, "nightpipe_processing_latency_seconds_sum")
    assert 2 * 0.1 <= latency < 2 * 0.1 + WAIT_S, latency
    # queue wait: every visit, failed included; visit 2 waited for visit 1
    assert one(got, "nightpipe_queue_wait_seconds_count") == 3
    assert one(got, "nightpipe_queue_wait_seconds_sum") >= WAIT_S
    assert one(got, "nightpipe_queue_wait_seconds_bucket", le="0.1") == 2
    assert one(got, "nightpipe_stage_duration_seconds_count", stage="a") == 2  # done visits
    assert one(got, "nightpipe_stage_duration_seconds_sum", stage="a") >= 2 * 0.05
    # the Slices' figures came with their replies: a's process observed on both Slices
    assert one(got, "nightpipe_db_read_duration_seconds_count") == 3 * 2
    assert one(got, "nightpipe_db_read_duration_seconds_sum") == pytest.approx(3 * 2 * 0.05)
    for index in ("0", "1"):
        assert one(got, "nightpipe_slice_busy_seconds_total", slice=index) >= 3 * 0.05
    # ctx.count from postprocess: a, b, c of visits 1 and 2, a and b of visit 3
    assert one(got, "nightpipe_postprocessed_total") == 8
    assert one(got, "nightpipe_pipeline_info", name="trace") == 1

    assert r.stop() == 0
    with pytest.raises(OSError):
        scrape(address)  # stopped with the master
    with Journal(r.run_dir / "journal.sqlite") as j:
        assert len(j.outcomes()) == 3


def start(tmp_path: Path, runtime: dict) -> InProcessPipeline:
    path = tmp_path / "p.toml"
    path.write_text(config_text([{"name": "a"}], runtime=runtime))
    return InProcessPipeline(load_config(path), tmp_path / "run", 1).start()


def test_no_metrics_when_the_address_is_empty(tmp_path):
    pipe = start(tmp_path, {"metrics": ""})
    assert endpoint_info(tmp_path / "run")["metrics"] is None
    assert pipe.master.metrics.address is None
    pipe.master.submit([Event.new(SHUTDOWN, None, {"reason": "test"})])
    assert pipe.join(30) == 0


def test_a_taken_metrics_address_stops_the_start(tmp_path):
    taken = Metrics()
    address = taken.start_server("127.0.0.1:0")
    try:
        pipe = start(tmp_path, {"metrics": address})
        with pytest.raises(SetupError, match=r"\[runtime\].metrics: .*cannot listen"):
            pipe.join(30)
    finally:
        taken.stop_server()


def test_latency_from_names_a_stage(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text(config_text([{"name": "a"}], runtime={"latency_from": "nope"}))
    with pytest.raises(ConfigError, match=r"\[runtime\].latency_from: no stage named 'nope'"):
        load_config(path)
