"""The association pipeline's state on one rank, kept for the whole night."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from association.catalogue.memory import Catalogue, CatalogueConfig
from association.catalogue.strips import StripCache
from association.sky.partition import Partition
from association.storage import FrozenParameters, Storage, open_storage

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
    _storage: Storage | None = field(default=None, repr=False)

    @property
    def storage(self) -> Storage:
        """The database, opened on first use; made with this partition, else an error."""
        if self._storage is None:
            self._storage = open_storage(self.db_url, self.run_dir, self._frozen())
        return self._storage

    def create_schema(self) -> None:
        """Open the database, creating it with this partition if this is the first run."""
        self.close()
        self._storage = open_storage(self.db_url, self.run_dir, self._frozen(), create=True)

    def _frozen(self) -> FrozenParameters:
        return FrozenParameters(self.partition.chunk_order, self.partition.fine_order)

    def close(self) -> None:
        """Finish what is being stored and release the database."""
        if self._storage is not None:
            self._storage.close()
            self._storage = None


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
