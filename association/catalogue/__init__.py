"""The in-memory catalogue of a Slice: chunks, the id lookup, transactions, strips."""

from association.catalogue.catalogue import Catalogue, CatalogueConfig
from association.catalogue.chunk import Chunk
from association.catalogue.stats import warm_up
from association.catalogue.transaction import ChunkConflict, Transaction

__all__ = ["Catalogue", "CatalogueConfig", "Chunk", "ChunkConflict", "Transaction", "warm_up"]
