"""The database: SQLAlchemy Core tables, the engine, and the schema version.

SQLite (one WAL file in the run directory) is the default; PostgreSQL is given
as a ``postgresql+psycopg://`` URL. Both get the same tables.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sqlite3
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

from association.schema import BANDS

SCHEMA_VERSION = 1
"""The version of the tables below; stored in ``schema_version``."""

SQLITE_NAME = "nightpipe.sqlite"
SQLITE_CACHE_KIB = 65536  # page cache of each SQLite connection

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
    engine = create_engine(url, connect_args={"isolation_level": None, "timeout": 60})

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
#
# Python's sqlite3 module makes a Python object of every value, about 7 s for
# the 2 million Objects of a field. For SQLite files the rows are read instead
# by a numba loop over the C API of the very libsqlite3 that the sqlite3 module
# has loaded (a second copy of SQLite in one process would break its locks).

_SQLITE_ROW = 100
_SQLITE_DONE = 101
_SQLITE_NULL = 5
_SQLITE_OPEN_READWRITE = 0x2

# Bound to numba external functions by `_native_reader`, before compiling.
_sqlite3_step = None
_sqlite3_column_type = None
_sqlite3_column_int64 = None
_sqlite3_column_double = None


_KINDS = ("i8", "i4", "i2", "i1", "f8", "f4")
"""Column kinds `fetch_columns` returns; the kernel knows them by position."""


def _step_rows(stmt, code, slot, i8, i4, i2, i1, f8, f4, start):  # pragma: no cover - numba
    """Step ``stmt``, filling rows ``start``.. of the outputs; return (rows, last rc).

    Column ``c`` goes to row ``slot[c]`` of the output of its kind ``code[c]``
    (an index into `_KINDS`). NULL floats become NaN.
    """
    n = start
    cap = i8.shape[1]
    while n < cap:
        rc = _sqlite3_step(stmt)
        if rc != _SQLITE_ROW:
            return n, rc
        for c in range(code.shape[0]):
            k, s = code[c], slot[c]
            if k == 0:
                i8[s, n] = _sqlite3_column_int64(stmt, c)
            elif k == 1:
                i4[s, n] = _sqlite3_column_int64(stmt, c)
            elif k == 2:
                i2[s, n] = _sqlite3_column_int64(stmt, c)
            elif k == 3:
                i1[s, n] = _sqlite3_column_int64(stmt, c)
            else:
                if _sqlite3_column_type(stmt, c) == _SQLITE_NULL:
                    v = np.nan
                else:
                    v = _sqlite3_column_double(stmt, c)
                if k == 4:
                    f8[s, n] = v
                else:
                    f4[s, n] = v
        n += 1
    return n, _SQLITE_ROW


class _NativeReader:
    """Runs a SELECT on a SQLite file through the C API and a numba loop."""

    def __init__(self, lib: ctypes.CDLL, kernel) -> None:
        self.lib = lib
        self.kernel = kernel
        p = ctypes.c_void_p
        lib.sqlite3_open_v2.argtypes = [ctypes.c_char_p, ctypes.POINTER(p), ctypes.c_int, p]
        lib.sqlite3_busy_timeout.argtypes = [p, ctypes.c_int]
        lib.sqlite3_prepare_v2.argtypes = [p, ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(p), p]
        lib.sqlite3_bind_int64.argtypes = [p, ctypes.c_int, ctypes.c_int64]
        lib.sqlite3_bind_double.argtypes = [p, ctypes.c_int, ctypes.c_double]
        lib.sqlite3_column_count.argtypes = [p]
        lib.sqlite3_errmsg.argtypes = [p]
        lib.sqlite3_errmsg.restype = ctypes.c_char_p
        lib.sqlite3_finalize.argtypes = [p]
        lib.sqlite3_close_v2.argtypes = [p]

    def fetch(
        self,
        path: str,
        sql: str,
        params: Sequence[int | float],
        kinds: dict[str, str],
        presize: bool,
    ) -> dict[str, np.ndarray]:
        lib = self.lib
        db = ctypes.c_void_p()
        try:
            rc = lib.sqlite3_open_v2(path.encode(), ctypes.byref(db), _SQLITE_OPEN_READWRITE, None)
            self._check(rc, db, path)
            lib.sqlite3_busy_timeout(db, 60_000)
            n = 1 << 16
            if presize:
                # One read transaction: the count and the rows see the same snapshot.
                self._run(db, path, "BEGIN", ())
                (count,) = self._run(db, path, f"SELECT count(*) FROM ({sql})", params, ["i8"])
                n = int(count[0])
            cols = self._run(db, path, sql, params, list(kinds.values()), n)
            return dict(zip(kinds, cols, strict=True))
        finally:
            lib.sqlite3_close_v2(db)  # also ends the read transaction

    def _run(
        self, db, path: str, sql: str, params: Sequence, kinds: Sequence[str] = (), n: int = 0
    ) -> list[np.ndarray]:
        """Run ``sql``; return its columns, of ``kinds``, room made for ``n`` rows."""
        lib = self.lib
        stmt = ctypes.c_void_p()
        try:
            rc = lib.sqlite3_prepare_v2(db, sql.encode(), -1, ctypes.byref(stmt), None)
            self._check(rc, db, path)
            if lib.sqlite3_column_count(stmt) != len(kinds):
                raise ValueError(
                    f"query returns {lib.sqlite3_column_count(stmt)} columns, "
                    f"expected {len(kinds)}: {sql}"
                )
            for i, value in enumerate(params, start=1):
                if isinstance(value, float):
                    rc = lib.sqlite3_bind_double(stmt, i, value)
                else:
                    rc = lib.sqlite3_bind_int64(stmt, i, int(value))
                self._check(rc, db, path)
            return self._step_all(stmt, db, path, kinds, n)
        finally:
            lib.sqlite3_finalize(stmt)

    def _step_all(self, stmt, db, path: str, kinds: Sequence[str], n_expected: int):
        code = np.array([_KINDS.index(k) for k in kinds], dtype=np.int64)
        slot = np.zeros(len(kinds), dtype=np.int64)
        for k in range(len(_KINDS)):
            slot[code == k] = np.arange((code == k).sum())
        cap, n = n_expected + 1, 0  # room to see the end without growing
        outs = [np.empty(((code == k).sum(), cap), dtype=t) for k, t in enumerate(_KINDS)]
        while True:
            n, rc = self.kernel(stmt.value, code, slot, *outs, n)
            if rc == _SQLITE_DONE:
                break
            if rc != _SQLITE_ROW:
                self._check(rc, db, path)
            cap = 2 * cap + 1024
            outs = [_grow(out, n, cap) for out in outs]
        return [outs[k][s, :n] for k, s in zip(code, slot, strict=True)]

    def _check(self, rc: int, db, path: str) -> None:
        if rc != 0:
            msg = self.lib.sqlite3_errmsg(db).decode(errors="replace")
            raise sqlite3.OperationalError(f"{path}: {msg} (SQLite code {rc})")


def _grow(a: np.ndarray, n: int, cap: int) -> np.ndarray:
    out = np.empty((a.shape[0], cap), dtype=a.dtype)
    out[:, :n] = a[:, :n]
    return out


@functools.cache
def _native_reader() -> _NativeReader | None:
    """The native reader, or None where it cannot share the sqlite3 module's library."""
    maps = Path("/proc/self/maps")
    if not maps.exists():
        return None
    paths = {
        line.split()[-1]
        for line in maps.read_text().splitlines()
        if "/libsqlite3" in line and line.split()[-1].startswith("/")
    }
    if len(paths) != 1:
        return None  # statically linked into Python, or two copies already
    path = paths.pop()
    try:
        lib = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_GLOBAL)
        lib.sqlite3_libversion.restype = ctypes.c_char_p
        if lib.sqlite3_libversion().decode() != sqlite3.sqlite_version:
            return None
        import llvmlite.binding as llvm
        from numba import njit, types

        llvm.load_library_permanently(path)
    except (OSError, ImportError, AttributeError):
        return None
    global _sqlite3_step, _sqlite3_column_type, _sqlite3_column_int64, _sqlite3_column_double
    ext, i32, ptr = types.ExternalFunction, types.int32, types.intp
    _sqlite3_step = ext("sqlite3_step", i32(ptr))
    _sqlite3_column_type = ext("sqlite3_column_type", i32(ptr, i32))
    _sqlite3_column_int64 = ext("sqlite3_column_int64", types.int64(ptr, i32))
    _sqlite3_column_double = ext("sqlite3_column_double", types.float64(ptr, i32))
    return _NativeReader(lib, njit(cache=True, nogil=True)(_step_rows))


def _sqlite_file(engine: Engine) -> str | None:
    """The database file of a SQLite engine; None for other engines and memory."""
    if engine.dialect.name != "sqlite":
        return None
    name = engine.url.database
    if not name or name == ":memory:" or name.startswith("file:") or not Path(name).is_file():
        return None
    return str(Path(name).resolve())


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
        Read SQLite files through the C API (fast); False forces the
        database driver's cursor, as for every other database.
    presize : bool
        Natively, count the rows first to fill the columns without regrowing
        them; worth it unless the query is much dearer than a range scan.

    Returns
    -------
    dict of str to ndarray
    """
    kinds = {name: {"i": "i8", "f": "f8"}.get(k, k) for name, k in kinds.items()}
    unknown = set(kinds.values()) - set(_KINDS)
    if unknown:
        raise ValueError(f"column kinds {sorted(unknown)} not among {_KINDS}")
    path = _sqlite_file(engine) if native else None
    reader = _native_reader() if path else None
    if reader is not None:
        return reader.fetch(path, sql, params, kinds, presize)
    if engine.dialect.paramstyle != "qmark":
        sql = sql.replace("?", "%s")
    dtype = np.dtype(list(kinds.items()))
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute(sql, tuple(params))
        rows = np.fromiter(cur, dtype=dtype)
        cur.close()
    finally:
        raw.close()
    return {name: rows[name] for name in kinds}
