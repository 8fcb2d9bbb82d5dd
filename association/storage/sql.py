"""`SqlStorage`: the storage on any SQLAlchemy database, through its driver.

The SQLite and PostgreSQL classes build on it and replace the paths that
their native access makes faster; this one is also their reference.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from itertools import pairwise
from typing import NamedTuple

import numpy as np
from sqlalchemy import Connection, Engine, Table, create_engine, event, func, inspect, select

from association.columns import BANDS, DIASOURCE_DTYPE
from association.storage import rows, tables
from association.storage.interface import (
    ALERT_DTYPE,
    BULK_CHUNK,
    MOVING_DTYPE,
    FrozenParameters,
    SchemaVersionError,
    Storage,
    StorageError,
    VisitRecord,
)

SQLITE_CACHE_KIB = 65536
"""Page cache of each SQLite connection of an engine, KiB."""

RANGES_PER_QUERY = 1000
"""Fine-index ranges per statement of the reads over many ranges."""

_RANGE = "range"
"""The column that says which range a row of a many-range read came from."""

SINCE_ALWAYS = 1e308
"""``since`` of a recent-DIASource read with no window: every row is later than minus this."""

VISIT_TABLES = (tables.diasources, tables.moving_matches, tables.alerts, tables.visits)
"""The tables holding a visit's own rows, by its ``visit`` column."""


def make_engine(url: str) -> Engine:
    """The SQLAlchemy engine for ``url``.

    SQLite engines run in WAL mode with ``synchronous=NORMAL``, and open a
    real transaction (``BEGIN``) on ``engine.begin()``.
    """
    if url.startswith("postgresql"):
        # No JIT: the planner's row estimates for the per-visit range reads are large
        # enough to make it compile (and optimise) each one, 100s of ms for a few ms of work.
        return create_engine(url, pool_pre_ping=True, connect_args={"options": "-c jit=off"})
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


class Insert(NamedTuple):
    """Rows for one table: its columns (``texts``: indices into strings), in ``order``."""

    table: Table
    columns: dict[str, np.ndarray]
    order: np.ndarray | None = None
    texts: dict[str, Sequence[str]] | None = None
    suffix: str = ""
    first: tuple[tuple[str, tuple[int, ...]], ...] = ()
    """Statements (``?`` marks) and their parameters, run before the rows go in."""


class SqlStorage(Storage):
    """The storage through SQLAlchemy and the database's driver.

    Opening it creates the tables (``create``) or checks they are there, checks
    the schema version, and records or checks the frozen parameters.

    Parameters
    ----------
    url : str
        A SQLAlchemy URL.
    params : FrozenParameters or None
        The parameters the caller lays rows out by; None takes the recorded
        ones (for readers that do not partition, such as reports).
    create : bool
        Create the tables if missing and record ``params`` in a new database.

    Raises
    ------
    StorageError
        No tables (and not ``create``); `SchemaVersionError` for tables of
        another version; `FrozenParameterError` when ``params`` differ from
        the recorded ones.
    """

    def __init__(self, url: str, params: FrozenParameters | None, *, create: bool = False) -> None:
        self.engine = make_engine(url)
        self.url = self.engine.url.render_as_string(hide_password=True)
        try:
            self.params = self._open(params, create)
        except BaseException:
            self.engine.dispose()
            raise

    def _open(self, params: FrozenParameters | None, create: bool) -> FrozenParameters:
        """Create or check the tables; the recorded frozen parameters."""
        if create and params is None:
            raise ValueError(f"creating database {self.url} needs its frozen parameters")
        if inspect(self.engine).has_table(tables.schema_version.name):
            with self.engine.connect() as conn:
                version = tables.schema_version.c.version
                self._check_version(conn.execute(select(func.max(version))).scalar())
        elif not create:
            raise StorageError(
                f"database {self.url} has no nightpipe tables: the pipeline (its first "
                "stage, on rank 0) or a replay's preload creates them"
            )
        if create:
            assert params is not None
            tables.metadata.create_all(self.engine, checkfirst=True)
            self._record(params)
        p = tables.parameters
        with self.engine.connect() as conn:
            recorded = {n: v for n, v in conn.execute(select(p.c.name, p.c.value))}
        frozen = FrozenParameters.from_strings(recorded, self.url)
        frozen.check(params, self.url)
        return frozen

    def _record(self, params: FrozenParameters) -> None:
        """Record the schema version and ``params`` in a database just made."""
        version, p = tables.schema_version, tables.parameters
        with self.engine.begin() as conn:
            if conn.execute(select(func.count()).select_from(version)).scalar() == 0:
                conn.execute(version.insert().values(version=tables.SCHEMA_VERSION))
            if conn.execute(select(func.count()).select_from(p)).scalar() == 0:
                values = params.as_strings().items()
                conn.execute(p.insert(), [{"name": k, "value": v} for k, v in values])

    def _check_version(self, found: int | None) -> None:
        if found is not None and found > tables.SCHEMA_VERSION:
            raise SchemaVersionError(
                f"database {self.url} has schema version {found}, newer than this "
                f"nightpipe's {tables.SCHEMA_VERSION}: upgrade nightpipe or use another database"
            )
        if found is not None and found < tables.SCHEMA_VERSION:
            raise SchemaVersionError(
                f"database {self.url} has schema version {found}, older than this "
                f"nightpipe's {tables.SCHEMA_VERSION}, and there is no migration: "
                "use a new database"
            )

    def close(self) -> None:
        self.engine.dispose()

    def note(self, name: str, value: str) -> None:
        n = tables.notes
        with self.engine.begin() as conn:
            conn.execute(n.delete().where(n.c.name == name))
            conn.execute(n.insert().values(name=name, value=value))

    def noted(self, name: str) -> str | None:
        n = tables.notes
        with self.engine.connect() as conn:
            return conn.execute(select(n.c.value).where(n.c.name == name)).scalar()

    def clear_catalogue(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(tables.diasources.delete())
            conn.execute(tables.objects.delete())

    # -- the Store -------------------------------------------------------------------

    def store_visit(
        self,
        record: VisitRecord,
        diasources: np.ndarray,
        objects: np.ndarray,
        moving: np.ndarray | Sequence[np.ndarray] | None = None,
        alerts: np.ndarray | Sequence[np.ndarray] | None = None,
        before_commit: Callable[[], None] | None = None,
    ) -> None:
        visit = int(record.visit)
        moving = rows.records(moving, MOVING_DTYPE)
        alerts = rows.records(alerts, ALERT_DTYPE)
        rows.check_visit(diasources["visit"], visit, "diasources")
        rows.check_visit(moving["visit"], visit, "moving")
        rows.check_bands(diasources["band"])
        chunk = self._diasource_chunks(diasources, objects)
        # In primary-key order, the B-tree pages are visited once each, in order.
        inserts = [
            Insert(
                tables.diasources,
                rows.diasource_columns(diasources, chunk),
                rows.diasource_order(diasources, chunk),
                {"band": BANDS},
            ),
            Insert(
                tables.objects,
                rows.object_columns(objects),
                rows.object_order(objects),
                suffix=upsert_objects_suffix(self._quote),
                first=self._unrepeated_deletes(rows.newly_repeated(objects, diasources)),
            ),
            Insert(
                tables.moving_matches, {c.name: moving[c.name] for c in tables.moving_matches.c}
            ),
            Insert(
                tables.alerts,
                {
                    c.name: np.full(len(alerts), visit) if c.name == "visit" else alerts[c.name]
                    for c in tables.alerts.c
                },
            ),
        ]
        visit_row = {**dataclasses.asdict(record), "stored_at": time.time()}
        self._write_visit(visit, inserts, visit_row, before_commit)

    def _unrepeated_deletes(self, ids: np.ndarray) -> tuple[tuple[str, tuple[int, ...]], ...]:
        """Deletes of the once-seen rows of Objects ``ids``, now repeated.

        The upsert then puts them in among the repeated ones; it leaves
        ``repeated`` out of its update, which keeps every other row in place.
        """
        q = self._quote
        out = []
        for i in range(0, ids.size, RANGES_PER_QUERY):
            part = ids[i : i + RANGES_PER_QUERY]
            marks = ", ".join("?" * part.size)
            sql = (
                f"DELETE FROM objects WHERE {q('repeated')} = 0 AND {q('diaObjectId')} IN ({marks})"
            )
            out.append((sql, tuple(part.tolist())))
        return tuple(out)

    def _write_visit(
        self,
        visit: int,
        inserts: list[Insert],
        visit_row: dict[str, object],
        before_commit: Callable[[], None] | None,
    ) -> None:
        """In one transaction: the visit's rows deleted, ``inserts``, its row, ``before_commit``."""
        with self.engine.begin() as conn:
            for table in VISIT_TABLES:
                conn.execute(table.delete().where(table.c.visit == visit))
            for ins in inserts:
                for sql, params in ins.first:
                    conn.exec_driver_sql(self._driver_sql(sql), params)
                take = slice(None) if ins.order is None else ins.order
                _executemany(
                    conn,
                    insert_sql(conn, ins.table) + ins.suffix,
                    rows.tuples(ins.columns, take, ins.texts),
                )
            conn.execute(tables.visits.insert().values(**visit_row))
            if before_commit is not None:
                before_commit()  # an exception here rolls the visit back

    def _diasource_chunks(self, diasources: np.ndarray, objects: np.ndarray | None) -> np.ndarray:
        """Each DIASource's chunk: its Object's, from ``objects`` or else the database."""
        shift = self.params.chunk_shift
        none = np.empty(0, np.int64)
        have = (none, none) if objects is None else (objects["diaObjectId"], objects["fine"])
        chunk, unknown = rows.diasource_chunks(diasources, *have, shift)
        if unknown.size:
            ids, fine = self._object_fine(unknown)
            # Any still unknown (no such Object) keep their own position's chunk.
            chunk, _ = rows.diasource_chunks(
                diasources, np.concatenate([have[0], ids]), np.concatenate([have[1], fine]), shift
            )
        return chunk

    def _object_fine(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The diaObjectId and fine index of the stored Objects among ``ids``."""
        oid, fine = self._quote("diaObjectId"), self._quote("fine")
        parts = []
        for i in range(0, ids.size, RANGES_PER_QUERY):
            some = ids[i : i + RANGES_PER_QUERY]
            sql = f"SELECT {oid}, {fine} FROM objects WHERE {oid} IN ({', '.join('?' * some.size)})"
            parts.append(self.fetch_columns(sql, some.tolist(), {"id": "i8", "fine": "i8"}))
        return (
            np.concatenate([p["id"] for p in parts]),
            np.concatenate([p["fine"] for p in parts]),
        )

    def visit_record(self, visit: int) -> VisitRecord | None:
        v = tables.visits
        names = [f.name for f in dataclasses.fields(VisitRecord)]
        with self.engine.connect() as conn:
            row = conn.execute(select(*(v.c[n] for n in names)).where(v.c.visit == int(visit)))
            found = row.first()
        return None if found is None else VisitRecord(*found)

    # -- reads -----------------------------------------------------------------------

    def load_objects(self, lo: int, hi: int) -> np.ndarray:
        q = self._quote
        sql = (
            f"SELECT {', '.join(q(n) for n in rows.OBJECT_KINDS)} FROM objects o "
            f"WHERE {self._fine_range('o', '?', '?')}"
        )
        cols = self.fetch_columns(sql, (int(lo), int(hi)), rows.OBJECT_KINDS)
        return rows.objects_from_columns(cols)

    def count_objects(self, lo: np.ndarray, hi: np.ndarray, at_most: int) -> np.ndarray:
        lo, hi = _ranges(lo, hi)
        out = np.zeros(lo.size, np.int64)
        for i in range(0, lo.size, RANGES_PER_QUERY):
            a, b = lo[i : i + RANGES_PER_QUERY], hi[i : i + RANGES_PER_QUERY]
            sql = (
                f"WITH r(k, lo, hi) AS ({_values(a.size, 3)}) SELECT r.k, (SELECT count(*) "
                f"FROM (SELECT 1 FROM objects o WHERE {self._fine_range('o', 'r.lo', 'r.hi')} "
                f"LIMIT {int(at_most)}) AS t) FROM r"
            )
            params = [int(x) for k in range(a.size) for x in (k, a[k], b[k])]
            found = self.fetch_columns(sql, params, {"k": "i8", "n": "i8"}, presize=False)
            out[i + found["k"]] = found["n"]
        return out

    def load_objects_ranges(self, lo: np.ndarray, hi: np.ndarray) -> list[np.ndarray]:
        lo, hi = _ranges(lo, hi)
        cols = self._ranges_columns(lo, hi, rows.OBJECT_KINDS)
        k = cols.pop(_RANGE)
        order = np.lexsort((cols["diaObjectId"], k))
        objects = rows.objects_from_columns(cols, order)
        cuts = np.searchsorted(k[order], np.arange(lo.size + 1))
        return [objects[a:b] for a, b in pairwise(cuts.tolist())]

    def load_object_columns(
        self, lo: np.ndarray, hi: np.ndarray, names: Sequence[str]
    ) -> dict[str, np.ndarray]:
        lo, hi = _ranges(lo, hi)
        cols = self._ranges_columns(lo, hi, {n: rows.OBJECT_KINDS[n] for n in names})
        del cols[_RANGE]
        return cols

    def _ranges_columns(
        self, lo: np.ndarray, hi: np.ndarray, kinds: Mapping[str, str]
    ) -> dict[str, np.ndarray]:
        """Object columns over fine-index ranges, and `_RANGE`: the range of each row."""
        kinds = {_RANGE: "i8", **kinds}
        parts: dict[str, list[np.ndarray]] = {n: [] for n in kinds}
        select = ", ".join(f"o.{self._quote(n)}" for n in kinds if n != _RANGE)
        for i in range(0, lo.size, RANGES_PER_QUERY):
            a, b = lo[i : i + RANGES_PER_QUERY], hi[i : i + RANGES_PER_QUERY]
            # The ranges drive: one index range scan each (CROSS JOIN keeps
            # SQLite from turning the loops round).
            sql = (
                f"WITH r(k, lo, hi) AS ({_values(a.size, 3)}) SELECT r.k, {select} FROM r "
                f"CROSS JOIN objects o WHERE {self._fine_range('o', 'r.lo', 'r.hi')}"
            )
            params = [int(x) for k in range(a.size) for x in (i + k, a[k], b[k])]
            cols = self.fetch_columns(sql, params, kinds, presize=False)
            for n in kinds:
                parts[n].append(cols[n])
        return {
            n: np.concatenate(parts[n]) if parts[n] else np.empty(0, np.dtype(kinds[n]))
            for n in kinds
        }

    def load_recent_diasources(
        self, lo: int, hi: int, per_object: int = 10, since: float = -math.inf
    ) -> np.ndarray:
        if per_object <= 0:
            return np.empty(0, dtype=DIASOURCE_DTYPE)
        # a finite bound that every driver binds as a double
        since = max(float(since), -SINCE_ALWAYS)
        return self._load_recent(int(lo), int(hi), int(per_object), since)

    def _load_recent(self, lo: int, hi: int, per_object: int, since: float) -> np.ndarray:
        """`load_recent_diasources` for ``per_object > 0`` and a finite ``since``.

        One range read of the chunks the fine range ``[lo, hi)`` lies in, over
        the window; the rows of Objects outside the range are dropped, and
        each Object's latest ``per_object`` kept.
        """
        q = self._quote
        oid, mjd, chunk = q("diaObjectId"), q("midpointMjdTai"), q("chunk")
        shift = self.params.chunk_shift
        first, last = lo >> shift, (hi - 1) >> shift
        chunks: tuple[int, ...] = (first, last)
        if last - first < RANGES_PER_QUERY:
            # Each chunk's own (chunk, midpointMjdTai) range: older rows are not read.
            chunks = tuple(range(first, last + 1))
            where = f"d.{chunk} IN ({', '.join('?' * len(chunks))})"
        else:
            where = f"d.{chunk} >= ? AND d.{chunk} <= ?"
        if lo == first << shift and hi == (last + 1) << shift:
            # Whole chunks: every DIASource of them with an Object has its Object in range.
            objects, bounds = f"d.{oid} <> 0", ()
        else:
            objects = f"d.{oid} IN (SELECT o.{oid} FROM objects o WHERE {self._fine_range('o', '?', '?')})"
            bounds = (lo, hi)
        sql = (
            f"SELECT {self._recent_select_list()} FROM diasources d "
            f"WHERE {where} AND d.{mjd} >= ? AND {objects} "
            f"ORDER BY d.{chunk}, d.{mjd}, d.{q('diaSourceId')}"
        )
        params = (*chunks, since, *bounds)
        found = self.fetch_columns(sql, params, rows.DIASOURCE_KINDS, presize=False)
        return rows.latest_per_object(rows.diasources_from_columns(found), per_object)

    def _fine_range(self, o: str, lo: str, hi: str) -> str:
        """The condition on Objects ``o`` of a fine range ``[lo, hi)``, on the primary key.

        Naming both values of ``repeated``, the key's first column, makes it one
        index range scan for each.
        """
        fine = f"{o}.{self._quote('fine')}"
        return f"{o}.{self._quote('repeated')} IN (0, 1) AND {fine} >= {lo} AND {fine} < {hi}"

    def _recent_select_list(self) -> str:
        """The DIASOURCE_DTYPE fields of ``diasources d``, the band as its index."""
        band = " ".join(f"WHEN '{b}' THEN {i}" for i, b in enumerate(BANDS))
        return ", ".join(
            f"CASE d.{self._quote(n)} {band} ELSE -1 END" if n == "band" else f"d.{self._quote(n)}"
            for n in rows.DIASOURCE_KINDS
        )

    def fetch_columns(
        self,
        sql: str,
        params: Sequence[int | float],
        kinds: Mapping[str, str],
        *,
        presize: bool = True,
    ) -> dict[str, np.ndarray]:
        kinds = rows.column_kinds(dict(kinds))
        return self._fetch_columns(self._driver_sql(sql), params, kinds, presize)

    def _driver_sql(self, sql: str) -> str:
        """``sql`` (``?`` marks) in the driver's parameter marks."""
        return sql if self.engine.dialect.paramstyle == "qmark" else sql.replace("?", "%s")

    def _fetch_columns(
        self, sql: str, params: Sequence[int | float], kinds: dict[str, str], presize: bool
    ) -> dict[str, np.ndarray]:
        """`fetch_columns` with the driver's parameter marks and checked kinds."""
        dtype = np.dtype(list(kinds.items()))
        raw = self.engine.raw_connection()
        try:
            cur = raw.cursor()
            cur.execute(sql, tuple(params))
            found = np.fromiter(cur, dtype=dtype)
            cur.close()
        finally:
            raw.close()
        return {name: found[name] for name in kinds}

    # -- bulk loads ------------------------------------------------------------------

    def bulk_load_objects(self, objects: np.ndarray, *, chunk: int = BULK_CHUNK) -> None:
        self._bulk(
            Insert(tables.objects, rows.object_columns(objects), rows.object_order(objects)), chunk
        )

    def bulk_load_diasources(
        self,
        diasources: np.ndarray,
        objects: np.ndarray | None = None,
        *,
        object_chunks: np.ndarray | None = None,
        chunk: int = BULK_CHUNK,
    ) -> None:
        rows.check_bands(diasources["band"])
        chunks = object_chunks
        if chunks is None:
            chunks = self._diasource_chunks(diasources, objects)
        columns = rows.diasource_columns(diasources, chunks)
        order = rows.diasource_order(diasources, chunks)
        self._bulk(Insert(tables.diasources, columns, order, {"band": BANDS}), chunk)

    def _bulk(self, ins: Insert, chunk: int) -> None:
        """The rows into their table in one transaction; into an empty one, indexes after."""
        with self.engine.begin() as conn:
            empty = conn.execute(select(ins.table.c[0]).limit(1)).first() is None
            indexes = sorted(ins.table.indexes, key=lambda ix: ix.name) if empty else []
            for index in indexes:  # built again after the rows: much faster
                index.drop(conn)
            self._insert_bulk(conn, ins, chunk)
            for index in indexes:
                index.create(conn)

    def _insert_bulk(self, conn: Connection, ins: Insert, chunk: int) -> None:
        """Insert the rows in the open transaction, ``chunk`` converted at a time."""
        sql = insert_sql(conn, ins.table)
        for take in chunks(ins, chunk):
            _executemany(conn, sql, rows.tuples(ins.columns, take, ins.texts))

    def _quote(self, name: str) -> str:
        return quote(self.engine, name)


def _ranges(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lo = np.asarray(lo, dtype=np.int64).ravel()
    hi = np.asarray(hi, dtype=np.int64).ravel()
    if lo.shape != hi.shape:
        raise ValueError(f"lo and hi differ in length: {lo.size} and {hi.size}")
    return lo, hi


def _values(n_rows: int, n_columns: int) -> str:
    """``VALUES`` of ``n_rows`` rows of BIGINT parameters (``?``), for a CTE."""
    row = "(" + ", ".join(["CAST(? AS BIGINT)"] * n_columns) + ")"
    return "VALUES " + ", ".join([row] * n_rows)


def chunks(ins: Insert, chunk: int) -> list[slice | np.ndarray]:
    """The rows of ``ins``, in its order, ``chunk`` at a time (slices or indices)."""
    n = len(next(iter(ins.columns.values())))
    if ins.order is None:
        return [slice(start, start + chunk) for start in range(0, n, chunk)]
    return [ins.order[start : start + chunk] for start in range(0, n, chunk)]


def quote(bind: Engine | Connection, name: str) -> str:
    """``name`` quoted for the dialect of ``bind`` where it needs to be."""
    return bind.dialect.identifier_preparer.quote(name)


def insert_sql(conn: Connection, table: Table) -> str:
    """``INSERT INTO table (every column) VALUES (...)`` in the driver's parameter marks."""
    names = [c.name for c in table.columns]
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    cols = ", ".join(quote(conn, n) for n in names)
    return f"INSERT INTO {table.name} ({cols}) VALUES ({', '.join([mark] * len(names))})"


def upsert_objects_suffix(quote_name: Callable[[str], str]) -> str:
    """The ``ON CONFLICT`` clause that makes an insert of Objects an upsert."""
    key = "diaObjectId"
    # Leaving the primary key out of the SET list keeps the update in place: an
    # Object's fine index never changes, and one that has just become repeated
    # was deleted first (`SqlStorage._unrepeated_deletes`).
    sets = ", ".join(
        f"{quote_name(c.name)} = excluded.{quote_name(c.name)}"
        for c in tables.objects.columns
        if c.name not in (key, "fine", "repeated")
    )
    return f" ON CONFLICT ({quote_name(key)}) DO UPDATE SET {sets}"


def _executemany(conn: Connection, sql: str, found: list[tuple]) -> None:
    if found:
        conn.exec_driver_sql(sql, found)
