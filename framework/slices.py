"""A Slice: a long-lived worker that runs `process` of every stage it is sent."""

from __future__ import annotations

import signal
import time
import traceback
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from framework.config import PipelineConfig
from framework.execution import Failure, describe_exception
from framework.logs import current_execution, setup_logging
from framework.messages import Alive, Bye, Ready, Release, Result, Shutdown, Work
from framework.retry import Backoff, retrying
from framework.stage import Background, ExecutionContext, RankContext, Stage
from framework.status import Board
from framework.transport import Transport, Waiter


@dataclass
class _InBackground:
    """A work item whose `Background` work is under way."""

    work: Work
    stage: Stage
    ctx: ExecutionContext
    then: Callable[[Any], Any]
    future: Future[Any]
    t0: float


class SliceRunner:
    """Ranks 1..N: take work items in order of arrival, one at a time.

    An item whose `process` returns a `Background` is answered once its work
    is done, while the Slice takes the next items. An exception in a hook is
    caught, logged and returned with the result; the Slice stays up for the
    other executions.
    """

    def __init__(
        self,
        config: PipelineConfig,
        run_dir: Path,
        transport: Transport,
        install_signals: bool = True,
    ) -> None:
        self.cfg = config
        self.run_dir = Path(run_dir)
        self.t = transport
        self.rank = transport.rank
        self.index = self.rank - 1
        self.n_slices = transport.size - 1
        self.log = setup_logging(self.run_dir, self.rank)
        self.board = Board(self.rank)
        self.hooks = config.build_hooks()
        self.shared: Any = None
        self.board.set(state="setup", items_done=0, busy_seconds=0.0)
        self.stages = [s.build() for s in config.stages]
        rt = config.runtime
        self.waiter = Waiter(rt.waiting, rt.min_sleep_ms / 1e3, rt.max_sleep_ms / 1e3)
        self.backoff = Backoff(rt.retry_for)
        self.executions: dict[int, tuple[Any, dict[str, Any]]] = {}
        """Per execution in hand: its typed state and its clipboard."""
        self._background: ThreadPoolExecutor | None = None
        self._pending: deque[_InBackground] = deque()
        self._released: dict[int, Release] = {}
        """Releases held until the execution's background work is answered."""
        if install_signals:
            # The master owns shutdown; mpiexec forwards signals to every rank.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def _rctx(self) -> RankContext:
        return RankContext(
            self.rank,
            self.n_slices,
            self.run_dir,
            self.log,
            self.board,
            self.shared,
            self.cfg.settings,
        )

    def _ectx(self, key: int, events: dict[str, Any]) -> ExecutionContext:
        held = self.executions.get(key)
        if held is None:
            held = self.executions[key] = (self.hooks.execution_state(self._rctx(), key), {})
        return ExecutionContext(
            rank=self.rank,
            n_slices=self.n_slices,
            run_dir=self.run_dir,
            log=self.log,
            board=self.board,
            shared=self.shared,
            settings=self.cfg.settings,
            key=key,
            state=held[0],
            events=events,
            clipboard=held[1],
        )

    def _setup(self) -> Failure | None:
        """The pipeline's set-up hook, then every stage's; the first failure, if any."""
        hooks: list[tuple[str, Any]] = [("pipeline", None), *((s.name, s) for s in self.stages)]
        for name, stage in hooks:
            try:
                if stage is None:
                    self.shared = self.hooks.setup(self._rctx())
                else:
                    stage.setup(self._rctx())
            except Exception as exc:
                failure = Failure(
                    name, "setup", self.rank, describe_exception(exc), traceback.format_exc()
                )
                self.log.error("%s\n%s", failure.describe(), failure.traceback)
                return failure
        return None

    def run(self) -> int:
        """Serve until told to shut down."""
        failure = self._setup()
        self.board.set(state="idle")
        self.t.send(0, Ready(self.index, failure, self.board.snapshot()))
        while True:
            if self._pending and self._pending[0].future.done():
                self._answer_background(self._pending.popleft())
                self.waiter.busy()
                continue
            got = self.t.poll()
            if got is None:
                self.waiter.idle()
                continue
            self.waiter.busy()
            _, msg = got
            match msg:
                case Work():
                    self._work(msg)
                case Release() if any(p.work.key == msg.key for p in self._pending):
                    self._released[msg.key] = msg
                case Release():
                    self._release(msg)
                case Shutdown():
                    while self._pending:
                        self._pending[0].future.exception()  # waits; answered below
                        self._answer_background(self._pending.popleft())
                    self._shutdown()
                    return 0
                case _:
                    self.log.warning("unexpected message %r", msg)

    def _on_retry(self, w: Work, stage: Stage, alive: bool) -> Any:
        def on_retry(attempt: int, delay: float, exc: BaseException) -> None:
            what = f"fov {w.key} {stage.name}: {describe_exception(exc)}"
            self.log.warning("%s; retry %d in %.1f s", what, attempt, delay)
            self.board.set(state="retrying", retrying=f"{what} (retry {attempt})")
            if alive:  # only the Slice's own thread talks to the master
                self.t.send(0, Alive(self.index, self.board.snapshot()))

        return on_retry

    def _failure(self, w: Work, stage: Stage, exc: Exception) -> Failure:
        failure = Failure(
            stage.name,
            "process",
            self.rank,
            describe_exception(exc),
            "".join(traceback.format_exception(exc)),
            retriable=self.hooks.retriable(exc),
        )
        self.log.error("fov %s: %s\n%s", w.key, failure.describe(), failure.traceback.rstrip())
        self.board.set(last_error=f"fov {w.key}: {failure.describe()}")
        return failure

    def _work(self, w: Work) -> None:
        stage = self.stages[w.stage]
        token = current_execution.set(str(w.key))
        self.board.set(state="busy", exec=w.key, stage=stage.name, hook="process")
        t0 = time.perf_counter()
        value, failure = None, None
        ctx = self._ectx(w.key, w.events)
        try:
            value = retrying(
                lambda: stage.process(ctx, w.payload),
                self.hooks.retriable,
                self.backoff,
                self._on_retry(w, stage, alive=True),
            )
        except Exception as exc:
            failure = self._failure(w, stage, exc)
        finally:
            current_execution.reset(token)
            self.board.values.pop("retrying", None)
        if isinstance(value, Background):
            self._start_background(w, stage, ctx, value, t0)
            self._account(time.perf_counter() - t0)
            return
        self._reply(w, value, failure, t0)

    def _start_background(
        self, w: Work, stage: Stage, ctx: ExecutionContext, bg: Background, t0: float
    ) -> None:
        if self._background is None:
            self._background = ThreadPoolExecutor(1, thread_name_prefix=f"slice{self.index}-bg")
        on_retry = self._on_retry(w, stage, alive=False)
        work = bg.work

        def run() -> Any:
            return retrying(work, self.hooks.retriable, self.backoff, on_retry)

        future = self._background.submit(run)
        self._pending.append(_InBackground(w, stage, ctx, bg.then, future, t0))
        self.board.set(background=len(self._pending))

    def _answer_background(self, item: _InBackground) -> None:
        """Run `then` on the finished work of `item`, answer it, and any release it held."""
        w = item.work
        token = current_execution.set(str(w.key))
        self.board.set(state="busy", exec=w.key, stage=item.stage.name, hook="process")
        self.board.values.pop("retrying", None)
        t_then = time.perf_counter()
        value, failure = None, None
        try:
            value = item.then(item.future.result())
        except Exception as exc:
            failure = self._failure(w, item.stage, exc)
        finally:
            current_execution.reset(token)
        self._account(time.perf_counter() - t_then)
        self.board.set(background=len(self._pending))
        self._reply(w, value, failure, item.t0, busy=False)
        held = self._released.get(w.key)
        if held is not None and not any(p.work.key == w.key for p in self._pending):
            del self._released[w.key]
            self._release(held)

    def _account(self, busy: float) -> None:
        self.board.set(busy_seconds=self.board.values["busy_seconds"] + busy)

    def _reply(
        self, w: Work, value: Any, failure: Failure | None, t0: float, busy: bool = True
    ) -> None:
        """Answer `w`; its item took from `t0` until now (busy all along unless ``busy`` is false)."""
        dt = time.perf_counter() - t0
        if busy:
            self._account(dt)
        self.board.incr("items_done")
        self.board.set(state="idle", last_seconds=dt, in_memory_executions=len(self.executions))
        self.t.send(
            0, Result(w.key, w.stage, self.index, value, failure, self.board.snapshot(), dt)
        )

    def _release(self, r: Release) -> None:
        token = current_execution.set(str(r.key))
        ctx = self._ectx(r.key, r.events)
        for stage in self.stages:
            try:
                stage.finish(ctx, r.ok)
            except Exception:
                self.log.exception("fov %s: stage %r finish failed", r.key, stage.name)
        current_execution.reset(token)
        self.executions.pop(r.key, None)
        self.board.set(in_memory_executions=len(self.executions))

    def _shutdown(self) -> None:
        self.board.set(state="stopping")
        if self._background is not None:
            self._background.shutdown()
        for stage in self.stages:
            try:
                stage.shutdown(self._rctx())
            except Exception:
                self.log.exception("stage %r shutdown failed", stage.name)
        try:
            self.hooks.shutdown(self._rctx())
        except Exception:
            self.log.exception("pipeline shutdown failed")
        self.board.set(state="stopped")
        self.t.send(0, Bye(self.index, self.board.snapshot()))
        self.t.close()
