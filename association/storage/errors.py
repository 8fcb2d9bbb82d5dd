"""Which database errors pass (an outage, a lock, a full disk) and which do not (bad data, a bug)."""

from __future__ import annotations

import errno
import sqlite3

from sqlalchemy import exc as sa

PASSING_SQLITE = ("locked", "busy", "disk i/o", "database or disk is full", "unable to open")
"""Words of a SQLite error that clears by itself: another writer, a full or flaky disk."""

PASSING_ERRNO = frozenset({errno.ENOSPC, errno.EIO, errno.EAGAIN, errno.ECONNREFUSED})


class DatabaseBehind(RuntimeError):
    """The database lacks an earlier visit the catalogue in memory has decided.

    A visit's write is refused once an earlier one could not be written, so
    the database stays a prefix of the decided visits; the next run redoes
    the rest from the journal.
    """


def is_retriable(error: BaseException) -> bool:
    """Whether `error` is a passing fault worth retrying (as Rubin's prompt processing classes them).

    Passing: the server unreachable, restarting or shutting down, a dropped
    connection, a lock or busy timeout, a full disk; and `DatabaseBehind`.
    Not passing: integrity and data errors, programming errors, bad input.
    """
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if _passing(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def _passing(e: BaseException) -> bool:
    if isinstance(e, DatabaseBehind):
        return True
    if isinstance(e, sa.DBAPIError) and e.connection_invalidated:
        return True
    if isinstance(e, sa.OperationalError | sa.InterfaceError | sa.DisconnectionError):
        return not isinstance(e.orig, sqlite3.OperationalError) or _sqlite_passing(e.orig)
    if isinstance(e, sa.TimeoutError):  # the connection pool
        return True
    if isinstance(e, sqlite3.OperationalError):
        return _sqlite_passing(e)
    if type(e).__module__.startswith("psycopg") and type(e).__name__ in (
        "OperationalError",
        "InterfaceError",
        "AdminShutdown",
        "CannotConnectNow",
        "ConnectionFailure",
    ):
        return True
    return isinstance(e, OSError) and e.errno in PASSING_ERRNO


def _sqlite_passing(e: BaseException) -> bool:
    text = str(e).lower()
    return any(word in text for word in PASSING_SQLITE)
