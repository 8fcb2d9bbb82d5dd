"""Debian's Prometheus scrapes the master of a real replay under mpiexec."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from events.archive import Archive
from events.journal import Journal
from tests.nights import make_archive, replay
from tests.prometheus import PrometheusError, PrometheusServer

NIGHT_S = 20.0
"""The replay spreads the archive's events over about this many seconds."""


def metrics_address(run_dir: Path, night: threading.Thread, timeout: float = 300.0) -> str:
    """The master's metrics address, from ``endpoint.json`` once it is up."""
    path = run_dir / "endpoint.json"
    deadline = time.time() + timeout
    while True:
        if path.exists():
            address = json.loads(path.read_text()).get("metrics")
            assert address, f"{path} names no metrics address"
            return address
        assert night.is_alive(), "the replay ended before the pipeline was up"
        assert time.time() < deadline, f"no {path} within {timeout} s"
        time.sleep(0.05)


@pytest.mark.mpi
def test_prometheus_scrapes_a_replay(tmp_path: Path):
    archive = make_archive(tmp_path / "archive", max_visits=12, density_static_per_deg2=300.0)
    times = [e.time for e in Archive(archive).events()]
    speed = (max(times) - min(times)) / NIGHT_S
    run = tmp_path / "run"
    outcome: dict[str, Any] = {}

    def night() -> None:
        try:
            outcome["summary"] = replay(archive, run, ranks=3, speed=speed)
        except BaseException as exc:  # surfaced below
            outcome["error"] = exc

    player = threading.Thread(target=night, name="replay")
    player.start()
    seen: list[float] = []
    during: dict[str, float | None] = {}
    try:
        address = metrics_address(run, player)
        try:
            server = PrometheusServer([address])
            server.start()
        except PrometheusError as exc:
            pytest.fail(str(exc), pytrace=False)
        try:
            while player.is_alive():
                value = server.value("nightpipe_visits_done_total")
                if value is not None:
                    seen.append(value)
                    if value > 0 and not during:
                        during = {
                            expr: server.value(expr)
                            for expr in (
                                'up{job="nightpipe"}',
                                "nightpipe_slices",
                                "nightpipe_events_accepted_total",
                                "nightpipe_alerts_total",
                                "nightpipe_new_objects_total",
                                "nightpipe_db_read_duration_seconds_count",
                                "nightpipe_db_write_duration_seconds_count",
                                "nightpipe_processing_latency_seconds_count",
                                "nightpipe_queue_wait_seconds_count",
                            )
                        }
                time.sleep(0.5)
        finally:
            server.stop()
    finally:
        player.join(600)
    if "error" in outcome:
        raise outcome["error"]
    assert outcome["summary"]["done"] == 12 and outcome["summary"]["failed"] == 0

    # Prometheus saw visits_done_total grow during the night, never beyond the journal's
    assert len(set(seen)) >= 2, f"Prometheus saw no growth: {seen}"
    assert seen == sorted(seen) and seen[0] < seen[-1] <= 12, seen
    with Journal(run / "journal.sqlite") as j:
        assert sum(o == "done" for o in j.outcomes().values()) == 12
    # the rest of the night's figures, as Prometheus had them once a visit was done
    assert during['up{job="nightpipe"}'] == 1.0
    assert during["nightpipe_slices"] == 2.0
    for name, value in during.items():
        assert value is not None and value > 0, (name, during)
    print(f"Prometheus saw nightpipe_visits_done_total go {sorted(set(seen))}; then {during}")
