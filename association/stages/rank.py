"""The association pipeline's state on one rank, kept for the whole night."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import Engine

from association.catalogue import Catalogue
from association.catalogue.strips import StripCache
from association.inputs.roots import DataRoots
from association.sky.partition import Partition
from association.storage.tables import create_schema, make_engine


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
    behind: int | None = None
    """On the master: the first visit decided but not written; no later one is written."""
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
