"""The master: takes events, journals them, and drives executions over the Slices."""

from __future__ import annotations

import json
import os
import queue
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
from events.journal import Journal
from events.types import SHUTDOWN
from events.validate import EventError, parse_event
from framework.config import PipelineConfig
from framework.execution import (
    Admitted,
    Dispatch,
    EventArrived,
    Execution,
    Failure,
    Finish,
    HookFailed,
    Phase,
    PostprocessDone,
    PreprocessDone,
    RequestEntry,
    RunPostprocess,
    RunPreprocess,
    SliceReplied,
    Start,
    Tick,
    describe_exception,
)
from framework.logs import current_execution, setup_logging
from framework.messages import Bye, Ready, Release, Result, Shutdown, Work
from framework.section import OrderedSection
from framework.stage import Later, MasterContext, RankContext, Scatter
from framework.status import Board, write_status
from framework.transport import Transport, Waiter

ENDPOINT_FILE = "endpoint.json"
LATER_POLL_S = 0.001
"""Longest wait for events while a `Later` preprocess is pending, s."""


class SetupError(RuntimeError):
    """A rank could not set up its stages: the pipeline cannot start."""


@dataclass
class Running:
    """The master's record of one execution in flight."""

    machine: Execution
    start: Event
    events: dict[str, Event]
    resources: frozenset[Hashable] | None
    clipboard: dict[str, Any] = field(default_factory=dict)
    payload: Any = None
    results: list[Any] = field(default_factory=list)
    t_start: float = field(default_factory=time.perf_counter)
    t_stage: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)


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
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.t = transport
        self.n_slices = transport.size - 1
        self.log = setup_logging(self.run_dir, 0)
        self.board = Board(0)
        self.shared: dict[str, Any] = {}
        self.stages = [s.build() for s in config.stages]
        self.journal = Journal(self.run_dir / "journal.sqlite")
        self.dead = DeadLetters(self.run_dir / "deadletter.jsonl")
        rt = config.runtime
        self.waiter = Waiter(rt.waiting, rt.min_sleep_ms / 1e3, rt.max_sleep_ms / 1e3)
        self.endpoint = None
        if rt.endpoint:
            from events.endpoint import Endpoint

            self.endpoint = Endpoint(rt.endpoint, rt.publish or None)
        self.execs: dict[int, Running] = {}
        self._later: list[tuple[Running, Future[Any]]] = []
        self.section = OrderedSection() if config.ordered else None
        self._gate = config.ordered_range[0] if config.ordered else None
        self._gate_exit = config.ordered_range[1] if config.ordered else None
        self.slice_boards: dict[int, dict[str, Any]] = {}
        self.counts = {"done": 0, "failed": 0, "accepted": 0, "rejected": 0, "duplicates": 0}
        self.draining = False
        self.stop_now = False
        self._want_admit = True
        self._next_status = 0.0
        self._next_sweep = 0.0
        self._t0 = time.time()
        self._abort = abort
        self._sigints = 0
        self._inbox: queue.SimpleQueue[Event] = queue.SimpleQueue()
        if install_signals:
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)

    # -- lifecycle ---------------------------------------------------------

    def run(self) -> int:
        """Serve until shut down; returns the exit code."""
        self._setup()
        self._write_endpoint()
        resumable = len(self.journal.pending_starts(self.cfg.start, (), 1_000_000))
        if resumable:
            self.log.info("journal holds %d unfinished execution(s): resuming them", resumable)
        self.board.set(state="running")
        while not self.stop_now:
            busy = self._poll_slices()
            busy = self._poll_later() or busy
            busy = self._poll_inbox() or busy
            timeout = 0.0 if busy else self.waiter.next_timeout()
            if self._later:
                timeout = min(timeout, LATER_POLL_S)
            busy = self._poll_endpoint(timeout) or busy
            now = time.time()
            self._tick(now)
            if self._want_admit:
                self._admit(now)
            if now >= self._next_status:
                self._write_status(now)
            if self.draining and not self.execs:
                break
            if busy:
                self.waiter.busy()
            elif self.endpoint is None or self.waiter.active:
                self.waiter.idle()
        self._shutdown()
        return 0

    def _ctx(self) -> RankContext:
        return RankContext(0, self.n_slices, self.run_dir, self.log, self.board, self.shared)

    def _setup(self) -> None:
        self.board.set(state="setup")
        for stage in self.stages:
            try:
                stage.setup(self._ctx())
            except Exception as exc:
                raise SetupError(f"stage {stage.name!r} setup on rank 0: {exc!r}") from exc
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
        info = {"pid": os.getpid(), "address": None, "publish": None}
        if self.endpoint is not None:
            info["address"] = self.endpoint.address
            info["publish"] = self.endpoint.pub_address
            self.log.info(
                "listening on %s, publishing on %s",
                self.endpoint.address,
                self.endpoint.pub_address,
            )
        tmp = self.run_dir / (ENDPOINT_FILE + ".tmp")
        tmp.write_text(json.dumps(info))
        os.replace(tmp, self.run_dir / ENDPOINT_FILE)

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
        self.draining = True

    def _stop_slices(self) -> None:
        for r in range(1, self.t.size):
            self.t.send(r, Shutdown())
        waiting = set(range(self.n_slices))
        deadline = time.time() + 60
        while waiting and time.time() < deadline:
            got = self.t.poll()
            if got is None:
                self.waiter.idle()
                continue
            _, msg = got
            if isinstance(msg, Bye):
                waiting.discard(msg.slice)
                self.slice_boards[msg.slice] = msg.board
        if waiting:
            self.log.error("slice(s) %s did not answer shutdown", sorted(waiting))

    def _shutdown(self) -> None:
        self.board.set(state="stopping")
        for key in list(self.execs):
            self._finish(
                key, Failure("-", "shutdown", 0, "pipeline stopped before the execution ended")
            )
        self._stop_slices()
        for stage in self.stages:
            try:
                stage.shutdown(self._ctx())
            except Exception:
                self.log.exception("stage %r shutdown on rank 0 failed", stage.name)
        self.board.set(state="stopped")
        self._write_status(time.time())
        if self.endpoint is not None:
            self.endpoint.close()
        self.journal.close()
        self.log.info(
            "stopped: %d done, %d failed, %d events accepted",
            self.counts["done"],
            self.counts["failed"],
            self.counts["accepted"],
        )

    # -- events in -----------------------------------------------------------

    def submit(self, events: list[Event]) -> None:
        """Hand over already-parsed events from another thread; the loop journals them."""
        for ev in events:
            self._inbox.put(ev)

    def _poll_inbox(self) -> bool:
        items = []
        while True:
            try:
                items.append((self._inbox.get_nowait(), None))
            except queue.Empty:
                break
        if items:
            self._take(items)
        return bool(items)

    def _poll_endpoint(self, timeout: float) -> bool:
        if self.endpoint is None:
            return False
        reqs = self.endpoint.receive(timeout)
        if not reqs:
            return False
        parsed: list[tuple[Event, Any]] = []
        for req in reqs:
            try:
                ev = parse_event(req.raw, self.cfg.runtime.max_event_bytes)
            except EventError as exc:
                self.counts["rejected"] += 1
                self.dead.write(req.raw, exc, "endpoint")
                self.log.warning("rejected event: %s", exc)
                self.endpoint.reply(
                    req,
                    {"ok": False, "error": str(exc), "field": exc.field, "event_id": exc.event_id},
                )
                continue
            parsed.append((ev, req))
        replies = self._take(parsed)
        for (_, req), rep in zip(parsed, replies, strict=True):
            self.endpoint.reply(req, rep)
        return True

    def _take(self, items: list[tuple[Event, Any]]) -> list[dict[str, Any]]:
        replies: list[dict[str, Any] | None] = [None] * len(items)
        keep = []
        for i, (ev, _) in enumerate(items):
            if self.draining and ev.type == self.cfg.start:
                self.counts["rejected"] += 1
                msg = f"event {ev.id!r}: pipeline is shutting down and takes no new {ev.type}"
                self.dead.write(ev.to_json(), msg, "endpoint")
                replies[i] = {"ok": False, "error": msg, "event_id": ev.id, "field": "type"}
            else:
                keep.append(i)
        new = self.journal.accept([items[i][0] for i in keep]) if keep else []
        for i, is_new in zip(keep, new, strict=True):
            ev = items[i][0]
            replies[i] = {"ok": True, "id": ev.id, "duplicate": not is_new}
            if not is_new:
                self.counts["duplicates"] += 1
                self.log.info("duplicate event %s (%s) ignored", ev.id, ev.type)
                continue
            self.counts["accepted"] += 1
            self._route(ev)
        return replies  # type: ignore[return-value]

    def _route(self, ev: Event) -> None:
        if ev.type == SHUTDOWN:
            self.log.info(
                "control.shutdown (%s): draining %d in flight",
                ev.body.get("reason", "no reason given"),
                len(self.execs),
            )
            self.draining = True
            return
        if ev.type == self.cfg.start:
            self._want_admit = True
            return
        rec = self.execs.get(ev.fov_id) if ev.fov_id is not None else None
        if rec is None:
            if ev.fov_id is not None and self.journal.outcome(ev.fov_id) is not None:
                self.log.warning(
                    "event %s (%s) for fov %s, which has already ended: kept in the journal only",
                    ev.id,
                    ev.type,
                    ev.fov_id,
                )
            return  # waits in the journal, its FOV's queue
        if ev.type in rec.events:
            self.log.warning("fov %s: second %s (%s) ignored", ev.fov_id, ev.type, ev.id)
            return
        rec.events[ev.type] = ev
        self._feed(rec, EventArrived(ev.type))

    # -- admission ----------------------------------------------------------

    def _admit(self, now: float) -> None:
        self._want_admit = False
        if self.draining:
            return
        room = self.cfg.max_in_flight - len(self.execs)
        if room <= 0:
            return
        for start in self.journal.pending_starts(self.cfg.start, tuple(self.execs), room):
            self._begin(start, now)

    def _begin(self, start: Event, now: float) -> None:
        key = int(start.fov_id)  # type: ignore[arg-type]
        events = {start.type: start}
        for ev in self.journal.events_for(key):
            events.setdefault(ev.type, ev)
        resources = None
        if self.cfg.resources is not None:
            try:
                res = self.cfg.resources(start)
                resources = None if res is None else frozenset(res)
            except Exception:
                self.log.exception("fov %s: resources() failed; it will run alone", key)
        machine = Execution(
            key=key,
            stage_names=tuple(s.name for s in self.cfg.stages),
            waits=tuple(s.wait for s in self.cfg.stages),
            n_slices=self.n_slices,
            gate=self._gate,
        )
        rec = Running(machine, start, events, resources)
        self.execs[key] = rec
        if self.section is not None:
            self.section.add(key, resources)
        self.log.info("fov %s: execution starts (%d event(s) already queued)", key, len(events) - 1)
        for t in events:
            if t != start.type:
                machine.received.add(t)
        self._feed(rec, Start(now))

    # -- the state machine's instructions -----------------------------------

    def _feed(self, rec: Running, ev: Any) -> None:
        work = [(rec, ev)]
        while work:
            r, e = work.pop(0)
            for instr in r.machine.handle(e):
                follow = self._do(r, instr)
                if follow is not None:
                    work.append((r, follow))

    def _mctx(self, rec: Running) -> MasterContext:
        key = rec.machine.key
        return MasterContext(
            rank=0,
            n_slices=self.n_slices,
            run_dir=self.run_dir,
            log=self.log,
            board=self.board,
            shared=self.shared,
            key=key,
            clipboard=rec.clipboard,
            events=rec.events,
            emit=lambda type, body: self._emit(type, key, body),
        )

    def _hook_failure(self, rec: Running, hook: str, exc: BaseException) -> Failure:
        f = Failure(
            rec.machine.stage_name, hook, 0, describe_exception(exc), traceback.format_exc()
        )
        self.log.error("fov %s: %s\n%s", rec.machine.key, f.describe(), f.traceback.rstrip())
        return f

    def _do(self, rec: Running, instr: Any) -> Any:
        key = rec.machine.key
        token = current_execution.set(str(key))
        try:
            match instr:
                case RequestEntry():
                    if self.section is None or self.section.may_enter(key):
                        return Admitted()
                    return None
                case RunPreprocess(stage=k):
                    rec.t_stage = time.perf_counter()
                    self.board.set(exec=key, stage=self.stages[k].name, hook="preprocess")
                    try:
                        rec.payload = self.stages[k].preprocess(self._mctx(rec))
                    except Exception as exc:
                        return HookFailed(self._hook_failure(rec, "preprocess", exc))
                    if isinstance(rec.payload, Later):
                        self._later.append((rec, rec.payload.future))
                        rec.payload = None
                        return None  # `_poll_later` goes on when it is done
                    return PreprocessDone()
                case Dispatch(stage=k):
                    payload = rec.payload
                    rec.payload = None
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
                    for i in range(self.n_slices):
                        item = payload.items[i] if isinstance(payload, Scatter) else payload
                        self.t.send(i + 1, Work(key, k, item, rec.events))
                    return None
                case RunPostprocess(stage=k):
                    self.board.set(exec=key, stage=self.stages[k].name, hook="postprocess")
                    results, rec.results = rec.results, []
                    try:
                        self.stages[k].postprocess(self._mctx(rec), results)
                    except Exception as exc:
                        return HookFailed(self._hook_failure(rec, "postprocess", exc))
                    name = self.stages[k].name
                    rec.timings[name] = time.perf_counter() - rec.t_stage
                    if self.section is not None and k == self._gate_exit:
                        self.section.leave(key)
                        self._recheck_gated()
                    return PostprocessDone(time.time())
                case Finish(failure=f):
                    self._finish(key, f)
                    return None
            raise TypeError(f"unknown instruction {instr!r}")
        finally:
            current_execution.reset(token)

    def _recheck_gated(self) -> None:
        for rec in list(self.execs.values()):
            if rec.machine.phase is Phase.GATED and self.section.may_enter(rec.machine.key):  # type: ignore[union-attr]
                self._feed(rec, Admitted())

    def _finish(self, key: int, failure: Failure | None) -> None:
        rec = self.execs.pop(key)
        ok = failure is None
        if not rec.machine.terminal:
            rec.machine.phase = Phase.FAILED
            rec.machine.failure = failure
        ctx = self._mctx(rec)
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
            if rec.machine.skipped_waits:
                body["counts"] = {"skipped_waits": len(rec.machine.skipped_waits)}
            ev = Event.new(self.cfg.done_event, key, body)
        else:
            assert failure is not None
            body = {
                "stage": failure.stage,
                "hook": failure.hook,
                "rank": failure.rank,
                "error": failure.error,
                "traceback": failure.traceback[-4000:],
            }
            ev = Event.new(self.cfg.failed_event, key, body)
        if self.journal.record_outcome(key, "done" if ok else "failed", ev):
            self._publish(ev)
        self.counts["done" if ok else "failed"] += 1
        if self.section is not None:
            self.section.remove(key)
            self._recheck_gated()
        self._want_admit = True
        if ok:
            self.log.info("fov %s: done in %.3f s", key, total)
        else:
            self.log.error("fov %s: FAILED at %s", key, failure.describe())  # type: ignore[union-attr]

    def _emit(self, type: str, key: int, body: dict[str, Any]) -> Event:
        ev = Event.new(type, key, body)
        parse_event(ev.to_dict())  # outbound events follow the same schema
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
            rec, future = item
            token = current_execution.set(str(rec.machine.key))
            try:
                rec.payload = future.result()
            except Exception as exc:
                follow: Any = HookFailed(self._hook_failure(rec, "preprocess", exc))
            else:
                follow = PreprocessDone()
            finally:
                current_execution.reset(token)
            self._feed(rec, follow)
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
                self.slice_boards[msg.slice] = msg.board
                rec = self.execs.get(msg.key)
                if rec is None or rec.machine.phase is not Phase.DISPATCHED:
                    self.log.warning("stale result from slice %d for fov %s", msg.slice, msg.key)
                    continue
                rec.results[msg.slice] = msg.value
                self._feed(rec, SliceReplied(msg.stage, msg.slice, msg.failure))
            else:
                self.log.warning("unexpected message from a slice: %r", msg)

    # -- time ----------------------------------------------------------------

    def _tick(self, now: float) -> None:
        for rec in list(self.execs.values()):
            m = rec.machine
            if m.phase is Phase.WAITING and m.deadline is not None and now >= m.deadline:
                self._feed(rec, Tick(now))
        if now >= self._next_sweep:
            self._next_sweep = now + 5.0
            for ev in self.journal.expire_orphans(
                self.cfg.start, now - self.cfg.runtime.orphan_timeout
            ):
                msg = (
                    f"event {ev.id!r} ({ev.type}) for fov {ev.fov_id}: no {self.cfg.start} "
                    f"came within {self.cfg.runtime.orphan_timeout:g} s; expired"
                )
                self.log.warning(msg)
                self.dead.write(ev.to_json(), msg, "journal")

    def status(self, now: float) -> dict[str, Any]:
        """The combined board of every rank, and the executions in flight."""
        elapsed = max(now - self._t0, 1e-9)
        execs = []
        for key, rec in self.execs.items():
            m = rec.machine
            e: dict[str, Any] = {"key": key, "stage": m.stage_name, "phase": m.phase.value}
            wait = m.waits[m.stage]
            if m.phase is Phase.WAITING and wait is not None:
                e["waiting_for"] = wait.event
            if m.phase is Phase.GATED and self.section is not None:
                e["behind"] = self.section.blocking(key)
            execs.append(e)
        ranks = {"0": self.board.snapshot()}
        for i, b in self.slice_boards.items():
            ranks[str(i + 1)] = b
        return {
            "pipeline": self.cfg.name,
            "pid": os.getpid(),
            "time": now,
            "state": "draining" if self.draining else self.board.values.get("state"),
            "in_flight": len(execs),
            "rate_per_min": 60.0 * (self.counts["done"] + self.counts["failed"]) / elapsed,
            **self.counts,
            "ranks": ranks,
            "executions": execs,
        }

    def _write_status(self, now: float) -> None:
        self._next_status = now + self.cfg.runtime.status_interval
        self.board.set(in_flight=len(self.execs), **self.counts)
        try:
            write_status(self.run_dir, self.status(now))
        except OSError:
            self.log.exception("could not write the status file")
