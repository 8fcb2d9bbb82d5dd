"""The live night page in a real headless Chromium, while a real replay runs under mpiexec."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from association.nights.serve import NightServer
from events.journal import Journal
from tests.browser import Browser, BrowserError
from tests.nights import make_archive, replay

READ_DOM = """(() => {
  const text = id => document.getElementById(id).textContent;
  return {
    state: text("state"),
    done: Number(text("visits-done")),
    expected: Number(text("visits-expected")),
    failed: Number(text("visits-failed")),
    marks: document.querySelectorAll("#latency-plot .visit").length,
    done_marks: document.querySelectorAll("#latency-plot .visit.done").length,
  };
})()"""


@pytest.mark.mpi
def test_live_page_follows_a_replay(tmp_path: Path):
    archive = make_archive(tmp_path / "archive", max_visits=12, density_static_per_deg2=300.0)
    run = tmp_path / "run"
    browser = Browser(width=1280, height=1800)
    try:
        browser.start()
    except BrowserError as exc:
        pytest.fail(str(exc), pytrace=False)
    outcome: dict[str, Any] = {}

    def night() -> None:
        try:
            outcome["summary"] = replay(archive, run, ranks=3)
        except BaseException as exc:  # surfaced below
            outcome["error"] = exc

    try:
        with NightServer(run, "127.0.0.1:0", refresh=0.25, min_interval=0.1) as server:
            browser.navigate(server.url)
            first = browser.evaluate(READ_DOM)
            assert first["state"] == "waiting" and first["done"] == 0 and first["marks"] == 0
            player = threading.Thread(target=night, name="replay")
            player.start()
            seen = [first]
            while player.is_alive():
                seen.append(browser.evaluate(READ_DOM))
                time.sleep(0.2)
            player.join()
            if "error" in outcome:
                raise outcome["error"]
            summary = outcome["summary"]
            with Journal(run / "journal.sqlite") as j:
                finished = len(j.outcomes())
            deadline = time.time() + 10
            while seen[-1]["done"] + seen[-1]["failed"] < finished and time.time() < deadline:
                time.sleep(0.2)
                seen.append(browser.evaluate(READ_DOM))
            last = seen[-1]
            shot = browser.screenshot(tmp_path / "night-page.png")
    finally:
        browser.stop()

    assert summary["done"] == 12 and summary["failed"] == 0
    assert (last["done"], last["failed"], last["expected"]) == (12, 0, 12)
    assert last["state"] == "stopped"
    dones = [s["done"] for s in seen]
    assert dones == sorted(dones) and dones[0] == 0 and dones[-1] == 12, dones
    # one mark per finished visit, at every moment the page was read
    assert all(s["marks"] == s["done"] + s["failed"] for s in seen), seen
    assert last["done_marks"] == 12
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    print(f"screenshot: {shot}; DOM visits-done went {sorted(set(dones))}")
