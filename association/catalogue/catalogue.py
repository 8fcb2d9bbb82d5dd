"""The in-memory catalogue of a Slice: the chunks it holds, LRU eviction, pinning, transactions.

A Slice keeps chunks (coarse HEALPix NESTED pixels) across visits, its owned
chunks and read-only margin copies alike; the catalogue does not tell them
apart. A chunk is a `Chunk`; the id lookup over all of them an `IdIndex`; the
update of a visit a `Transaction`.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from collections.abc import Container, Hashable, Iterable
from dataclasses import dataclass, field

import numpy as np

from association import records as rec
from association.catalogue.chunk import Chunk
from association.catalogue.ids import IdIndex
from association.catalogue.transaction import ChunkConflict, Transaction
from association.catalogue.variability import VariabilityConfig
from association.columns import DIASOURCE_DTYPE, OBJECT_DTYPE
from association.records import I8

_MAX_CHUNK = 2**31 - 1

EXPIRE_STEP_DAYS = 1.0
"""Recent DIASources that fell out of the window leave memory in sweeps this far apart at most
(an eighth of the window if that is shorter)."""


@dataclass(frozen=True)
class CatalogueConfig:
    """Limits and rules of a Slice's catalogue.

    Parameters
    ----------
    max_megabytes : float
        Memory budget (10**6 bytes); unpinned chunks are evicted, least
        recently used first, while the catalogue holds more.
    recent_per_object : int
        Recent DIASources kept per Object (the latest by midpointMjdTai).
    recent_days : float
        The recent history is a time window: a visit at MJD ``t`` sees the
        DIASources with ``midpointMjdTai >= t - recent_days`` (of them, at
        most `recent_per_object` per Object). Older ones leave memory.
    variability : VariabilityConfig
        When an Object's flux history makes it variable.
    """

    max_megabytes: float = 2048.0
    recent_per_object: int = 10
    recent_days: float = 365.0
    variability: VariabilityConfig = field(default_factory=VariabilityConfig)

    def __post_init__(self) -> None:
        if self.max_megabytes <= 0:
            raise ValueError(f"max_megabytes must be positive, got {self.max_megabytes}")
        if self.recent_per_object < 1:
            raise ValueError(f"recent_per_object must be >= 1, got {self.recent_per_object}")
        if not self.recent_days > 0:
            raise ValueError(f"recent_days must be positive, got {self.recent_days}")


class Catalogue:
    """The chunks a Slice holds, with LRU eviction, pinning and per-visit transactions.

    A visit on a Slice: ``pin(visit, chunks, mjd)``, ``put`` each of ``missing(chunks)``
    (recent DIASources since `recent_floor`), ``gather(chunks)`` for the zone index;
    then ``begin(visit)``, ``associate``, ``create``, ``changed(owned)`` for Store,
    ``recent_for(ids, window_start(visit))``, ``commit()``; finally ``unpin(visit)``.
    Pin before ``put`` so that loading one chunk cannot evict another of the visit.

    The recent history is a window of ``config.recent_days`` before each visit
    (`window_start`). Memory keeps what the pinned visits' windows need
    (`recent_floor`): rows older than that are swept out of the held chunks
    once the floor has moved on by `EXPIRE_STEP_DAYS` (or an eighth of the
    window), when a visit is pinned. This assumes visits are pinned in about
    their time order (as ``telescope.next_visit`` comes); a visit pinned
    later with an earlier time may miss rows at its window's start.

    Parameters
    ----------
    config : CatalogueConfig
        Limits and rules.
    chunk_shift : int
        ``chunk = fine >> chunk_shift``, i.e. ``2 * (fine_order - chunk_order)``.
    """

    def __init__(self, config: CatalogueConfig, chunk_shift: int) -> None:
        if chunk_shift < 0 or chunk_shift % 2:
            raise ValueError(f"chunk_shift must be even and >= 0, got {chunk_shift}")
        self.config = config
        self.chunk_shift = chunk_shift
        self._chunks: OrderedDict[int, Chunk] = OrderedDict()
        self._index = IdIndex()
        self._pins: dict[Hashable, set[int]] = {}
        self._pin_count: Counter[int] = Counter()
        self._claims: dict[int, Transaction] = {}
        self._open: dict[Hashable, Transaction] = {}
        self._evictions = 0
        self._visit_mjd: dict[Hashable, float] = {}
        self._expired_before = -math.inf

    # chunks held

    def has(self, chunk: int) -> bool:
        """Whether ``chunk`` is held."""
        return int(chunk) in self._chunks

    def missing(self, chunks: Iterable[int]) -> np.ndarray:
        """The chunks of ``chunks`` not held, in the given order."""
        c = np.array([int(x) for x in chunks], I8)
        return c[np.array([x not in self._chunks for x in c.tolist()], bool)]

    def held(self) -> np.ndarray:
        """Ids of the held chunks, sorted."""
        return np.sort(np.fromiter(self._chunks, I8, len(self._chunks)))

    def chunk(self, chunk: int) -> Chunk:
        """The held chunk ``chunk`` (KeyError if not held)."""
        return self._chunks[int(chunk)]

    def put(self, chunk: int, objects: np.ndarray, recent: np.ndarray) -> Chunk:
        """Hold ``chunk`` with these Objects and recent DIASources (copied, sorted, trimmed).

        Replaces a held copy unless an open transaction has touched it. Every
        Object's ``fine`` must lie in the chunk and every recent DIASource must
        belong to one of its Objects.
        """
        return self.put_all([(chunk, objects, recent)])[0]

    def put_all(self, reads: Iterable[tuple[int, np.ndarray, np.ndarray]]) -> list[Chunk]:
        """`put` each ``(chunk, objects, recent)`` of ``reads``, then evict once."""
        held = [self._hold(*read) for read in reads]
        self._evict(protect={ch.chunk for ch in held})
        return held

    def _hold(self, chunk: int, objects: np.ndarray, recent: np.ndarray) -> Chunk:
        chunk = int(chunk)
        if not 0 <= chunk <= _MAX_CHUNK:
            raise ValueError(f"chunk id {chunk} out of range")
        if chunk in self._claims:
            raise ChunkConflict(f"chunk {chunk} is touched by an open transaction")
        objects, recent = np.asarray(objects).ravel(), np.asarray(recent).ravel()
        if objects.dtype != OBJECT_DTYPE:
            raise TypeError(f"objects: expected OBJECT_DTYPE, got {objects.dtype}")
        if recent.dtype != DIASOURCE_DTYPE:
            raise TypeError(f"recent: expected DIASOURCE_DTYPE, got {recent.dtype}")
        ids = np.ascontiguousarray(objects["diaObjectId"])
        if not rec.is_sorted(ids):
            objects = rec.take(objects, np.argsort(ids, kind="stable"))
            ids = np.ascontiguousarray(objects["diaObjectId"])
        if np.any(ids[1:] == ids[:-1]):
            raise ValueError(f"chunk {chunk}: duplicate diaObjectId")
        if np.any(objects["fine"] >> self.chunk_shift != chunk):
            raise ValueError(f"chunk {chunk}: an Object's fine index lies outside the chunk")
        where = self._index.locate(ids)
        if np.any((where >= 0) & (where != chunk)):
            raise ValueError(f"chunk {chunk}: an Object id is already held in another chunk")
        rid = recent["diaObjectId"]
        pos = np.minimum(np.searchsorted(ids, rid), max(len(ids) - 1, 0))
        if len(rid) and (not len(ids) or np.any(ids[pos] != rid)):
            raise ValueError(f"chunk {chunk}: a recent DIASource has no Object in the chunk")
        # The chunk keeps its own copy: sorted if need be, else copied as it is.
        order = None if rec.is_canonical(recent) else rec.canonical(recent)
        recent = rec.copy(recent) if order is None else rec.take(recent, order)
        recent = rec.trim(recent, self.config.recent_per_object)

        if chunk in self._chunks:
            self._index.remove(self._chunks.pop(chunk).ids())
        held = Chunk(chunk, objects, recent, self.config.recent_per_object)
        self._chunks[chunk] = held
        self._index.add(ids, chunk)
        return held

    # pinning and eviction

    def pin(self, key: Hashable, chunks: Iterable[int], mjd: float | None = None) -> None:
        """Protect ``chunks`` from eviction until ``unpin(key)``; they need not be held yet.

        ``mjd``, the visit's time, sets its recent-history window
        (`window_start`) and may sweep older rows out of memory.
        """
        mine = self._pins.setdefault(key, set())
        for c in chunks:
            c = int(c)
            if c not in mine:
                mine.add(c)
                self._pin_count[c] += 1
        if mjd is not None:
            self._visit_mjd[key] = float(mjd)
            self._expire()

    def unpin(self, key: Hashable) -> None:
        """Drop the pins of ``key``, then evict if over budget."""
        for c in self._pins.pop(key, ()):
            self._pin_count[c] -= 1
            if not self._pin_count[c]:
                del self._pin_count[c]
        self._visit_mjd.pop(key, None)
        self._evict()

    # the recent-history window

    def window_start(self, key: Hashable) -> float:
        """The earliest ``midpointMjdTai`` of recent DIASources visit ``key`` sees.

        Its MJD (given to `pin`) less ``recent_days``; -inf for a visit pinned
        without a time.
        """
        mjd = self._visit_mjd.get(key)
        return -math.inf if mjd is None else mjd - self.config.recent_days

    def recent_floor(self) -> float:
        """The earliest window start of the pinned visits: what memory must keep.

        Chunks loaded now need recent DIASources from here on (-inf when no
        visit with a time is pinned and nothing was swept yet).
        """
        if not self._visit_mjd:
            return self._expired_before
        return min(self._visit_mjd.values()) - self.config.recent_days

    def _expire(self) -> None:
        """Sweep rows older than `recent_floor` out of the chunks, once it has moved on enough."""
        floor = self.recent_floor()
        step = min(EXPIRE_STEP_DAYS, self.config.recent_days / 8)
        if not floor >= self._expired_before + step:
            return
        for c, ch in self._chunks.items():
            if c not in self._claims:  # an open transaction saved this chunk's buffers
                ch.expire(floor)
        self._expired_before = floor

    def _evict(self, protect: Container[int] = ()) -> None:
        excess = self.nbytes - self.config.max_megabytes * 1e6
        victims = []
        for c, ch in self._chunks.items():
            if excess <= 0:
                break
            if c in protect or c in self._pin_count or c in self._claims:
                continue
            victims.append(c)
            excess -= ch.nbytes + ch.n_objects * 12
        if victims:
            gone = [self._chunks.pop(c).ids() for c in victims]
            self._index.remove(np.sort(np.concatenate(gone)))
            self._evictions += len(victims)

    # reading

    def _use(self, chunks: Iterable[int]) -> list[Chunk]:
        """The held ``chunks``, each marked most recently used."""
        held = []
        for c in chunks:
            c = int(c)
            held.append(self._chunks[c])
            self._chunks.move_to_end(c)
        return held

    def gather(self, chunks: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
        """Objects of ``chunks`` concatenated (a copy) and the chunk of each row."""
        held = self._use(chunks)
        if not held:
            return np.empty(0, OBJECT_DTYPE), np.empty(0, I8)
        objects = rec.concat([ch.objects for ch in held], OBJECT_DTYPE)
        chunk_of_row = np.repeat([ch.chunk for ch in held], [ch.n_objects for ch in held])
        return objects, chunk_of_row.astype(I8)

    def columns(self, chunks: Iterable[int], names: Iterable[str]) -> dict[str, np.ndarray]:
        """Some Object columns of ``chunks``, each concatenated into one contiguous array.

        Cheaper than `gather` when only a few columns are needed (the cross-match
        needs 33 of the 193 bytes of a row).
        """
        held = self._use(chunks)
        return {
            name: np.concatenate([ch.objects[name] for ch in held])
            if held
            else np.empty(0, OBJECT_DTYPE[name])
            for name in names
        }

    def locate(self, object_ids: np.ndarray) -> np.ndarray:
        """The chunk holding each Object, -1 where not held."""
        return self._index.locate(np.asarray(object_ids, I8).ravel())

    def objects_by_id(self, object_ids: np.ndarray) -> np.ndarray:
        """Rows of ``object_ids``, in the given order (KeyError if one is not held)."""
        ids = np.asarray(object_ids, I8).ravel()
        where = self._index.locate(ids)
        if np.any(where < 0):
            raise KeyError(
                f"{int(np.sum(where < 0))} Object ids not held, e.g. {ids[where < 0][0]}"
            )
        out = np.empty(len(ids), OBJECT_DTYPE)
        for c, sel in rec.groups(where):
            ch = self._chunks[c]
            rec.assign(out, sel, ch.rows_at(ch.rows_of(ids[sel])))
        return out

    def recent_for(self, object_ids: np.ndarray, since: float = -math.inf) -> np.ndarray:
        """Recent DIASources of held ``object_ids``, sorted by (diaObjectId, midpointMjdTai).

        Only those with ``midpointMjdTai >= since`` (a visit's `window_start`).
        """
        ids = np.unique(np.asarray(object_ids, I8))
        where = self._index.locate(ids)
        parts = [self._chunks[c].recent_of(ids[sel]) for c, sel in rec.groups(where) if c >= 0]
        if not parts:
            return np.empty(0, DIASOURCE_DTYPE)
        out = rec.concat(parts, DIASOURCE_DTYPE)
        # Each Object's rows are in one part, in order: ordering by id is enough.
        out = rec.take(out, np.argsort(out["diaObjectId"], kind="stable"))
        if since > -math.inf:
            out = rec.take(out, out["midpointMjdTai"] >= since)
        return out

    # transactions

    def begin(self, visit: Hashable) -> Transaction:
        """Open the update transaction of ``visit``.

        Several visits may be open at once as long as they touch disjoint
        chunks; touching a chunk of another open visit raises `ChunkConflict`.
        """
        if visit in self._open:
            raise RuntimeError(f"visit {visit!r} already has an open transaction")
        txn = Transaction(self, visit)
        self._open[visit] = txn
        return txn

    # accounting

    @property
    def nbytes(self) -> int:
        """Bytes held: chunks (Objects, recent DIASources) and the id lookup."""
        return sum(ch.nbytes for ch in self._chunks.values()) + self._index.nbytes

    def bytes_per_object(self) -> float:
        """Bytes per Object of Object rows, their id keys and the id lookup; recent excluded."""
        n = sum(ch.n_objects for ch in self._chunks.values())
        if not n:
            return 0.0
        return (sum(ch.object_nbytes for ch in self._chunks.values()) + self._index.nbytes) / n

    def stats(self) -> dict[str, int]:
        """Counts: n_chunks, n_objects, n_recent, bytes, evictions, pinned."""
        return {
            "n_chunks": len(self._chunks),
            "n_objects": sum(ch.n_objects for ch in self._chunks.values()),
            "n_recent": sum(ch.n_recent for ch in self._chunks.values()),
            "bytes": self.nbytes,
            "evictions": self._evictions,
            "pinned": sum(1 for c in self._pin_count if c in self._chunks),
        }
