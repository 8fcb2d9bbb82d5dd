"""Replay a night archive into a pipeline, keeping its event spacing."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from association.inputs.readers import BadInputError
from association.nights.channels import Channel, KafkaNight, ZmqChannel
from association.nights.preload import preload
from association.nights.topiccheck import AlertTopicCheck, check_alert_topic
from association.rundir import NightRunDir
from association.storage import tables as db
from association.storage.tables import make_engine
from events.archive import Archive
from events.client import Injector
from events.envelope import Event
from events.journal import Journal
from events.kafka import KafkaError
from events.types import NEXT_VISIT, SHUTDOWN
from framework.mpiexec import run_command

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
        After the last event, give up once no visit has finished for this
        many seconds.
    max_in_flight : int or None
        Override the pipeline's cap on visits in flight.
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
    kafka: str | None = None
    kafka_prefix: str = ""


class Progress:
    """Visits done out of the total, the rate and the ETA, on one refreshed line."""

    def __init__(self, total: int, out: TextIO = sys.stderr, every: float = 2.0) -> None:
        self.total = total
        self.out = out
        self.every = every
        self.t0 = time.time()
        self._next = 0.0

    def line(self, sent: int, n_events: int, done: int, failed: int) -> str:
        """The progress line."""
        elapsed = time.time() - self.t0
        finished = done + failed
        rate = 60.0 * finished / elapsed if elapsed > 0 else 0.0
        eta = (self.total - finished) / (rate / 60.0) if rate > 0 else float("nan")
        return (
            f"replay: events {sent}/{n_events} | visits {finished}/{self.total} "
            f"({failed} failed) | {rate:.1f} visits/min | elapsed {elapsed:.0f} s | ETA {eta:.0f} s"
        )

    def show(self, sent: int, n_events: int, done: int, failed: int, force: bool = False) -> None:
        """Print the line if it is time to."""
        now = time.time()
        if force or now >= self._next:
            self._next = now + self.every
            print(self.line(sent, n_events, done, failed), file=self.out, flush=True)


class Replayer:
    """Starts (or attaches to) a pipeline and plays an archive into it."""

    def __init__(self, opts: ReplayOptions) -> None:
        self.opts = opts
        self.run_dir = Path(opts.run_dir).resolve()
        self.archive = Archive(opts.archive)
        self.events = self.archive.events()
        self.visits = sorted({e.fov_id for e in self.events if e.type == NEXT_VISIT})
        self.proc: subprocess.Popen | None = None
        self.kafka = (
            None if not opts.kafka else KafkaNight(opts.kafka, opts.kafka_prefix, self.run_dir)
        )

    # -- set-up ---------------------------------------------------------------

    def _record(self, **extra: Any) -> None:
        path = NightRunDir(self.run_dir).replay
        info = json.loads(path.read_text()) if path.exists() else {}
        info.update(extra)
        tmp = path.with_suffix(".json.tmp")  # others read it while the night runs
        tmp.write_text(json.dumps(info, indent=1))
        os.replace(tmp, path)

    def preload(self) -> int:
        """Load the archive's starting catalogue into the pipeline's database.

        A resumed replay skips it when this run directory's record says the
        same archive was loaded into the same database, and that database
        holds Objects.
        """
        files = self.archive.files
        objects = files.get("catalogue_objects")
        if not objects:
            return 0
        target = {"archive": str(Path(self.opts.archive).resolve()), "db_url": self.opts.db_url}
        path = NightRunDir(self.run_dir).replay
        done = json.loads(path.read_text()).get("preloaded") if path.exists() else None
        if done is not None and {k: done.get(k) for k in target} == target and self._has_objects():
            return int(done["objects"])
        n = self._preload(files, objects)
        self._record(preloaded={**target, "objects": n})
        return n

    def _has_objects(self) -> bool:
        engine = make_engine(self.opts.db_url, self.run_dir)
        try:
            with engine.connect() as conn:
                return conn.execute(select(db.objects.c.diaObjectId).limit(1)).first() is not None
        except SQLAlchemyError:
            return False
        finally:
            engine.dispose()

    def _preload(self, files: dict[str, Any], objects: str) -> int:
        # In a process of its own, so that the memory of a large catalogue
        # goes back to the system (to the database's page cache) when done.
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(1, mp_context=spawn) as pool:
            job = pool.submit(
                _preload, self.opts.db_url, self.run_dir, objects, files.get("catalogue_diasources")
            )
            try:
                return job.result()
            except BadInputError as exc:
                raise ReplayError(f"the starting catalogue cannot be loaded: {exc}") from None

    def start_pipeline(self) -> str:
        """Start ``mpiexec -n RANKS nightpipe run`` on the run directory; its address."""
        endpoint = NightRunDir(self.run_dir).endpoint
        endpoint.unlink(missing_ok=True)
        args = ["--db", self.opts.db_url] if self.opts.db_url else []
        sets = [] if self.kafka is None else self.kafka.pipeline_sets()
        for s in [*sets, *self.opts.sets]:  # the caller's own settings win
            args += ["--set", s]
        if self.opts.max_in_flight:
            args += ["--max-in-flight", str(self.opts.max_in_flight)]
        try:
            cmd = run_command(self.opts.ranks, self.opts.config, self.run_dir, *args)
        except FileNotFoundError as exc:
            raise ReplayError(str(exc)) from None
        log = open(NightRunDir(self.run_dir).pipeline_out, "ab")  # noqa: SIM115 (kept for the job's life)
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while not endpoint.exists():
            if self.proc.poll() is not None:
                raise ReplayError(
                    f"the pipeline exited with {self.proc.returncode} before it was up; "
                    f"see {self.run_dir / 'pipeline.out'} and {self.run_dir / 'nightpipe.log'}"
                )
            if time.time() > deadline:
                raise ReplayError("the pipeline did not come up within 120 s")
            time.sleep(0.05)
        return json.loads(endpoint.read_text())["address"]

    # -- playing ---------------------------------------------------------------

    def _already_sent(self) -> set[str]:
        """Events not to send again: journaled ones; with Kafka, also those on the topics."""
        rd = NightRunDir(self.run_dir)
        done = set()
        if rd.journal.exists():
            with Journal(rd.journal) as j:
                done = j.ids("in")
        if self.kafka is not None and rd.sends.exists():
            # acknowledged by the broker before they were logged
            done |= {json.loads(line)["id"] for line in rd.sends.read_text().splitlines() if line}
        return done

    def _channel(self, address: str) -> Channel:
        return ZmqChannel(address) if self.kafka is None else self.kafka.channel()

    def _outcomes(self) -> dict[int, str]:
        with Journal(NightRunDir(self.run_dir).journal) as j:
            return j.outcomes()

    def play(self, address: str, progress: Progress) -> dict[str, Any]:
        """Send every event on the scaled schedule, then wait for every visit."""
        skip = self._already_sent()
        base = self.events[0].time if self.events else 0.0
        speed = self.opts.speed
        sent = len([e for e in self.events if e.id in skip])
        todo = [e for e in self.events if e.id not in skip]
        # one at a time, but into Kafka at full speed in acknowledged batches
        batch = PLAY_BATCH if speed is None and self.kafka is not None else 1
        rejected = []
        log_path = NightRunDir(self.run_dir).sends
        with self._channel(address) as channel, log_path.open("a") as log:
            t0 = time.perf_counter() + 0.05
            for i in range(0, len(todo), batch):
                group = todo[i : i + batch]
                due = 0.0 if speed is None else (group[0].time - base) / speed
                if speed is not None:
                    _sleep_until(t0 + due)
                actual = time.perf_counter() - t0
                now = time.time()
                rejected += channel.send([dataclasses.replace(ev, time=now) for ev in group])
                for ev in group:
                    log.write(json.dumps({"id": ev.id, "due": due, "sent": actual}) + "\n")
                log.flush()
                if self.proc is not None and self.proc.poll() is not None:
                    raise ReplayError(f"the pipeline died (exit {self.proc.returncode})")
                if sent // 50 != (sent + len(group)) // 50:
                    out = self._outcomes()
                    done = sum(v == "done" for v in out.values())
                    progress.show(sent + len(group), len(self.events), done, len(out) - done)
                sent += len(group)
        deadline, seen = time.time() + self.opts.timeout, -1
        while True:
            out = self._outcomes()
            finished = [v for v in self.visits if v in out]
            done = sum(out[v] == "done" for v in finished)
            progress.show(sent, len(self.events), done, len(finished) - done)
            if len(finished) == len(self.visits):
                break
            if self.proc is not None and self.proc.poll() is not None:
                raise ReplayError(f"the pipeline died (exit {self.proc.returncode})")
            if len(finished) > seen:
                deadline, seen = time.time() + self.opts.timeout, len(finished)
            elif time.time() > deadline:
                raise ReplayError(
                    f"{len(self.visits) - len(finished)} visit(s) unfinished and none "
                    f"finished in the last {self.opts.timeout:g} s"
                )
            time.sleep(0.2)
        progress.show(sent, len(self.events), done, len(finished) - done, force=True)
        return {"sent": sent, "rejected": rejected, "done": done, "failed": len(finished) - done}

    def check_alert_topic(self) -> AlertTopicCheck:
        """The alert topic against the database's alerts table (a Kafka replay only)."""
        if self.kafka is None:
            raise ReplayError("only a replay into Kafka has an alert topic to check")
        engine = make_engine(self.opts.db_url, self.run_dir)
        try:
            return check_alert_topic(self.kafka.connection, self.kafka.alert_topic, engine)
        finally:
            engine.dispose()

    def stop_pipeline(self, address: str) -> int:
        """Shut down the pipeline this replay started; its exit code."""
        assert self.proc is not None
        with Injector(address, timeout=30) as inj:
            inj.send(Event.new(SHUTDOWN, None, {"reason": "replay finished"}, source="replay"))
        return self.proc.wait(300)

    def run(self) -> dict[str, Any]:
        """Preload, start or attach, play, wait, stop; returns a summary."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._record(
            archive=str(Path(self.opts.archive).resolve()),
            db_url=self.opts.db_url,
            ranks=self.opts.ranks,
            speed="max" if self.opts.speed is None else self.opts.speed,
            visits=len(self.visits),
            started=time.time(),
            finished=None,
        )
        t0 = time.time()
        n = self.preload()
        preload_s = time.time() - t0
        if self.kafka is not None:
            try:
                self.kafka.create_topics()
            except KafkaError as exc:
                raise ReplayError(f"Kafka at {self.kafka.bootstrap}: {exc}") from None
            self._record(kafka=self.kafka.describe())
        address = self.opts.address or self.start_pipeline()
        progress = Progress(len(self.visits))
        try:
            summary = self.play(address, progress)
            if self.proc is not None:
                code = self.stop_pipeline(address)
                if code != 0:
                    raise ReplayError(f"the pipeline exited with {code}")
        finally:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(60)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
        wall = time.time() - t0
        summary.update(
            visits=len(self.visits),
            preloaded_objects=n,
            preload_seconds=preload_s,
            wall_seconds=wall,
            visits_per_minute=60.0 * len(self.visits) / max(wall - preload_s, 1e-9),
        )
        self._record(finished=time.time(), summary=summary)
        return summary


def _sleep_until(t: float) -> None:
    """Sleep until perf_counter reaches `t`, spinning the last millisecond."""
    while True:
        left = t - time.perf_counter()
        if left <= 0:
            return
        if left > 2e-3:
            time.sleep(left - 1e-3)
        else:
            os.sched_yield()


def _preload(db_url: str | None, run_dir: Path, objects: str, diasources: str | None) -> int:
    engine = make_engine(db_url, run_dir)
    try:
        return preload(engine, objects, diasources)
    finally:
        engine.dispose()
