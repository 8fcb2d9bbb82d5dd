"""The association pipeline's own hooks: its settings, its state per rank and per visit."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numba

from association.catalogue import Catalogue, CatalogueConfig, warm_up
from association.catalogue.variability import VariabilityConfig
from association.inputs.roots import DataRoots
from association.sky.partition import Partition
from association.stages.rank import AssociationState
from association.stages.store import passing
from association.stages.visit import MasterVisit, SliceVisit
from association.storage import warm_up_reads
from association.warmup import ensure_compiled
from events.types import ASSOCIATION_SPECS
from framework.hooks import PipelineHooks
from framework.stage import RankContext


@dataclass(frozen=True)
class AssociationSettings:
    """Settings of the catalogue and the database, for the whole pipeline (``[settings]``).

    Parameters
    ----------
    db_url : str
        SQLAlchemy URL; empty for SQLite in the run directory.
    chunk_order, fine_order : int
        HEALPix orders of the chunks and of the fine index. Frozen into the
        database when it is made.
    margin_arcsec : float
        Read-only margin around a Slice's chunks; wider than any match radius.
    catalogue_mb : float
        Memory budget of each Slice's catalogue (least recently used chunks go).
    recent_per_object : int
        Recent DIASources kept per Object, at most (the latest).
    recent_days : float
        The recent history is a time window: a visit sees the DIASources of
        the last `recent_days` before it (Rubin keeps 12 months), of them at
        most `recent_per_object` per Object, in its cross-match's Objects'
        history and its alerts' ``prvDiaSources``. Older ones leave memory
        and the per-visit reads, not the database.
    variable_min_detections, variable_min_span_days, variable_min_significance
        When an Object's flux history makes it variable: in some band at
        least this many DIASources, spanning (first to last) at least this
        many days, whose fluxes' chi^2 about their weighted mean is at least
        this many sigmas significant (`association.catalogue.variability`).
    alerts_dir : str
        Where alert files go, relative to the run directory.
    write_retry_s : float
        How long a visit's database write is retried when it fails for a
        passing reason (the server restarting, a lock, a full disk).
    data_roots : tuple of str
        The directories the events' input files may lie in (symlinks
        resolved); empty: the directory the pipeline was started in, and the
        run directory.
    """

    db_url: str = ""
    chunk_order: int = 6
    fine_order: int = 20
    margin_arcsec: float = 30.0
    catalogue_mb: float = 4096.0
    recent_per_object: int = 10
    recent_days: float = 365.0
    variable_min_detections: int = 3
    variable_min_span_days: float = 1.0 / 24.0
    variable_min_significance: float = 5.0
    alerts_dir: str = "alerts"
    write_retry_s: float = 600.0
    data_roots: tuple[str, ...] = ()

    def alerts_path(self, run_dir: Path, visit: int) -> Path:
        """The alert file of a visit."""
        return Path(run_dir) / self.alerts_dir / f"visit_{visit}.avro"


class AssociationPipeline(PipelineHooks):
    """Makes each rank's state: partition and database; on a Slice, its catalogue."""

    ConfigClass = AssociationSettings
    event_types = ASSOCIATION_SPECS

    def setup(self, ctx: RankContext) -> AssociationState:
        s: AssociationSettings = self.settings
        # One rank compiles a stale kernel cache while the others wait for it.
        ensure_compiled(ctx.log.info)
        st = AssociationState(
            Partition(s.chunk_order, s.fine_order),
            s.db_url or None,
            Path(ctx.run_dir),
            s.margin_arcsec / 3600.0,
            DataRoots(s.data_roots or (Path.cwd(), ctx.run_dir)),
        )
        if ctx.rank == 0:
            st.create_schema()
            # The master's kernels run on one visit's rows, too few to be worth
            # a second thread on cores the Slices and the writer share.
            numba.set_num_threads(1)
        else:
            variability = VariabilityConfig(
                s.variable_min_detections, s.variable_min_span_days, s.variable_min_significance
            )
            config = CatalogueConfig(
                s.catalogue_mb,
                s.recent_per_object,
                recent_days=s.recent_days,
                variability=variability,
            )
            st.catalogue = Catalogue(config, 2 * (s.fine_order - s.chunk_order))
            # The Slices share the cores: each runs its compiled kernels on its share.
            numba.set_num_threads(max(1, (os.cpu_count() or 1) // ctx.n_slices))
            warm_up()
            warm_up_reads()  # the first visit's loads do not wait for their kernels
        return st

    def execution_state(self, ctx: RankContext, key: int) -> MasterVisit | SliceVisit:
        return MasterVisit() if ctx.rank == 0 else SliceVisit()

    def shutdown(self, ctx: RankContext) -> None:
        ctx.shared.close()

    def retriable(self, exc: BaseException) -> bool:
        return passing(exc)
