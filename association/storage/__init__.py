"""The association's database behind one interface (`Storage`), a class per backend.

`open_storage` picks the backend from the URL: `SqliteStorage` for a SQLite
file (the default, in the run directory), `PostgresStorage` for
``postgresql+psycopg://``, `SqlStorage` (the driver's way) otherwise.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import make_url

from association.storage.interface import (
    FrozenParameterError,
    FrozenParameters,
    SchemaVersionError,
    Storage,
    StorageError,
    VisitRecord,
)
from association.storage.postgres import PostgresStorage
from association.storage.sql import SqlStorage
from association.storage.sqlite import SqliteStorage, native
from association.storage.sqlite.storage import sqlite_path

SQLITE_NAME = "nightpipe.sqlite"
"""The database file in the run directory when no URL is given."""

__all__ = [
    "SQLITE_NAME",
    "FrozenParameterError",
    "FrozenParameters",
    "PostgresStorage",
    "SchemaVersionError",
    "SqlStorage",
    "SqliteStorage",
    "Storage",
    "StorageError",
    "VisitRecord",
    "default_url",
    "open_storage",
    "storage_class",
    "warm_up_reads",
]


def default_url(run_dir: str | Path) -> str:
    """The SQLite URL of the run directory's database file."""
    return f"sqlite:///{Path(run_dir).resolve() / SQLITE_NAME}"


def storage_class(url: str, native_access: bool = True) -> type[SqlStorage]:
    """The class that opens ``url``: the backend's fast one unless ``native_access`` is False.

    `SqliteStorage` needs a SQLite file and the C API
    (`association.storage.sqlite.native.available`); `PostgresStorage`
    the psycopg driver. Everything else, and ``native_access=False`` (the
    reference the fast paths are tested against), is `SqlStorage`.
    """
    parsed = make_url(url)
    if not native_access:
        return SqlStorage
    if parsed.get_backend_name() == "sqlite" and sqlite_path(url) and native.available():
        return SqliteStorage
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() == "psycopg":
        return PostgresStorage
    return SqlStorage


def open_storage(
    url: str | None,
    run_dir: str | Path,
    params: FrozenParameters | None,
    *,
    create: bool = False,
    native_access: bool = True,
) -> Storage:
    """Open the association's database.

    Parameters
    ----------
    url : str or None
        A SQLAlchemy URL (``sqlite:///...``, ``postgresql+psycopg://...``);
        None or empty for ``RUN_DIR/nightpipe.sqlite``.
    run_dir : str or Path
        The run directory; made if missing when its database is created.
    params : FrozenParameters or None
        The partition the caller works with, checked against the one recorded
        in the database; None to take the recorded one (readers that do not
        partition).
    create : bool
        Create the tables if missing and record ``params`` in a new database.
    native_access : bool
        False opens `SqlStorage`, the driver's way, whatever the backend.

    Raises
    ------
    StorageError
        No database or no tables (and not ``create``); `SchemaVersionError`,
        `FrozenParameterError` when the database was made otherwise.
    """
    if not url:
        if create:
            Path(run_dir).mkdir(parents=True, exist_ok=True)
        url = default_url(run_dir)
    return storage_class(url, native_access)(url, params, create=create)


def warm_up_reads() -> None:
    """Load (or compile) every backend's read kernels now; no database is touched."""
    from association.storage.postgres.copy import warm_up as copy_warm_up

    native.warm_up()
    copy_warm_up()
