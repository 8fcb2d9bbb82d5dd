"""The storage in a SQLite file: `SqliteStorage`, through the C API (`native`, `kernels`)."""

from association.storage.sqlite.storage import SqliteStorage

__all__ = ["SqliteStorage"]
