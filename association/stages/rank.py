"""The association pipeline's state on one rank, kept for the whole night."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from association.catalogue import Catalogue, CatalogueConfig
from association.catalogue.strips import StripCache
from association.sky.partition import Partition
from association.storage.tables import create_schema, make_engine

KEY = "association"


@dataclass
class AssociationState:
    """Partition, database and (on Slices) the in-memory catalogue of one rank."""

    partition: Partition
    db_url: str | None
    run_dir: Path
    margin_deg: float
    catalogue: Catalogue | None = None
    strips: StripCache = field(default_factory=StripCache)
    _engine: Engine | None = field(default=None, repr=False)

    @property
    def engine(self) -> Engine:
        """The database engine, made on first use."""
        if self._engine is None:
            self._engine = make_engine(self.db_url, self.run_dir)
        return self._engine

    def create_schema(self) -> None:
        """Create the tables if this is the first run on the database."""
        create_schema(self.engine)

    def close(self) -> None:
        """Release the database connections."""
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


def state_of(ctx: Any) -> AssociationState:
    """The rank's state, set up by the load stage."""
    try:
        return ctx.shared[KEY]
    except KeyError:
        raise RuntimeError(
            "no association state on this rank: the 'load' stage "
            "(association.stages.load:LoadStage) must be in the pipeline, first"
        ) from None


def new_state(
    ctx: Any,
    *,
    db_url: str,
    chunk_order: int,
    fine_order: int,
    margin_deg: float,
    catalogue: CatalogueConfig | None,
) -> AssociationState:
    """Make the rank's state and keep it in ``ctx.shared``."""
    part = Partition(chunk_order, fine_order)
    st = AssociationState(part, db_url or None, Path(ctx.run_dir), margin_deg)
    if catalogue is not None:
        st.catalogue = Catalogue(catalogue, 2 * (fine_order - chunk_order))
    ctx.shared[KEY] = st
    return st
