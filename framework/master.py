"""The master: carries out what the scheduler decides, over the Slices.

Rank 0 takes events in (`framework.intake`), feeds the pure scheduler
(`framework.scheduler`) and runs the instructions it returns: the stages'
master hooks, work sent to the Slices, outcomes journaled and published.
"""

from __future__ import annotations

import json
import os
import signal
import time
import traceback
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from events.deadletter import DeadLetters
from events.envelope import Event
from events.journal import WAIT_EXPIRED, Journal
from events.types import (
    INBOUND,
    OUTCOME_DONE_FIELDS,
    OUTCOME_FAILED_FIELDS,
    SHUTDOWN,
    Vocabulary,
)
from events.validate import parse_event
from framework.config import PipelineConfig
from framework.execution import (
    Abort,
    Dispatch,
    Ended,
    Failure,
    Finish,
    HookFailed,
    Phase,
    PostprocessDone,
    PreprocessDone,
    RecordExpiry,
    RunPostprocess,
    RunPreprocess,
    SliceReplied,
    WaitExpired,
    describe_exception,
)
from framework.intake import Intake, configured_sources
from framework.liveness import Liveness
from framework.logs import current_execution, setup_logging
from framework.messages import Alive, Bye, Ready, Release, Result, Shutdown, Work
from framework.metrics import Metrics, MetricsError, processing_latency
from framework.retry import Backoff
from framework.rundir import RunDir
from framework.scheduler import (
    Accepted,
    Begin,
    Clock,
    Drain,
    ExpireOrphans,
    Feed,
    FetchStarts,
    Scheduler,
    SchedulerInput,
    Step,
    Stop,
)
from framework.stage import EndExecution, Later, MasterContext, RankContext, Scatter
from framework.status import Board, write_status
from framework.transport import Transport, Waiter

LATER_POLL_S = 0.001
"""Longest wait for events while a `Later` preprocess is pending, s."""


class SetupError(RuntimeError):
    """A rank could not set up its stages: the pipeline cannot start."""


class SliceHung(RuntimeError):
    """A Slice has work in hand and has not answered within the slice timeout."""


def stop_slices(
    transport: Transport,
    waiter: Waiter,
    boards: dict[int, dict[str, Any]] | None = None,
    timeout: float = 60.0,
) -> list[int]:
    """Tell every Slice to shut down and wait for their goodbyes; those that did not answer."""
    for r in range(1, transport.size):
        transport.send(r, Shutdown())
    waiting = set(range(transport.size - 1))
    deadline = time.monotonic() + timeout
    while waiting and time.monotonic() < deadline:
        got = transport.poll()
        if got is None:
            waiter.idle()
            continue
        _, msg = got
        if isinstance(msg, Bye):
            waiting.discard(msg.slice)
            if boards is not None:
                boards[msg.slice] = msg.board
    return sorted(waiting)


def pipeline_vocabulary(config: PipelineConfig) -> Vocabulary:
    """The events a pipeline knows: the observatory's, its own, and its outcomes."""
    outcomes = {config.done_event: OUTCOME_DONE_FIELDS, config.failed_event: OUTCOME_FAILED_FIELDS}
    return INBOUND.register(config.hooks.event_types, outbound=True).register(
        outcomes, outbound=True
    )


@dataclass
class Running:
    """The master's record of one execution in flight: what its hooks have made."""

    start: Event
    events: dict[str, Event]
    state: Any
    clipboard: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    payload: Any = None
    results: list[Any] = field(default_factory=list)
    t_start: float = field(default_factory=time.perf_counter)
    t_stage: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    queue_wait: float | None = None
    """From its start event's arrival (journal time) to its admission, s."""


class Master:
    """Rank 0: the event loop of the pipeline.

    Parameters
    ----------
    config : PipelineConfig
    run_dir : Path
        Holds the journal, dead letters, status file, log and endpoint address.
    transport : Transport
        To the Slices, ranks 1..size-1.
    install_signals : bool
        Handle SIGTERM/SIGINT (main thread only).
    abort : callable, optional
        Called on a second SIGINT to stop everything at once.
    """

    def __init__(
        self,
        config: PipelineConfig,
        run_dir: Path,
        transport: Transport,
        install_signals: bool = True,
        abort: Callable[[int], None] | None = None,
    ) -> None:
        self.cfg = config
        self.dir = RunDir(run_dir)
        self.run_dir = self.dir.path
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.t = transport
        self.n_slices = transport.size - 1
        self.log = setup_logging(self.run_dir, 0)
        self._lock = self.dir.lock("master").acquire()
        self.board = Board(0)
        self.hooks = config.build_hooks()
        self.shared: Any = None
        self.stages = [s.build() for s in config.stages]
        self.vocabulary = pipeline_vocabulary(config)
        self.journal = Journal(self.dir.journal)
        rt = config.runtime
        self.waiter = Waiter(rt.waiting, rt.min_sleep_ms / 1e3, rt.max_sleep_ms / 1e3)
        endpoint = None
        if rt.endpoint:
            from events.curve import ServerKeys
            from events.endpoint import Endpoint

            keys = ServerKeys.load(rt.curve_keys) if rt.curve_keys else None
            endpoint = Endpoint(rt.endpoint, rt.publish or None, keys=keys)
        self.endpoint = endpoint
        self.metrics = Metrics(rt.metrics_noun, [s.name for s in self.stages], pipeline=config.name)
        try:
            sources = configured_sources(rt, config.name)
        except Exception:
            self.close()
            raise
        self.intake = Intake(
            self.journal,
            DeadLetters(self.dir.deadletters),
            self.vocabulary,
            config.start,
            endpoint,
            rt.max_event_bytes,
            self.log,
            self._start_conflict,
            sources,
        )
        self.scheduler = Scheduler(config, self.n_slices)
        self._intake_fed = (0, 0, 0)
        self.execs: dict[int, Running] = {}
        self._later: list[tuple[int, Future[Any]]] = []
        self.slice_boards: dict[int, dict[str, Any]] = {}
        self.liveness = Liveness(self.n_slices, config.runtime.slice_timeout)
        self.backoff = Backoff(config.runtime.retry_for)
        self._retries: list[tuple[float, int, Any]] = []
        self._attempts: dict[int, tuple[int, float]] = {}
        self.outcomes = {"done": 0, "failed": 0}
        self.stop_now = False
        self._stopped = False
        self._next_status = 0.0
        self._t0 = time.time()
        self._abort = abort
        self._sigints = 0
        if install_signals:
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)

    # -- lifecycle ---------------------------------------------------------

    def run(self) -> int:
        """Serve until shut down; returns the exit code.

        Raises
        ------
        SetupError
            A rank could not set up: every Slice has been told to stop.
        SliceHung
            A Slice stopped answering; the job must end so that a restart recovers.
        """
        try:
            self._setup()
        except BaseException:
            self.close()
            raise
        self._write_endpoint()
        again = self.journal.reopen_retriable()
        if again:
            self.log.info(
                "%d execution(s) failed for a passing reason last time: retrying them (%s)",
                len(again),
                ", ".join(map(str, again[:20])),
            )
        resumable = len(self.journal.pending_starts(self.cfg.start, (), 1_000_000))
        if resumable:
            self.log.info("journal holds %d unfinished execution(s): resuming them", resumable)
        now = time.monotonic()
        for fov in self.journal.orphan_fovs(self.cfg.start):
            # journaled by an earlier run: their expiry clock starts now
            self._handle(Accepted(WAIT_EXPIRED, fov, now))
        self.board.set(state="running")
        while not (self.stop_now or self._stopped):
            busy = self._poll_slices()
            busy = self._poll_later() or busy
            busy = self._poll_retries() or busy
            timeout = 0.0 if busy or self.intake.busy else self.waiter.next_timeout()
            if self._later:
                timeout = min(timeout, LATER_POLL_S)
            for ev, seq in self.intake.poll(timeout, self.scheduler.draining):
                busy = True
                self._route(ev, seq)
            self._feed_intake()
            mono = time.monotonic()
            self._handle(Clock(mono))
            hung = self.liveness.hung(mono)
            if hung is not None:
                self._slice_hung(*hung)
            now = time.time()
            if now >= self._next_status:
                self._write_status(now)
            if busy:
                self.waiter.busy()
            elif self.endpoint is None or self.waiter.active:
                self.waiter.idle()
        self._shutdown()
        return 0

    def submit(self, events: list[Event]) -> None:
        """Hand over already-parsed events from another thread; the loop journals them."""
        self.intake.submit(events)

    @property
    def draining(self) -> bool:
        """True once shutdown was asked for."""
        return self.scheduler.draining

    def _ctx(self) -> RankContext:
        return RankContext(
            0, self.n_slices, self.run_dir, self.log, self.board, self.shared, self.cfg.settings
        )

    def _setup(self) -> None:
        self.board.set(state="setup")
        if self.cfg.runtime.metrics:
            try:
                self.metrics.start_server(self.cfg.runtime.metrics)
            except MetricsError as exc:
                self._stop_slices()
                raise SetupError(f"[runtime].metrics: {exc}") from exc
        try:
            self.shared = self.hooks.setup(self._ctx())
        except Exception as exc:
            self._stop_slices()
            raise SetupError(f"pipeline setup on rank 0: {describe_exception(exc)}") from exc
        for stage in self.stages:
            try:
                stage.setup(self._ctx())
            except Exception as exc:
                self._stop_slices()
                raise SetupError(
                    f"stage {stage.name!r} setup on rank 0: {describe_exception(exc)}"
                ) from exc
        self.liveness.reset(time.monotonic())
        waiting = set(range(self.n_slices))
        failures = []
        while waiting:
            got = self.t.poll()
            if got is None:
                self.waiter.idle()
                continue
            _, msg = got
            if isinstance(msg, Ready):
                waiting.discard(msg.slice)
                self.slice_boards[msg.slice] = msg.board
                self.metrics.slice_board(msg.slice, msg.board)
                if msg.failure:
                    failures.append(msg.failure.describe())
        if failures:
            self._stop_slices()
            raise SetupError("; ".join(failures))
        self.log.info(
            "pipeline %r up: %d slice(s), stages %s, max %d in flight, %s waiting",
            self.cfg.name,
            self.n_slices,
            [s.name for s in self.stages],
            self.cfg.max_in_flight,
            self.cfg.runtime.waiting,
        )

    def _write_endpoint(self) -> None:
        info: dict[str, Any] = {"pid": os.getpid(), "address": None, "publish": None}
        info["metrics"] = self.metrics.address
        if self.metrics.address:
            self.log.info("metrics on http://%s/metrics", self.metrics.address)
        if self.endpoint is not None:
            info["address"] = self.endpoint.address
            info["publish"] = self.endpoint.pub_address
            if self.endpoint.server_key is not None:
                info["server_key"] = self.endpoint.server_key
                info["curve_keys"] = str(Path(self.cfg.runtime.curve_keys).resolve())
            self.log.info(
                "listening on %s, publishing on %s",
                self.endpoint.address,
                self.endpoint.pub_address,
            )
        tmp = self.dir.endpoint.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(info))
        os.replace(tmp, self.dir.endpoint)

    def _on_signal(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGINT:
            self._sigints += 1
        if self._sigints >= 2:
            self.log.warning("second SIGINT: stopping at once")
            self.stop_now = True
            if self._abort is not None:
                self._abort(130)
            return
        self.log.info(
            "%s: draining %d execution(s) in flight, then stopping", name, len(self.execs)
        )
        self._handle(Drain())

    def _stop_slices(self) -> None:
        missing = stop_slices(self.t, self.waiter, self.slice_boards)
        if missing:
            self.log.error("slice(s) %s did not answer shutdown", missing)

    def _shutdown(self) -> None:
        self.board.set(state="stopping")
        stopped = Failure(
            "-", "shutdown", 0, "pipeline stopped before the execution ended", retriable=True
        )
        for key in list(self.scheduler.executions):
            self._handle(Feed(key, Abort(stopped)))
        self._stop_slices()
        for i, board in self.slice_boards.items():
            self.metrics.slice_board(i, board)
        for stage in self.stages:
            try:
                stage.shutdown(self._ctx())
            except Exception:
                self.log.exception("stage %r shutdown on rank 0 failed", stage.name)
        try:
            self.hooks.shutdown(self._ctx())
        except Exception:
            self.log.exception("pipeline shutdown on rank 0 failed")
        self.board.set(state="stopped")
        self._write_status(time.time())
        self.close()
        self.log.info(
            "stopped: %d done, %d failed, %d events accepted",
            self.outcomes["done"],
            self.outcomes["failed"],
            self.intake.counts.accepted,
        )

    def close(self) -> None:
        """Release the endpoint, the event sources, the metrics server, the journal and the lock."""
        intake = getattr(self, "intake", None)
        if intake is not None:
            intake.close()
        self.metrics.stop_server()
        if self.endpoint is not None:
            self.endpoint.close()
            self.endpoint = None
        self.journal.close()
        self._lock.release()

    def _slice_hung(self, slice_index: int, since: float) -> None:
        rank = slice_index + 1
        waited = time.monotonic() - since
        msg = (
            f"slice {slice_index} (rank {rank}) has not answered for {waited:.0f} s "
            f"(runtime.slice_timeout = {self.cfg.runtime.slice_timeout:g} s): it is hung or "
            "stopped; ending the job so that a restart resumes from the journal"
        )
        self.log.error(msg)
        self.board.set(state="failed", error=msg)
        self.slice_boards.setdefault(slice_index, {}).update(
            state="hung", hung_since=time.time() - waited
        )
        self._write_status(time.time())
        raise SliceHung(msg)

    # -- events in -----------------------------------------------------------

    def _feed_intake(self) -> None:
        """What the intake took in since the last look, into the metrics."""
        c = self.intake.counts
        now = (c.accepted, c.rejected, c.duplicates)
        if now != self._intake_fed:
            accepted, rejected, duplicates = self._intake_fed
            self.metrics.event_accepted(c.accepted - accepted)
            self.metrics.event_rejected(c.rejected - rejected)
            self.metrics.event_duplicate(c.duplicates - duplicates)
            self._intake_fed = now

    def _stop_for(self, reason: str) -> None:
        if not self.draining:
            self.log.error("stopping: %s", reason)
            self._handle(Drain())

    def _start_conflict(self, fov: int) -> str | None:
        if fov in self.execs:
            return "is already running"
        outcome = self.journal.outcome(fov)
        if outcome is not None:
            return f"has already ended ({outcome})"
        if self.journal.entries(direction="in", type=self.cfg.start, fov_id=fov):
            return "is already queued"
        return None

    def _route(self, ev: Event, seq: int) -> None:
        if ev.type == SHUTDOWN:
            self.log.info(
                "control.shutdown (%s): draining %d in flight",
                ev.body.get("reason", "no reason given"),
                len(self.execs),
            )
            self._handle(Drain())
            return
        rec = self.execs.get(ev.fov_id) if ev.fov_id is not None else None
        if rec is not None:
            if ev.type in rec.events:
                self.log.warning("fov %s: second %s (%s) ignored", ev.fov_id, ev.type, ev.id)
                return
            rec.events[ev.type] = ev
        elif (
            ev.fov_id is not None
            and ev.type != self.cfg.start
            and self.journal.outcome(ev.fov_id) is not None
        ):
            self.log.warning(
                "event %s (%s) for fov %s, which has already ended: kept in the journal only",
                ev.id,
                ev.type,
                ev.fov_id,
            )
            return
        self._handle(Accepted(ev.type, ev.fov_id, time.monotonic(), seq))

    # -- the scheduler's instructions ----------------------------------------

    def _handle(self, inp: SchedulerInput) -> None:
        """Feed the scheduler and carry out what it returns, and what follows from it."""
        work = [inp]
        while work:
            for instr in self.scheduler.handle(work.pop(0)):
                match instr:
                    case Step(key=key, instruction=step):
                        follow = self._step(key, step)
                        if follow is not None:
                            work.append(Feed(key, follow))
                    case FetchStarts(room=room, running=running):
                        work += self._fetch_starts(room, running)
                    case ExpireOrphans(fov_ids=fovs):
                        self._expire(fovs)
                    case Stop():
                        self._stopped = True

    def _fetch_starts(self, room: int, running: tuple[int, ...]) -> list[SchedulerInput]:
        out: list[SchedulerInput] = []
        for start in self.journal.pending_starts(self.cfg.start, running, room):
            key = int(start.fov_id)  # type: ignore[arg-type]
            events = {start.type: start}
            seqs: dict[str, int] = {}
            expired: dict[str, int] = {}
            received = None
            for entry in self.journal.entries_for(key):
                ev = entry.event
                if ev.id == start.id:
                    received = entry.received
                if ev.type == WAIT_EXPIRED:
                    expired.setdefault(str(ev.body.get("event")), entry.seq)
                elif ev.type not in seqs:
                    events.setdefault(ev.type, ev)
                    seqs[ev.type] = entry.seq
            resources = None
            if self.cfg.resources is not None:
                try:
                    res = self.cfg.resources(start)
                    resources = None if res is None else frozenset[Hashable](res)
                except Exception:
                    self.log.exception("fov %s: resources() failed; it will run alone", key)
            try:
                state = self.hooks.execution_state(self._ctx(), key)
            except Exception:
                self.log.exception("fov %s: execution_state() failed", key)
                raise
            waited = None if received is None else max(time.time() - received, 0.0)
            self.execs[key] = Running(start, events, state, queue_wait=waited)
            self.log.info(
                "fov %s: execution starts (%d event(s) already queued)", key, len(events) - 1
            )
            start_seq = seqs.pop(start.type)
            out.append(Begin(key, seqs, resources, time.monotonic(), start_seq, expired))
        return out

    def _expire(self, fovs: tuple[int, ...]) -> None:
        expired = self.journal.expire_fovs(fovs, self.cfg.start)
        self.metrics.event_expired(len(expired))
        for ev in expired:
            msg = (
                f"event {ev.id!r} ({ev.type}) for fov {ev.fov_id}: no {self.cfg.start} "
                f"came within {self.cfg.runtime.orphan_timeout:g} s; expired"
            )
            self.log.warning(msg)
            self.intake.dead.write(ev.to_json(), msg, "journal")

    def _mctx(self, key: int, rec: Running) -> MasterContext:
        return MasterContext(
            rank=0,
            n_slices=self.n_slices,
            run_dir=self.run_dir,
            log=self.log,
            board=self.board,
            shared=self.shared,
            settings=self.cfg.settings,
            key=key,
            state=rec.state,
            events=rec.events,
            clipboard=rec.clipboard,
            emit=lambda type, body: self._emit(type, key, body),
            counts=rec.counts,
            count=self.metrics.count,
            shutdown=self._stop_for,
        )

    def _stage_name(self, key: int) -> str:
        ex = self.scheduler.executions.get(key)
        return ex.stage_name if ex is not None else "-"

    def _hook_failure(self, key: int, stage: str, hook: str, exc: BaseException) -> Failure:
        f = Failure(
            stage,
            hook,
            0,
            describe_exception(exc),
            traceback.format_exc(),
            retriable=self.hooks.retriable(exc),
        )
        self.log.error("fov %s: %s\n%s", key, f.describe(), f.traceback.rstrip())
        return f

    def _retry_later(self, key: int, instr: Any, stage: str, exc: BaseException) -> bool:
        """Schedule a master hook that failed for a passing reason again; False when not to."""
        if not self.hooks.retriable(exc):
            return False
        attempt, first = self._attempts.get(key, (0, time.monotonic()))
        attempt += 1
        delay = self.backoff.delay(attempt)
        if time.monotonic() + delay - first > self.backoff.budget:
            return False
        self._attempts[key] = (attempt, first)
        what = f"fov {key} {stage}: {describe_exception(exc)}"
        self.log.warning("%s; retry %d in %.1f s", what, attempt, delay)
        self.board.set(retrying=f"{what} (retry {attempt})")
        self._retries.append((time.monotonic() + delay, key, instr))
        return True

    def _poll_retries(self) -> bool:
        now = time.monotonic()
        due = [r for r in self._retries if r[0] <= now]
        for item in due:
            self._retries.remove(item)
            _, key, instr = item
            if key in self.execs:
                follow = self._step(key, instr)
                if follow is not None:
                    self._handle(Feed(key, follow))
        if due and not self._retries:
            self.board.values.pop("retrying", None)
        return bool(due)

    def _step(self, key: int, instr: Any) -> Any:
        """Carry out one execution instruction; returns the input that follows, if any."""
        rec = self.execs[key]
        token = current_execution.set(str(key))
        try:
            match instr:
                case RunPreprocess(stage=k):
                    stage = self.stages[k]
                    rec.t_stage = time.perf_counter()
                    self.board.set(exec=key, stage=stage.name, hook="preprocess")
                    try:
                        payload = stage.preprocess(self._mctx(key, rec))
                    except Exception as exc:
                        if self._retry_later(key, instr, stage.name, exc):
                            return None
                        return HookFailed(self._hook_failure(key, stage.name, "preprocess", exc))
                    self._attempts.pop(key, None)
                    if isinstance(payload, EndExecution):
                        self.log.info("fov %s: ends at %s: %s", key, stage.name, payload.reason)
                        return Ended(payload.reason)
                    if isinstance(payload, Later):
                        self._later.append((key, payload.future))
                        return None  # `_poll_later` goes on when it is done
                    rec.payload = payload
                    return PreprocessDone()
                case Dispatch(stage=k):
                    payload, rec.payload = rec.payload, None
                    if isinstance(payload, Scatter) and len(payload.items) != self.n_slices:
                        f = Failure(
                            self.stages[k].name,
                            "preprocess",
                            0,
                            f"Scatter has {len(payload.items)} items for {self.n_slices} slices",
                        )
                        self.log.error("fov %s: %s", key, f.describe())
                        return HookFailed(f)
                    rec.results = [None] * self.n_slices
                    now = time.monotonic()
                    for i in range(self.n_slices):
                        item = payload.items[i] if isinstance(payload, Scatter) else payload
                        self.t.send(i + 1, Work(key, k, item, rec.events))
                        self.liveness.sent(i, now)
                    self._count_busy()
                    return None
                case RunPostprocess(stage=k):
                    stage = self.stages[k]
                    self.board.set(exec=key, stage=stage.name, hook="postprocess")
                    results = rec.results
                    try:
                        stage.postprocess(self._mctx(key, rec), results)
                    except Exception as exc:
                        if self._retry_later(key, instr, stage.name, exc):
                            return None
                        return HookFailed(self._hook_failure(key, stage.name, "postprocess", exc))
                    self._attempts.pop(key, None)
                    rec.results = []
                    rec.timings[stage.name] = time.perf_counter() - rec.t_stage
                    return PostprocessDone(time.monotonic())
                case RecordExpiry(event=etype):
                    seq = self.journal.record_expiry(key, etype)
                    self.log.warning("fov %s: no %s came in time; going on without it", key, etype)
                    return WaitExpired(etype, seq)
                case Finish():
                    self._finish(key, instr)
                    return None
            raise TypeError(f"unknown instruction {instr!r}")
        finally:
            current_execution.reset(token)

    def _finish(self, key: int, end: Finish) -> None:
        rec = self.execs.pop(key)
        failure = end.failure
        ok = failure is None
        ctx = self._mctx(key, rec)
        for stage in self.stages:
            try:
                stage.finish(ctx, ok)
            except Exception:
                self.log.exception("fov %s: stage %r finish on rank 0 failed", key, stage.name)
        for r in range(1, self.t.size):
            self.t.send(r, Release(key, ok, rec.events))
        total = time.perf_counter() - rec.t_start
        if ok:
            body: dict[str, Any] = {"timings": {**rec.timings, "total": total}}
            counts = dict(rec.counts)
            if end.skipped_waits:
                counts["skipped_waits"] = len(end.skipped_waits)
            if counts:
                body["counts"] = counts
            if end.ended_early is not None:
                body["ended_early"] = end.ended_early
            ev = Event.new(self.cfg.done_event, key, body)
        else:
            assert failure is not None
            body = {
                "stage": failure.stage,
                "hook": failure.hook,
                "rank": failure.rank,
                "error": failure.error,
                "traceback": failure.traceback[-4000:],
                "transitions": list(failure.transitions),
                "retriable": failure.retriable,
            }
            ev = Event.new(self.cfg.failed_event, key, body)
        retriable = failure is not None and failure.retriable
        if self.journal.record_outcome(key, "done" if ok else "failed", ev, retriable):
            self._publish(ev)
        self.outcomes["done" if ok else "failed"] += 1
        self._feed_outcome(rec, end)
        if ok:
            self.log.info("fov %s: done in %.3f s", key, total)
        else:
            self.log.error("fov %s: FAILED at %s", key, failure.describe())  # type: ignore[union-attr]

    def _feed_outcome(self, rec: Running, end: Finish) -> None:
        """An execution's outcome into the metrics: latency and queue wait apart."""
        if end.failure is not None:
            self.metrics.execution_failed(end.failure.stage, rec.queue_wait)
        else:
            latency = None
            if end.ended_early is None:  # an execution ended early did no work of its own
                first = self.cfg.runtime.latency_from or None
                latency = processing_latency(rec.timings, [s.name for s in self.stages], first)
            self.metrics.execution_done(rec.timings, latency, rec.queue_wait)
        self.metrics.take_observed("master", self.board.snapshot())

    def _emit(self, type: str, key: int, body: dict[str, Any]) -> Event:
        ev = Event.new(type, key, body)
        parse_event(ev.to_dict(), vocabulary=self.vocabulary)  # outbound events follow it too
        self.journal.record_out(ev)
        self._publish(ev)
        return ev

    def _publish(self, ev: Event) -> None:
        if self.endpoint is not None and self.endpoint.pub_address:
            self.endpoint.publish(ev)

    # -- Slices ----------------------------------------------------------------

    def _poll_later(self) -> bool:
        """Go on with the executions whose `Later` preprocess has finished."""
        done = [item for item in self._later if item[1].done()]
        for item in done:
            self._later.remove(item)
            key, future = item
            rec = self.execs.get(key)
            if rec is None:
                continue
            token = current_execution.set(str(key))
            try:
                rec.payload = future.result()
            except Exception as exc:
                follow: Any = HookFailed(
                    self._hook_failure(key, self._stage_name(key), "preprocess", exc)
                )
            else:
                follow = PreprocessDone()
            finally:
                current_execution.reset(token)
            self._handle(Feed(key, follow))
        return bool(done)

    def _poll_slices(self) -> bool:
        busy = False
        while True:
            got = self.t.poll()
            if got is None:
                return busy
            busy = True
            _, msg = got
            if isinstance(msg, Result):
                self.liveness.answered(msg.slice, time.monotonic())
                self.slice_boards[msg.slice] = msg.board
                self.metrics.slice_board(msg.slice, msg.board)
                self._count_busy()
                ex = self.scheduler.executions.get(msg.key)
                if ex is None or ex.phase is not Phase.DISPATCHED:
                    self.log.warning("stale result from slice %d for fov %s", msg.slice, msg.key)
                    continue
                self.execs[msg.key].results[msg.slice] = msg.value
                self._handle(Feed(msg.key, SliceReplied(msg.stage, msg.slice, msg.failure)))
            elif isinstance(msg, Alive):
                self.liveness.heard(msg.slice, time.monotonic())
                self.slice_boards[msg.slice] = msg.board
                self.metrics.slice_board(msg.slice, msg.board)
            else:
                self.log.warning("unexpected message from a slice: %r", msg)

    def _count_busy(self) -> None:
        self.metrics.set_slices_busy(sum(n > 0 for n in self.liveness.in_hand))

    # -- status ----------------------------------------------------------------

    def status(self, now: float) -> dict[str, Any]:
        """The combined board of every rank, and the executions in flight."""
        elapsed = max(now - self._t0, 1e-9)
        execs = []
        for key, m in self.scheduler.executions.items():
            e: dict[str, Any] = {"key": key, "stage": m.stage_name, "phase": m.phase.value}
            wait = m.waits[m.stage]
            if m.phase is Phase.WAITING and wait is not None:
                e["waiting_for"] = wait.event
            if m.phase is Phase.GATED:
                e["behind"] = self.scheduler.behind(key)
            execs.append(e)
        ranks = {"0": self.board.snapshot()}
        for i, b in self.slice_boards.items():
            ranks[str(i + 1)] = b
        c = self.intake.counts
        return {
            "pipeline": self.cfg.name,
            "pid": os.getpid(),
            "time": now,
            "state": "draining" if self.draining else self.board.values.get("state"),
            "in_flight": len(execs),
            "queued_start": self.journal.count_pending_starts(self.cfg.start, tuple(self.execs)),
            "rate_per_min": 60.0 * (self.outcomes["done"] + self.outcomes["failed"]) / elapsed,
            **self.outcomes,
            "accepted": c.accepted,
            "rejected": c.rejected,
            "duplicates": c.duplicates,
            "ranks": ranks,
            "executions": execs,
        }

    def _write_status(self, now: float) -> None:
        self._next_status = now + self.cfg.runtime.status_interval
        self.board.set(in_flight=len(self.execs))
        status = self.status(now)
        self.metrics.set_in_flight(status["in_flight"])
        self.metrics.set_queued(status["queued_start"])
        self.metrics.take_observed("master", self.board.snapshot())
        try:
            write_status(self.run_dir, status)
        except OSError:
            self.log.exception("could not write the status file")
