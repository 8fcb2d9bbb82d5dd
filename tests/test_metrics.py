"""The master's Prometheus metrics, read back over HTTP as a scraper would, and by a real Prometheus."""

from __future__ import annotations

import threading
import time
import urllib.request

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from framework.config import ConfigError, load_config
from framework.metrics import Metrics, MetricsError, parse_address, processing_latency
from framework.status import OBSERVED, OBSERVED_KEEP, Board, format_status
from tests.prometheus import PrometheusError, PrometheusServer
from tests.test_config import write

STAGES = ["load", "crossmatch", "store"]


def scrape(address: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample served at ``http://ADDRESS/metrics``, by name and labels."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture
def metrics():
    m = Metrics("visits", STAGES, pipeline="association")
    m.start_server("127.0.0.1:0")
    yield m
    m.stop_server()


def test_names_units_and_first_values(metrics):
    got = scrape(metrics.address)
    names = {name for name, _ in got}
    assert all(n.startswith("nightpipe_") for n in names)
    for name in (
        "nightpipe_visits_done_total",
        "nightpipe_events_accepted_total",
        "nightpipe_events_rejected_total",
        "nightpipe_events_duplicate_total",
        "nightpipe_events_expired_total",
    ):
        assert got[(name, ())] == 0.0
    for stage in STAGES:
        assert got[("nightpipe_visits_failed_total", (("stage", stage),))] == 0.0
        assert got[("nightpipe_stage_duration_seconds_count", (("stage", stage),))] == 0.0
    for gauge in ("visits_in_flight", "visits_queued", "slices", "slices_busy"):
        assert got[(f"nightpipe_{gauge}", ())] == 0.0
    for hist in ("processing_latency", "queue_wait", "db_read_duration", "db_write_duration"):
        assert got[(f"nightpipe_{hist}_seconds_count", ())] == 0.0
    assert got[("nightpipe_pipeline_info", (("name", "association"),))] == 1.0
    # a registry of its own: nothing lands in the process-wide one
    assert REGISTRY.get_sample_value("nightpipe_visits_done_total") is None


def test_what_the_master_reports(metrics):
    metrics.event_accepted(3)
    metrics.event_accepted()
    metrics.event_rejected()
    metrics.event_duplicate(2)
    metrics.event_expired()
    metrics.set_in_flight(5)
    metrics.set_queued(7)
    timings = {"load": 0.2, "crossmatch": 0.05, "store": 0.3, "total": 9.0}
    latency = processing_latency(timings, STAGES, "crossmatch")
    assert latency == pytest.approx(0.35)
    metrics.execution_done(timings, latency=latency, queue_wait=4.0)
    metrics.execution_done({"load": 0.4}, latency=0.5, queue_wait=None)
    metrics.execution_failed("store", queue_wait=1.0)
    metrics.count("alerts", 120)
    metrics.count("alerts", 30)
    metrics.observe("db_write", 0.02)
    got = scrape(metrics.address)

    def one(name: str, **labels: str) -> float:
        return got[(name, tuple(sorted(labels.items())))]

    assert one("nightpipe_events_accepted_total") == 4
    assert one("nightpipe_events_rejected_total") == 1
    assert one("nightpipe_events_duplicate_total") == 2
    assert one("nightpipe_events_expired_total") == 1
    assert one("nightpipe_visits_in_flight") == 5
    assert one("nightpipe_visits_queued") == 7
    assert one("nightpipe_visits_done_total") == 2
    assert one("nightpipe_visits_failed_total", stage="store") == 1
    assert one("nightpipe_visits_failed_total", stage="load") == 0
    assert one("nightpipe_stage_duration_seconds_count", stage="load") == 2
    assert one("nightpipe_stage_duration_seconds_sum", stage="load") == pytest.approx(0.6)
    assert ("nightpipe_stage_duration_seconds_count", (("stage", "total"),)) not in got
    assert one("nightpipe_stage_duration_seconds_bucket", stage="load", le="0.25") == 1
    assert one("nightpipe_processing_latency_seconds_count") == 2
    assert one("nightpipe_processing_latency_seconds_sum") == pytest.approx(0.85)
    assert one("nightpipe_queue_wait_seconds_count") == 2  # the failed one waited too
    assert one("nightpipe_queue_wait_seconds_sum") == pytest.approx(5.0)
    assert one("nightpipe_alerts_total") == 150
    assert one("nightpipe_db_write_duration_seconds_count") == 1


def test_slice_boards_count_each_duration_once(metrics):
    boards = [Board(rank) for rank in (1, 2)]
    boards[0].set(state="busy", busy_seconds=1.5)
    boards[0].observe("db_read", 0.010)
    boards[0].observe("db_read", 0.030)
    boards[1].set(state="idle", busy_seconds=0.5)
    for index, b in enumerate(boards):
        metrics.slice_board(index, b.snapshot())
    metrics.slice_board(0, boards[0].snapshot())  # the same board again: nothing new
    boards[0].observe("db_write", 0.2)
    boards[0].set(state="idle", busy_seconds=2.0)
    metrics.slice_board(0, boards[0].snapshot())
    master = Board(0)
    master.observe("db_write", 0.5)  # the master's own board: a sequence of its own
    assert metrics.take_observed("master", master.snapshot()) == 1
    assert metrics.take_observed("master", master.snapshot()) == 0
    got = scrape(metrics.address)
    assert got[("nightpipe_slices", ())] == 2
    assert got[("nightpipe_db_read_duration_seconds_count", ())] == 2
    assert got[("nightpipe_db_read_duration_seconds_sum", ())] == pytest.approx(0.04)
    assert got[("nightpipe_db_write_duration_seconds_count", ())] == 2
    assert got[("nightpipe_db_write_duration_seconds_sum", ())] == pytest.approx(0.7)
    assert got[("nightpipe_slice_busy_seconds_total", (("slice", "0"),))] == pytest.approx(2.0)
    assert got[("nightpipe_slice_busy_seconds_total", (("slice", "1"),))] == pytest.approx(0.5)
    # busy is what the master has sent and not had answered, not what a board last said
    assert got[("nightpipe_slices_busy", ())] == 0
    metrics.set_slices_busy(1)
    assert scrape(metrics.address)[("nightpipe_slices_busy", ())] == 1


def test_board_observations_from_a_worker_thread():
    board = Board(0)
    n, threads = 2000, 4

    def observe() -> None:
        for _ in range(n):
            board.observe("db_write", 0.001)

    workers = [threading.Thread(target=observe) for _ in range(threads)]
    for w in workers:
        w.start()
    snaps = []
    while any(w.is_alive() for w in workers):
        snaps.append(board.snapshot().get(OBSERVED, []))
    for w in workers:
        w.join()
    snaps.append(board.snapshot()[OBSERVED])
    for snap in filter(None, snaps):  # every snapshot: consecutive numbers, none lost or repeated
        seqs = [seq for seq, _, _ in snap]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        assert len(snap) <= OBSERVED_KEEP
    assert snaps[-1][-1][0] == n * threads


def test_board_keeps_the_latest_durations_out_of_the_status_text():
    b = Board(1)
    for i in range(OBSERVED_KEEP + 10):
        b.observe("db_read", float(i))
    snap = b.snapshot()
    assert len(snap[OBSERVED]) == OBSERVED_KEEP
    assert snap[OBSERVED][0] == [11, "db_read", 10.0]
    assert snap[OBSERVED][-1] == [OBSERVED_KEEP + 10, "db_read", float(OBSERVED_KEEP + 9)]
    b.observe("db_write", 1.0)
    assert len(snap[OBSERVED]) == OBSERVED_KEEP  # a snapshot does not change afterwards
    text = format_status({"ranks": {"1": b.snapshot()}}, now=0.0)
    assert "db_read" not in text and "observed" not in text


def test_bad_names_and_addresses():
    with pytest.raises(MetricsError, match="metrics noun 'Visits'"):
        Metrics("Visits")
    m = Metrics()
    with pytest.raises(MetricsError, match="counter name 'new-objects'"):
        m.count("new-objects")
    with pytest.raises(MetricsError, match="counter 'events_accepted'"):
        m.count("events_accepted")  # would shadow nightpipe_events_accepted_total
    with pytest.raises(MetricsError, match="duration name 'DB'"):
        m.observe("DB", 1.0)
    assert parse_address("127.0.0.1:9108") == ("127.0.0.1", 9108)
    assert parse_address("[::1]:0") == ("::1", 0)
    for bad, why in (
        ("127.0.0.1", "expected HOST:PORT"),
        ("localhost:80", "not an IP address"),
        ("127.0.0.1:http", "not a number"),
        ("127.0.0.1:70000", "not a number in 0..65535"),
    ):
        with pytest.raises(MetricsError, match=why):
            parse_address(bad)
    with pytest.raises(MetricsError, match="no such stage"):
        processing_latency({}, STAGES, "nope")


def test_server_lifecycle():
    m = Metrics()
    address = m.start_server("127.0.0.1:0")
    with pytest.raises(MetricsError, match="already served"):
        m.start_server("127.0.0.1:0")
    other = Metrics()
    with pytest.raises(MetricsError, match="cannot listen"):
        other.start_server(address)
    m.stop_server()
    assert m.address is None
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://{address}/metrics", timeout=2)
    m.stop_server()  # a no-op


def test_runtime_metrics_settings(tmp_path):
    base = "[pipeline]\nstart='x'\n[[stages]]\nname='a'\nclass='framework.stage:Stage'\n"
    cfg = load_config(write(tmp_path, base))
    assert cfg.runtime.metrics == "127.0.0.1:0" and cfg.runtime.metrics_noun == "executions"
    cfg = load_config(write(tmp_path, base + "[runtime]\nmetrics=''\nmetrics_noun='visits'\n"))
    assert cfg.runtime.metrics == "" and cfg.runtime.metrics_noun == "visits"
    with pytest.raises(ConfigError, match=r"p.toml: \[runtime\].metrics: host 'localhost'"):
        load_config(write(tmp_path, base + "[runtime]\nmetrics='localhost:9'\n"))
    with pytest.raises(ConfigError, match=r"\[runtime\].metrics_noun 'visits done'"):
        load_config(write(tmp_path, base + "[runtime]\nmetrics_noun='visits done'\n"))


def test_a_real_prometheus_scrapes_the_endpoint():
    """Debian's prometheus scrapes metrics fed as a night goes on; done_total must grow."""
    metrics = Metrics("visits", STAGES, pipeline="association")
    address = metrics.start_server("127.0.0.1:0")
    stop = threading.Event()

    def night() -> None:
        while not stop.is_set():
            metrics.event_accepted(3)
            metrics.set_in_flight(2)
            metrics.execution_done(
                {"load": 0.1, "crossmatch": 0.02, "store": 0.05}, latency=0.07, queue_wait=1.5
            )
            metrics.count("alerts", 40)
            stop.wait(0.1)

    feeder = threading.Thread(target=night, daemon=True)
    feeder.start()
    try:
        try:
            server = PrometheusServer([address])
            server.start()
        except PrometheusError as exc:
            pytest.fail(str(exc), pytrace=False)
        try:
            seen: list[float] = []
            deadline = time.time() + 30
            while len(set(seen)) < 2 and time.time() < deadline:
                value = server.value("nightpipe_visits_done_total")
                if value is not None:
                    seen.append(value)
                time.sleep(0.5)
            assert len(set(seen)) >= 2, f"no growing series in 30 s: {seen}; {server.log()}"
            assert seen == sorted(seen) and seen[-1] > seen[0] > 0
            assert server.value('up{job="nightpipe"}') == 1.0
            assert server.value("nightpipe_alerts_total") > 0
            assert server.value("nightpipe_visits_in_flight") == 2.0
            p50 = server.value(
                "histogram_quantile(0.5, sum by (le) (nightpipe_processing_latency_seconds_bucket))"
            )
            assert 0.05 <= p50 <= 0.1  # 0.07 s falls in the (0.05, 0.1] bucket
        finally:
            server.stop()
    finally:
        stop.set()
        feeder.join(5)
        metrics.stop_server()
