"""Replay a night archive into a pipeline, keeping its event spacing.

A replay that starts its pipeline owns it: however the replay ends (done, its
own error, a timeout, Ctrl-C, SIGTERM), the pipeline is shut down, gracefully
first, and no process of its job is left (`association.nights.job`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from association.nights.channels import Channel, KafkaNight, ZmqChannel
from association.nights.job import Job, sigterm_raises
from association.nights.prepared import copy_prepared, find_prepared
from association.nights.survey import survey_of
from association.nights.topiccheck import AlertTopicCheck, check_alert_topic
from association.rundir import NightRunDir
from association.storage import SQLITE_NAME, FrozenParameters, open_storage
from events.archive import Archive
from events.client import Injector
from events.envelope import Event
from events.journal import Journal
from events.kafka import KafkaError
from events.types import NEXT_VISIT, SHUTDOWN
from framework.mpiexec import run_command
from framework.rundir import RunDirBusy

STARTUP_QUIET_S = 60.0
"""While starting, a pipeline may show no sign of life for at least this long."""

TICK_ROOM = 0.25
"""A progress line after a send when the next is due at least this many seconds later
(or when the line is a whole interval late), so that it does not hold up that send."""

PLAY_BATCH = 200
"""Events sent at once into Kafka at full speed (each batch acknowledged before the next)."""


class ReplayError(RuntimeError):
    """The replay could not go on; the message says why."""


@dataclass
class ReplayOptions:
    """How to replay.

    Parameters
    ----------
    archive : Path
        The night archive.
    run_dir : Path
        The pipeline's run directory (journal, database, log, status).
    speed : float or None
        Event spacing is divided by this; None sends as fast as possible.
    ranks : int
        MPI ranks of a pipeline the replay starts (master + Slices).
    address : str or None
        Send into the pipeline listening there instead of starting one.
    db_url : str or None
        Database of the pipeline; SQLite in the run directory by default.
    config : str
        Pipeline config (file or shipped name) of a pipeline the replay starts.
    sets : list of str
        ``STAGE.KEY=VALUE`` overrides for that pipeline.
    timeout : float
        Give up once the pipeline has shown no progress for this many
        seconds: while starting, no CPU used and no log line (for at least
        `STARTUP_QUIET_S`); after the last event, no visit finished and no
        change on its status board.
    max_in_flight : int or None
        Override the pipeline's cap on visits in flight.
    grace : float
        A pipeline stopped before its end (error, timeout, signal) gets this
        many seconds to drain before its processes are killed.
    kafka : str or None
        Kafka bootstrap servers: play the events into Kafka topics instead
        of the endpoint; the pipeline the replay starts reads them and
        streams its alerts there (see `association.nights.channels`).
    kafka_prefix : str
        Put before every topic name.
    """

    archive: Path
    run_dir: Path
    speed: float | None = None
    ranks: int = 3
    address: str | None = None
    db_url: str | None = None
    config: str = "association"
    sets: list[str] = dataclasses.field(default_factory=list)
    timeout: float = 600.0
    max_in_flight: int | None = None
    grace: float = 30.0
    kafka: str | None = None
    kafka_prefix: str = ""


class Progress:
    """Visits finished out of the total, the rate and the ETA, one line every few seconds.

    The rate counts only the visits finished by this run, from its first
    event sent: start-up and preload are left out, and a resumed replay does
    not count what the earlier attempts did.
    """

    def __init__(
        self, total: int, finished_before: int = 0, out: TextIO = sys.stderr, every: float = 4.0
    ) -> None:
        self.total = total
        self.before = finished_before
        self.out = out
        self.every = every
        self.t0: float | None = None
        self.last_finish: float | None = None
        self._finished = finished_before
        self._next = 0.0

    def first_event(self) -> None:
        """The clock of the rate starts now."""
        self.t0 = time.monotonic()

    def update(self, finished: int) -> None:
        """Visits finished so far (this run and before)."""
        if finished > self._finished:
            self.last_finish = time.monotonic()
        self._finished = finished

    @property
    def this_run(self) -> int:
        """Visits finished by this run."""
        return self._finished - self.before

    def seconds(self, end: float | None = None) -> float:
        """Seconds from the first event to `end` (default now)."""
        if self.t0 is None:
            return 0.0
        return max((time.monotonic() if end is None else end) - self.t0, 0.0)

    def rate(self, end: float | None = None) -> float:
        """Visits per minute finished by this run, from the first event to `end`."""
        s = self.seconds(end)
        return 60.0 * self.this_run / s if s > 0 and self.this_run else 0.0

    def line(self, sent: int, n_events: int, failed: int) -> str:
        """The progress line."""
        visits = f"visits {self._finished}/{self.total} ({failed} failed"
        visits += f", {self.before} before this run)" if self.before else ")"
        elapsed = f"{self.seconds():.0f} s since the first event"
        rate = self.rate()
        if not self.this_run or rate <= 0:
            return f"replay: events {sent}/{n_events} | {visits} | {elapsed} | no visit done yet"
        eta = (self.total - self._finished) / (rate / 60.0)
        return (
            f"replay: events {sent}/{n_events} | {visits} | {rate:.1f} visits/min | "
            f"{elapsed} | ETA {eta:.0f} s"
        )

    def due(self) -> bool:
        """Whether it is time for a line."""
        return time.monotonic() >= self._next

    def overdue(self) -> bool:
        """Whether a line is late by a whole interval."""
        return time.monotonic() >= self._next + self.every

    def show(self, sent: int, n_events: int, failed: int, force: bool = False) -> None:
        """Print the line if it is time to."""
        now = time.monotonic()
        if force or now >= self._next:
            self._next = now + self.every
            print(self.line(sent, n_events, failed), file=self.out, flush=True)


class Replayer:
    """Starts (or attaches to) a pipeline and plays an archive into it."""

    def __init__(self, opts: ReplayOptions, out: TextIO = sys.stderr) -> None:
        self.opts = opts
        self.run_dir = Path(opts.run_dir).resolve()
        self.archive = Archive(opts.archive)
        self.events = self.archive.events()
        self.visits = sorted({e.fov_id for e in self.events if e.type == NEXT_VISIT})
        self.survey = survey_of(self.archive.manifest)
        self.total_visits = len(self.visits)
        """Visits the run directory's replay record announces (a sequence's, all of its nights)."""
        self.out = out
        self.job: Job | None = None
        self.dir = NightRunDir(self.run_dir)
        self.kafka = (
            None if not opts.kafka else KafkaNight(opts.kafka, opts.kafka_prefix, self.run_dir)
        )

    def say(self, message: str) -> None:
        """One line of what the replay is doing."""
        print(f"replay: {message}", file=self.out, flush=True)

    # -- set-up ---------------------------------------------------------------

    def record(self, **extra: Any) -> None:
        """Update the run directory's replay record (``replay.json``) with ``extra``."""
        path = self.dir.replay
        info = json.loads(path.read_text()) if path.exists() else {}
        info.update(extra)
        tmp = path.with_suffix(".json.tmp")  # others read it while the night runs
        tmp.write_text(json.dumps(info, indent=1))
        os.replace(tmp, path)

    def frozen_parameters(self) -> FrozenParameters:
        """The partition of the pipeline this replay starts (its settings' orders)."""
        from association.cli.main import config_path, parse_sets
        from framework.config import ConfigError, load_config

        sets = parse_sets(self.opts.sets)
        tables = {name: sets.pop(name, {}) for name in ("settings", "runtime")}
        try:
            cfg = load_config(config_path(self.opts.config), tables, sets)
        except ConfigError as exc:
            raise ReplayError(str(exc)) from None
        return FrozenParameters(cfg.settings.chunk_order, cfg.settings.fine_order)

    def preload(self) -> int:
        """Load the archive's starting catalogue into the pipeline's database.

        The database is made with the pipeline's partition, which must be the
        one the archive's fine indexes were computed at. A later night of a
        survey must follow the database's last night (`association.nights.preload`);
        its catalogue is the sky new to the survey, loaded beside what the
        pipeline stored.
        """
        files = self.archive.files
        objects = files.get("catalogue_objects")
        if not objects:
            return 0
        params = self.frozen_parameters()
        made_at = self.archive.manifest["extra"].get("fine_order")
        if made_at is not None and made_at != params.fine_order:
            raise ReplayError(
                f"{self.archive.manifest_path}: the catalogue's fine indexes are of "
                f"fine_order={made_at}; the pipeline says fine_order={params.fine_order}"
            )
        where = self.opts.db_url or f"SQLite in {self.run_dir}"
        later = self.survey is not None and self.survey["night_index"] > 0
        if not (self.opts.db_url or later or (self.run_dir / SQLITE_NAME).exists()):
            self._copy_prepared(params)
        what = "catalogue of the sky new to the survey" if later else "starting catalogue"
        self.say(f"loading the archive's {what} into {where}")
        t0 = time.monotonic()
        cmd = [sys.executable, "-m", "association.nights.preload", str(self.run_dir), str(objects)]
        if files.get("catalogue_diasources"):
            cmd.append(str(files["catalogue_diasources"]))
        if self.opts.db_url:
            cmd += ["--db", self.opts.db_url]
        cmd += ["--chunk-order", str(params.chunk_order), "--fine-order", str(params.fine_order)]
        if self.survey is not None:
            cmd += ["--survey", json.dumps(self.survey)]
        # In a process of its own, so that the memory of a large catalogue
        # goes back to the system when done.
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = proc.communicate()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if proc.returncode != 0:
            last = err.strip().splitlines()[-1] if err.strip() else f"exit {proc.returncode}"
            raise ReplayError(f"the starting catalogue cannot be loaded: {last}")
        *notes, last = out.strip().splitlines()
        for note in notes:
            self.say(note)
        n = int(last)
        took = time.monotonic() - t0
        self.say(f"loaded {n} Objects in {took:.1f} s" if n else "the catalogue was already loaded")
        return n

    def _copy_prepared(self, params: FrozenParameters) -> None:
        """Start from the archive's prepared database (`association.nights.prepared`), if any."""
        source = find_prepared(self.archive, params)
        if source is None:
            return
        size = source.stat().st_size
        self.say(f"copying the archive's prepared starting database ({size / 1e9:.1f} GB)")
        t0 = time.monotonic()
        copy_prepared(source, self.run_dir)
        self.say(f"copied in {time.monotonic() - t0:.1f} s")

    def command(self) -> list[str]:
        """The ``mpiexec -n RANKS nightpipe run ...`` that starts the pipeline.

        Unless told otherwise, it reads input files from the archive only.
        """
        args = ["--db", self.opts.db_url] if self.opts.db_url else []
        if not any(s.startswith("settings.data_roots=") for s in self.opts.sets):
            root = json.dumps(str(Path(self.opts.archive).resolve()))
            args += ["--set", f"settings.data_roots=[{root}]"]
        sets = [] if self.kafka is None else self.kafka.pipeline_sets()
        for s in [*sets, *self.opts.sets]:  # the caller's own settings win
            args += ["--set", s]
        if self.opts.max_in_flight:
            args += ["--max-in-flight", str(self.opts.max_in_flight)]
        try:
            return run_command(self.opts.ranks, self.opts.config, self.run_dir, *args)
        except FileNotFoundError as exc:
            raise ReplayError(str(exc)) from None

    def start_pipeline(self) -> str:
        """Start the pipeline and wait while it comes up and shows progress; its address."""
        endpoint = self.dir.endpoint
        endpoint.unlink(missing_ok=True)
        out = self.dir.pipeline_out
        self.say(f"starting a {self.opts.ranks}-rank pipeline ({out.name} has its output)")
        self.job = Job(self.command(), out)
        t0 = time.monotonic()
        watch = _Liveness(self.job, [self.dir.log, out])
        next_say = t0 + 5.0
        while not endpoint.exists():
            if not self.job.alive():
                raise ReplayError(
                    f"the pipeline exited with {self.job.returncode} before it was up"
                    f"{_last_words(self.run_dir)}; see {out} and {self.dir.log}"
                )
            quiet = watch.quiet_for()
            if quiet > max(self.opts.timeout, STARTUP_QUIET_S):
                raise ReplayError(
                    f"the pipeline has neither used CPU nor logged for {quiet:.0f} s while "
                    f"starting{_last_words(self.run_dir)}"
                )
            if time.monotonic() >= next_say:
                next_say += 5.0
                doing = _last_log_line(self.dir.log) or "its ranks are loading nightpipe"
                self.say(
                    f"waiting for the pipeline to come up ({time.monotonic() - t0:.0f} s): {doing}"
                )
            time.sleep(0.05)
        self.say(f"pipeline up in {time.monotonic() - t0:.1f} s")
        return json.loads(endpoint.read_text())["address"]

    # -- playing ---------------------------------------------------------------

    def _already_sent(self) -> set[str]:
        """Events not to send again: journaled ones; with Kafka, also those on the topics."""
        done: set[str] = set()
        if self.dir.journal.exists():
            with Journal(self.dir.journal) as j:
                done = j.ids("in")
        if self.kafka is not None and self.dir.sends.exists():
            # acknowledged by the broker before they were logged
            lines = self.dir.sends.read_text().splitlines()
            done |= {json.loads(line)["id"] for line in lines if line}
        return done

    def _channel(self, address: str) -> Channel:
        return ZmqChannel(address) if self.kafka is None else self.kafka.channel()

    def archives(self) -> list[str]:
        """The archives replayed into the run directory so far, in order, with this one."""
        path = self.dir.replay
        before = json.loads(path.read_text()).get("archives", []) if path.exists() else []
        mine = str(self.archive.root)
        return before if mine in before else [*before, mine]

    def finished(self) -> tuple[int, int]:
        """Visits of the archive with an outcome, and how many of them failed."""
        path = self.dir.journal
        if not path.exists():
            return 0, 0
        with Journal(path) as j:
            out = j.outcomes()
        ends = [out[v] for v in self.visits if v in out]
        return len(ends), sum(v != "done" for v in ends)

    def _check_alive(self) -> None:
        if self.job is not None and not self.job.alive():
            raise ReplayError(
                f"the pipeline died (exit {self.job.returncode}){_last_words(self.run_dir)}"
            )

    def play(self, address: str, progress: Progress) -> dict[str, Any]:
        """Send every event on the scaled schedule, then wait for every visit."""
        skip = self._already_sent()
        base = self.events[0].time if self.events else 0.0
        speed = self.opts.speed
        n = len(self.events)
        sent = len([e for e in self.events if e.id in skip])
        todo = [e for e in self.events if e.id not in skip]
        # one at a time, but into Kafka at full speed in acknowledged batches
        batch = PLAY_BATCH if speed is None and self.kafka is not None else 1
        rejected: list[dict[str, Any]] = []
        pace = "as fast as it takes them" if speed is None else f"at {speed:g}x the night's pace"
        where = "" if self.kafka is None else f" into Kafka at {self.kafka.bootstrap}"
        self.say(f"sending {n - sent} events{where} {pace}")

        def tick() -> None:
            finished, failed = self.finished()
            progress.update(finished)
            progress.show(sent, n, failed)
            self._check_alive()

        def due_at(ev: Event) -> float:
            """When `ev` is due, seconds from the first send (0 at full speed)."""
            return 0.0 if speed is None else (ev.time - base) / speed

        with self._channel(address) as channel, self.dir.sends.open("a") as log:
            t0 = time.perf_counter() + 0.05
            progress.first_event()
            for i in range(0, len(todo), batch):
                group = todo[i : i + batch]
                due = due_at(group[0])
                if speed is not None:
                    _sleep_until(t0 + due, tick)
                actual = time.perf_counter() - t0
                now = time.time()
                rejected += channel.send([dataclasses.replace(ev, time=now) for ev in group])
                sent += len(group)
                acked = time.perf_counter() - t0  # journaled by the master, or the broker has them
                for ev in group:
                    line = {"id": ev.id, "due": due, "sent": actual, "acked": acked}
                    log.write(json.dumps(line) + "\n")
                log.flush()
                later = todo[i + batch : i + batch + 1]
                room = (
                    math.inf
                    if speed is None or not later
                    else t0 + due_at(later[0]) - time.perf_counter()
                )
                if progress.due() and (room > TICK_ROOM or progress.overdue()):
                    tick()  # else while waiting for a later send, not in the way of one
        finished, failed = self._wait_for_visits(progress, sent)
        progress.show(sent, n, failed, force=True)
        return {
            "sent": sent,
            "rejected": rejected,
            "done": finished - failed,
            "failed": failed,
        }

    def check_alert_topic(self) -> AlertTopicCheck:
        """The alert topic against the database's alerts table (a Kafka replay only)."""
        if self.kafka is None:
            raise ReplayError("only a replay into Kafka has an alert topic to check")
        with open_storage(self.opts.db_url, self.run_dir, None) as storage:
            return check_alert_topic(self.kafka.connection, self.kafka.alert_topic, storage.engine)

    def _wait_for_visits(self, progress: Progress, sent: int) -> tuple[int, int]:
        """Wait until every visit has finished, or the pipeline dies or stalls."""
        status = _Board(self.dir.status)
        last_progress, seen = time.monotonic(), -1
        while True:
            finished, failed = self.finished()
            progress.update(finished)
            progress.show(sent, len(self.events), failed)
            if finished == len(self.visits):
                return finished, failed
            self._check_alive()
            if finished > seen or status.changed():
                last_progress, seen = time.monotonic(), finished
            elif time.monotonic() - last_progress > self.opts.timeout:
                raise ReplayError(
                    f"{len(self.visits) - finished} visit(s) unfinished, and the pipeline has "
                    f"made no progress for {self.opts.timeout:g} s (no visit finished, its "
                    f"status board unchanged){status.in_flight()}"
                )
            time.sleep(0.2)

    def stop_pipeline(self, address: str) -> int:
        """Shut down the pipeline this replay started; its exit code."""
        assert self.job is not None
        self.say("every visit finished: shutting the pipeline down")
        with Injector(address, timeout=30) as inj:
            inj.send(Event.new(SHUTDOWN, None, {"reason": "replay finished"}, source="replay"))
        code = self.job.wait(300)
        if code is None:
            raise ReplayError("the pipeline did not stop within 300 s of control.shutdown")
        return code

    def run(self) -> dict[str, Any]:
        """Preload, start or attach, play, wait, stop; returns a summary.

        However this ends, a pipeline it started is stopped: SIGTERM (a
        drain) first, then after ``opts.grace`` seconds every process of its
        job is killed. SIGTERM to the replay raises `association.nights.job.Terminated`.
        One replay at a time runs on a run directory: a second one is refused
        at once (`ReplayError` naming the holder).
        """
        with replay_lock(self.run_dir):
            return self.run_locked()

    def run_locked(self) -> dict[str, Any]:
        """`run`, its caller holding the run directory's replay lock (`replay_lock`)."""
        self.record(
            archive=str(Path(self.opts.archive).resolve()),
            archives=self.archives(),
            db_url=self.opts.db_url,
            ranks=self.opts.ranks,
            speed="max" if self.opts.speed is None else self.opts.speed,
            visits=self.total_visits,
            started=time.time(),
            finished=None,
        )
        t0 = time.monotonic()  # durations never read the wall clock, which may step
        with sigterm_raises():
            try:
                n = self.preload()
                preload_s = time.monotonic() - t0
                if self.kafka is not None:
                    try:
                        self.kafka.create_topics()
                    except KafkaError as exc:
                        raise ReplayError(f"Kafka at {self.kafka.bootstrap}: {exc}") from None
                    self.record(kafka=self.kafka.describe())
                address = self.opts.address or self.start_pipeline()
                progress = Progress(len(self.visits), self.finished()[0], self.out)
                summary = self.play(address, progress)
                if self.job is not None:
                    code = self.stop_pipeline(address)
                    if code != 0:
                        raise ReplayError(f"the pipeline exited with {code}")
            finally:
                if self.job is not None:
                    self.job.end(self.opts.grace, self.say)
        end = progress.last_finish or time.monotonic()
        summary.update(
            visits=len(self.visits),
            visits_this_run=progress.this_run,
            preloaded_objects=n,
            preload_seconds=preload_s,
            startup_seconds=(progress.t0 or t0) - t0,
            replay_seconds=progress.seconds(end),
            wall_seconds=time.monotonic() - t0,
            visits_per_minute=progress.rate(end),
        )
        self.record(finished=time.time(), summary=summary)
        return summary


@contextlib.contextmanager
def replay_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run directory's replay lock: one replay at a time (`ReplayError` if taken)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        lock = NightRunDir(run_dir).lock("replay").acquire()
    except RunDirBusy as exc:
        raise ReplayError(str(exc)) from None
    try:
        yield
    finally:
        lock.release()


class _Liveness:
    """Whether a starting job shows signs of life: CPU used, or lines written."""

    def __init__(self, job: Job, files: list[Path]) -> None:
        self.job = job
        self.files = files
        self._last = self._sign()
        self._since = time.monotonic()
        self._next_check = 0.0

    def _sign(self) -> tuple[float, ...]:
        sizes = tuple(float(f.stat().st_size) if f.exists() else -1.0 for f in self.files)
        return (round(self.job.cpu_seconds(), 2), *sizes)

    def quiet_for(self) -> float:
        """Seconds since the last sign of life."""
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + 1.0
            sign = self._sign()
            if sign != self._last:
                self._last, self._since = sign, now
        return now - self._since


class _Board:
    """The pipeline's status board, read for signs of progress."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._last: Any = None
        self.status: dict[str, Any] = {}

    def changed(self) -> bool:
        """Whether the work on the board moved since the last call."""
        try:
            self.status = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return False
        execs = [
            (e.get("key"), e.get("stage"), e.get("phase"))
            for e in self.status.get("executions", [])
        ]
        work = tuple(self.status.get(k) for k in ("done", "failed", "accepted", "in_flight"))
        sign = (work, tuple(execs))
        moved = sign != self._last
        self._last = sign
        return moved

    def in_flight(self) -> str:
        """What the visits in flight are doing, for an error message."""
        parts = [
            f"fov {e['key']} at {e['stage']} ({e['phase']}"
            + (f", waiting for {e['waiting_for']})" if e.get("waiting_for") else ")")
            for e in self.status.get("executions", [])[:5]
        ]
        return f"; in flight: {', '.join(parts)}" if parts else ""


_LOG_LINE = re.compile(r"rank=(\d+) exec=\S+ \w+ [\w.]+: (.*)")


def _last_log_line(path: Path) -> str | None:
    """The last line of the pipeline's log, as ``rank N: message``."""
    try:
        with path.open("rb") as fh:
            fh.seek(max(fh.seek(0, os.SEEK_END) - 4096, 0))
            lines = fh.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        m = _LOG_LINE.search(line)
        if m:
            return f"rank {m.group(1)}: {m.group(2)}"
    return None


def _last_words(run_dir: Path) -> str:
    """`` (last log line: ...)`` for an error message, if the log has one."""
    line = _last_log_line(NightRunDir(run_dir).log)
    return f" (its log's last line: {line})" if line else ""


def _sleep_until(t: float, tick: Callable[[], None] | None = None) -> None:
    """Sleep until perf_counter reaches `t`, spinning the last millisecond.

    ``tick`` is called about once a second while more than a second is left.
    """
    while True:
        left = t - time.perf_counter()
        if left <= 0:
            return
        if tick is not None and left > 1.25:
            time.sleep(1.0)
            tick()
        elif left > 2e-3:
            time.sleep(left - 1e-3)
        else:
            os.sched_yield()
