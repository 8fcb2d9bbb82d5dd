"""The association pipeline's state on one rank, kept for the whole night."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from association.catalogue import Catalogue
from association.catalogue.strips import StripCache
from association.inputs.roots import DataRoots
from association.sky.partition import Partition
from association.storage import FrozenParameters, Storage, open_storage


@dataclass
class AssociationState:
    """Partition, database and (on Slices) the in-memory catalogue of one rank."""

    partition: Partition
    db_url: str | None
    run_dir: Path
    margin_deg: float
    roots: DataRoots
    catalogue: Catalogue | None = None
    strips: StripCache = field(default_factory=StripCache)
    loading: set[int] = field(default_factory=set)
    """On Slices: chunks a Load reads in the background, not yet in the catalogue."""
    behind: int | None = None
    """On the master: the first visit decided but not written; no later one is written."""
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
