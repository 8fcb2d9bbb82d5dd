"""What the stages of one visit leave for the next: the master's side and each Slice's."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from association.columns import DIASOURCE_DTYPE, OBJECT_DTYPE
from association.inputs.readers import PREDICTION_DTYPE

if TYPE_CHECKING:
    from association.catalogue import Transaction


def _none(dtype: np.dtype | str) -> np.ndarray:
    return np.empty(0, dtype)


@dataclass
class LoadResult:
    """What one Slice did for a visit's Load."""

    chunks_loaded: int
    chunks_cached: int
    objects_loaded: int
    objects_held: int
    seconds: float
    rss_mb: float


@dataclass(frozen=True)
class Candidates:
    """Every (DIASource, Object) pair within the match radius, sorted by (diaSourceId, diaObjectId).

    ``cost`` is the pair's association cost
    (`association.matching.assign.position_cost`), ``distance_arcsec`` its
    separation and ``isVariable`` whether the Object is a known variable.
    """

    diaSourceId: np.ndarray = field(default_factory=lambda: _none(np.int64))
    diaObjectId: np.ndarray = field(default_factory=lambda: _none(np.int64))
    cost: np.ndarray = field(default_factory=lambda: _none(np.float64))
    distance_arcsec: np.ndarray = field(default_factory=lambda: _none(np.float64))
    isVariable: np.ndarray = field(default_factory=lambda: _none(bool))

    def __len__(self) -> int:
        return len(self.diaSourceId)

    def take(self, rows: np.ndarray) -> Candidates:
        """The candidates at ``rows`` (indices or a mask), in that order."""
        return Candidates(*(getattr(self, f.name)[rows] for f in fields(self)))

    @classmethod
    def gather(cls, parts: list[Candidates]) -> Candidates:
        """Several Slices' candidates as one, sorted by (diaSourceId, diaObjectId)."""
        if not parts:
            return cls()
        whole = cls(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)))
        return whole.take(np.lexsort((whole.diaObjectId, whole.diaSourceId)))


@dataclass(frozen=True)
class MovingMatches:
    """Conclusive moving-object matches: one row per DIASource taken by a prediction.

    Attributes
    ----------
    ssObjectId, diaSourceId : ndarray of int64
        The moving object and the DIASource it took.
    predictions : ndarray of PREDICTION_DTYPE
        The prediction row that took each DIASource, in the same order: an
        alert under Rubin's schema builds its ``ssSource`` from it.
    """

    ssObjectId: np.ndarray = field(default_factory=lambda: _none(np.int64))
    diaSourceId: np.ndarray = field(default_factory=lambda: _none(np.int64))
    predictions: np.ndarray = field(default_factory=lambda: _none(PREDICTION_DTYPE))

    def __len__(self) -> int:
        return len(self.diaSourceId)


@dataclass(frozen=True)
class VisitCounts:
    """The figures of a stored visit, as ``association.alerts_ready`` gives them."""

    n_alerts: int
    n_sources: int
    n_new_objects: int
    n_moving: int


@dataclass
class MasterVisit:
    """The master's state of one visit, filled in stage by stage.

    Attributes
    ----------
    chunks : ndarray of int64
        load: the field's chunks (and its margin), sorted.
    owner : ndarray of int64
        load: the Slice that owns each of `chunks`.
    load : list of LoadResult
        load: each Slice's figures.
    sources : ndarray of DIASOURCE_DTYPE
        sources: the visit's DIASources, by diaSourceId; later stages fill
        in ``ssObjectId`` (moving) and ``diaObjectId`` (update: the Object
        each belongs to, its own id for a new Object, 0 for a mover).
    predictions : ndarray of PREDICTION_DTYPE
        predictions: NightMOPS's predicted positions (none if they never came).
    radius_arcsec : float
        crossmatch: the match radius used, and `radius_from` where it came from.
    candidates : Candidates
        crossmatch: every (DIASource, Object) pair within the radius, with
        its cost, from all the Slices.
    moving : MovingMatches
        moving: the conclusive moving-object matches, each with the
        prediction row that took it (for the alert's ``ssSource``).
    n_new : int
        update: Objects created by the visit.
    objects : ndarray of OBJECT_DTYPE
        update: every Object the visit changed or created, by diaObjectId.
    recent : ndarray of DIASOURCE_DTYPE
        update: those Objects' earlier recent DIASources, by Object then time.
    decided : bool
        share: the visit's changes are final in the catalogue; later visits
        may build on them, so it must be written.
    alerts_path : str
        store: the visit's alert file ("" when alerts go to no file).
    alerts_stream : dict
        store: ``topic`` and ``offsets`` (per partition, the first and last
        offset) of the visit's alerts on the Kafka stream; empty without one.
    counts : VisitCounts or None
        store: the visit's figures once stored.
    write_s : float
        store: seconds of the visit's transaction, from the writer taking it
        to its commit (not the wait behind earlier visits).
    """

    chunks: np.ndarray = field(default_factory=lambda: _none(np.int64))
    owner: np.ndarray = field(default_factory=lambda: _none(np.int64))
    load: list[LoadResult] = field(default_factory=list)
    sources: np.ndarray = field(default_factory=lambda: _none(DIASOURCE_DTYPE))
    predictions: np.ndarray = field(default_factory=lambda: _none(PREDICTION_DTYPE))
    radius_arcsec: float = float("nan")
    radius_from: str = ""
    candidates: Candidates = field(default_factory=Candidates)
    moving: MovingMatches = field(default_factory=MovingMatches)
    n_new: int = 0
    objects: np.ndarray = field(default_factory=lambda: _none(OBJECT_DTYPE))
    recent: np.ndarray = field(default_factory=lambda: _none(DIASOURCE_DTYPE))
    decided: bool = False
    alerts_path: str = ""
    alerts_stream: dict[str, Any] = field(default_factory=dict)
    counts: VisitCounts | None = None
    write_s: float = float("nan")


@dataclass
class SliceVisit:
    """One Slice's state of one visit.

    Attributes
    ----------
    owned : ndarray of int64
        load: the field's chunks this Slice owns.
    held : ndarray of int64
        load: the chunks pinned in memory for the visit (owned, and margin
        chunks the Slice holds whole).
    strip_chunks : ndarray of int64
        load: margin chunks it does not hold, of which it reads thin strips.
    reading : ndarray of int64
        load: the chunks its background read brings in, until they are held.
    reading_strips : bool
        load: whether its background read of strips is under way.
    sources : ndarray of DIASOURCE_DTYPE
        sources: the visit's DIASources in the chunks this Slice owns.
    txn : Transaction or None
        update: the visit's catalogue transaction on this Slice, open until
        the visit's changes are decided (share).
    """

    owned: np.ndarray = field(default_factory=lambda: _none(np.int64))
    held: np.ndarray = field(default_factory=lambda: _none(np.int64))
    strip_chunks: np.ndarray = field(default_factory=lambda: _none(np.int64))
    reading: np.ndarray = field(default_factory=lambda: _none(np.int64))
    reading_strips: bool = False
    sources: np.ndarray = field(default_factory=lambda: _none(DIASOURCE_DTYPE))
    txn: Transaction | None = None
