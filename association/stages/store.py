"""Store: the visit's rows in one transaction, its alerts in one Avro file."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from association import db
from association.alerts import write_visit_alerts
from association.avro_alerts import warm_up as avro_warm_up
from association.checkpoint import WalCheckpointer
from association.stages.load import MATCH_COLUMNS
from association.state import state_of
from association.store import VisitRecord, store_visit
from events.types import ALERTS_READY, NEXT_VISIT
from framework.stage import ExecutionContext, MasterContext, RankContext, Stage


@dataclass(frozen=True)
class StoreConfig:
    """Where alert files go, relative to the run directory."""

    alerts_dir: str = "alerts"


class StoreStage(Stage):
    """Writes the visit in one transaction, then publishes ``association.alerts_ready``.

    The alert file is written first (atomically), then the database
    transaction commits: a visit is done only once its Store has committed.
    Storing a visit again leaves the same rows.
    """

    ConfigClass = StoreConfig

    def setup(self, ctx: RankContext) -> None:
        self._checkpointer = None
        if ctx.rank == 0:
            avro_warm_up()  # load the compiled encoder now, not on the first visit
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="alerts")
            engine = state_of(ctx).engine
            path = db.sqlite_file(engine)
            if path is not None:
                self._checkpointer = WalCheckpointer(path)
                self._checkpointer.attach(engine)

    def shutdown(self, ctx: RankContext) -> None:
        if ctx.rank == 0:
            self._pool.shutdown()
            if self._checkpointer is not None:
                self._checkpointer.close()

    def preprocess(self, ctx: MasterContext) -> Any:
        st = state_of(ctx)
        out_dir = Path(ctx.run_dir) / self.config.alerts_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"visit_{ctx.key}.avro"
        if ctx.clipboard["stored"]:
            with st.engine.connect() as conn:
                row = conn.execute(select(db.visits).where(db.visits.c.visit == ctx.key)).one()
            counts = (row.n_alerts, row.n_sources, row.n_new_objects, row.n_moving)
        else:
            sources = ctx.clipboard["sources"]
            # one packet per DIASource still in alerting; alertId is its diaSourceId
            alerting = sources[sources["ssObjectId"] == 0]
            # The alert file is written beside the database transaction, which
            # commits only once the file is complete.
            writing = self._pool.submit(
                write_visit_alerts,
                path,
                alerting,
                ctx.clipboard["objects"],
                ctx.clipboard["recent"],
            )
            n_alerts = len(alerting)
            ss_ids, src_ids = ctx.clipboard["moving"]
            nv = ctx.events[NEXT_VISIT].body
            record = VisitRecord(
                visit=ctx.key,
                mjd=float(nv["mjd"]),
                ra=float(nv["ra"]),
                dec=float(nv["dec"]),
                filter=str(nv["filter"]),
                n_sources=len(sources),
                n_alerts=n_alerts,
                n_new_objects=ctx.clipboard["n_new"],
                n_moving=len(src_ids),
            )
            store_visit(
                st.engine,
                record,
                sources,
                ctx.clipboard["objects"],
                moving=(np.full(len(src_ids), ctx.key), ss_ids, src_ids),
                alerts=(alerting["diaSourceId"], alerting["diaSourceId"], alerting["diaObjectId"]),
                before_commit=writing.result,
            )
            counts = (n_alerts, len(sources), ctx.clipboard["n_new"], len(src_ids))
        ctx.emit(
            ALERTS_READY,
            {
                "path": str(path),
                "n_alerts": counts[0],
                "n_sources": counts[1],
                "n_new_objects": counts[2],
                "n_moving": counts[3],
            },
        )
        ctx.clipboard["counts"] = dict(
            zip(("alerts", "sources", "new_objects", "moving"), counts, strict=True)
        )
        if ctx.clipboard["stored"]:
            return None
        objects = ctx.clipboard["objects"]
        return {name: objects[name] for name in (*MATCH_COLUMNS, "fine")}

    def process(self, ctx: ExecutionContext, payload: Any) -> None:
        """Keep each Slice's cached margin strips equal to the stored Objects."""
        if payload is None:
            return
        st = state_of(ctx)
        try:
            st.strips.patch(st.partition.chunk_of_fine(payload["fine"]), payload["fine"], payload)
        except Exception:
            # The visit is stored: a strip that cannot be kept current goes.
            ctx.log.exception("fov %s: margin strips could not be updated; dropped", ctx.key)
            st.strips.clear()
