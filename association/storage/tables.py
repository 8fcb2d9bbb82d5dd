"""The database: SQLAlchemy Core tables, the engine, and the schema version.

SQLite (one WAL file in the run directory) is the default; PostgreSQL is given
as a ``postgresql+psycopg://`` URL. Both get the same tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Double,
    Engine,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    create_engine,
    event,
    func,
    inspect,
    select,
)

from association.columns import BANDS
from association.storage.postgres import copy as pg_copy
from association.storage.sqlite import native as sqlite_native

SCHEMA_VERSION = 1
"""The version of the tables below; stored in ``schema_version``."""

SQLITE_NAME = "nightpipe.sqlite"
SQLITE_CACHE_KIB = 65536  # page cache of each SQLite connection
SQLITE_MMAP_MIB = 2047  # how much of the file a native read maps into memory (SQLite's cap)

# On SQLite an INTEGER PRIMARY KEY is the rowid itself: no second index.
_Id = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData()

schema_version = Table(
    "schema_version",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
)

visits = Table(
    "visits",
    metadata,
    Column("visit", _Id, primary_key=True, autoincrement=False),
    Column("mjd", Double, nullable=False),
    Column("ra", Double, nullable=False),
    Column("dec", Double, nullable=False),
    Column("filter", String(16), nullable=False),
    Column("n_sources", Integer, nullable=False),
    Column("n_alerts", Integer, nullable=False),
    Column("n_new_objects", Integer, nullable=False),
    Column("n_moving", Integer, nullable=False),
    Column("stored_at", Double, nullable=False),  # Unix time of the Store
)

OBJECT_BAND_COLUMNS = tuple(
    f"{b}_{name}" for b in BANDS for name in ("psfFluxNdata", "psfFluxMean", "psfFluxM2")
)

objects = Table(
    "objects",
    metadata,
    Column("diaObjectId", BigInteger, nullable=False),
    Column("fine", BigInteger, nullable=False),
    Column("ra", Double, nullable=False),
    Column("dec", Double, nullable=False),
    Column("nDiaSources", Integer, nullable=False),
    Column("firstMjd", Double, nullable=False),
    Column("lastMjd", Double, nullable=False),
    # Band statistics are NULL where the value is NaN (a band with no data).
    *(
        Column(name, SmallInteger, nullable=False)
        if name.endswith("Ndata")
        else Column(name, Double)
        for name in OBJECT_BAND_COLUMNS
    ),
    Column("isVariable", Boolean, nullable=False),
    # Clustered by (fine, diaObjectId) so a chunk is one sequential range scan;
    # diaObjectId stays the identity through its unique index.
    PrimaryKeyConstraint("fine", "diaObjectId", name="pk_objects"),
    Index("ux_objects_diaObjectId", "diaObjectId", unique=True),
    sqlite_with_rowid=False,
)

diasources = Table(
    "diasources",
    metadata,
    Column("diaSourceId", BigInteger, nullable=False),
    Column("visit", BigInteger, nullable=False),
    Column("diaObjectId", BigInteger, nullable=False),
    Column("ssObjectId", BigInteger, nullable=False),
    Column("fine", BigInteger, nullable=False),
    Column("ra", Double, nullable=False),
    Column("dec", Double, nullable=False),
    Column("raErr", Double),
    Column("decErr", Double),
    Column("midpointMjdTai", Double, nullable=False),
    Column("band", String(1), nullable=False),
    Column("psfFlux", Double, nullable=False),
    Column("psfFluxErr", Double, nullable=False),
    Column("snr", Double),
    # Clustered by Object and time, so an Object's latest DIASources are one
    # short range; diaSourceId stays the identity through its unique index.
    PrimaryKeyConstraint("diaObjectId", "midpointMjdTai", "diaSourceId", name="pk_diasources"),
    Index("ux_diasources_diaSourceId", "diaSourceId", unique=True),
    Index("ix_diasources_visit", "visit"),
    Index("ix_diasources_fine", "fine"),
    sqlite_with_rowid=False,
)

moving_matches = Table(
    "moving_matches",
    metadata,
    Column("visit", BigInteger, nullable=False),
    Column("ssObjectId", BigInteger, nullable=False),
    Column("diaSourceId", BigInteger, nullable=False),
    PrimaryKeyConstraint("visit", "ssObjectId"),
)

alerts = Table(
    "alerts",
    metadata,
    Column("alertId", _Id, primary_key=True, autoincrement=False),
    Column("visit", BigInteger, nullable=False),
    Column("diaSourceId", BigInteger, nullable=False),
    Column("diaObjectId", BigInteger, nullable=False),
    Index("ix_alerts_visit", "visit"),
)


class SchemaVersionError(RuntimeError):
    """The database holds tables of a schema version this code cannot use."""


def default_url(run_dir: str | Path) -> str:
    """The SQLite URL of the run directory's database file."""
    return f"sqlite:///{Path(run_dir).resolve() / SQLITE_NAME}"


def make_engine(url: str | None, run_dir: str | Path) -> Engine:
    """Create the engine for ``url``, or for the run directory's SQLite file.

    Parameters
    ----------
    url : str or None
        A SQLAlchemy URL (``sqlite:///...``, ``postgresql+psycopg://...``);
        None for ``RUN_DIR/nightpipe.sqlite``.
    run_dir : str or Path
        The run directory; created if missing when the default is used.

    Returns
    -------
    Engine
        SQLite engines run in WAL mode with ``synchronous=NORMAL``, and open a
        real transaction (``BEGIN``) on ``engine.begin()``.
    """
    if url is None:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        url = default_url(run_dir)
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    # The driver's own implicit transactions are switched off; the "begin"
    # listener issues BEGIN itself so a Store is one real transaction.
    # A pooled connection may be used by another thread than the one that opened
    # it (the Store's writer thread); the pool hands it to one at a time.
    engine = create_engine(
        url, connect_args={"isolation_level": None, "timeout": 60, "check_same_thread": False}
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:
        conn.exec_driver_sql("BEGIN")

    return engine


def create_schema(engine: Engine) -> None:
    """Create the tables if missing and record the schema version.

    Idempotent. Raises `SchemaVersionError`, before touching anything, when
    the database was made by a different schema version.
    """
    if inspect(engine).has_table(schema_version.name):
        with engine.connect() as conn:
            found = conn.execute(select(func.max(schema_version.c.version))).scalar()
        _check_version(engine, found)
    metadata.create_all(engine, checkfirst=True)
    with engine.begin() as conn:
        if conn.execute(select(func.count()).select_from(schema_version)).scalar() == 0:
            conn.execute(schema_version.insert().values(version=SCHEMA_VERSION))


def _check_version(engine: Engine, found: int | None) -> None:
    where = engine.url.render_as_string(hide_password=True)
    if found is not None and found > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"database {where} has schema version {found}, newer than this "
            f"nightpipe's {SCHEMA_VERSION}: upgrade nightpipe or use another database"
        )
    if found is not None and found < SCHEMA_VERSION:
        raise SchemaVersionError(
            f"database {where} has schema version {found}, older than this "
            f"nightpipe's {SCHEMA_VERSION}, and there is no migration: use a new database"
        )


# --- reading columns fast -------------------------------------------------

_KIND_ALIASES = {"i": "i8", "f": "f8"}


def sqlite_file(engine: Engine) -> str | None:
    """The database file of a SQLite engine; None for other engines and memory."""
    if engine.dialect.name != "sqlite":
        return None
    name = engine.url.database
    if not name or name == ":memory:" or name.startswith("file:") or not Path(name).is_file():
        return None
    return str(Path(name).resolve())


def native_sqlite_file(engine: Engine, native: bool = True) -> str | None:
    """The file of a SQLite engine when `association.storage.sqlite.native` can work on it, else None."""
    path = sqlite_file(engine) if native else None
    return path if path is not None and sqlite_native.available() else None


def fetch_columns(
    engine: Engine,
    sql: str,
    params: Sequence[int | float],
    kinds: dict[str, str],
    *,
    native: bool = True,
    presize: bool = True,
) -> dict[str, np.ndarray]:
    """Run one SELECT and return its result as numpy columns.

    Parameters
    ----------
    engine : Engine
        The database.
    sql : str
        The query, with ``?`` for each parameter; it selects ``len(kinds)``
        columns, no ``?`` or ``%`` elsewhere.
    params : sequence of int or float
        The parameters in order.
    kinds : dict
        Output name -> numpy type, in the order of the SELECT list: ``"i8"``
        (or ``"i"``), ``"i4"``, ``"i2"``, ``"i1"`` (the column must not be
        NULL), ``"f8"`` (or ``"f"``), ``"f4"`` (NULL read as NaN).
    native : bool
        Read SQLite files through the C API (`association.storage.sqlite.native`)
        and PostgreSQL through binary COPY (`association.storage.postgres.copy`), both fast;
        False forces the database driver's cursor.
    presize : bool
        Natively, count the rows first to fill the columns without regrowing
        them; worth it unless the query is much dearer than a range scan.

    Returns
    -------
    dict of str to ndarray
    """
    kinds = {name: _KIND_ALIASES.get(k, k) for name, k in kinds.items()}
    unknown = set(kinds.values()) - set(sqlite_native.KINDS)
    if unknown:
        raise ValueError(f"column kinds {sorted(unknown)} not among {sqlite_native.KINDS}")
    path = native_sqlite_file(engine, native)
    if path is not None:
        with sqlite_native.connect(path) as conn:
            expected = 1 << 16
            if presize:
                # One read transaction: the count and the rows see the same snapshot.
                conn.execute("BEGIN")
                expected = conn.count(sql, params)
            return conn.fetch(sql, params, kinds, expected=expected)
    if engine.dialect.paramstyle != "qmark":
        sql = sql.replace("?", "%s")
    raw = engine.raw_connection()
    if native and engine.dialect.driver == "psycopg":
        try:
            return pg_copy.fetch_columns(raw.driver_connection, sql, params, kinds)
        finally:
            raw.close()
    dtype = np.dtype(list(kinds.items()))
    try:
        cur = raw.cursor()
        cur.execute(sql, tuple(params))
        rows = np.fromiter(cur, dtype=dtype)
        cur.close()
    finally:
        raw.close()
    return {name: rows[name] for name in kinds}
