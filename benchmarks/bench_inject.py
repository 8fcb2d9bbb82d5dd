"""Latency of injecting one event into a master: from the `inject` call to the durable journal.

The server (a subprocess) runs the master's ingest loop: receive, `parse_event`,
`Journal.accept` (fsynced), then reply. The reply is sent only after the commit,
so the client's round trip bounds "inject call -> event journaled". A ZeroMQ
echo server with the same sockets and no validation or journal is measured in
the same run as the reference.

Usage: ``python benchmarks/bench_inject.py [-n 300] [--dir DIR]``; prints JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from events import types as T
from events.client import Injector, inject
from events.deadletter import DeadLetters
from events.endpoint import Endpoint, error_reply, ok_reply
from events.envelope import Event
from events.journal import Journal
from events.validate import EventError, parse_event

TARGET_MEDIAN_MS = 5.0
WARMUP = 20


def serve(mode: str, run_dir: Path) -> None:
    """Server loop; prints its address, stops after a ``control.shutdown`` event."""
    endpoint = Endpoint()
    print(endpoint.address, flush=True)
    try:
        if mode == "journal":
            with (
                Journal(run_dir / "journal.sqlite") as journal,
                DeadLetters(run_dir / "deadletter.jsonl") as dead,
            ):
                while _ingest(endpoint, journal, dead):
                    pass
        else:
            while _echo(endpoint):
                pass
    finally:
        endpoint.close()


def _ingest(endpoint: Endpoint, journal: Journal, dead: DeadLetters) -> bool:
    """One round of the master's ingest: validate, dead-letter, group-commit, reply."""
    good = []
    for req in endpoint.receive(1.0):
        try:
            good.append((req, parse_event(req.raw)))
        except EventError as exc:
            dead.write(req.raw, exc, "endpoint")
            endpoint.reply(req, error_reply(exc))
    go_on = True
    for (req, event), new in zip(good, journal.accept([e for _, e in good]), strict=True):
        endpoint.reply(req, ok_reply(event, new))
        go_on = go_on and event.type != T.SHUTDOWN
    return go_on


def _echo(endpoint: Endpoint) -> bool:
    """The reference: reply at once, no validation, no journal."""
    go_on = True
    for req in endpoint.receive(1.0):
        endpoint.reply(req, {"ok": True, "id": None, "duplicate": False})
        go_on = go_on and T.SHUTDOWN.encode() not in req.raw
    return go_on


def _events(n: int, tag: str) -> list[Event]:
    body = {"mjd": 60000.5, "ra": 150.1, "dec": 2.2, "filter": "r", "seeing": 0.8}
    return [Event.new(T.NEXT_VISIT, i, body, id=f"{tag}-{i}") for i in range(n)]


def _stats(seconds: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in seconds)
    return {
        "median_ms": round(statistics.median(ms), 3),
        "p95_ms": round(ms[min(len(ms) - 1, int(0.95 * len(ms)))], 3),
        "max_ms": round(ms[-1], 3),
    }


def _timed(send: Callable[[Event], dict[str, Any]], events: list[Event]) -> dict[str, float]:
    for e in events[:WARMUP]:
        send(e)
    times = []
    for e in events[WARMUP:]:
        t0 = time.perf_counter()
        reply = send(e)
        times.append(time.perf_counter() - t0)
        if not reply.get("ok"):
            raise RuntimeError(f"server rejected {e.id}: {reply}")
    return _stats(times)


def measure(mode: str, n: int, run_dir: Path) -> dict[str, dict[str, float]]:
    """Both client styles against one server of `mode` ('journal' or 'echo')."""
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", mode, "--dir", str(run_dir)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        address = proc.stdout.readline().strip()
        out = {"inject": _timed(lambda e: inject(address, e), _events(n + WARMUP, "a"))}
        with Injector(address) as injector:
            out["injector"] = _timed(injector.send, _events(n + WARMUP, "b"))
            injector.send(Event.new(T.SHUTDOWN, None, {"reason": "benchmark done"}))
        proc.wait(10)
        if mode == "journal":
            with Journal(run_dir / "journal.sqlite") as j:
                journaled = j.count(direction="in", type=T.NEXT_VISIT)
            if journaled != 2 * (n + WARMUP):
                raise RuntimeError(f"journaled {journaled} events, sent {2 * (n + WARMUP)}")
        return out
    finally:
        if proc.poll() is None:
            proc.kill()


def accept_only(n: int, run_dir: Path) -> dict[str, float]:
    """`Journal.accept` of one event, in process: the commit (with fsync) alone."""
    with Journal(run_dir / "accept.sqlite") as j:
        events = _events(n + WARMUP, "c")
        return _timed(lambda e: {"ok": j.accept([e])[0]}, events)


def main() -> None:
    """Run the benchmark and print its figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=300, help="measured events per series")
    parser.add_argument("--dir", default=None, help="where the journal goes (a temp dir)")
    parser.add_argument("--serve", choices=["journal", "echo"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, Path(args.dir))
        return
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        (root / "journal").mkdir()
        (root / "echo").mkdir()
        journal = measure("journal", args.n, root / "journal")
        echo = measure("echo", args.n, root / "echo")
        result = {
            "n": args.n,
            "journal_dir": str(root),
            "journal_server": journal,
            "echo_reference": echo,
            "accept_only": accept_only(args.n, root),
            "overhead_median_ms": round(
                journal["inject"]["median_ms"] - echo["inject"]["median_ms"], 3
            ),
            "target_median_ms": TARGET_MEDIAN_MS,
            "meets_target": journal["inject"]["median_ms"] <= TARGET_MEDIAN_MS,
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
