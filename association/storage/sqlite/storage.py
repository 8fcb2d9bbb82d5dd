"""`SqliteStorage`: a SQLite file read, stored and bulk-loaded through the C API.

The reads, the Store and the bulk loads go through `association.storage.sqlite.native`
(numba loops over SQLite's C API, which release the GIL); the rest (schema,
frozen parameters, visit records) through SQLAlchemy as in `SqlStorage`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from sqlalchemy import make_url

from association.storage import tables
from association.storage.interface import FrozenParameters, StorageError
from association.storage.sql import VISIT_TABLES, Insert, SqlStorage
from association.storage.sqlite import native
from association.storage.sqlite.checkpoint import WalCheckpointer

MMAP_MIB = 2047
"""How much of the file a native read maps into memory (SQLite's cap)."""

BULK_CACHE_KIB = 262_144
"""SQLite page cache of a native bulk load, KiB."""

WRITER_CACHE_KIB = 1 << 20
"""Page cache of the Store's native writer, KiB (1 GiB)."""


def sqlite_path(url: str) -> str | None:
    """The file of a ``sqlite://`` URL, resolved; None for memory and ``file:`` URIs."""
    name = make_url(url).database
    if not name or name == ":memory:" or name.startswith("file:"):
        return None
    return str(Path(name).resolve())


class SqliteStorage(SqlStorage):
    """The storage in a SQLite file, through SQLite's C API where it counts.

    The Store writes through one native connection of its own, whose page
    cache stays warm between visits (it is the only writer, so no other
    connection's commit makes SQLite drop it), and a `WalCheckpointer`
    copies the WAL into the file in a thread of its own. Both start with the
    first Store and end with `close`.

    Parameters
    ----------
    url : str
        ``sqlite:///PATH``: a file (not memory).
    params, create
        As `SqlStorage`; without ``create`` the file must exist.

    Raises
    ------
    StorageError
        As `SqlStorage`, or where the C API cannot be used
        (`association.storage.sqlite.native.available`).
    """

    def __init__(self, url: str, params: FrozenParameters | None, *, create: bool = False) -> None:
        path = sqlite_path(url)
        if path is None or not native.available():
            raise StorageError(f"{url}: no SQLite file the C API can open; use SqlStorage")
        if not create and not Path(path).is_file():
            raise StorageError(f"database {url}: no such file")
        self.path = path
        self._lock = threading.Lock()  # one Store at a time, and none once closed
        self._writer: native.Connection | None = None
        self._checkpointer: WalCheckpointer | None = None
        self._closed = False
        self._local = threading.local()  # a thread's shared read connection (`reading`)
        super().__init__(url, params, create=create)

    def close(self) -> None:
        """Wait for a Store under way; close the writer, checkpoint the WAL, release all."""
        with self._lock:
            self._closed = True
            try:
                if self._writer is not None:
                    self._writer.close()
            finally:
                if self._checkpointer is not None:
                    self._checkpointer.close()
                self._writer = self._checkpointer = None
        super().close()

    # -- the Store -------------------------------------------------------------------

    def _write_visit(
        self,
        visit: int,
        inserts: list[Insert],
        visit_row: dict[str, object],
        before_commit: Callable[[], None] | None,
    ) -> None:
        with self._lock:
            conn = self._native_writer()
            conn.execute("BEGIN IMMEDIATE")
            try:
                for table in VISIT_TABLES:
                    conn.execute(f"DELETE FROM {table.name} WHERE visit = ?", (visit,))
                for ins in inserts:
                    for sql, params in ins.first:
                        conn.execute(sql, params)
                    conn.insert_rows(
                        ins.table.name,
                        ins.columns,
                        texts=ins.texts,
                        order=ins.order,
                        suffix=ins.suffix,
                    )
                names = list(visit_row)
                conn.execute(
                    f"INSERT INTO {tables.visits.name} ({', '.join(names)}) "
                    f"VALUES ({', '.join('?' * len(names))})",
                    tuple(visit_row[n] for n in names),
                )
                if before_commit is not None:
                    before_commit()
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _native_writer(self) -> native.Connection:
        """The Store's connection, opened with the WAL checkpointer on first use (locked)."""
        if self._closed:
            raise StorageError(f"database {self.url}: closed, no more Stores")
        if self._writer is None:
            writer = native.connect(self.path, cache_kib=WRITER_CACHE_KIB)
            try:
                writer.execute("PRAGMA synchronous=NORMAL")
                checkpointer = WalCheckpointer(self.path)
                checkpointer.attach(self.engine, writer)
            except BaseException:
                writer.close()
                raise
            self._writer, self._checkpointer = writer, checkpointer
        return self._writer

    # -- reads -----------------------------------------------------------------------

    @contextmanager
    def reading(self) -> Iterator[None]:
        """This thread's reads inside share one connection; each is still its own snapshot.

        A new connection parses the schema on its first statement, which costs
        more than a small read: a field of many small chunks is read in a
        fraction of the time.
        """
        if getattr(self._local, "reader", None) is not None:
            yield  # already inside
            return
        conn = native.connect(self.path, mmap_mib=MMAP_MIB)
        self._local.reader = conn
        try:
            yield
        finally:
            self._local.reader = None
            conn.close()

    @contextmanager
    def _read_connection(self) -> Iterator[native.Connection]:
        """The thread's shared read connection (see `reading`), else a new one."""
        shared = getattr(self._local, "reader", None)
        if shared is None:
            with native.connect(self.path, mmap_mib=MMAP_MIB) as conn:
                yield conn
            return
        try:
            yield shared
        finally:
            if shared.in_transaction:
                shared.execute("ROLLBACK")  # ends the read's snapshot

    def _fetch_columns(
        self, sql: str, params: Sequence[int | float], kinds: dict[str, str], presize: bool
    ) -> dict[str, np.ndarray]:
        with self._read_connection() as conn:
            expected = 1 << 16
            if presize:
                # One read transaction: the count and the rows see the same snapshot.
                conn.execute("BEGIN")
                expected = conn.count(sql, params)
            return conn.fetch(sql, params, kinds, expected=expected)

    # -- bulk loads ------------------------------------------------------------------

    def _bulk(self, ins: Insert, chunk: int) -> None:
        """Through `native.Connection.bulk_insert`, the engine's idle connections closed first.

        They would keep the load from taking the file to itself (and loading
        under a rollback journal). ``chunk`` is not used.
        """
        self.engine.dispose()
        with native.connect(self.path, cache_kib=BULK_CACHE_KIB) as conn:
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.bulk_insert(ins.table.name, ins.columns, texts=ins.texts, order=ins.order)
