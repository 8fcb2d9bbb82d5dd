"""Issue 13's faults, each once on a small simulated night: the time to detect it and to recover.

The night is the tests' south-pole night (18 visits, `tests.nights.make_archive`),
replayed first without a fault as the reference. Each fault then runs on a
night of its own and gives: what was done; when it was injected; when the
pipeline detected it (a log line's UTC stamp, the status board, or a process
exit) and by what; when it had recovered (the visits concerned done, the
resumed replay finished, or writes succeeding again); the two durations; and
whether the final database equals the reference (`tests.nights.db_rows`).

Usage: ``nice -n 10 python benchmarks/bench_faults.py [--only NAME ...] [--dir DIR]``;
prints JSON. Every process it starts carries ``NIGHTPIPE_FAULTBENCH`` in its
environment; /proc is checked for them and for the run directories after each
fault, and any found is killed and reported under ``leftovers``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from association.nights.job import processes_with
from association.nights.report import build_report
from association.sky.fov import fov_resources
from events.envelope import Event
from events.journal import Journal
from framework.mpiexec import run_command
from framework.status import effective_state, process_alive, read_status

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.faketime import faketime_env  # noqa: E402
from tests.nights import copy_archive, db_rows, make_archive  # noqa: E402
from tests.pgserver import PgServer  # noqa: E402
from tests.test_faults import NV, _events, _replay, _running_on, _span  # noqa: E402

MARK = "NIGHTPIPE_FAULTBENCH"
DET = "detection.diasources_ready"
STAMP = re.compile(r"^\S+\+00:00")


def utc(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")


def until(cond: Callable[[], Any], timeout: float = 300.0, every: float = 0.02) -> float:
    """Poll `cond` until it is true; the time it was."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{cond} not true in {timeout:g} s")
        time.sleep(every)
    return time.time()


def log_lines(run: Path, pattern: str, after: float = 0.0) -> list[tuple[float, str]]:
    """(UTC stamp, line) of the lines of ``nightpipe.log`` matching `pattern`, from `after`."""
    found = []
    for line in (run / "nightpipe.log").read_text(errors="replace").splitlines():
        stamp = STAMP.match(line)
        if stamp and re.search(pattern, line):
            t = datetime.fromisoformat(stamp.group()).timestamp()
            if t >= after:
                found.append((t, line))
    return found


class Night:
    """A ``nightpipe replay`` process: its output lines as they come, with their time, and
    the time each visit's outcome was first seen in the journal."""

    def __init__(self, archive: Path, run: Path, *args: str, env: dict | None = None) -> None:
        self.run = run
        self.started = time.time()
        self.proc = _replay(archive, run, *args, env={MARK: str(os.getpid()), **(env or {})})
        self.lines: list[tuple[float, str]] = []
        self.seen: dict[int, tuple[float, str]] = {}
        self.ended: float | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        threading.Thread(target=self._watch, daemon=True).start()

    def _read(self) -> None:
        for raw in self.proc.stdout:
            self.lines.append((time.time(), raw.decode(errors="replace").rstrip()))
        self.proc.wait()
        self.ended = time.time()
        with (self.run / "bench-replay.out").open("a") as out:  # kept with --dir
            out.writelines(f"{utc(t)} {x}\n" for t, x in self.lines)

    def _watch(self) -> None:
        path = self.run / "journal.sqlite"
        while self.ended is None:
            if path.exists():
                with Journal(path) as j:
                    for fov, outcome in j.outcomes().items():
                        self.seen.setdefault(fov, (time.time(), outcome))
            time.sleep(0.05)

    def wait_outcomes(self, n: int) -> None:
        until(lambda: len(self.seen) >= n or self.ended)
        if len(self.seen) < n:
            raise RuntimeError(f"the replay ended before {n} outcomes:\n{self.output()}")

    def end(self, timeout: float = 600.0) -> float:
        """Wait for the replay to exit (its session killed after `timeout`); when it did."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._reader.join()
        assert self.ended is not None
        return self.ended

    def in_flight(self) -> set[int]:
        """Visits whose next_visit is journaled and that have no outcome (running or queued)."""
        with Journal(self.run / "journal.sqlite") as j:
            return {e.event.fov_id for e in j.entries("in", NV)} - set(j.outcomes())

    def done_at(self, fovs: set[int]) -> float | None:
        """When the last of `fovs` was seen done (None if one is not)."""
        times = [self.seen[f][0] for f in fovs if self.seen.get(f, (0, ""))[1] == "done"]
        return max(times) if fovs and len(times) == len(fovs) else None

    def said(self, pattern: str) -> tuple[float | None, str]:
        """The time and text of the replay's first output line matching `pattern`."""
        return next(((t, x) for t, x in self.lines if re.search(pattern, x)), (None, ""))

    def output(self) -> str:
        return "\n".join(line for _, line in self.lines[-20:])

    def summary(self) -> dict[str, Any]:
        """The replay's summary, in short: visits done and failed, its times."""
        got = json.loads((self.run / "replay.json").read_text()).get("summary") or {}
        keys = ("done", "failed", "wall_seconds", "preload_seconds", "startup_seconds")
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in got.items() if k in keys}


def record(
    did: str,
    injected: float,
    detected: float | None,
    detected_by: str,
    recovered: float | None,
    recovered_by: str,
    equal: bool | None,
    **extra: Any,
) -> dict[str, Any]:
    def since(t: float | None) -> float | None:
        return None if t is None else round(t - injected, 3)

    return {
        "did": did,
        "injected": utc(injected),
        "detected": utc(detected),
        "detected_by": detected_by,
        "recovered": utc(recovered),
        "recovered_by": recovered_by,
        "detect_s": since(detected),
        "recover_s": since(recovered),
        "db_equals_reference": equal,
        **extra,
    }


class Bench:
    """The archive, the reference night, a PostgreSQL server when needed, the run directories."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.archive = make_archive(base / "archive")
        self.span = _span(self.archive)
        self.runs: list[Path] = []
        self.pg: PgServer | None = None
        ref = self.night("reference", "--speed", "max")
        ref.end()
        if ref.summary().get("failed") != 0:
            raise RuntimeError(f"the reference night did not end well:\n{ref.output()}")
        self.reference = {"wall_s": round(ref.ended - ref.started, 3), **ref.summary()}
        self.rows = db_rows(ref.run)
        self.per_visit = {v["fov_id"]: v for v in build_report(ref.run)["per_visit"]}
        self.lost, self.later = self._overlapping_pair()
        self._rows_without_lost: dict | None = None

    def run_dir(self, name: str) -> Path:
        self.runs.append(self.base / name)
        return self.runs[-1]

    def night(self, name: str, *args: str, archive: Path | None = None, **kw: Any) -> Night:
        return Night(archive or self.archive, self.run_dir(name), *args, **kw)

    def resume(self, run: Path) -> Night:
        """A replay at full speed on `run`, to its end."""
        (run / "endpoint.json").unlink(missing_ok=True)
        night = Night(self.archive, run, "--speed", "max")
        night.end()
        return night

    def postgres(self) -> PgServer:
        if self.pg is None:
            self.pg = PgServer()
            self.pg.start()
        return self.pg

    def _overlapping_pair(self) -> tuple[int, int]:
        """A visit and a later one whose fields overlap (as in the test of a lost detection)."""
        starts = {e["fov_id"]: Event.from_dict(e) for e in _events(self.archive) if e["type"] == NV}
        order = list(starts)
        return next(
            (a, b)
            for i, a in enumerate(order)
            for b in order[i + 1 :]
            if not fov_resources(starts[a]).isdisjoint(fov_resources(starts[b]))
        )

    def archive_without(self, name: str, drop: Callable[[dict], bool]) -> Path:
        arch = copy_archive(self.archive, self.base / name)
        keep = [e for e in _events(arch) if not drop(e)]
        (arch / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in keep))
        return arch

    def rows_without_lost(self) -> dict:
        """The database of the night without visit `lost`, one visit at a time."""
        if self._rows_without_lost is None:
            arch = self.archive_without("arch-nolost", lambda e: e["fov_id"] == self.lost)
            night = self.night("no-lost", "--speed", "max", "--max-in-flight", "1", archive=arch)
            night.end()
            self._rows_without_lost = db_rows(night.run)
        return self._rows_without_lost

    def close(self) -> None:
        if self.pg is not None:
            self.pg.stop()


# -- the faults -----------------------------------------------------------------------------------


def master_kill9(b: Bench) -> dict:
    night = b.night("master-kill9", "--speed", "max")
    night.wait_outcomes(6)
    pid = json.loads((night.run / "endpoint.json").read_text())["pid"]
    os.kill(pid, signal.SIGKILL)
    t0, n = time.time(), len(night.seen)
    dead = until(lambda: effective_state(read_status(night.run)) == "dead")
    night.end()
    again = b.resume(night.run)
    return record(
        f"kill -9 of the master (pid {pid}) after {n} outcomes, then a resume",
        t0,
        dead,
        "status board: dead (the master's pid is gone)",
        again.ended,
        "the resumed replay finished",
        db_rows(night.run) == b.rows,
        replay_exited_s=round(night.ended - t0, 3),
        replay_said=night.output().splitlines()[-1],
        resumed=again.summary(),
    )


def slice_kill9(b: Bench) -> dict:
    night = b.night("slice-kill9", "--speed", "max")
    night.wait_outcomes(3)
    victim = int(read_status(night.run)["ranks"]["1"]["pid"])
    os.kill(victim, signal.SIGKILL)
    t0, n = time.time(), len(night.seen)
    night.end()
    again = b.resume(night.run)
    return record(
        f"kill -9 of Slice rank 1 (pid {victim}) after {n} outcomes, then a resume",
        t0,
        night.ended,
        "mpiexec ended the job (pipeline.out: "
        + " ".join(re.findall(r"EXIT STRING: .*", (night.run / "pipeline.out").read_text()))
        + "); the replay exited: "
        + night.output().splitlines()[-1],
        again.ended,
        "the resumed replay finished",
        db_rows(night.run) == b.rows,
        log_after_kill=[x for _, x in log_lines(night.run, "ERROR|WARNING", t0)][:3],
        resumed=again.summary(),
    )


def slice_sigstop(b: Bench) -> dict:
    timeout = 5.0
    pace = f"{b.span / 25:g}"
    night = b.night("slice-sigstop", "--speed", pace, "--set", f"runtime.slice_timeout={timeout:g}")
    night.wait_outcomes(3)
    victim = int(read_status(night.run)["ranks"]["1"]["pid"])
    os.kill(victim, signal.SIGSTOP)
    t0 = time.time()
    try:
        night.end()
        gone = until(lambda: not process_alive(victim), timeout=10)
    except TimeoutError:
        gone = None
    finally:
        if process_alive(victim):
            os.kill(victim, signal.SIGKILL)
    said = log_lines(night.run, "has not answered", t0)
    board = read_status(night.run)["ranks"]["1"]
    again = b.resume(night.run)
    return record(
        f"SIGSTOP of Slice rank 1 (pid {victim}) with runtime.slice_timeout={timeout:g}, "
        "then a resume",
        t0,
        said[0][0] if said else None,
        f"log: {said[0][1].split(': ', 1)[-1]}" if said else "no log line",
        again.ended,
        "the resumed replay finished",
        db_rows(night.run) == b.rows,
        status_rank1=board.get("state"),
        stopped_slice_gone_s=gone and round(gone - t0, 3),
        replay_exited_s=round(night.ended - t0, 3),
        resumed=again.summary(),
    )


def _postgres(b: Bench, name: str, stop_s: float | None) -> dict:
    pg = b.postgres()
    url = pg.create_database()
    night = b.night(name, "--db", url, "--speed", "max")
    night.wait_outcomes(4)
    t0, busy = time.time(), night.in_flight()
    if stop_s is None:
        pg.restart()
        did = "pg_ctl restart -m fast"
    else:
        pg.pause()
        time.sleep(stop_s)
        pg.resume()
        did = f"pg_ctl stop -m fast, {stop_s:g} s, start"
    back = time.time()
    night.end()
    retries = log_lines(night.run, r"; retry \d+ in", t0)
    retried = {int(re.search(r"fov (\d+)", line).group(1)) for _, line in retries}
    if retried:
        recovered = night.done_at(retried)
        how = f"the visits that retried ({sorted(retried)}) done"
    else:
        recovered = min(
            (t for t, o in night.seen.values() if t >= back and o == "done"), default=None
        )
        how = "no visit retried: the first visit done after the server was back"
    return record(
        f"{did} with visits {sorted(busy)} unfinished (in flight or queued)",
        t0,
        retries[0][0] if retries else None,
        f"log: {retries[0][1].split(': ', 1)[-1]}" if retries else "nothing in the log",
        recovered,
        how,
        db_rows(night.run, url) == b.rows,
        server_back_s=round(back - t0, 3),
        retry_lines=len(retries),
        summary=night.summary(),
    )


def postgres_restart(b: Bench) -> dict:
    return _postgres(b, "pg-restart", None)


def postgres_stop_10s(b: Bench) -> dict:
    return _postgres(b, "pg-stop", 10.0)


def second_master(b: Bench) -> list[dict]:
    night = b.night("second-master", "--speed", f"{b.span / 20:g}")
    night.wait_outcomes(1)
    t0 = time.time()
    second = subprocess.run(
        run_command(2, "association", night.run),
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, MARK: str(os.getpid())},
    )
    refused = time.time()
    t1 = time.time()
    other = Night(b.archive, night.run, "--speed", "max")
    other.end(180)
    night.end()
    equal = db_rows(night.run) == b.rows
    return [
        record(
            "a second master (mpiexec -n 2 nightpipe run) on the run directory of a running night",
            t0,
            refused,
            f"exit {second.returncode}: {' '.join(second.stderr.split())}",
            None,
            "nothing to recover: the first master ran on",
            equal,
        ),
        record(
            "a second replay on the run directory of a running one",
            t1,
            other.ended,
            f"exit {other.proc.returncode}: {other.output().splitlines()[-1]}",
            None,
            "nothing to recover: the first replay ran on",
            equal,
        ),
    ]


def preload_kill(b: Bench) -> dict:
    night = b.night("preload-kill", "--speed", "max")
    db = night.run / "nightpipe.sqlite"

    def objects_in() -> bool:
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.1) as conn:
                return conn.execute("SELECT 1 FROM objects LIMIT 1").fetchone() is not None
        except sqlite3.Error:
            return False

    until(objects_in, every=0.005)
    os.killpg(night.proc.pid, signal.SIGKILL)  # the replay and its preload process
    t0 = time.time()
    night.end()
    with sqlite3.connect(db) as conn:
        history = conn.execute("SELECT count(*) FROM diasources").fetchone()[0]
        notes = conn.execute("SELECT count(*) FROM notes").fetchone()[0]
    again = b.resume(night.run)
    redone, line = again.said(r"loaded \d+ Objects")
    return record(
        f"kill -9 of the replay and its preload once Objects were in ({history} history rows, "
        f"{notes} completion notes), then a resume",
        t0,
        redone,
        f"the resumed replay redid the preload: {line}",
        again.ended,
        "the resumed replay finished",
        db_rows(night.run) == b.rows,
        resumed=again.summary(),
    )


def lost_detection(b: Bench) -> dict:
    wait = 25.0
    lost, later = b.lost, b.later
    arch = b.archive_without("arch-lost", lambda e: e["fov_id"] == lost and e["type"] == DET)
    cfg = b.base / "short_wait.toml"
    text = (ROOT / "association" / "pipelines" / "association.toml").read_text()
    cfg.write_text(text.replace("timeout = 600.0", f"timeout = {wait}"))
    night = b.night("lost-detection", "--speed", "max", "--config", str(cfg), archive=arch)
    night.end()
    with Journal(night.run / "journal.sqlite") as j:
        started = j.entries("in", NV, lost)[0].received
        failed = j.entries("out", "association.visit_failed", lost)[0]
    mine = next(v for v in build_report(night.run)["per_visit"] if v["fov_id"] == later)
    ref = b.per_visit[later]
    keys = ("end_to_end_s", "processing_s", "queue_wait_s")
    return record(
        f"visit {lost}'s detection event never sent (wait {wait:g} s); visit {later} overlaps it",
        started,
        failed.received,
        f"visit {lost} failed: {failed.event.body['error']}",
        None,
        f"nothing to recover; visit {later} was not held back (later_visit)",
        db_rows(night.run) == b.rows_without_lost(),
        later_visit={
            "fov": later,
            **{k: mine[k] for k in keys},
            **{f"reference_{k}": ref[k] for k in keys},
        },
        reference="the night without the lost visit, one visit at a time",
    )


def clock_step(b: Bench) -> dict:
    stamp = b.base / "faketime"
    stamp.write_text("+0\n")
    night = b.night("clock-step", "--speed", f"{b.span / 15:g}", env=faketime_env(stamp))
    night.wait_outcomes(4)
    until(night.in_flight, every=0.05)  # step while a visit is at work
    busy = night.in_flight()
    stamp.write_text("+1h\n")
    t0 = time.time()
    night.end()
    failed = {f for f, (_, o) in night.seen.items() if o != "done"}
    after = [t for t, o in night.seen.values() if t >= t0 and o == "done"]
    return record(
        "the wall clock of every process of the night stepped +1 h (libfaketime)",
        t0,
        None,
        f"nothing fired: visits failed {sorted(failed)}",
        night.done_at(busy) if busy else min(after, default=None),
        f"the visits unfinished at the step ({sorted(busy)}) done"
        if busy
        else "none in flight at the step: the next visit done",
        db_rows(night.run) == b.rows,
        summary=night.summary(),
    )


def bad_file(b: Bench) -> dict:
    arch = copy_archive(b.archive, b.base / "arch-bad")
    path = arch / "data" / f"visit_{b.lost}_diasources.parquet"
    t = pq.read_table(path)
    dec = t.column("dec").to_numpy().copy()
    dec[3] = float("nan")
    pq.write_table(t.set_column(t.column_names.index("dec"), "dec", pa.array(dec)), path)
    night = b.night("bad-file", "--speed", "max", archive=arch)
    night.end()
    with Journal(night.run / "journal.sqlite") as j:
        det = j.entries("in", DET, b.lost)[0].received
        failed = j.entries("out", "association.visit_failed", b.lost)[0]
    start = log_lines(night.run, rf"fov {b.lost}: execution starts")[0][0]
    return record(
        f"visit {b.lost}'s DIASources file with a NaN in dec (row 3)",
        max(det, start),
        failed.received,
        f"visit {b.lost} failed: {failed.event.body['error']}",
        None,
        "nothing to recover: bad data fails its visit, not retried",
        db_rows(night.run) == b.rows_without_lost(),
        reference="the night without that visit, one visit at a time",
        summary=night.summary(),
    )


FAULTS: dict[str, Callable[[Bench], dict | list[dict]]] = {
    "master_kill9": master_kill9,
    "slice_kill9": slice_kill9,
    "slice_sigstop": slice_sigstop,
    "postgres_restart": postgres_restart,
    "postgres_stop_10s": postgres_stop_10s,
    "second_master": second_master,
    "preload_kill": preload_kill,
    "lost_detection": lost_detection,
    "clock_step": clock_step,
    "bad_file": bad_file,
}


def leftovers(runs: list[Path]) -> list[str]:
    """Command lines of the processes this bench started that are still there, and of any
    naming one of its run directories; the first are killed."""
    found = [cmd for run in runs for cmd in _running_on(run)]
    for pid in processes_with(MARK, str(os.getpid())):
        try:
            found.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
            os.kill(pid, signal.SIGKILL)
        except OSError:
            continue
    return sorted(set(found))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", choices=list(FAULTS), default=list(FAULTS))
    p.add_argument("--dir", type=Path, help="keep the archive and run directories here")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-faults-") as tmp:
        base = args.dir or Path(tmp)
        base.mkdir(parents=True, exist_ok=True)
        bench = Bench(base)
        out: dict[str, Any] = {"reference": bench.reference, "faults": {}}
        try:
            for name in args.only:
                try:
                    out["faults"][name] = FAULTS[name](bench)
                except Exception as exc:
                    traceback.print_exc()
                    out["faults"][name] = {"error": f"{type(exc).__name__}: {exc}"}
                left = leftovers(bench.runs)
                if left:
                    out["faults"][name] = {**out["faults"][name], "leftovers": left}
        finally:
            bench.close()
            out["leftovers"] = leftovers(bench.runs)
    out["uptime"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
