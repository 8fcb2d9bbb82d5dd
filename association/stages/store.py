"""Store: the visit's rows in one transaction, its alerts in one Avro file."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from association.alerts.avro import warm_up as avro_warm_up
from association.alerts.packets import write_visit_alerts
from association.stages.load import MATCH_COLUMNS
from association.stages.rank import state_of
from association.storage import VisitRecord
from events.types import ALERTS_READY, NEXT_VISIT
from framework.stage import ExecutionContext, Later, MasterContext, RankContext, Stage


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
        if ctx.rank == 0:
            avro_warm_up()  # load the compiled encoder now, not on the first visit
            self._alerts = ThreadPoolExecutor(1, thread_name_prefix="alerts")
            # One writer thread: visits commit one at a time, in the order they got here.
            self._db = ThreadPoolExecutor(1, thread_name_prefix="store")

    def shutdown(self, ctx: RankContext) -> None:
        if ctx.rank == 0:
            self._db.shutdown()
            self._alerts.shutdown()

    def preprocess(self, ctx: MasterContext) -> Any:
        out_dir = Path(ctx.run_dir) / self.config.alerts_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"visit_{ctx.key}.avro"
        ctx.clipboard["alerts_path"] = str(path)
        if ctx.clipboard["stored"]:
            row = state_of(ctx).storage.visit_record(ctx.key)
            assert row is not None
            ctx.clipboard["counts"] = _counts(
                row.n_alerts, row.n_sources, row.n_new_objects, row.n_moving
            )
            return None
        sources = ctx.clipboard["sources"]
        # one packet per DIASource still in alerting; alertId is its diaSourceId
        alerting = sources[sources["ssObjectId"] == 0]
        ss_ids, src_ids = ctx.clipboard["moving"]
        nv = ctx.events[NEXT_VISIT].body
        record = VisitRecord(
            visit=ctx.key,
            mjd=float(nv["mjd"]),
            ra=float(nv["ra"]),
            dec=float(nv["dec"]),
            filter=str(nv["filter"]),
            n_sources=len(sources),
            n_alerts=len(alerting),
            n_new_objects=ctx.clipboard["n_new"],
            n_moving=len(src_ids),
        )
        ctx.clipboard["counts"] = _counts(
            len(alerting), len(sources), ctx.clipboard["n_new"], len(src_ids)
        )
        objects = ctx.clipboard["objects"]
        storage = state_of(ctx).storage

        def store() -> dict[str, np.ndarray]:
            # The alert file is written beside the database transaction, which
            # commits only once the file is complete.
            writing = self._alerts.submit(
                write_visit_alerts, path, alerting, objects, ctx.clipboard["recent"]
            )
            storage.store_visit(
                record,
                sources,
                objects,
                moving=(np.full(len(src_ids), ctx.key), ss_ids, src_ids),
                alerts=(alerting["diaSourceId"], alerting["diaSourceId"], alerting["diaObjectId"]),
                before_commit=writing.result,
            )
            return {name: objects[name] for name in (*MATCH_COLUMNS, "fine")}

        # The master goes on with other visits while this one is written.
        return Later(self._db.submit(store))

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

    def postprocess(self, ctx: MasterContext, results: list[None]) -> None:
        ctx.emit(ALERTS_READY, {"path": ctx.clipboard["alerts_path"], **ctx.clipboard["counts"]})


def _counts(alerts: int, sources: int, new_objects: int, moving: int) -> dict[str, int]:
    return {
        "n_alerts": alerts,
        "n_sources": sources,
        "n_new_objects": new_objects,
        "n_moving": moving,
    }
