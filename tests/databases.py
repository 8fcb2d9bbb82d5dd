"""Helpers for tests on databases: the frozen parameters they use, every row of a database."""

from __future__ import annotations

from sqlalchemy import Double, Engine

from association.storage import FrozenParameters
from association.storage.tables import metadata

PARAMS = FrozenParameters(chunk_order=6, fine_order=20)
"""The partition of the tests' databases (the pipeline's default)."""

VOLATILE_COLUMNS = {"visits": ("stored_at",), "notes": ("value",)}
"""Columns that differ between two runs doing the same work; `table_rows` skips them.

A note's value may say when and from where (a catalogue loaded, the
preload's archive path); its name is compared.
"""


def table_rows(engine: Engine, *, volatile: bool = False) -> dict[str, set[tuple]]:
    """Every table's rows as a set of tuples, NaN as None, to compare databases.

    Columns in `VOLATILE_COLUMNS` (the store time, notes' values) are left out unless
    ``volatile``.
    """
    out = {}
    pg = engine.dialect.name == "postgresql"
    quote = engine.dialect.identifier_preparer.quote
    with engine.connect() as conn:
        cur = conn.connection.driver_connection.cursor()
        try:
            for table in metadata.sorted_tables:
                skip = () if volatile else VOLATILE_COLUMNS.get(table.name, ())
                names = []
                for c in table.columns:
                    if c.name in skip:
                        continue
                    name = quote(c.name)
                    # NaN as NULL; PostgreSQL, unlike Python, has NaN = NaN
                    nan = pg and isinstance(c.type, Double)
                    names.append(f"NULLIF({name}, 'NaN'::float8)" if nan else name)
                # plain driver tuples: a SQLAlchemy Row per row costs more than the query
                cur.execute(f"SELECT {', '.join(names)} FROM {table.name}")
                out[table.name] = set(cur.fetchall())
        finally:
            cur.close()
    return out
