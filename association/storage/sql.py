"""Writing a visit's results to the database, and reading the catalogue back.

A NaN float is stored as NULL (SQLite cannot store NaN) and read back as NaN,
the same on every database.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from sqlalchemy import (
    BigInteger,
    Boolean,
    Connection,
    Double,
    Engine,
    Integer,
    SmallInteger,
    String,
    Table,
    select,
)

from association.columns import BANDS, DIASOURCE_DTYPE, OBJECT_DTYPE
from association.storage import tables as db
from association.storage.sqlite import native as sqlite_native

MOVING_DTYPE = np.dtype([("visit", "i8"), ("ssObjectId", "i8"), ("diaSourceId", "i8")])
"""A moving-object match: a predicted moving object taken for a DIASource."""

ALERT_DTYPE = np.dtype([("alertId", "i8"), ("diaSourceId", "i8"), ("diaObjectId", "i8")])
"""The record of an alert sent."""

BULK_CHUNK = 50_000
"""Rows converted at a time by the bulk loads' driver and COPY paths."""

BULK_CACHE_KIB = 262_144
"""SQLite page cache of a native bulk load, KiB."""

WRITER_CACHE_KIB = 1 << 20
"""Page cache of the Store's native SQLite writer, KiB (1 GiB)."""

VOLATILE_COLUMNS = {"visits": ("stored_at",)}
"""Columns that differ between two runs doing the same work; `table_rows` skips them."""


@dataclass
class VisitRecord:
    """The ``visits`` row of a visit."""

    visit: int
    mjd: float
    ra: float
    dec: float
    filter: str
    n_sources: int
    n_alerts: int
    n_new_objects: int
    n_moving: int


def store_visit(
    engine: Engine,
    record: VisitRecord,
    diasources: np.ndarray,
    objects: np.ndarray,
    moving: np.ndarray | Sequence[np.ndarray] | None = None,
    alerts: np.ndarray | Sequence[np.ndarray] | None = None,
    before_commit: Callable[[], None] | None = None,
    writer: sqlite_native.Connection | None = None,
) -> None:
    """Write one visit in one transaction; storing it again leaves the same rows.

    Parameters
    ----------
    engine : Engine
        The database, made by `association.storage.tables.create_schema`.
    record : VisitRecord
        The visit's row.
    diasources : ndarray of DIASOURCE_DTYPE
        The visit's DIASources; all must have ``visit == record.visit``.
    objects : ndarray of OBJECT_DTYPE
        New and updated Objects, full rows; upserted by diaObjectId.
    moving : MOVING_DTYPE array or (visit, ssObjectId, diaSourceId) arrays
        The visit's moving-object matches.
    alerts : ALERT_DTYPE array or (alertId, diaSourceId, diaObjectId) arrays
        The visit's alerts.
    before_commit : callable, optional
        Called inside the transaction, last; if it raises, nothing is stored.
    writer : sqlite_native.Connection, optional
        A native connection to the engine's SQLite file (`native_writer`):
        the rows go in through SQLite's C API from a compiled loop that
        releases the GIL, so a Store in a thread leaves the rest of the
        process free. On its own it is about as fast as the driver.
    """
    visit = int(record.visit)
    moving = _records(moving, MOVING_DTYPE)
    alerts = _records(alerts, ALERT_DTYPE)
    _check_visit(diasources["visit"], visit, "diasources")
    _check_visit(moving["visit"], visit, "moving")
    visit_row = {**asdict(record), "stored_at": time.time()}
    if writer is not None:
        _store_native(writer, visit, visit_row, diasources, objects, moving, alerts, before_commit)
        return
    with engine.begin() as conn:
        for table in (db.diasources, db.moving_matches, db.alerts, db.visits):
            conn.execute(table.delete().where(table.c.visit == visit))
        _executemany(conn, _insert_sql(conn, db.diasources), diasource_rows(diasources))
        _executemany(conn, _upsert_objects_sql(conn), object_rows(objects))
        _executemany(conn, _insert_sql(conn, db.moving_matches), _plain_rows(moving))
        _executemany(
            conn,
            _insert_sql(conn, db.alerts),
            _plain_rows(alerts, visit=visit, names=[c.name for c in db.alerts.columns]),
        )
        conn.execute(db.visits.insert().values(**visit_row))
        if before_commit is not None:
            before_commit()  # an exception here rolls the visit back


def native_writer(
    engine: Engine, cache_kib: int = WRITER_CACHE_KIB
) -> sqlite_native.Connection | None:
    """A native connection for `store_visit` on the engine's SQLite file, else None.

    Its page cache (``cache_kib``) stays warm between visits: it is the
    only writer, so no other connection's commit makes SQLite drop it.
    """
    path = db.native_sqlite_file(engine)
    if path is None:
        return None
    conn = sqlite_native.connect(path, cache_kib=cache_kib)
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def _store_native(
    conn: sqlite_native.Connection,
    visit: int,
    visit_row: dict[str, object],
    diasources: np.ndarray,
    objects: np.ndarray,
    moving: np.ndarray,
    alerts: np.ndarray,
    before_commit: Callable[[], None] | None,
) -> None:
    """`store_visit` through SQLite's C API: the same statements, one transaction."""
    _check_bands(diasources["band"])
    conn.execute("BEGIN IMMEDIATE")
    try:
        for table in (db.diasources, db.moving_matches, db.alerts, db.visits):
            conn.execute(f"DELETE FROM {table.name} WHERE visit = ?", (visit,))
        # In primary-key order, the B-tree pages are visited once each, in order.
        conn.insert_rows(
            db.diasources.name,
            _diasource_columns(diasources),
            texts={"band": BANDS},
            order=_diasource_order(diasources),
        )
        conn.insert_rows(
            db.objects.name,
            _object_columns(objects),
            order=_object_order(objects),
            suffix=_upsert_suffix(conn),
        )
        conn.insert_rows(db.moving_matches.name, {n: moving[n] for n in moving.dtype.names})
        alert_columns = {
            c.name: np.full(len(alerts), visit) if c.name == "visit" else alerts[c.name]
            for c in db.alerts.columns
        }
        conn.insert_rows(db.alerts.name, alert_columns)
        names = list(visit_row)
        conn.execute(
            f"INSERT INTO visits ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
            tuple(visit_row[n] for n in names),
        )
        if before_commit is not None:
            before_commit()
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def visit_stored(engine: Engine, visit: int) -> bool:
    """Whether the Store of ``visit`` has committed."""
    with engine.connect() as conn:
        found = conn.execute(select(db.visits.c.visit).where(db.visits.c.visit == int(visit)))
        return found.first() is not None


def load_objects(engine: Engine, lo: int, hi: int, *, native: bool = True) -> np.ndarray:
    """The Objects with ``lo <= fine < hi``, ordered by diaObjectId.

    ``native=False`` reads through the database driver even for SQLite files
    (see `association.storage.tables.fetch_columns`).
    """
    kinds = {c.name: _kind(OBJECT_DTYPE[_object_field(c.name)[0]].base) for c in db.objects.columns}
    sql = (
        f"SELECT {', '.join(_q(engine, n) for n in kinds)} FROM objects "
        f"WHERE {_q(engine, 'fine')} >= ? AND {_q(engine, 'fine')} < ?"
    )
    cols = db.fetch_columns(engine, sql, (int(lo), int(hi)), kinds, native=native)
    order = np.argsort(cols["diaObjectId"], kind="stable")
    out = np.empty(len(order), dtype=OBJECT_DTYPE)
    # Reorder column by column through one reused buffer per type: much faster
    # than reordering the 113-byte records, and fresh memory is slow to touch.
    buffers: dict[np.dtype, np.ndarray] = {}
    for name, values in cols.items():
        buf = buffers.setdefault(values.dtype, np.empty(len(order), dtype=values.dtype))
        np.take(values, order, out=buf)
        field, band = _object_field(name)
        if band is None:
            out[field] = buf
        else:
            out[field][:, band] = buf
    return out


def load_object_columns(
    engine: Engine, lo: np.ndarray, hi: np.ndarray, names: Sequence[str]
) -> dict[str, np.ndarray]:
    """Some plain Object columns for the fine-index ranges ``[lo, hi)``, in no set order.

    For the thin strips a Slice reads around its chunks: many small ranges,
    few columns. Ranges go 200 to a statement.
    """
    kinds = {n: _kind(OBJECT_DTYPE[n]) for n in names}
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    fine = _q(engine, "fine")
    for i in range(0, len(lo), 200):
        a, b = lo[i : i + 200], hi[i : i + 200]
        where = " OR ".join([f"({fine} >= ? AND {fine} < ?)"] * len(a))
        sql = f"SELECT {', '.join(_q(engine, n) for n in names)} FROM objects WHERE {where}"
        params = [int(x) for pair in zip(a, b, strict=True) for x in pair]
        cols = db.fetch_columns(engine, sql, params, kinds, presize=False)
        for n in names:
            parts[n].append(cols[n])
    return {
        n: np.concatenate(parts[n]) if parts[n] else np.empty(0, OBJECT_DTYPE[n]) for n in names
    }


def load_recent_diasources(
    engine: Engine, lo: int, hi: int, per_object: int = 10, *, native: bool = True
) -> np.ndarray:
    """The latest DIASources of the Objects with ``lo <= fine < hi``.

    A DIASource is chosen by its Object's fine index, not its own. At most
    ``per_object`` per Object, the latest by midpointMjdTai (ties: larger
    diaSourceId); sorted by (diaObjectId, midpointMjdTai, diaSourceId).
    On SQLite files (unless ``native=False``) a compiled loop walks down each
    Object's end of the diasources primary key.
    """
    if per_object <= 0:
        return np.empty(0, dtype=DIASOURCE_DTYPE)
    kinds = {name: _kind(DIASOURCE_DTYPE[name]) for name in DIASOURCE_DTYPE.names}
    q = functools.partial(_q, engine)
    band = " ".join(f"WHEN '{b}' THEN {i}" for i, b in enumerate(BANDS))
    cols = ", ".join(
        f"CASE d.{q(n)} {band} ELSE -1 END" if n == "band" else f"d.{q(n)}" for n in kinds
    )
    oid, mjd, sid, fine = q("diaObjectId"), q("midpointMjdTai"), q("diaSourceId"), q("fine")
    path = db.native_sqlite_file(engine, native)
    if path is not None:
        with sqlite_native.connect(path, mmap_mib=db.SQLITE_MMAP_MIB) as conn:
            conn.execute("BEGIN")  # the Objects and their DIASources from one snapshot
            ids = conn.fetch(
                f"SELECT {oid} FROM objects WHERE {fine} >= ? AND {fine} < ?",
                (int(lo), int(hi)),
                {"id": "i8"},
            )["id"]
            ids.sort()
            # Latest first, straight down the (diaObjectId, midpointMjdTai,
            # diaSourceId) key from each Object's end; then each turned round.
            found = conn.fetch_each(
                f"SELECT {cols} FROM diasources d WHERE d.{oid} = ? "
                f"ORDER BY d.{mjd} DESC, d.{sid} DESC LIMIT ?",
                ids,
                kinds,
                (int(per_object),),
                # Room for them all at once: pages never written cost nothing.
                expected=min(len(ids) * int(per_object), 1 << 26),
                reverse_each=True,
            )
        out = np.empty(len(found["diaObjectId"]), dtype=DIASOURCE_DTYPE)
        for name, values in found.items():
            out[name] = values
        return out
    # Per Object, the time of its per_object-th latest DIASource: a short walk
    # down the (diaObjectId, midpointMjdTai, ...) key, no sort of all rows.
    nth = (
        f"SELECT d2.{mjd} FROM diasources d2 WHERE d2.{oid} = o.{oid} "
        f"ORDER BY d2.{mjd} DESC LIMIT 1 OFFSET ?"
    )
    sql = (
        f"SELECT {cols} FROM objects o JOIN diasources d ON d.{oid} = o.{oid} "
        f"WHERE o.{fine} >= ? AND o.{fine} < ? "
        f"AND d.{mjd} >= COALESCE(({nth}), -1e308)"
    )
    params = (int(lo), int(hi), int(per_object) - 1)
    found = db.fetch_columns(engine, sql, params, kinds, native=native)
    out = np.empty(len(found["diaSourceId"]), dtype=DIASOURCE_DTYPE)
    for name, values in found.items():
        out[name] = values
    out = out[np.lexsort((out["diaSourceId"], out["midpointMjdTai"], out["diaObjectId"]))]
    # Ties at the cut may let in a few more: keep the last per_object of each.
    ids = out["diaObjectId"]
    group_end = np.searchsorted(ids, ids, side="right")
    return out[group_end - np.arange(len(ids)) <= per_object]


def bulk_load_objects(
    engine: Engine, objects: np.ndarray, chunk: int = BULK_CHUNK, *, native: bool = True
) -> None:
    """Insert a starting catalogue of Objects (new ids only) in one transaction.

    Rows go in primary-key order. SQLite files are written through the C API
    (`association.storage.sqlite.native`; ``native=False`` uses the driver), the
    engine's idle pooled connections closed first; PostgreSQL by binary COPY.
    Into an empty table, its other indexes are built after the rows.
    ``chunk`` rows are converted at a time.
    """
    _bulk(engine, db.objects, _object_columns(objects), _object_order(objects), chunk, native)


def bulk_load_diasources(
    engine: Engine, diasources: np.ndarray, chunk: int = BULK_CHUNK, *, native: bool = True
) -> None:
    """Insert past DIASources (new ids only) in one transaction; see `bulk_load_objects`."""
    _check_bands(diasources["band"])
    columns, order = _diasource_columns(diasources), _diasource_order(diasources)
    _bulk(engine, db.diasources, columns, order, chunk, native, {"band": BANDS})


def table_rows(engine: Engine, *, volatile: bool = False) -> dict[str, set[tuple]]:
    """Every table's rows as a set of tuples, NaN as None, to compare databases.

    Columns in `VOLATILE_COLUMNS` (the store time) are left out unless
    ``volatile``.
    """
    out = {}
    pg = engine.dialect.name == "postgresql"
    with engine.connect() as conn:
        cur = conn.connection.driver_connection.cursor()
        try:
            for table in db.metadata.sorted_tables:
                skip = () if volatile else VOLATILE_COLUMNS.get(table.name, ())
                names = []
                for c in table.columns:
                    if c.name in skip:
                        continue
                    name = _q(engine, c.name)
                    # NaN as NULL; PostgreSQL, unlike Python, has NaN = NaN
                    nan = pg and isinstance(c.type, Double)
                    names.append(f"NULLIF({name}, 'NaN'::float8)" if nan else name)
                # plain driver tuples: a SQLAlchemy Row per row costs more than the query
                cur.execute(f"SELECT {', '.join(names)} FROM {table.name}")
                out[table.name] = set(cur.fetchall())
        finally:
            cur.close()
    return out


def object_rows(objects: np.ndarray) -> list[tuple]:
    """Objects as tuples in the column order of the ``objects`` table."""
    return _tuples(_object_columns(objects))


def diasource_rows(diasources: np.ndarray) -> list[tuple]:
    """DIASources as tuples in the column order of the ``diasources`` table."""
    _check_bands(diasources["band"])
    return _tuples(_diasource_columns(diasources), texts={"band": BANDS})


def _diasource_columns(diasources: np.ndarray) -> dict[str, np.ndarray]:
    """The ``diasources`` table's columns as views into DIASOURCE_DTYPE records."""
    return {c.name: diasources[c.name] for c in db.diasources.columns}


def _diasource_order(diasources: np.ndarray) -> np.ndarray | None:
    """DIASources in primary-key order (see `_key_order`)."""
    return _key_order(
        diasources["diaObjectId"], diasources["midpointMjdTai"], diasources["diaSourceId"]
    )


def _object_order(objects: np.ndarray) -> np.ndarray | None:
    """Objects in primary-key order, (fine, diaObjectId) (see `_key_order`)."""
    return _key_order(objects["fine"], objects["diaObjectId"])


def _object_columns(objects: np.ndarray) -> dict[str, np.ndarray]:
    """The ``objects`` table's columns as views into OBJECT_DTYPE records."""
    out = {}
    for c in db.objects.columns:
        field, band = _object_field(c.name)
        out[c.name] = objects[field] if band is None else objects[field][:, band]
    return out


def _check_bands(band: np.ndarray) -> None:
    bad = np.flatnonzero((band < 0) | (band >= len(BANDS)))
    if bad.size:
        raise ValueError(f"diasources row {bad[0]}: band index {band[bad[0]]} not in 0..5")


def _tuples(
    columns: dict[str, np.ndarray],
    take: slice | np.ndarray = slice(None),
    texts: dict[str, Sequence[str]] | None = None,
) -> list[tuple]:
    """Rows ``take`` of the columns as tuples of Python values (NaN as None).

    A column named in ``texts`` holds indices into its strings.
    """
    texts = texts or {}
    cols = []
    for name, values in columns.items():
        values = values[take]
        if name in texts:
            cols.append(np.asarray(list(texts[name]))[values].tolist())
        else:
            cols.append(_pylist(values))
    return list(zip(*cols, strict=True))


def _key_order(*keys: np.ndarray) -> np.ndarray | None:
    """The order sorting rows by ``keys`` (most significant first); None if sorted."""
    n = len(keys[0])
    if n < 2 or _sorted_by(keys):
        return None
    # The last key (a unique id) only decides between rows equal in all the
    # others, which is rare: sort by those first, and by all only if needed.
    head = keys[:-1] or keys
    order = np.lexsort(head[::-1]) if len(head) > 1 else np.argsort(head[0], kind="stable")
    if len(keys) > 1:
        tie = np.ones(n - 1, dtype=bool)
        for key in head:
            ranked = key[order]
            tie &= ranked[1:] == ranked[:-1]
        if tie.any():
            order = np.lexsort(keys[::-1])
    return order


def _sorted_by(keys: Sequence[np.ndarray]) -> bool:
    """Whether the rows are in order of ``keys`` (most significant first)."""
    undecided = np.ones(len(keys[0]) - 1, dtype=bool)
    for key in keys:
        step = np.diff(key)
        if (step[undecided] < 0).any():
            return False
        undecided &= step == 0
    return True


def _bulk(
    engine: Engine,
    table: Table,
    columns: dict[str, np.ndarray],
    order: np.ndarray | None,
    chunk: int,
    native: bool,
    texts: dict[str, Sequence[str]] | None = None,
) -> None:
    """Insert rows ``order`` of ``columns`` into ``table`` in one transaction."""
    path = db.native_sqlite_file(engine, native)
    if path is not None:
        # The engine's idle pooled connections would keep the load from
        # taking the file to itself (see `sqlite_native.Connection.bulk_insert`).
        engine.dispose()
        with sqlite_native.connect(path, cache_kib=BULK_CACHE_KIB) as conn:
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.bulk_insert(table.name, columns, texts=texts, order=order)
        return
    n = len(next(iter(columns.values())))
    with engine.begin() as conn:
        empty = conn.execute(select(table.c[0]).limit(1)).first() is None
        indexes = sorted(table.indexes, key=lambda ix: ix.name) if empty else []
        for index in indexes:  # built again after the rows: much faster
            index.drop(conn)
        if conn.dialect.name == "postgresql":
            _copy(conn, table, columns, order, chunk, texts)
        else:
            sql = _insert_sql(conn, table)
            for start in range(0, n, chunk):
                take = (
                    slice(start, start + chunk) if order is None else order[start : start + chunk]
                )
                _executemany(conn, sql, _tuples(columns, take, texts))
        for index in indexes:
            index.create(conn)


def _copy(
    conn: Connection,
    table: Table,
    columns: dict[str, np.ndarray],
    order: np.ndarray | None,
    chunk: int,
    texts: dict[str, Sequence[str]] | None,
) -> None:
    """COPY the rows into ``table`` through psycopg, in the open transaction.

    In PostgreSQL's binary format, built with numpy, when every column's type
    allows; else row by row in text format.
    """
    texts = texts or {}
    n = len(next(iter(columns.values())))
    names = ", ".join(_q(conn, name) for name in columns)
    kinds = [_pg_binary_kind(table.c[name].type, name in texts) for name in columns]
    binary = None not in kinds
    sql = f"COPY {table.name} ({names}) FROM STDIN" + (" (FORMAT BINARY)" if binary else "")
    raw = conn.connection.driver_connection
    with raw.cursor() as cur, cur.copy(sql) as copy:
        if binary:
            copy.write(_PG_COPY_HEADER)
        for start in range(0, n, chunk):
            take = slice(start, start + chunk) if order is None else order[start : start + chunk]
            if binary:
                copy.write(_pg_binary_rows(columns, kinds, take, texts))
            else:
                for row in _tuples(columns, take, texts):
                    copy.write_row(row)
        if binary:
            copy.write(_PG_COPY_TRAILER)


_PG_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags, no extension
_PG_COPY_TRAILER = b"\xff\xff"


def _pg_binary_kind(sql_type: object, is_text: bool) -> str | None:
    """The big-endian numpy type of a column in binary COPY, "text", or None if unknown."""
    if is_text:
        return "text" if isinstance(sql_type, String) else None
    for python_type, kind in _PG_BINARY_KINDS:
        if isinstance(sql_type, python_type):
            return kind
    return None


_PG_BINARY_KINDS = (
    (SmallInteger, ">i2"),
    (BigInteger, ">i8"),
    (Integer, ">i4"),
    (Boolean, "u1"),
    (Double, ">f8"),
)


def _pg_binary_rows(
    columns: dict[str, np.ndarray],
    kinds: list[str],
    take: slice | np.ndarray,
    texts: dict[str, Sequence[str]],
) -> bytes:
    """Rows ``take`` of the columns as tuples of PostgreSQL's binary COPY format.

    Each tuple: the field count (int16), then per field its length (int32;
    -1 for NULL, which a NaN float is) and its bytes, all big-endian.
    """
    fields = []  # (lengths per row, [(rows, bytes per row)])
    for (name, values), kind in zip(columns.items(), kinds, strict=True):
        values = values[take]
        if kind == "text":
            encoded = [s.encode() for s in texts[name]]
            lengths = np.array([len(e) for e in encoded], dtype=np.int64)[values]
            parts = [
                (rows, np.frombuffer(e, dtype=np.uint8)[None, :])
                for code, e in enumerate(encoded)
                if e and (rows := np.flatnonzero(values == code)).size
            ]
        else:
            data = values.astype(kind)
            size = data.dtype.itemsize
            lengths = np.full(len(values), size, dtype=np.int64)
            rows = slice(None)
            if values.dtype.kind == "f":
                null = np.isnan(values)
                lengths[null] = -1
                rows = np.flatnonzero(~null)
            parts = [(rows, data[rows].view(np.uint8).reshape(-1, size))]
        fields.append((lengths, parts))
    n = len(fields[0][0]) if fields else 0
    row_bytes = 2 + sum(4 + np.maximum(lengths, 0) for lengths, _ in fields)
    out = np.empty(int(np.sum(row_bytes)), dtype=np.uint8)
    pos = np.cumsum(row_bytes) - row_bytes
    _put(out, pos, np.full(n, len(fields), dtype=">i2"))
    pos = pos + 2
    for lengths, parts in fields:
        _put(out, pos, lengths.astype(">i4"))
        pos += 4
        for rows, data in parts:
            _put(out, pos[rows], data)
        pos += np.maximum(lengths, 0)
    return out.tobytes()


def _put(out: np.ndarray, at: np.ndarray, values: np.ndarray) -> None:
    """Write each row's bytes of ``values`` (an array, or rows of uint8) into ``out`` at ``at``."""
    data = values if values.dtype == np.uint8 else values.view(np.uint8).reshape(len(values), -1)
    data = np.broadcast_to(data, (len(at), data.shape[1]))
    out[at[:, None] + np.arange(data.shape[1])] = data


def _records(x: np.ndarray | Sequence[np.ndarray] | None, dtype: np.dtype) -> np.ndarray:
    """A structured array of ``dtype`` from one, from a tuple of columns, or None."""
    if x is None:
        return np.empty(0, dtype=dtype)
    if isinstance(x, np.ndarray) and x.dtype.names:
        out = np.empty(len(x), dtype=dtype)
        for name in dtype.names:
            out[name] = x[name]
        return out
    if len(x) != len(dtype.names):
        raise ValueError(f"expected arrays {dtype.names}, got {len(x)} arrays")
    out = np.empty(len(x[0]), dtype=dtype)
    for name, col in zip(dtype.names, x, strict=True):
        out[name] = col
    return out


def _check_visit(visits: np.ndarray, visit: int, what: str) -> None:
    bad = np.flatnonzero(visits != visit)
    if bad.size:
        raise ValueError(f"{what} row {bad[0]}: visit {visits[bad[0]]}, storing visit {visit}")


def _plain_rows(
    rec: np.ndarray, visit: int | None = None, names: list[str] | None = None
) -> list[tuple]:
    """Rows of an integer record array, in ``names`` order (``visit`` filled in)."""
    names = names or list(rec.dtype.names)
    cols = [
        [visit] * len(rec) if n == "visit" and n not in rec.dtype.names else rec[n].tolist()
        for n in names
    ]
    return list(zip(*cols, strict=True))


def _executemany(conn: Connection, sql: str, rows: list[tuple]) -> None:
    if rows:
        conn.exec_driver_sql(sql, rows)


def _insert_sql(conn: Connection, table: Table) -> str:
    names = [c.name for c in table.columns]
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    cols = ", ".join(_q(conn, n) for n in names)
    return f"INSERT INTO {table.name} ({cols}) VALUES ({', '.join([mark] * len(names))})"


def _upsert_objects_sql(conn: Connection) -> str:
    return _insert_sql(conn, db.objects) + _upsert_suffix(conn)


def _upsert_suffix(conn: Connection | sqlite_native.Connection) -> str:
    """The ``ON CONFLICT`` clause that makes an insert of Objects an upsert."""
    quote = (
        sqlite_native.quote
        if isinstance(conn, sqlite_native.Connection)
        else functools.partial(_q, conn)
    )
    key = "diaObjectId"
    # An Object's fine index never changes: leaving the primary key (fine,
    # diaObjectId) out of the SET list makes the update one in place.
    sets = ", ".join(
        f"{quote(c.name)} = excluded.{quote(c.name)}"
        for c in db.objects.columns
        if c.name not in (key, "fine")
    )
    return f" ON CONFLICT ({quote(key)}) DO UPDATE SET {sets}"


def _q(bind: Engine | Connection, name: str) -> str:
    return bind.dialect.identifier_preparer.quote(name)


def _kind(dtype: np.dtype) -> str:
    """The `association.storage.tables.fetch_columns` kind that reads into ``dtype``."""
    return "i1" if dtype.kind == "b" else f"{dtype.kind}{dtype.itemsize}"


def _object_field(column: str) -> tuple[str, int | None]:
    """The OBJECT_DTYPE field of an objects-table column, and its band index or None.

    ``r_psfFluxMean`` -> (``psfFluxMean``, 2); ``ra`` -> (``ra``, None).
    """
    if column in OBJECT_DTYPE.names:
        return column, None
    band, field = column.split("_", 1)
    return field, BANDS.index(band)


def _pylist(values: np.ndarray) -> list:
    """Python values of a column, NaN as None."""
    if values.dtype.kind == "f":
        nan = np.isnan(values)
        if nan.any():
            out = values.astype(object)
            out[nan] = None
            return out.tolist()
    return values.tolist()
