"""Store: the visit's rows in one transaction, its alerts in one Avro file."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict

import numpy as np

from association.alerts.avro import warm_up as avro_warm_up
from association.alerts.packets import write_visit_alerts
from association.stages.rank import AssociationState
from association.stages.visit import MasterVisit, VisitCounts
from association.storage import tables as db
from association.storage.errors import DatabaseBehind, is_retriable
from association.storage.sql import VisitRecord, native_writer, store_visit
from association.storage.sqlite.checkpoint import WalCheckpointer
from events.types import ALERTS_READY, NEXT_VISIT
from framework.retry import Backoff, retrying
from framework.stage import ExecutionContext, Later, MasterContext, RankContext, Stage


class StoreStage(Stage):
    """Writes the visit in one transaction, then publishes ``association.alerts_ready``.

    The write comes after the ordered section: the visit's results were
    decided there, and later visits may already build on them. One writer
    thread writes visits in the order they were decided, so the database is
    always a prefix of them. The alert file is written first (atomically),
    then the database transaction commits: a visit is done only once its
    Store has committed. Storing a visit again leaves the same rows.

    A write that fails for a passing reason (the database restarting, a
    lock, a full disk) is retried with back-off for ``[runtime] retry_for``
    seconds. If it still fails, the database is behind the catalogue in
    memory: later writes are refused, the pipeline stops, and the next run
    redoes every visit not written, from the journal, in the same order.
    """

    def setup(self, ctx: RankContext) -> None:
        self._checkpointer = self._writer = None
        if ctx.rank == 0:
            avro_warm_up()  # load the compiled encoder now, not on the first visit
            self._alerts = ThreadPoolExecutor(1, thread_name_prefix="alerts")
            # One writer thread: visits commit one at a time, in the order they got here.
            self._db = ThreadPoolExecutor(1, thread_name_prefix="store")
            self._backoff = Backoff(ctx.settings.write_retry_s)
            engine = ctx.shared.engine
            self._writer = native_writer(engine)
            path = db.sqlite_file(engine)
            if path is not None:
                self._checkpointer = WalCheckpointer(path)
                writers = [] if self._writer is None else [self._writer]
                self._checkpointer.attach(engine, *writers)

    def shutdown(self, ctx: RankContext) -> None:
        if ctx.rank == 0:
            self._db.shutdown()
            self._alerts.shutdown()
            if self._writer is not None:
                self._writer.close()
            if self._checkpointer is not None:
                self._checkpointer.close()

    def preprocess(self, ctx: MasterContext) -> Later:
        st: AssociationState = ctx.shared
        visit: MasterVisit = ctx.state
        path = ctx.settings.alerts_path(ctx.run_dir, ctx.key)
        path.parent.mkdir(parents=True, exist_ok=True)
        visit.alerts_path = str(path)
        sources = visit.sources
        # one packet per DIASource still in alerting; alertId is its diaSourceId
        alerting = sources[sources["ssObjectId"] == 0]
        moving = visit.moving
        nv = ctx.events[NEXT_VISIT].body
        counts = VisitCounts(len(alerting), len(sources), visit.n_new, len(moving))
        record = VisitRecord(
            visit=ctx.key,
            mjd=float(nv["mjd"]),
            ra=float(nv["ra"]),
            dec=float(nv["dec"]),
            filter=str(nv["filter"]),
            **asdict(counts),
        )
        visit.counts = counts
        objects, recent = visit.objects, visit.recent

        def write() -> None:
            # The alert file is written beside the database transaction, which
            # commits only once the file is complete.
            writing = self._alerts.submit(write_visit_alerts, path, alerting, objects, recent)
            t0 = time.perf_counter()
            store_visit(
                st.engine,
                record,
                sources,
                objects,
                moving=(
                    np.full(len(moving), ctx.key),
                    moving.ssObjectId,
                    moving.diaSourceId,
                ),
                alerts=(alerting["diaSourceId"], alerting["diaSourceId"], alerting["diaObjectId"]),
                before_commit=writing.result,
                writer=self._writer,
            )
            ctx.board.observe("db_write", time.perf_counter() - t0)  # the transaction, to commit

        def retry(attempt: int, delay: float, exc: BaseException) -> None:
            ctx.log.warning(
                "fov %s: write failed (%s); retry %d in %.1f s", ctx.key, exc, attempt, delay
            )

        def store() -> None:
            if st.behind is not None:
                raise DatabaseBehind(
                    f"not written: visit {st.behind}, decided before it, could not be "
                    "written; the next run redoes both from the journal"
                )
            retrying(write, is_retriable, self._backoff, retry)

        # The master goes on with other visits while this one is written.
        return Later(self._db.submit(store))

    def process(self, ctx: ExecutionContext, payload: None) -> None:
        """The visit is in the database: strips read from now on have it."""
        st: AssociationState = ctx.shared
        st.strips.written(ctx.key)

    def finish(self, ctx: ExecutionContext, ok: bool) -> None:
        """A visit decided but not written leaves the database behind the catalogue: stop."""
        if ctx.rank != 0 or ok or not ctx.state.decided:
            return
        st: AssociationState = ctx.shared
        if st.behind is None:
            st.behind = ctx.key
        ctx.shutdown(
            f"the database is behind the catalogue since visit {st.behind} was decided but "
            "not written; stopping so that the next run redoes the rest from the journal"
        )

    def postprocess(self, ctx: MasterContext, results: list[None]) -> None:
        visit: MasterVisit = ctx.state
        c = visit.counts
        assert c is not None
        ctx.emit(ALERTS_READY, {"path": visit.alerts_path, **asdict(c)})
        for name, n in (
            ("diasources", c.n_sources),
            ("alerts", c.n_alerts),
            ("new_objects", c.n_new_objects),
            ("updated_objects", len(visit.objects) - c.n_new_objects),
            ("moving_matches", c.n_moving),
        ):
            ctx.count(name, n)
