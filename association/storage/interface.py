"""What the association pipeline asks of a database, as one abstract class.

`association.storage.open_storage` picks the implementation from the URL:
`association.storage.sql.SqlStorage` (any SQLAlchemy database, through its
driver), `association.storage.sqlite.SqliteStorage` (SQLite files, through the
C API) or `association.storage.postgres.PostgresStorage` (binary COPY).
All give the same rows.
"""

from __future__ import annotations

import dataclasses
import math
from abc import abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from sqlalchemy import Engine

COLUMN_KINDS = ("i8", "i4", "i2", "i1", "f8", "f4")
"""Column kinds `Storage.fetch_columns` reads into (``"i"``, ``"f"`` stand for 8 bytes)."""

MOVING_DTYPE = np.dtype([("visit", "i8"), ("ssObjectId", "i8"), ("diaSourceId", "i8")])
"""A moving-object match: a predicted moving object taken for a DIASource."""

ALERT_DTYPE = np.dtype([("alertId", "i8"), ("diaSourceId", "i8"), ("diaObjectId", "i8")])
"""The record of an alert sent."""

BULK_CHUNK = 50_000
"""Rows converted at a time by the bulk loads' driver and COPY paths."""


class StorageError(RuntimeError):
    """The database cannot be used as asked; the message names it and says why."""


class SchemaVersionError(StorageError):
    """The database holds tables of a schema version this code cannot use."""


class FrozenParameterError(StorageError):
    """The database was made with other frozen parameters than the config gives."""


@dataclass(frozen=True)
class FrozenParameters:
    """Settings the database's rows are laid out by, fixed when it is made.

    They are recorded in the ``parameters`` table when the database is
    created and checked whenever it is opened: Objects stored under one fine
    order would be found in the wrong chunks under another.

    Parameters
    ----------
    chunk_order : int
        HEALPix order of the chunks a Slice loads whole.
    fine_order : int
        HEALPix order of the ``fine`` index of Objects and DIASources.
    """

    chunk_order: int
    fine_order: int

    @property
    def chunk_shift(self) -> int:
        """``fine >> chunk_shift`` is the chunk of a fine index."""
        return 2 * (self.fine_order - self.chunk_order)

    def as_strings(self) -> dict[str, str]:
        """Name -> value as text, as the ``parameters`` table holds them."""
        return {f.name: str(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_strings(cls, values: Mapping[str, str], where: str) -> FrozenParameters:
        """The parameters recorded in database ``where`` (named in errors)."""
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in values]
        if missing:
            raise StorageError(f"database {where} records no {', '.join(missing)}")
        try:
            return cls(**{n: int(values[n]) for n in names})
        except ValueError as exc:
            raise StorageError(f"database {where}: bad parameters {dict(values)}: {exc}") from None

    def check(self, wanted: FrozenParameters | None, where: str) -> None:
        """Raise `FrozenParameterError` naming both values where ``wanted`` differs."""
        if wanted is None:
            return
        differ = [
            f.name
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(wanted, f.name)
        ]
        if differ:
            made = ", ".join(f"{n}={getattr(self, n)}" for n in differ)
            says = ", ".join(f"{n}={getattr(wanted, n)}" for n in differ)
            raise FrozenParameterError(
                f"database {where} was made with {made}; the config says {says}"
            )


@dataclass
class VisitRecord:
    """The ``visits`` row of a stored visit: what it was and what it made.

    Parameters
    ----------
    visit : int
        The visit (field of view) id.
    mjd, ra, dec : float
        Its time (MJD) and pointing (deg).
    filter : str
        Its filter.
    n_sources : int
        DIASources stored.
    n_alerts : int
        Alerts sent.
    n_new_objects : int
        Objects it created.
    n_moving : int
        DIASources taken for predicted moving objects.
    """

    visit: int
    mjd: float
    ra: float
    dec: float
    filter: str
    n_sources: int
    n_alerts: int
    n_new_objects: int
    n_moving: int


class Storage(AbstractContextManager):
    """The association's database: Objects, DIASources, visits, alerts.

    Open one with `association.storage.open_storage`; close it with `close`
    (or use it as a context manager). Reads and `store_visit` may be called
    from different threads; `store_visit` from one thread at a time.

    A NaN float is stored as NULL and read back as NaN, on every backend.

    Attributes
    ----------
    engine : Engine
        The SQLAlchemy engine, for plain SQL (reports, quality figures).
    params : FrozenParameters
        The parameters the database was made with.
    url : str
        The database URL, password hidden, for messages.
    """

    engine: Engine
    params: FrozenParameters
    url: str

    @abstractmethod
    def store_visit(
        self,
        record: VisitRecord,
        diasources: np.ndarray,
        objects: np.ndarray,
        moving: np.ndarray | Sequence[np.ndarray] | None = None,
        alerts: np.ndarray | Sequence[np.ndarray] | None = None,
        before_commit: Callable[[], None] | None = None,
    ) -> None:
        """Write one visit in one transaction; storing it again leaves the same rows.

        Parameters
        ----------
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
        """

    @abstractmethod
    def visit_record(self, visit: int) -> VisitRecord | None:
        """The stored row of ``visit``; None until its Store has committed."""

    def visit_stored(self, visit: int) -> bool:
        """Whether the Store of ``visit`` has committed."""
        return self.visit_record(visit) is not None

    @abstractmethod
    def load_objects(self, lo: int, hi: int) -> np.ndarray:
        """The Objects with ``lo <= fine < hi`` (OBJECT_DTYPE), ordered by diaObjectId."""

    @contextmanager
    def reading(self) -> Iterator[None]:
        """Many reads in a row, from one thread: a backend may share a connection between them.

        Each read still sees the latest commit, as outside. Nests.
        """
        yield

    @abstractmethod
    def count_objects(self, lo: np.ndarray, hi: np.ndarray, at_most: int) -> np.ndarray:
        """Objects in each fine-index range ``[lo[i], hi[i])``, counting up to ``at_most``.

        One short index probe per range, a few statements for all: what a
        field of many empty or sparse chunks costs to size up.
        """

    @abstractmethod
    def load_objects_ranges(self, lo: np.ndarray, hi: np.ndarray) -> list[np.ndarray]:
        """The Objects of each fine-index range, as `load_objects` gives them, in few statements.

        For many ranges of few Objects (a sparse field); the ranges must not
        overlap.
        """

    @abstractmethod
    def load_object_columns(
        self, lo: np.ndarray, hi: np.ndarray, names: Sequence[str]
    ) -> dict[str, np.ndarray]:
        """Some plain Object columns over the fine-index ranges ``[lo, hi)``, in no set order.

        For the thin strips a Slice reads around its chunks: many small
        ranges, few columns. The ranges must not overlap.
        """

    @abstractmethod
    def load_recent_diasources(
        self, lo: int, hi: int, per_object: int = 10, since: float = -math.inf
    ) -> np.ndarray:
        """The latest DIASources of the Objects with ``lo <= fine < hi``.

        A DIASource is chosen by its Object's fine index, not its own. Only
        those with ``midpointMjdTai >= since`` (the recent-history window), of
        them at most ``per_object`` per Object, the latest by midpointMjdTai
        (ties: larger diaSourceId); sorted by (diaObjectId, midpointMjdTai,
        diaSourceId).
        """

    @abstractmethod
    def bulk_load_objects(self, objects: np.ndarray, *, chunk: int = BULK_CHUNK) -> None:
        """Insert a starting catalogue of Objects (new ids only) in one transaction.

        Into an empty table, its other indexes are built after the rows.
        ``chunk`` rows are converted at a time where rows are converted.
        """

    @abstractmethod
    def bulk_load_diasources(
        self,
        diasources: np.ndarray,
        objects: np.ndarray | None = None,
        *,
        object_chunks: np.ndarray | None = None,
        chunk: int = BULK_CHUNK,
    ) -> None:
        """Insert past DIASources (new ids only) in one transaction; see `bulk_load_objects`.

        ``objects`` (``diaObjectId`` and ``fine``) holds their Objects, or
        some; those not in it are looked up in the database. Or
        ``object_chunks`` gives each DIASource's chunk (`rows.diasource_chunks`).
        """

    @abstractmethod
    def fetch_columns(
        self,
        sql: str,
        params: Sequence[int | float],
        kinds: Mapping[str, str],
        *,
        presize: bool = True,
    ) -> dict[str, np.ndarray]:
        """Run one SELECT; its result as numpy columns, by the fastest way the backend has.

        Parameters
        ----------
        sql : str
            The query, with ``?`` for each parameter; it selects
            ``len(kinds)`` columns, no ``?`` or ``%`` elsewhere.
        params : sequence of int or float
            The parameters in order.
        kinds : mapping
            Output name -> numpy type, in the order of the SELECT list: one
            of `COLUMN_KINDS` (``"i"`` and ``"f"`` for 8 bytes). Integer
            columns must not be NULL; NULL floats read as NaN.
        presize : bool
            Where it helps, count the rows first to fill the columns without
            regrowing them; worth it unless the query is much dearer than a
            range scan.
        """

    @abstractmethod
    def note(self, name: str, value: str) -> None:
        """Record a fact about the database (`noted` reads it back)."""

    @abstractmethod
    def noted(self, name: str) -> str | None:
        """A fact recorded with `note`, or None."""

    @abstractmethod
    def clear_catalogue(self) -> None:
        """Delete every Object and DIASource in one transaction (to redo a half-done preload)."""

    @abstractmethod
    def close(self) -> None:
        """Finish what is being written and release the connections."""

    def __exit__(self, *exc: Any) -> None:
        self.close()
