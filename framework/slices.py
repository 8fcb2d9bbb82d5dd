"""A Slice: a long-lived worker that runs `process` of every stage it is sent."""

from __future__ import annotations

import signal
import time
import traceback
from pathlib import Path
from typing import Any

from framework.config import PipelineConfig
from framework.execution import Failure, describe_exception
from framework.logs import current_execution, setup_logging
from framework.messages import Alive, Bye, Ready, Release, Result, Shutdown, Work
from framework.retry import Backoff, retrying
from framework.stage import ExecutionContext, RankContext
from framework.status import Board
from framework.transport import Transport, Waiter


class SliceRunner:
    """Ranks 1..N: take work items in order of arrival, one at a time.

    An exception in a hook is caught, logged and returned with the result; the
    Slice stays up for the other executions.
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
            got = self.t.poll()
            if got is None:
                self.waiter.idle()
                continue
            self.waiter.busy()
            _, msg = got
            match msg:
                case Work():
                    self._work(msg)
                case Release():
                    self._release(msg)
                case Shutdown():
                    self._shutdown()
                    return 0
                case _:
                    self.log.warning("unexpected message %r", msg)

    def _work(self, w: Work) -> None:
        stage = self.stages[w.stage]
        token = current_execution.set(str(w.key))
        self.board.set(state="busy", exec=w.key, stage=stage.name, hook="process")
        t0 = time.perf_counter()
        value, failure = None, None
        ctx = self._ectx(w.key, w.events)

        def on_retry(attempt: int, delay: float, exc: BaseException) -> None:
            what = f"fov {w.key} {stage.name}: {describe_exception(exc)}"
            self.log.warning("%s; retry %d in %.1f s", what, attempt, delay)
            self.board.set(state="retrying", retrying=f"{what} (retry {attempt})")
            self.t.send(0, Alive(self.index, self.board.snapshot()))

        try:
            value = retrying(
                lambda: stage.process(ctx, w.payload), self.hooks.retriable, self.backoff, on_retry
            )
        except Exception as exc:
            failure = Failure(
                stage.name,
                "process",
                self.rank,
                describe_exception(exc),
                traceback.format_exc(),
                retriable=self.hooks.retriable(exc),
            )
            self.log.error("fov %s: %s\n%s", w.key, failure.describe(), failure.traceback.rstrip())
            self.board.set(last_error=f"fov {w.key}: {failure.describe()}")
        finally:
            current_execution.reset(token)
            self.board.values.pop("retrying", None)
        dt = time.perf_counter() - t0
        self.board.incr("items_done")
        self.board.set(
            state="idle",
            last_seconds=dt,
            busy_seconds=self.board.values["busy_seconds"] + dt,
            in_memory_executions=len(self.executions),
        )
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
