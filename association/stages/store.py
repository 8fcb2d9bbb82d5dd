"""Store: the visit's rows in one transaction, its alerts in one Avro file."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any

import numpy as np

from association.alerts.avro import warm_up as avro_warm_up
from association.alerts.packets import write_visit_alerts
from association.columns import MATCH_COLUMNS
from association.stages.rank import AssociationState
from association.stages.visit import MasterVisit, VisitCounts
from association.storage import tables as db
from association.storage.sql import VisitRecord, native_writer, store_visit
from association.storage.sqlite.checkpoint import WalCheckpointer
from events.types import ALERTS_READY, NEXT_VISIT
from framework.stage import ExecutionContext, Later, MasterContext, RankContext, Stage


class StoreStage(Stage):
    """Writes the visit in one transaction, then publishes ``association.alerts_ready``.

    The alert file is written first (atomically), then the database
    transaction commits: a visit is done only once its Store has committed.
    Storing a visit again leaves the same rows.
    """

    def setup(self, ctx: RankContext) -> None:
        self._checkpointer = self._writer = None
        if ctx.rank == 0:
            avro_warm_up()  # load the compiled encoder now, not on the first visit
            self._alerts = ThreadPoolExecutor(1, thread_name_prefix="alerts")
            # One writer thread: visits commit one at a time, in the order they got here.
            self._db = ThreadPoolExecutor(1, thread_name_prefix="store")
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

        def store() -> dict[str, np.ndarray]:
            # The alert file is written beside the database transaction, which
            # commits only once the file is complete.
            writing = self._alerts.submit(write_visit_alerts, path, alerting, objects, recent)
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
            return {name: objects[name] for name in (*MATCH_COLUMNS, "fine")}

        # The master goes on with other visits while this one is written.
        return Later(self._db.submit(store))

    def process(self, ctx: ExecutionContext, payload: Any) -> None:
        """Keep each Slice's cached margin strips equal to the stored Objects."""
        st: AssociationState = ctx.shared
        try:
            st.strips.patch(st.partition.chunk_of_fine(payload["fine"]), payload["fine"], payload)
        except Exception:
            # The visit is stored: a strip that cannot be kept current goes.
            ctx.log.exception("fov %s: margin strips could not be updated; dropped", ctx.key)
            st.strips.clear()

    def postprocess(self, ctx: MasterContext, results: list[None]) -> None:
        visit: MasterVisit = ctx.state
        assert visit.counts is not None
        ctx.emit(ALERTS_READY, {"path": visit.alerts_path, **asdict(visit.counts)})
