"""The storage in PostgreSQL: `PostgresStorage`, binary COPY in and out (`copy`)."""

from association.storage.postgres.storage import PostgresStorage

__all__ = ["PostgresStorage"]
