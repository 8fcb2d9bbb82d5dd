"""The in-memory catalogue of a Slice: chunks of Objects and their recent DIASources.

A Slice keeps chunks (coarse HEALPix NESTED pixels) across visits, its owned
chunks and read-only margin copies alike; the catalogue does not tell them
apart. Every update of a visit is applied to every held copy of the chunks it
touches, with arithmetic that depends only on (chunk contents, update list) in
canonical order (diaObjectId, midpointMjdTai, diaSourceId), so copies held by
different Slices stay byte-identical.

Layout
------
- Per chunk, Objects sit in a buffer sorted by diaObjectId with spare capacity
  at the end, plus a contiguous copy of the ids for ``searchsorted``. New ids
  larger than every id of the chunk (the usual case: ids grow with time) are
  appended in place.
- Recent DIASources per chunk are a sorted, trimmed ``base`` and an append-only
  ``pending`` buffer that takes each visit's rows in place; ``pending`` is
  merged into ``base`` once it outgrows an eighth to a quarter of it, so a row
  costs O(1) moves amortised. The logical content is always
  ``trim(base + pending)``, whenever the merge happens.
- An id lookup (diaObjectId -> chunk) over every held chunk: a sorted main
  array plus a small sorted delta taking new ids, so a visit costs
  O(k log k) amortised instead of O(held Objects).
- A transaction saves, on first touch of a chunk, references to its buffers
  and the original rows it updates in place; it never copies a whole chunk.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import numba
import numpy as np

from association.columns import DIASOURCE_DTYPE, NBANDS, OBJECT_DTYPE

_MAX_CHUNK = 2**31 - 1
_PENDING_MIN = 4096
_DELTA_MIN = 65536
_DELTA_FRACTION = 32
_I8 = np.dtype("i8")


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
    variable_min_sources : int
        An Object is variable once it has at least this many DIASources.
    """

    max_megabytes: float = 2048.0
    recent_per_object: int = 10
    variable_min_sources: int = 2

    def __post_init__(self) -> None:
        if self.max_megabytes <= 0:
            raise ValueError(f"max_megabytes must be positive, got {self.max_megabytes}")
        if self.recent_per_object < 1:
            raise ValueError(f"recent_per_object must be >= 1, got {self.recent_per_object}")
        if self.variable_min_sources < 1:
            raise ValueError(f"variable_min_sources must be >= 1, got {self.variable_min_sources}")


class ChunkConflict(RuntimeError):
    """A transaction touched a chunk that another open transaction has touched."""


# --- sorting helpers -------------------------------------------------------------------------


def _canonical(sources: np.ndarray) -> np.ndarray:
    """Order of DIASources by (diaObjectId, midpointMjdTai, diaSourceId)."""
    return np.lexsort((sources["diaSourceId"], sources["midpointMjdTai"], sources["diaObjectId"]))


def _trim(recent: np.ndarray, keep: int) -> np.ndarray:
    """Keep the last ``keep`` rows of each diaObjectId of canonically sorted rows."""
    ids = recent["diaObjectId"]
    if len(ids) <= keep:
        return recent
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    ends = np.r_[starts[1:], len(ids)]
    group_end = np.repeat(ends, ends - starts)
    return _take(recent, group_end - np.arange(len(ids)) <= keep)


def _ranges(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(lo[i], hi[i])`` over i."""
    lens = hi - lo
    total = int(lens.sum())
    if total == 0:
        return np.empty(0, _I8)
    shift = lo - np.concatenate(([0], np.cumsum(lens)[:-1]))
    return np.repeat(shift, lens) + np.arange(total)


def _groups(keys: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(key, positions)`` per distinct key, keys ascending, positions in input order."""
    if len(keys) == 0:
        return
    order = np.argsort(keys, kind="stable")
    k = keys[order]
    cuts = np.flatnonzero(np.r_[True, k[1:] != k[:-1], True])
    for a, b in pairwise(cuts.tolist()):
        yield int(k[a]), order[a:b]


# Row copies of the packed record dtypes go field by field in numpy, ten times slower than
# moving the same bytes as opaque records; every bulk row move goes through these.


def _raw(a: np.ndarray) -> np.ndarray:
    return a.view(np.dtype((np.void, a.dtype.itemsize)))


def _take(a: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``a[idx]`` for record arrays (integer or boolean ``idx``)."""
    return _raw(a)[idx].view(a.dtype)


def _copy(a: np.ndarray) -> np.ndarray:
    return _raw(a).copy().view(a.dtype)


def _assign(dst: np.ndarray, idx: np.ndarray, rows: np.ndarray) -> None:
    """``dst[idx] = rows`` for record arrays."""
    _raw(dst)[idx] = _raw(rows)


def _concat(parts: list[np.ndarray], dtype: np.dtype) -> np.ndarray:
    if not parts:
        return np.empty(0, dtype)
    return np.concatenate([_raw(p) for p in parts]).view(dtype)


def _insert(a: np.ndarray, at: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return np.insert(_raw(a), at, _raw(rows)).view(a.dtype)


def _delete(a: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return np.delete(_raw(a), idx).view(a.dtype)


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


def _merge_recent(
    rows: np.ndarray, ids: np.ndarray, add: np.ndarray, keep: int
) -> tuple[np.ndarray, np.ndarray]:
    """Merge DIASources ``add`` into sorted, trimmed ``rows`` (ids: their contiguous keys).

    Only the rows of the Objects in ``add`` are re-sorted and trimmed; the others
    are moved as blocks.
    """
    affected = np.unique(add["diaObjectId"])
    lo = np.searchsorted(ids, affected, "left")
    hi = np.searchsorted(ids, affected, "right")
    old = _ranges(lo, hi)
    merged = _concat([_take(rows, old), add], rows.dtype)
    merged = _trim(_take(merged, _canonical(merged)), keep)
    kept_rows = _delete(rows, old)
    kept_ids = np.delete(ids, old)
    mids = np.ascontiguousarray(merged["diaObjectId"])
    at = np.searchsorted(kept_ids, mids)
    return _readonly(_insert(kept_rows, at, merged)), _readonly(np.insert(kept_ids, at, mids))


# --- the id lookup ---------------------------------------------------------------------------


class _IdIndex:
    """diaObjectId -> chunk over every held chunk: sorted main part plus a small sorted delta."""

    def __init__(self) -> None:
        empty_ids, empty_chunks = np.empty(0, _I8), np.empty(0, np.int32)
        self._main = (empty_ids, empty_chunks)
        self._delta = (empty_ids, empty_chunks)

    @staticmethod
    def _merge(
        part: tuple[np.ndarray, np.ndarray], ids: np.ndarray, chunks: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        at = np.searchsorted(part[0], ids)
        return np.insert(part[0], at, ids), np.insert(part[1], at, chunks)

    def add(self, ids: np.ndarray, chunks: np.ndarray | int) -> None:
        """Add sorted, new ``ids`` living in ``chunks`` (one per id, or one for all)."""
        chunks = np.broadcast_to(np.asarray(chunks, np.int32), ids.shape)
        if len(ids) > max(_DELTA_MIN, len(self._main[0]) // _DELTA_FRACTION):
            self._main = self._merge(self._main, ids, chunks)
            return
        self._delta = self._merge(self._delta, ids, chunks)
        if len(self._delta[0]) > max(_DELTA_MIN, len(self._main[0]) // _DELTA_FRACTION):
            self._main = self._merge(self._main, *self._delta)
            self._delta = (np.empty(0, _I8), np.empty(0, np.int32))

    def remove(self, ids: np.ndarray) -> None:
        """Forget ``ids`` (those not present are ignored)."""
        parts = []
        for keys, vals in (self._main, self._delta):
            pos = np.searchsorted(keys, ids)
            hit = pos < len(keys)
            hit[hit] = keys[pos[hit]] == ids[hit]
            drop = pos[hit]
            parts.append((np.delete(keys, drop), np.delete(vals, drop)))
        self._main, self._delta = parts

    def locate(self, ids: np.ndarray) -> np.ndarray:
        """Chunk of each id, -1 where not held."""
        out = np.full(len(ids), -1, _I8)
        for keys, vals in (self._main, self._delta):
            if len(keys) == 0:
                continue
            pos = np.minimum(np.searchsorted(keys, ids), len(keys) - 1)
            hit = keys[pos] == ids
            out[hit] = vals[pos[hit]]
        return out

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (*self._main, *self._delta))


# --- the update kernel -----------------------------------------------------------------------


@numba.njit(cache=True)
def _update_kernel(
    starts, ra, dec, n, first, last, ndata, mean, m2, s_ra, s_dec, s_mjd, s_band, s_flux
):
    """Fold the DIASources ``starts[j]:starts[j+1]`` into Object j (arrays updated in place).

    Position: the count-weighted mean unit vector; flux: Welford per band,
    skipping unknown bands and non-finite fluxes; all in float64.
    """
    d2r = np.pi / 180.0
    for j in range(len(starts) - 1):
        w = float(n[j])
        r = ra[j] * d2r
        d = dec[j] * d2r
        x = w * np.cos(d) * np.cos(r)
        y = w * np.cos(d) * np.sin(r)
        z = w * np.sin(d)
        for i in range(starts[j], starts[j + 1]):
            r = s_ra[i] * d2r
            d = s_dec[i] * d2r
            x += np.cos(d) * np.cos(r)
            y += np.cos(d) * np.sin(r)
            z += np.sin(d)
            first[j] = min(first[j], s_mjd[i])
            last[j] = max(last[j], s_mjd[i])
            b = s_band[i]
            f = s_flux[i]
            if 0 <= b < ndata.shape[1] and np.isfinite(f):
                c = ndata[j, b] + 1
                delta = f - mean[j, b]
                mean[j, b] += delta / c
                m2[j, b] += delta * (f - mean[j, b])
                ndata[j, b] = c
        n[j] += starts[j + 1] - starts[j]
        a = np.degrees(np.arctan2(y, x))
        if a < 0.0:
            a += 360.0
        if a >= 360.0:
            a -= 360.0
        ra[j] = a
        dec[j] = np.degrees(np.arctan2(z, np.hypot(x, y)))


def _apply_detections(
    rows: np.ndarray, starts: np.ndarray, src: np.ndarray, variable_min: int
) -> None:
    """Update Object ``rows`` in place with canonically sorted ``src`` (Object j: starts[j:j+2])."""
    ra = rows["ra"].astype("f8")
    dec = rows["dec"].astype("f8")
    n = rows["nDiaSources"].astype(_I8)
    first = rows["firstMjd"].astype("f8")
    last = rows["lastMjd"].astype("f8")
    ndata = rows["psfFluxNdata"].astype(_I8)
    mean = rows["psfFluxMean"].astype("f8")
    m2 = rows["psfFluxM2"].astype("f8")
    _update_kernel(
        starts.astype(_I8),
        ra,
        dec,
        n,
        first,
        last,
        ndata,
        mean,
        m2,
        src["ra"].astype("f8"),
        src["dec"].astype("f8"),
        src["midpointMjdTai"].astype("f8"),
        src["band"].astype(_I8),
        src["psfFlux"].astype("f8"),
    )
    rows["ra"] = ra
    rows["dec"] = dec
    rows["nDiaSources"] = n
    rows["firstMjd"] = first
    rows["lastMjd"] = last
    rows["psfFluxNdata"] = ndata
    rows["psfFluxMean"] = mean
    rows["psfFluxM2"] = m2
    rows["isVariable"] = n >= variable_min


def warm_up() -> None:
    """Compile (or load from numba's cache) the update kernel now, not in the first visit."""
    rows = np.zeros(1, OBJECT_DTYPE)
    _apply_detections(rows, np.array([0, 1]), np.zeros(1, DIASOURCE_DTYPE), 1)


def _new_objects(src: np.ndarray, variable_min: int) -> np.ndarray:
    """Object rows created from single DIASources (id = diaSourceId)."""
    rows = np.zeros(len(src), OBJECT_DTYPE)
    rows["diaObjectId"] = src["diaSourceId"]
    rows["ra"] = src["ra"]
    rows["dec"] = src["dec"]
    rows["fine"] = src["fine"]
    rows["nDiaSources"] = 1
    rows["firstMjd"] = src["midpointMjdTai"]
    rows["lastMjd"] = src["midpointMjdTai"]
    band = src["band"].astype(_I8)
    flux = src["psfFlux"]
    ok = (band >= 0) & (band < NBANDS) & np.isfinite(flux)
    at = np.flatnonzero(ok)
    ndata = np.zeros((len(src), NBANDS), "i2")
    mean = np.zeros((len(src), NBANDS), "f4")
    ndata[at, band[at]] = 1
    mean[at, band[at]] = flux[at]
    rows["psfFluxNdata"] = ndata
    rows["psfFluxMean"] = mean
    rows["isVariable"] = variable_min <= 1
    return rows


# --- chunks ----------------------------------------------------------------------------------


def _append(
    buf: np.ndarray, ids: np.ndarray, n: int, rows: np.ndarray, row_ids: np.ndarray, spare: int
) -> tuple[np.ndarray, np.ndarray]:
    """Write ``rows`` at ``buf[n:]`` (and ``row_ids`` at ``ids[n:]``).

    When full, both move to new arrays with ``spare`` free rows. Rows ``[0, n)``
    are never written, so a transaction's saved references stay valid.
    """
    k = len(rows)
    if n + k > len(buf):
        capacity = n + k + spare
        grown, grown_ids = np.empty(capacity, buf.dtype), np.empty(capacity, _I8)
        _raw(grown)[:n] = _raw(buf)[:n]
        grown_ids[:n] = ids[:n]
        buf, ids = grown, grown_ids
    _raw(buf)[n : n + k] = _raw(rows)
    ids[n : n + k] = row_ids
    return buf, ids


class Chunk:
    """One coarse pixel: its Objects and their recent DIASources.

    Attributes
    ----------
    chunk : int
        The coarse pixel id.
    """

    def __init__(self, chunk: int, objects: np.ndarray, recent: np.ndarray, keep: int) -> None:
        self.chunk = chunk
        self._keep = keep
        # Spare object capacity (1/32 to 1/16) and the pending limit (1/8 to 1/4 of the
        # base) vary by chunk, so that neighbouring chunks, fed alike by the same
        # visits, do not all grow or merge in the same visit.
        self._spread = (chunk * 2654435761) % 64
        self._n = len(objects)
        self._buf, self._ids = _append(
            np.empty(0, OBJECT_DTYPE),
            np.empty(0, _I8),
            0,
            objects,
            objects["diaObjectId"],
            self._object_spare(),
        )
        self._base = _readonly(recent)
        self._base_ids = _readonly(np.ascontiguousarray(recent["diaObjectId"]))
        self._pend = np.empty(0, DIASOURCE_DTYPE)
        self._pend_ids = np.empty(0, _I8)
        self._pn = 0

    def _object_spare(self) -> int:
        return 16 + self._n * (32 + self._spread // 2) // 1024

    @property
    def objects(self) -> np.ndarray:
        """Objects sorted by diaObjectId: a read-only view that later updates change."""
        return _readonly(self._buf[: self._n])

    @property
    def recent(self) -> np.ndarray:
        """Recent DIASources sorted by (diaObjectId, midpointMjdTai), at most N per Object."""
        self._compact()
        return self._base

    @property
    def n_objects(self) -> int:
        return self._n

    @property
    def n_recent(self) -> int:
        """Recent rows held, counting pending rows not yet trimmed against the base."""
        return len(self._base) + self._pn

    @property
    def nbytes(self) -> int:
        """Bytes allocated, spare capacity included."""
        arrays = (self._buf, self._ids, self._base, self._base_ids, self._pend, self._pend_ids)
        return sum(a.nbytes for a in arrays)

    @property
    def object_nbytes(self) -> int:
        """Bytes allocated for Objects (rows, ids, spare capacity)."""
        return self._buf.nbytes + self._ids.nbytes

    def ids(self) -> np.ndarray:
        """diaObjectIds, sorted (read-only view)."""
        return _readonly(self._ids[: self._n])

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Row numbers of ``ids``, all of which must be in this chunk."""
        return np.searchsorted(self._ids[: self._n], ids)

    def recent_of(self, ids: np.ndarray) -> np.ndarray:
        """Recent DIASources of sorted unique ``ids``, canonically sorted."""
        lo = np.searchsorted(self._base_ids, ids, "left")
        hi = np.searchsorted(self._base_ids, ids, "right")
        base = _take(self._base, _ranges(lo, hi))
        if not self._pn or not len(ids):
            return base
        pend_ids = self._pend_ids[: self._pn]
        at = np.minimum(np.searchsorted(ids, pend_ids), len(ids) - 1)
        pend = _take(self._pend, np.flatnonzero(ids[at] == pend_ids))
        if not len(pend):
            return base
        out = _concat([base, pend], DIASOURCE_DTYPE)
        return _trim(_take(out, _canonical(out)), self._keep)

    def _insert_objects(self, rows: np.ndarray) -> None:
        """Insert rows sorted by id, none already present; never writes rows [0, n) in place."""
        n = self._n
        new_ids = np.ascontiguousarray(rows["diaObjectId"])
        if n == 0 or new_ids[0] > self._ids[n - 1]:
            spare = self._object_spare()
            self._buf, self._ids = _append(self._buf, self._ids, n, rows, new_ids, spare)
        else:
            at = np.searchsorted(self._ids[:n], new_ids)
            self._buf = _insert(self._buf[:n], at, rows)
            self._ids = np.insert(self._ids[:n], at, new_ids)
        self._n = n + len(rows)

    def _add_recent(self, rows: np.ndarray) -> None:
        """Append DIASources (any order) to the pending part; merge it into the base when full."""
        spare = max(256, self._pn // 4)
        self._pend, self._pend_ids = _append(
            self._pend, self._pend_ids, self._pn, rows, rows["diaObjectId"], spare
        )
        self._pn += len(rows)
        if self._pn > max(_PENDING_MIN, len(self._base) * (128 + 2 * self._spread) // 1024):
            self._compact()

    def _compact(self) -> None:
        if self._pn:
            self._base, self._base_ids = _merge_recent(
                self._base, self._base_ids, self._pend[: self._pn], self._keep
            )
            # a fresh buffer: a transaction may still hold the old one
            self._pend, self._pend_ids, self._pn = self._pend[:0], self._pend_ids[:0], 0

    def _state(self) -> tuple[Any, ...]:
        return (
            self._buf,
            self._ids,
            self._n,
            self._base,
            self._base_ids,
            self._pend,
            self._pend_ids,
            self._pn,
        )

    def _restore(self, state: tuple[Any, ...]) -> None:
        (
            self._buf,
            self._ids,
            self._n,
            self._base,
            self._base_ids,
            self._pend,
            self._pend_ids,
            self._pn,
        ) = state


# --- transactions ----------------------------------------------------------------------------


@dataclass
class _Undo:
    """What restores one chunk: its buffers at first touch and rows before in-place updates."""

    state: tuple[Any, ...]
    saved: list[np.ndarray] = field(default_factory=list)


class Transaction:
    """The updates of one visit; see `Catalogue.begin`.

    Give a visit's matched DIASources to `associate` in one call: the float32
    statistics are rounded once per call.
    """

    def __init__(self, catalogue: Catalogue, visit: Hashable) -> None:
        self.visit = visit
        self._cat = catalogue
        self._open = True
        self._undo: dict[int, _Undo] = {}
        self._changed: dict[int, list[np.ndarray]] = {}
        self._created: list[np.ndarray] = []

    def __enter__(self) -> Transaction:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if self._open:
            if exc_type is None:
                self.commit()
            else:
                self.rollback()

    @property
    def open(self) -> bool:
        return self._open

    def associate(self, sources: np.ndarray) -> int:
        """Apply DIASources to their Objects (``diaObjectId``) in every held chunk.

        Sources with diaObjectId 0 or whose Object is not held are ignored.
        Returns the number of sources applied.
        """
        self._check_open()
        src = _as_sources(sources)
        src = _take(src, src["diaObjectId"] != 0)
        if not len(src):
            return 0
        src = _take(src, _canonical(src))
        oid = src["diaObjectId"]
        starts = np.flatnonzero(np.r_[True, oid[1:] != oid[:-1]])
        counts = np.diff(np.r_[starts, len(oid)])
        uid = oid[starts]
        where = self._cat._index.locate(uid)
        held = where >= 0
        if not held.any():
            return 0
        src = _take(src, np.repeat(held, counts))
        uid, where, counts = uid[held], where[held], counts[held]
        self._touch(np.unique(where))

        rows = np.empty(len(uid), OBJECT_DTYPE)
        located = []
        for c, sel in _groups(where):
            ch = self._cat._chunks[c]
            idx = ch.rows_of(uid[sel])
            original = _take(ch._buf, idx)
            _assign(rows, sel, original)
            self._undo[c].saved.append(original)
            located.append((c, ch, sel, idx))
        _apply_detections(
            rows, np.r_[0, np.cumsum(counts)], src, self._cat.config.variable_min_sources
        )
        by_chunk = _groups(np.repeat(where, counts))
        for (c, ch, sel, idx), (_, src_sel) in zip(located, by_chunk, strict=True):
            _assign(ch._buf, idx, _take(rows, sel))
            ch._add_recent(_take(src, src_sel))
            self._changed.setdefault(c, []).append(uid[sel])
        return len(src)

    def create(self, sources: np.ndarray) -> int:
        """Create an Object from each DIASource whose ``fine`` falls in a held chunk.

        The Object's id is the diaSourceId; ``diaObjectId`` of the sources must
        be 0 or equal to it. Returns the number of Objects created here.
        """
        self._check_open()
        src = _as_sources(sources)
        if not len(src):
            return 0
        sid = src["diaSourceId"]
        oid = src["diaObjectId"]
        if np.any((oid != 0) & (oid != sid)):
            raise ValueError("create: diaObjectId must be 0 or the source's own diaSourceId")
        src = _take(src, np.argsort(sid, kind="stable"))
        sid = src["diaSourceId"]
        if np.any(sid[1:] == sid[:-1]):
            raise ValueError("create: duplicate diaSourceId")
        chunk_of = src["fine"] >> self._cat.chunk_shift
        held = np.isin(chunk_of, self._cat.held())
        src, sid, chunk_of = _take(src, held), sid[held], chunk_of[held]
        if not len(src):
            return 0
        if np.any(self._cat._index.locate(sid) >= 0):
            raise ValueError("create: an Object with that id already exists")
        self._touch(np.unique(chunk_of))

        rows = _new_objects(src, self._cat.config.variable_min_sources)
        recent = _copy(src)
        recent["diaObjectId"] = sid
        for c, sel in _groups(chunk_of):
            ch = self._cat._chunks[c]
            ch._insert_objects(_take(rows, sel))
            ch._add_recent(_take(recent, sel))
            self._changed.setdefault(c, []).append(sid[sel])
        self._cat._index.add(sid, chunk_of)
        self._created.append(sid)
        return len(src)

    def changed(self, chunks: Iterable[int] | None = None) -> np.ndarray:
        """Current rows of Objects created or updated here, sorted by id, optionally in ``chunks``."""
        wanted = None if chunks is None else {int(c) for c in chunks}
        parts = []
        for c, id_lists in sorted(self._changed.items()):
            if (wanted is not None and c not in wanted) or c not in self._cat._chunks:
                continue
            ch = self._cat._chunks[c]
            parts.append(_take(ch._buf, ch.rows_of(np.unique(np.concatenate(id_lists)))))
        out = _concat(parts, OBJECT_DTYPE)
        return _take(out, np.argsort(out["diaObjectId"], kind="stable"))

    def commit(self) -> None:
        """Keep the changes and release the touched chunks."""
        self._check_open()
        self._close()
        self._cat._evict()

    def rollback(self) -> None:
        """Restore every touched chunk exactly as it was at its first touch."""
        self._check_open()
        if self._created:
            self._cat._index.remove(np.concatenate(self._created))
        for c, undo in self._undo.items():
            ch = self._cat._chunks[c]
            ch._restore(undo.state)
            ids = ch._ids[: ch._n]
            for rows in reversed(undo.saved):
                rid = rows["diaObjectId"]
                pos = np.minimum(np.searchsorted(ids, rid), max(ch._n - 1, 0))
                ok = ids[pos] == rid if ch._n else np.zeros(len(rid), bool)
                _assign(ch._buf, pos[ok], _take(rows, ok))
        self._changed.clear()
        self._close()

    def _check_open(self) -> None:
        if not self._open:
            raise RuntimeError(f"transaction of visit {self.visit!r} is closed")

    def _close(self) -> None:
        self._open = False
        for c in self._undo:
            self._cat._claims.pop(c, None)
        self._undo.clear()
        self._created.clear()
        self._cat._open.pop(self.visit, None)

    def _touch(self, chunks: np.ndarray) -> None:
        claims = self._cat._claims
        for c in chunks.tolist():
            other = claims.get(c)
            if other is not None and other is not self:
                raise ChunkConflict(
                    f"visit {self.visit!r} touches chunk {c}, held by open visit {other.visit!r}"
                )
        for c in chunks.tolist():
            if c not in self._undo:
                claims[c] = self
                self._undo[c] = _Undo(self._cat._chunks[c]._state())


def _as_sources(sources: np.ndarray) -> np.ndarray:
    src = np.asarray(sources)
    if src.dtype != DIASOURCE_DTYPE:
        raise TypeError(f"expected DIASOURCE_DTYPE rows, got {src.dtype}")
    return src.ravel()


# --- the catalogue ---------------------------------------------------------------------------


class Catalogue:
    """The chunks a Slice holds, with LRU eviction, pinning and per-visit transactions.

    A visit on a Slice: ``pin(visit, chunks)``, ``put`` each of ``missing(chunks)``,
    ``gather(chunks)`` for the zone index; then ``begin(visit)``, ``associate``,
    ``create``, ``changed(owned)`` for Store, ``commit()``; finally ``unpin(visit)``.
    Pin before ``put`` so that loading one chunk cannot evict another of the visit.

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
        self._index = _IdIndex()
        self._pins: dict[Hashable, set[int]] = {}
        self._pin_count: Counter[int] = Counter()
        self._claims: dict[int, Transaction] = {}
        self._open: dict[Hashable, Transaction] = {}
        self._evictions = 0

    # chunks held

    def has(self, chunk: int) -> bool:
        """Whether ``chunk`` is held."""
        return int(chunk) in self._chunks

    def missing(self, chunks: Iterable[int]) -> np.ndarray:
        """The chunks of ``chunks`` not held, in the given order."""
        c = np.array([int(x) for x in chunks], _I8)
        return c[np.array([x not in self._chunks for x in c.tolist()], bool)]

    def held(self) -> np.ndarray:
        """Ids of the held chunks, sorted."""
        return np.sort(np.fromiter(self._chunks, _I8, len(self._chunks)))

    def chunk(self, chunk: int) -> Chunk:
        """The held chunk ``chunk`` (KeyError if not held)."""
        return self._chunks[int(chunk)]

    def put(self, chunk: int, objects: np.ndarray, recent: np.ndarray) -> Chunk:
        """Hold ``chunk`` with these Objects and recent DIASources (copied, sorted, trimmed).

        Replaces a held copy unless an open transaction has touched it. Every
        Object's ``fine`` must lie in the chunk and every recent DIASource must
        belong to one of its Objects.
        """
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
        objects = _take(objects, np.argsort(objects["diaObjectId"], kind="stable"))
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
        recent = _trim(_take(recent, _canonical(recent)), self.config.recent_per_object)

        if chunk in self._chunks:
            self._index.remove(self._chunks.pop(chunk).ids())
        held = Chunk(chunk, objects, recent, self.config.recent_per_object)
        self._chunks[chunk] = held
        self._index.add(ids, chunk)
        self._evict(protect=chunk)
        return held

    # pinning and eviction

    def pin(self, key: Hashable, chunks: Iterable[int]) -> None:
        """Protect ``chunks`` from eviction until ``unpin(key)``; they need not be held yet."""
        mine = self._pins.setdefault(key, set())
        for c in chunks:
            c = int(c)
            if c not in mine:
                mine.add(c)
                self._pin_count[c] += 1

    def unpin(self, key: Hashable) -> None:
        """Drop the pins of ``key``, then evict if over budget."""
        for c in self._pins.pop(key, ()):
            self._pin_count[c] -= 1
            if not self._pin_count[c]:
                del self._pin_count[c]
        self._evict()

    def _evict(self, protect: int | None = None) -> None:
        excess = self.nbytes - self.config.max_megabytes * 1e6
        victims = []
        for c, ch in self._chunks.items():
            if excess <= 0:
                break
            if c == protect or c in self._pin_count or c in self._claims:
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
            return np.empty(0, OBJECT_DTYPE), np.empty(0, _I8)
        objects = _concat([ch.objects for ch in held], OBJECT_DTYPE)
        chunk_of_row = np.repeat([ch.chunk for ch in held], [ch.n_objects for ch in held])
        return objects, chunk_of_row.astype(_I8)

    def columns(self, chunks: Iterable[int], names: Iterable[str]) -> dict[str, np.ndarray]:
        """Some Object columns of ``chunks``, each concatenated into one contiguous array.

        Cheaper than `gather` when only a few columns are needed (the cross-match
        needs 25 of the 113 bytes of a row).
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
        return self._index.locate(np.asarray(object_ids, _I8).ravel())

    def objects_by_id(self, object_ids: np.ndarray) -> np.ndarray:
        """Rows of ``object_ids``, in the given order (KeyError if one is not held)."""
        ids = np.asarray(object_ids, _I8).ravel()
        where = self._index.locate(ids)
        if np.any(where < 0):
            raise KeyError(
                f"{int(np.sum(where < 0))} Object ids not held, e.g. {ids[where < 0][0]}"
            )
        out = np.empty(len(ids), OBJECT_DTYPE)
        for c, sel in _groups(where):
            ch = self._chunks[c]
            _assign(out, sel, _take(ch._buf, ch.rows_of(ids[sel])))
        return out

    def recent_for(self, object_ids: np.ndarray) -> np.ndarray:
        """Recent DIASources of held ``object_ids``, sorted by (diaObjectId, midpointMjdTai)."""
        ids = np.unique(np.asarray(object_ids, _I8))
        where = self._index.locate(ids)
        parts = [self._chunks[c].recent_of(ids[sel]) for c, sel in _groups(where) if c >= 0]
        if not parts:
            return np.empty(0, DIASOURCE_DTYPE)
        out = _concat(parts, DIASOURCE_DTYPE)
        return _take(out, _canonical(out))

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
