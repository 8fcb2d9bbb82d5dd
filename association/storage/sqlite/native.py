"""SQLite files read and written through the C API, with numba loops.

Python's sqlite3 module makes a Python object of every value it reads or
writes: about 7 s to read the 2 million Objects of a field, and longer to
insert them. Here rows go between numpy columns and SQLite through numba loops
over the C API of the very libsqlite3 that the sqlite3 module has loaded (a
second copy of SQLite in one process would break its file locks).

`available` tells whether this process can do that (Linux, libsqlite3 a shared
library); `connect` opens a `Connection` on a database file.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from association.storage.interface import COLUMN_KINDS
from association.storage.sqlite import kernels
from association.storage.sqlite.kernels import SQLITE_DONE, SQLITE_NULL, SQLITE_OK, SQLITE_ROW

_log = logging.getLogger(__name__)

KINDS = COLUMN_KINDS
"""Column kinds `Connection.fetch` returns; the kernels know them by position."""

_SQLITE_CONSTRAINT = 19
_SQLITE_INTEGER, _SQLITE_FLOAT = 1, 2
_SQLITE_OPEN_READWRITE = 0x2
_SQLITE_OPEN_NOMUTEX = 0x8000  # one thread at a time: no lock around every call
_SQLITE_TRANSIENT = ctypes.c_void_p(-1)
_BUSY_TIMEOUT_MS = 60_000
_CHECKPOINT_WAIT_MS = 2_000
_NO_WAIT_MS = 0
_MAX_PARAMS = 32_766  # SQLITE_MAX_VARIABLE_NUMBER's default since 3.32


class Library:
    """The process's libsqlite3, reached through ctypes and from compiled loops.

    Made once per process by `library`; every `Connection` holds it.

    Parameters
    ----------
    path : str
        The shared library file the sqlite3 module has loaded.

    Raises
    ------
    OSError
        When that library is not the sqlite3 module's (another version).
    """

    def __init__(self, path: str) -> None:
        import llvmlite.binding as llvm

        self.path = path
        self.lib = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_GLOBAL)
        self.lib.sqlite3_libversion.restype = ctypes.c_char_p
        version = self.lib.sqlite3_libversion().decode()
        if version != sqlite3.sqlite_version:
            raise OSError(f"{path} is SQLite {version}, not the sqlite3 module's")
        p, i, i64, d = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_double
        signatures = {
            "sqlite3_open_v2": ([ctypes.c_char_p, ctypes.POINTER(p), i, p], i),
            "sqlite3_busy_timeout": ([p, i], i),
            "sqlite3_prepare_v2": ([p, ctypes.c_char_p, i, ctypes.POINTER(p), p], i),
            "sqlite3_bind_int64": ([p, i, i64], i),
            "sqlite3_bind_double": ([p, i, d], i),
            "sqlite3_bind_null": ([p, i], i),
            "sqlite3_bind_text": ([p, i, ctypes.c_char_p, i, p], i),
            "sqlite3_step": ([p], i),
            "sqlite3_column_count": ([p], i),
            "sqlite3_column_type": ([p, i], i),
            "sqlite3_column_int64": ([p, i], i64),
            "sqlite3_column_double": ([p, i], d),
            "sqlite3_column_text": ([p, i], ctypes.c_char_p),
            "sqlite3_errmsg": ([p], ctypes.c_char_p),
            "sqlite3_get_autocommit": ([p], i),
            "sqlite3_finalize": ([p], i),
            "sqlite3_close_v2": ([p], i),
        }
        for name, (args, res) in signatures.items():
            fn = getattr(self.lib, name)
            fn.argtypes, fn.restype = args, res
        # The compiled loops (`kernels`) find their C functions by symbol name.
        llvm.load_library_permanently(path)
        self.fetch_kernel = kernels.fetch_rows
        self.insert_kernel = kernels.insert_rows


@functools.cache
def library() -> Library | None:
    """The native access, or None where it cannot share the sqlite3 module's library."""
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
    try:
        return Library(paths.pop())
    except (OSError, ImportError, AttributeError):
        return None


def available() -> bool:
    """Whether this process can use the native access (else use the sqlite3 module)."""
    return library() is not None


def connect(
    path: str | Path, cache_kib: int | None = None, mmap_mib: int | None = None
) -> Connection:
    """Open the SQLite file ``path`` (it must exist) for native access.

    Parameters
    ----------
    path : str or Path
        The database file.
    cache_kib : int, optional
        The connection's page cache, KiB; SQLite's default if None.
    mmap_mib : int, optional
        Read up to this much of the file through memory mapping instead of
        read calls (faster for large scans); not at all if None.

    Returns
    -------
    Connection
        Raises RuntimeError where `available` is False.
    """
    lib = library()
    if lib is None:
        raise RuntimeError("native SQLite access is not available in this process")
    return Connection(lib, str(path), cache_kib, mmap_mib)


class Connection:
    """One connection to a SQLite file through the C API; a context manager.

    Use it from one thread at a time. Closing it rolls back a transaction
    still open.
    """

    def __init__(
        self,
        lib: Library,
        path: str,
        cache_kib: int | None = None,
        mmap_mib: int | None = None,
    ) -> None:
        self._lib = lib
        self.path = path
        self._db = ctypes.c_void_p()
        c = lib.lib
        flags = _SQLITE_OPEN_READWRITE | _SQLITE_OPEN_NOMUTEX
        rc = c.sqlite3_open_v2(path.encode(), ctypes.byref(self._db), flags, None)
        try:
            self._check(rc)
            c.sqlite3_busy_timeout(self._db, _BUSY_TIMEOUT_MS)
            if cache_kib is not None:
                self.execute(f"PRAGMA cache_size=-{int(cache_kib)}")
            if mmap_mib is not None:
                self.execute(f"PRAGMA mmap_size={int(mmap_mib) << 20}")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Roll back any open transaction and close."""
        if not self._db:
            return
        try:
            if self.in_transaction:
                self.execute("ROLLBACK")
        finally:
            self._lib.lib.sqlite3_close_v2(self._db)
            self._db = ctypes.c_void_p()

    def __enter__(self) -> Connection:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def in_transaction(self) -> bool:
        """Whether a transaction is open."""
        return not self._lib.lib.sqlite3_get_autocommit(self._db)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        """Run one statement to the end; return its rows as Python values (slow: few rows)."""
        c = self._lib.lib
        with self._statement(sql, params) as stmt:
            rows = []
            while (rc := c.sqlite3_step(stmt)) == SQLITE_ROW:
                rows.append(
                    tuple(self._value(stmt, i) for i in range(c.sqlite3_column_count(stmt)))
                )
            if rc != SQLITE_DONE:
                self._check(rc)
            return rows

    def fetch(
        self,
        sql: str,
        params: Sequence[int | float],
        kinds: Mapping[str, str],
        *,
        expected: int = 1 << 16,
    ) -> dict[str, np.ndarray]:
        """Run one SELECT; return its columns as numpy arrays.

        Parameters
        ----------
        sql : str
            The query, ``?`` for each parameter.
        params : sequence of int or float
            The parameters in order.
        kinds : mapping
            Output name -> kind in `KINDS`, in the order of the SELECT list.
        expected : int
            Rows to make room for at first; the columns grow past it.
        """
        return self._fetch(sql, params, kinds, None, expected)

    def fetch_each(
        self,
        sql: str,
        keys: np.ndarray,
        kinds: Mapping[str, str],
        params: Sequence[int | float] = (),
        *,
        expected: int = 1 << 16,
        reverse_each: bool = False,
    ) -> dict[str, np.ndarray]:
        """Run one SELECT per key, its rows one after the other, as numpy columns.

        ``sql``'s first parameter is the key, ``params`` the ones after it.
        With ``reverse_each`` each key's rows come in the reverse of the
        query's order. See `fetch`.
        """
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        return self._fetch(sql, params, kinds, keys, expected, reverse_each)

    def count(self, sql: str, params: Sequence[int | float] = ()) -> int:
        """The number of rows ``sql`` returns."""
        found = self.fetch(f"SELECT count(*) FROM ({sql})", params, {"n": "i8"}, expected=1)
        return int(found["n"][0])

    def bulk_insert(
        self,
        table: str,
        columns: Mapping[str, np.ndarray],
        *,
        texts: Mapping[str, Sequence[str]] | None = None,
        order: np.ndarray | None = None,
        chunk: int = 1 << 14,
        rows_per_statement: int = 64,
        build_indexes_after: bool = True,
        sort_cache_kib: int = 2048,
        rollback_journal: bool = True,
    ) -> int:
        """Insert rows in one transaction of their own; return how many.

        Parameters
        ----------
        table : str
            The table.
        columns : mapping
            Column name -> 1-d array, all one length: integers and booleans
            are bound as integers, floats as doubles (NaN as NULL).
        texts : mapping, optional
            Column name -> its strings: that column holds indices into them,
            and is bound as text.
        order : ndarray, optional
            The order to insert the rows in (indices into the columns).
        chunk : int
            Rows per batch handed to the compiled loop; the next batch is
            gathered in a second thread while SQLite inserts one.
        rows_per_statement : int
            Rows per INSERT statement (a multi-row VALUES list), fewer if
            they would take too many parameters.
        build_indexes_after : bool
            Into an empty table, drop the table's own indexes (those made by
            CREATE INDEX) first and build them again after the rows, from
            their stored SQL, in the same transaction: far faster than
            keeping them up to date row by row.
        sort_cache_kib : int
            The page cache while building those indexes, KiB, which sets the
            size of SQLite's sorted runs.
        rollback_journal : bool
            Into an empty table of a WAL database that no other connection
            has open, load under a rollback journal (TRUNCATE) and go back to
            WAL after: new pages then go straight into the file, instead of
            into the WAL and from there, by a checkpoint, into the file.

        Notes
        -----
        Rows in primary-key order are cheapest. A failure
        (sqlite3.IntegrityError for a constraint) rolls everything back.
        After the commit the rows are in the database file itself: a WAL is
        checkpointed and truncated.
        """
        n = _common_length(columns)
        if n == 0:
            return 0
        with self._rollback_journal(table, rollback_journal) as switched:
            self.execute("BEGIN IMMEDIATE")
            try:
                indexes = []
                if build_indexes_after and self._empty(table):
                    indexes = self.execute(
                        "SELECT name, sql FROM sqlite_master "
                        "WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL",
                        (table,),
                    )
                    for index, _ in indexes:
                        self.execute(f"DROP INDEX {quote(index)}")
                self.insert_rows(
                    table,
                    columns,
                    texts=texts,
                    order=order,
                    chunk=chunk,
                    rows_per_statement=rows_per_statement,
                )
                if indexes:
                    # SQLite sorts an index's entries in runs the size of the
                    # page cache: small runs that stay in the CPU caches sort fastest.
                    (cache,) = self.execute("PRAGMA cache_size")[0]
                    self.execute(f"PRAGMA cache_size=-{int(sort_cache_kib)}")
                    for _, index_sql in indexes:
                        self.execute(index_sql)
                    self.execute(f"PRAGMA cache_size={int(cache)}")
                self.execute("COMMIT")
            except BaseException:
                if self.in_transaction:
                    self.execute("ROLLBACK")
                raise
        if not switched and self._journal_mode() == "wal":
            # Into the database file, and the WAL back to nothing; a reader
            # still on an older snapshot may keep some in the WAL for later.
            with self._busy_timeout(_CHECKPOINT_WAIT_MS):
                self.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return n

    def insert_rows(
        self,
        table: str,
        columns: Mapping[str, np.ndarray],
        *,
        texts: Mapping[str, Sequence[str]] | None = None,
        order: np.ndarray | None = None,
        chunk: int = 1 << 14,
        rows_per_statement: int = 64,
        suffix: str = "",
    ) -> int:
        """Insert rows in the open transaction; return how many.

        As `bulk_insert` (same ``columns``, ``texts``, ``order``, ``chunk`` and
        ``rows_per_statement``) but with no transaction or index handling of
        its own. ``suffix`` ends each statement, e.g. an ``ON CONFLICT`` clause.
        """
        names = list(columns)
        n = _common_length(columns)
        if n == 0:
            return 0
        if order is not None:
            order = np.asarray(order, dtype=np.intp)
            if order.shape != (n,):
                raise ValueError(f"order has shape {order.shape}, expected ({n},)")
        text = _TextTable(table, columns, texts or {})
        code = np.array(
            [
                2 if name in text.base else 1 if np.asarray(columns[name]).dtype.kind == "f" else 0
                for name in names
            ],
            dtype=np.int64,
        )
        slot = np.zeros(len(names), dtype=np.int64)
        slot[code != 1] = np.arange((code != 1).sum())
        slot[code == 1] = np.arange((code == 1).sum())

        def batch(start: int) -> tuple[np.ndarray, np.ndarray]:
            stop = min(n, start + chunk)
            take = slice(start, stop) if order is None else order[start:stop]
            ints = np.empty(((code != 1).sum(), stop - start), dtype=np.int64)
            floats = np.empty(((code == 1).sum(), stop - start), dtype=np.float64)
            for c, name in enumerate(names):
                values = np.asarray(columns[name])[take]
                if code[c] == 1:
                    floats[slot[c]] = values
                else:
                    ints[slot[c]] = values
                    if code[c] == 2:
                        ints[slot[c]] += text.base[name]
            return ints, floats

        col_sql = ", ".join(quote(name) for name in names)
        row_sql = f"({', '.join('?' * len(names))})"
        per = max(1, min(rows_per_statement, _MAX_PARAMS // max(1, len(names))))

        def insert(rows: int) -> str:
            return (
                f"INSERT INTO {quote(table)} ({col_sql}) VALUES {', '.join([row_sql] * rows)}"
                + suffix
            )

        with (
            self._statement(insert(per), ()) as many,
            self._statement(insert(1), ()) as one,
            ThreadPoolExecutor(max_workers=1) as pool,
        ):
            pending = pool.submit(batch, 0)
            for start in range(0, n, chunk):
                ints, floats = pending.result()
                if start + chunk < n:
                    pending = pool.submit(batch, start + chunk)
                done = 0
                for stmt, k in ((many, per), (one, 1)):
                    done, rc = self._lib.insert_kernel(
                        stmt.value, k, code, slot, ints, floats, *text.arrays(), done
                    )
                    if rc != SQLITE_DONE:
                        rows = f"rows {start + done}..{start + done + k - 1} (in order)"
                        self._check(rc, f", inserting {rows} into {table}")
        return n

    def _empty(self, table: str) -> bool:
        return not self.execute(f"SELECT 1 FROM {quote(table)} LIMIT 1")

    @contextlib.contextmanager
    def _rollback_journal(self, table: str, enabled: bool) -> Iterator[bool]:
        """A rollback journal for a load into an empty table, then WAL again.

        Only if ``enabled``, the file is in WAL mode, ``table`` is empty and
        no other connection has the file open. Yields whether it switched.
        """
        switched = (
            enabled
            and self._journal_mode() == "wal"
            and self._empty(table)
            and self._set_journal_mode("truncate", _NO_WAIT_MS)
        )
        try:
            yield switched
        finally:
            if switched and not self._set_journal_mode("wal", _BUSY_TIMEOUT_MS):
                _log.warning("%s: left in rollback-journal mode, not WAL", self.path)

    def _journal_mode(self) -> str:
        return str(self.execute("PRAGMA journal_mode")[0][0]).lower()

    def _set_journal_mode(self, mode: str, wait_ms: int) -> bool:
        """Switch the file to journal ``mode``; False if other connections prevent it."""
        with self._busy_timeout(wait_ms):
            try:
                self.execute(f"PRAGMA journal_mode={mode}")
            except sqlite3.OperationalError:
                return False
        return self._journal_mode() == mode

    @contextlib.contextmanager
    def _busy_timeout(self, ms: int) -> Iterator[None]:
        """Wait at most ``ms`` for a lock, for a while."""
        self._lib.lib.sqlite3_busy_timeout(self._db, ms)
        try:
            yield
        finally:
            self._lib.lib.sqlite3_busy_timeout(self._db, _BUSY_TIMEOUT_MS)

    # -- inside ----------------------------------------------------------------

    def _fetch(
        self,
        sql: str,
        params: Sequence[int | float],
        kinds: Mapping[str, str],
        keys: np.ndarray | None,
        expected: int,
        reverse_each: bool = False,
    ) -> dict[str, np.ndarray]:
        unknown = set(kinds.values()) - set(KINDS)
        if unknown:
            raise ValueError(f"column kinds {sorted(unknown)} not among {KINDS}")
        c = self._lib.lib
        first = 1 if keys is None else 2
        with self._statement(sql, params, first=first) as stmt:
            if c.sqlite3_column_count(stmt) != len(kinds):
                raise ValueError(
                    f"query returns {c.sqlite3_column_count(stmt)} columns, "
                    f"expected {len(kinds)}: {sql}"
                )
            code = np.array([KINDS.index(k) for k in kinds.values()], dtype=np.int64)
            slot = np.zeros(len(kinds), dtype=np.int64)
            for k in range(len(KINDS)):
                slot[code == k] = np.arange((code == k).sum())
            cap, n, k, resume = max(0, int(expected)) + 1, 0, 0, False  # room to see the end
            outs = [np.empty(((code == k).sum(), cap), dtype=t) for k, t in enumerate(KINDS)]
            bind = keys is not None
            runs = keys if bind else np.zeros(1, dtype=np.int64)
            counts = np.zeros(len(runs), dtype=np.int64)
            while True:
                n, k, rc = self._lib.fetch_kernel(
                    stmt.value, runs, counts, bind, reverse_each, k, resume, code, slot, *outs, n
                )
                if rc == SQLITE_DONE:
                    break
                if rc != SQLITE_ROW:
                    self._check(rc)
                cap, resume = 2 * cap + 1024, True
                outs = [_grow(out, n, cap) for out in outs]
        return {name: outs[k][s, :n] for name, k, s in zip(kinds, code, slot, strict=True)}

    @contextlib.contextmanager
    def _statement(
        self, sql: str, params: Sequence[Any], first: int = 1
    ) -> Iterator[ctypes.c_void_p]:
        """``sql`` prepared, ``params`` bound from parameter ``first`` on; finalized after."""
        c = self._lib.lib
        stmt = ctypes.c_void_p()
        try:
            self._check(c.sqlite3_prepare_v2(self._db, sql.encode(), -1, ctypes.byref(stmt), None))
            for i, value in enumerate(params, start=first):
                if value is None:
                    rc = c.sqlite3_bind_null(stmt, i)
                elif isinstance(value, str):
                    rc = c.sqlite3_bind_text(stmt, i, value.encode(), -1, _SQLITE_TRANSIENT)
                elif isinstance(value, float | np.floating):
                    rc = c.sqlite3_bind_double(stmt, i, float(value))
                else:
                    rc = c.sqlite3_bind_int64(stmt, i, int(value))
                self._check(rc)
            yield stmt
        finally:
            c.sqlite3_finalize(stmt)

    def _value(self, stmt: ctypes.c_void_p, i: int) -> Any:
        c = self._lib.lib
        t = c.sqlite3_column_type(stmt, i)
        if t == _SQLITE_INTEGER:
            return c.sqlite3_column_int64(stmt, i)
        if t == _SQLITE_FLOAT:
            return c.sqlite3_column_double(stmt, i)
        if t == SQLITE_NULL:
            return None
        return c.sqlite3_column_text(stmt, i).decode(errors="replace")

    def _check(self, rc: int, where: str = "") -> None:
        if rc != SQLITE_OK:
            msg = self._lib.lib.sqlite3_errmsg(self._db).decode(errors="replace")
            error = (
                sqlite3.IntegrityError
                if rc & 0xFF == _SQLITE_CONSTRAINT
                else sqlite3.OperationalError
            )
            raise error(f"{self.path}: {msg} (SQLite code {rc}){where}")


class _TextTable:
    """The strings of a bulk insert's text columns, in one buffer for the kernel.

    A text column's codes are shifted by ``base[name]``, where its strings start.
    """

    def __init__(
        self, table: str, columns: Mapping[str, np.ndarray], texts: Mapping[str, Sequence[str]]
    ) -> None:
        buffer, offsets, lengths = bytearray(), [], []
        self.base: dict[str, int] = {}
        for name, strings in texts.items():
            if name not in columns:
                raise ValueError(f"text column {name!r} not among the columns")
            codes = np.asarray(columns[name])
            bad = np.flatnonzero((codes < 0) | (codes >= len(strings)))
            if bad.size:
                raise ValueError(
                    f"{table} column {name} row {bad[0]}: index {codes[bad[0]]} "
                    f"not in 0..{len(strings) - 1}"
                )
            self.base[name] = len(offsets)
            for s in strings:
                b = s.encode()
                offsets.append(len(buffer))
                lengths.append(len(b))
                buffer += b
        self.buffer = np.frombuffer(bytes(buffer) or b"\0", dtype=np.uint8)
        self.offsets = np.array(offsets or [0], dtype=np.int64)
        self.lengths = np.array(lengths or [0], dtype=np.int32)

    def arrays(self) -> tuple[int, np.ndarray, np.ndarray]:
        """The kernel's (buffer address, offsets, lengths)."""
        return self.buffer.ctypes.data, self.offsets, self.lengths


def _common_length(columns: Mapping[str, np.ndarray]) -> int:
    lengths = {name: len(values) for name, values in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"columns of different lengths: {lengths}")
    return next(iter(lengths.values()), 0)


def _grow(a: np.ndarray, n: int, cap: int) -> np.ndarray:
    out = np.empty((a.shape[0], cap), dtype=a.dtype)
    out[:, :n] = a[:, :n]
    return out


def quote(name: str) -> str:
    """An SQL identifier, double-quoted."""
    return '"' + name.replace('"', '""') + '"'


def warm_up() -> None:
    """Load (or compile) the read kernels now, on an in-memory database, where available.

    A Slice calls it as it starts, so its first visit's loads do not pay for
    it; no file is touched.
    """
    if not available():
        return
    with connect(":memory:") as conn:
        conn.execute("CREATE TABLE t (a INTEGER, b REAL)")
        conn.execute("INSERT INTO t VALUES (1, 0.5)")
        conn.fetch("SELECT a, a, a, a, b, b FROM t", (), dict(zip(KINDS, KINDS, strict=True)))
        conn.fetch_each("SELECT a FROM t WHERE a = ?", np.ones(1, np.int64), {"a": "i8"})
