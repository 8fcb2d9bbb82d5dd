"""Store: the visit's alerts out (file, Kafka stream) and its rows in one transaction."""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict

import numpy as np

from association.alerts.kafka import delivery_passing
from association.alerts.output import AlertOutputConfig, VisitAlertOutput, VisitAlerts
from association.alerts.rubin import MovingMatches as PredictedMatches
from association.stages.rank import AssociationState
from association.stages.visit import MasterVisit, VisitCounts
from association.storage import VisitRecord
from association.storage.errors import DatabaseBehind, is_retriable
from events.types import ALERTS_READY, NEXT_VISIT
from framework.retry import Backoff, retrying
from framework.stage import ExecutionContext, Later, MasterContext, RankContext, Stage


def passing(error: BaseException) -> bool:
    """Whether a Store failure is passing: a database fault, or the alert broker down or slow."""
    return is_retriable(error) or delivery_passing(error)


class StoreStage(Stage):
    """Sends the visit's alerts and writes the visit in one transaction; then ``alerts_ready``.

    The write comes after the ordered section: the visit's results were
    decided there, and later visits may already build on them. One writer
    thread writes visits in the order they were decided, so the database is
    always a prefix of them. Its config is `AlertOutputConfig`: where the
    alerts go (a file per visit under our schema or Rubin's, a Kafka stream).

    The alerts go out beside the database transaction (in a thread of their
    own), and the transaction commits only once they are out: the file
    written, every message acknowledged by the broker. A visit is done only
    once its Store has committed. So a kill -9 at any point loses no alert:
    a visit whose commit did not happen is redone by the next run, from the
    journal, and sends its alerts again with the same keys (at-least-once);
    a committed visit's alerts were all acknowledged before. The ``alerts``
    table holds the DIASources that alert (`VisitAlertOutput.alerting`), so
    the topic, without duplicates, equals the table.

    A write that fails for a passing reason (the database restarting, a
    lock, a full disk, the broker down or slow) is retried with back-off for
    ``[settings] write_retry_s`` seconds; alerts the broker has acknowledged
    are not sent again by a retry in the same run. If it still fails, the
    database is behind the catalogue in memory: later writes are refused,
    the pipeline stops, and the next run redoes every visit not written,
    from the journal, in the same order.
    """

    ConfigClass = AlertOutputConfig

    def setup(self, ctx: RankContext) -> None:
        self._output: VisitAlertOutput | None = None
        if ctx.rank == 0:
            self._output = VisitAlertOutput(self.config)
            self._output.warm_up()  # the compiled encoders now, not on the first visit
            self._alerts = ThreadPoolExecutor(1, thread_name_prefix="alerts")
            # One writer thread: visits commit one at a time, in the order they got here.
            self._db = ThreadPoolExecutor(1, thread_name_prefix="store")
            self._backoff = Backoff(ctx.settings.write_retry_s)

    def shutdown(self, ctx: RankContext) -> None:
        if ctx.rank == 0:
            self._db.shutdown()
            self._alerts.shutdown()
            if self._output is not None:
                self._output.close()

    def preprocess(self, ctx: MasterContext) -> Later:
        st: AssociationState = ctx.shared
        visit: MasterVisit = ctx.state
        output = self._output
        assert output is not None
        directory = ctx.settings.alerts_path(ctx.run_dir, ctx.key).parent
        if output.config.file_format != "none":
            directory.mkdir(parents=True, exist_ok=True)
        sources = visit.sources
        alerting = sources[output.alerting(sources)]
        moving = visit.moving
        if output.encoder is not None and len(moving.predictions) != len(moving):
            raise RuntimeError(
                f"fov {ctx.key}: {len(moving)} moving-object matches but "
                f"{len(moving.predictions)} prediction rows; the moving stage must keep them"
            )
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
        exposure = nv.get("exposure_time")
        sent: list[VisitAlerts] = []

        def send() -> VisitAlerts:
            # A retry after a database fault does not send acknowledged alerts again.
            if not sent:
                sent.append(
                    output.publish(
                        ctx.key,
                        directory,
                        sources,
                        objects,
                        recent,
                        PredictedMatches(moving.diaSourceId, moving.predictions),
                        exposure_time=None if exposure is None else float(exposure),
                    )
                )
            return sent[0]

        def write() -> None:
            sending: Future[VisitAlerts] = self._alerts.submit(send)
            t0 = time.perf_counter()
            st.storage.store_visit(
                record,
                sources,
                objects,
                moving=(
                    np.full(len(moving), ctx.key),
                    moving.ssObjectId,
                    moving.diaSourceId,
                ),
                alerts=(alerting["diaSourceId"], alerting["diaSourceId"], alerting["diaObjectId"]),
                before_commit=sending.result,  # commit only once every alert is out
            )
            done = sending.result()
            visit.alerts_path = done.path or ""
            visit.alerts_stream = {} if done.stream is None else done.stream.event_fields()
            visit.write_s = time.perf_counter() - t0  # the transaction, to commit
            ctx.board.observe("db_write", visit.write_s)

        def retry(attempt: int, delay: float, exc: BaseException) -> None:
            ctx.log.warning(
                "fov %s: store failed (%s); retry %d in %.1f s", ctx.key, exc, attempt, delay
            )

        def store() -> None:
            if st.behind is not None:
                raise DatabaseBehind(
                    f"not written: visit {st.behind}, decided before it, could not be "
                    "written; the next run redoes both from the journal"
                )
            retrying(write, passing, self._backoff, retry)

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
        body = {"path": visit.alerts_path, **visit.alerts_stream, **asdict(c)}
        ctx.emit(ALERTS_READY, body | {"write_s": round(visit.write_s, 6)})
        for name, n in (
            ("diasources", c.n_sources),
            ("alerts", c.n_alerts),
            ("new_objects", c.n_new_objects),
            ("updated_objects", len(visit.objects) - c.n_new_objects),
            ("moving_matches", c.n_moving),
        ):
            ctx.count(name, n)
