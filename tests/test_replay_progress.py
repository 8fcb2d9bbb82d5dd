"""The replay's progress lines: no NaN, the rate of this run only, a line while it waits."""

from __future__ import annotations

import io
import time

from association.nights.replay import Progress, _sleep_until


def test_before_the_first_visit_there_is_no_rate_and_no_eta() -> None:
    p = Progress(total=10, out=io.StringIO())
    assert "no visit done yet" in p.line(0, 30, 0)
    p.first_event()
    p.update(0)
    line = p.line(3, 30, 0)
    assert "nan" not in line.lower() and "ETA" not in line and "no visit done yet" in line


def test_a_resumed_replay_counts_only_its_own_visits_from_its_first_event() -> None:
    p = Progress(total=10, finished_before=4, out=io.StringIO())
    p.first_event()
    p.t0 -= 60.0  # its first event a minute ago
    p.update(4)
    assert p.this_run == 0 and "no visit done yet" in p.line(30, 30, 0)
    p.update(10)
    assert p.this_run == 6
    assert abs(p.rate() - 6.0) < 0.1  # 6 visits in a minute, not 10
    line = p.line(30, 30, 1)
    assert "visits 10/10 (1 failed, 4 before this run)" in line and "6.0 visits/min" in line


def test_a_paced_wait_gives_a_line_every_few_seconds() -> None:
    out = io.StringIO()
    p = Progress(total=10, out=out, every=1.0)
    p.first_event()
    ticks: list[float] = []

    def tick() -> None:
        ticks.append(time.perf_counter())
        p.show(0, 30, 0)

    start = time.perf_counter()
    _sleep_until(start + 3.5, tick)
    assert time.perf_counter() >= start + 3.5
    gaps = [b - a for a, b in zip([start, *ticks[:-1]], ticks, strict=True)]
    assert len(ticks) >= 2 and max(gaps) < 2.5
    assert len(out.getvalue().splitlines()) >= 2
