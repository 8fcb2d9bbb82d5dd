"""Slow clients don't slow the night: replay throughput with and without watchers.

One simulated night (the demo's cadence) is replayed at full speed into a
3-rank pipeline on SQLite, again and again, alternating two arms:

- ``quiet``: nobody looks;
- ``watched``: ``nightpipe serve`` (its own process, as an operator runs it)
  serves the run directory while clients in this process hit it: pollers
  that fetch ``/api/night`` and ``/`` four times a second each, slow readers
  whose tiny receive buffer makes the server's writes wait on them, and
  stalled clients that send half a request and nothing more; a scraper reads
  the master's own ``/metrics`` twice a second.

Throughput is visits done per minute between the first event journaled and
the last outcome (so the pipeline's start-up is not in it). Requests count
when answered in full (status 200, whole body) within that window (after it,
the master's ``/metrics`` is gone with the master). The arms alternate round
by round, each starting first in every other round, so a drift in the
machine's load falls on both; each round's watched/quiet ratio compares two
replays a minute apart. On a shared machine wall time swings with the other
jobs, so the CPU seconds of the pipeline job (every rank, and the preload),
which the watchers could raise only by making it do more work, are reported
beside it, with the CPU seconds the page server and the clients spent. The
reference is the quiet arm, measured in the same run.

The clients run on the pipeline's machine, which browsers would not:
``--client-nice 19`` lowers their threads' priority so that their own CPU
weighs on the night as little as the machine allows, leaving the page server
(at its default ``--nice 5``) as what is measured.

Prints one JSON document: every replay, the medians, the ratios watched/quiet,
and the load average. Usage:
``python benchmarks/bench_serve.py [--rounds N] [--visits N] [--client-nice 19]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from association.nights.opsim import BUNDLED_DB  # noqa: E402
from association.nights.replay import Replayer, ReplayOptions  # noqa: E402
from association.nights.simulate import SimConfig, simulate  # noqa: E402
from events.journal import Journal  # noqa: E402

POLLERS, POLL_PERIOD_S = 5, 0.25
SLOW_READERS, SLOW_RCVBUF, SLOW_CHUNK, SLOW_PAUSE_S = 3, 2048, 512, 0.05
STALLED = 2
SCRAPE_PERIOD_S = 0.5


class Clients:
    """The watched arm's clients; each answered request is logged with its end time."""

    def __init__(self, page: str, run_dir: Path, nice: int) -> None:
        self.page = page
        self.run_dir = run_dir
        self.nice = nice
        self.stop = threading.Event()
        self.answered: list[tuple[float, str, float]] = []  # (end, kind, seconds)
        self.errors: list[tuple[float, str]] = []  # (when, what)
        self.threads: list[threading.Thread] = []

    def _loop(self, kind: str, once: Callable[[], None], period: float) -> None:
        if self.nice:  # Linux: a thread's own priority
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + self.nice)
        while not self.stop.is_set():
            t0 = time.time()
            try:
                once()
            except OSError as exc:
                self.errors.append((time.time(), f"{kind}: {exc!r}"))
            else:
                if kind != "stalled":
                    self.answered.append((time.time(), kind, time.time() - t0))
            self.stop.wait(period)

    def _get(self, url: str) -> None:
        with urllib.request.urlopen(url, timeout=60) as r:
            body = r.read()
            if r.status != 200 or len(body) != int(r.headers["Content-Length"]):
                raise OSError(f"{url}: status {r.status}, {len(body)} bytes")

    def _poll(self) -> None:
        self._get(f"http://{self.page}/api/night")
        self._get(f"http://{self.page}/")

    def _slow_read(self) -> None:
        host, port = self.page.rsplit(":", 1)
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_RCVBUF)
            s.settimeout(60)
            s.connect((host, int(port)))
            s.sendall(b"GET / HTTP/1.1\r\nHost: night\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(SLOW_CHUNK):
                data += chunk
                time.sleep(SLOW_PAUSE_S)
        head, _, body = data.partition(b"\r\n\r\n")
        length = [ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length:")]
        if not head.startswith(b"HTTP/1.0 200") or not length:
            raise OSError(f"slow read: {head[:80]!r}")
        if len(body) != int(length[0].split(b":")[1]):
            raise OSError(f"slow read: {len(body)} of {length[0]!r}")

    def _stall(self) -> None:
        host, port = self.page.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=60) as s:
            s.sendall(b"GET / HTTP/1.1\r\n")  # and never the rest: the server drops it
            s.recv(1)

    def _scrape(self) -> None:
        info = json.loads((self.run_dir / "endpoint.json").read_text())
        self._get(f"http://{info['metrics']}/metrics")

    def start(self) -> None:
        """Start every client thread."""
        plan = (
            [("poll", self._poll, POLL_PERIOD_S)] * POLLERS
            + [("slow", self._slow_read, 0.0)] * SLOW_READERS
            + [("stalled", self._stall, 0.0)] * STALLED
            + [("metrics", self._scrape, SCRAPE_PERIOD_S)]
        )
        for kind, once, period in plan:
            t = threading.Thread(target=self._loop, args=(kind, once, period), daemon=True)
            t.start()
            self.threads.append(t)

    def finish(self) -> None:
        """Stop them (a stalled one ends when the server drops it)."""
        self.stop.set()
        for t in self.threads:
            t.join(30)


def night_window(run_dir: Path) -> tuple[float, float, int]:
    """First event journaled, last outcome, visits done."""
    with Journal(run_dir / "journal.sqlite") as j:
        first = min(e.received for e in j.entries(direction="in"))
        ends = j.outcome_times()
        done = sum(o == "done" for o in j.outcomes().values())
    return first, max(ends.values()), done


def wait_for_endpoint(run_dir: Path, player: threading.Thread) -> None:
    path = run_dir / "endpoint.json"
    while not path.exists():
        if not player.is_alive():
            raise RuntimeError("the replay ended before the pipeline was up")
        time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_s(who: int) -> float:
    """User + system CPU seconds of `who` (``resource.RUSAGE_SELF`` or ``RUSAGE_CHILDREN``)."""
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def replay_once(
    archive: Path, run_dir: Path, ranks: int, watched: bool, client_nice: int
) -> dict[str, Any]:
    """One replay; with `watched`, the page server and the clients run during it."""
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    result: dict[str, Any] = {}

    def night() -> None:
        try:
            result["summary"] = Replayer(
                ReplayOptions(archive=archive, run_dir=run_dir, ranks=ranks)
            ).run()
        except BaseException as exc:  # raised below
            result["error"] = exc

    serve = clients = None
    if watched:
        page = f"127.0.0.1:{free_port()}"
        nightpipe = Path(sys.executable).with_name("nightpipe")
        serve = subprocess.Popen(
            [nightpipe, "serve", run_dir, "--address", page, "--refresh", str(POLL_PERIOD_S)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        clients = Clients(page, run_dir, client_nice)
    children0, self0 = cpu_s(resource.RUSAGE_CHILDREN), cpu_s(resource.RUSAGE_SELF)
    player = threading.Thread(target=night)
    player.start()
    try:
        if clients is not None:
            wait_for_endpoint(run_dir, player)
            clients.start()
        player.join()
    finally:
        job_cpu = cpu_s(resource.RUSAGE_CHILDREN) - children0  # the job ended and was reaped
        self_cpu = cpu_s(resource.RUSAGE_SELF) - self0
        if clients is not None:
            clients.finish()
        if serve is not None:
            serve.terminate()
            serve.wait(30)
    serve_cpu = cpu_s(resource.RUSAGE_CHILDREN) - children0 - job_cpu
    if "error" in result:
        raise result["error"]
    first, last, done = night_window(run_dir)
    out: dict[str, Any] = {
        "arm": "watched" if watched else "quiet",
        "visits_done": done,
        "failed": result["summary"]["failed"],
        "night_s": round(last - first, 3),
        "visits_per_min": round(60.0 * done / (last - first), 2),
        "job_cpu_s": round(job_cpu, 2),
        "this_process_cpu_s": round(self_cpu, 2),  # the replay's sender, and the clients
    }
    if clients is not None:
        inside = [a for a in clients.answered if first <= a[0] <= last]
        by_kind = {k: sum(a[1] == k for a in inside) for k in ("poll", "slow", "metrics")}
        out.update(
            serve_cpu_s=round(serve_cpu, 2),
            requests_answered=2 * by_kind["poll"] + by_kind["slow"],  # a poll is two requests
            by_kind=by_kind,
            slow_read_s_median=round(
                statistics.median([a[2] for a in inside if a[1] == "slow"] or [0.0]), 3
            ),
            client_errors=[e for t, e in clients.errors if first <= t <= last],
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--visits", type=int, default=40, help="visits in the simulated night")
    p.add_argument("--rounds", type=int, default=3, help="rounds of (quiet, watched)")
    p.add_argument("--ranks", type=int, default=3)
    p.add_argument(
        "--client-nice",
        type=int,
        default=0,
        help="lower the client threads' priority by this much (19: as if they ran elsewhere)",
    )
    args = p.parse_args()
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    try:
        archive = work / "archive"
        simulate(BUNDLED_DB, archive, 60217.5, SimConfig(seed=1), None, args.visits, overwrite=True)
        runs = []
        for i in range(args.rounds):
            arms = (False, True) if i % 2 == 0 else (True, False)
            for watched in arms:
                r = replay_once(archive, work / "run", args.ranks, watched, args.client_nice)
                r["round"] = i
                runs.append(r)
                print(json.dumps(r), file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def by_arm(key: str) -> dict[str, list[float]]:
        return {arm: [r[key] for r in runs if r["arm"] == arm] for arm in ("quiet", "watched")}

    def paired(key: str) -> list[float]:
        """Each round's watched / quiet."""
        out = []
        for i in range(args.rounds):
            arm = {r["arm"]: r[key] for r in runs if r["round"] == i}
            out.append(round(arm["watched"] / arm["quiet"], 3))
        return out

    rates, cpu = by_arm("visits_per_min"), by_arm("job_cpu_s")
    med = {arm: statistics.median(v) for arm, v in rates.items()}
    watched = [r for r in runs if r["arm"] == "watched"]
    print(
        json.dumps(
            {
                "benchmark": "serve: replay throughput, watched vs quiet",
                "visits": args.visits,
                "ranks": args.ranks,
                "rounds": args.rounds,
                "clients": {
                    "pollers": POLLERS,
                    "poll_period_s": POLL_PERIOD_S,
                    "slow_readers": SLOW_READERS,
                    "stalled": STALLED,
                    "metrics_scrape_period_s": SCRAPE_PERIOD_S,
                    "nice": args.client_nice,
                },
                "visits_per_min": rates,
                "median_visits_per_min": med,
                "ratio_of_medians_watched_over_quiet": round(med["watched"] / med["quiet"], 3),
                "round_ratios_watched_over_quiet": paired("visits_per_min"),
                "median_round_ratio": statistics.median(paired("visits_per_min")),
                "job_cpu_s": cpu,
                "median_job_cpu_s": {arm: statistics.median(v) for arm, v in cpu.items()},
                "median_round_ratio_job_cpu": statistics.median(paired("job_cpu_s")),
                "serve_cpu_s_median": statistics.median(r["serve_cpu_s"] for r in watched),
                "this_process_cpu_s": by_arm("this_process_cpu_s"),
                "requests_answered_min": min(r["requests_answered"] for r in watched),
                "requests_answered_median": statistics.median(
                    r["requests_answered"] for r in watched
                ),
                "client_errors": sum(len(r["client_errors"]) for r in watched),
                "loadavg_before": load_before,
                "loadavg_after": os.getloadavg(),
                "cpus": os.cpu_count(),
                "runs": runs,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
