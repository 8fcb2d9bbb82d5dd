"""`PostgresStorage`: PostgreSQL through psycopg, rows in and out by binary COPY."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sqlalchemy import Connection

from association.storage.postgres import copy
from association.storage.sql import Insert, SqlStorage, chunks


class PostgresStorage(SqlStorage):
    """The storage in PostgreSQL (a ``postgresql+psycopg://`` URL).

    Reads come as binary COPY output parsed into columns by a compiled loop;
    bulk loads go in as binary COPY input laid out by numpy. The Store is
    `SqlStorage`'s. Parameters as `SqlStorage`.
    """

    def _fetch_columns(
        self, sql: str, params: Sequence[int | float], kinds: dict[str, str], presize: bool
    ) -> dict[str, np.ndarray]:
        raw = self.engine.raw_connection()
        try:
            return copy.fetch_columns(raw.driver_connection, sql, params, kinds)
        finally:
            raw.close()

    def _bulk(self, ins: Insert, chunk: int) -> None:
        super()._bulk(ins, chunk)
        # Planner statistics now, not when autovacuum comes round: without them the
        # first visits' reads of a freshly loaded table are planned blind.
        with self.engine.begin() as conn:
            conn.exec_driver_sql(f"ANALYZE {self._quote(ins.table.name)}")

    def _insert_bulk(self, conn: Connection, ins: Insert, chunk: int) -> None:
        copy.copy_in(
            conn.connection.driver_connection,
            ins.table,
            ins.columns,
            chunks(ins, chunk),
            ins.texts,
            self._quote,
        )
