"""One held chunk of a Slice's catalogue: its Objects and their recent DIASources.

- Objects sit in a buffer sorted by diaObjectId with spare capacity at the
  end, plus a contiguous copy of the ids for ``searchsorted``. New ids larger
  than every id of the chunk (the usual case: ids grow with time) are
  appended in place.
- Recent DIASources are a sorted, trimmed ``base`` and an append-only
  ``pending`` buffer that takes each visit's rows in place; ``pending`` is
  merged into ``base`` once it outgrows an eighth to a quarter of it, so a row
  costs O(1) moves amortised. The logical content is always
  ``trim(base + pending)``, whenever the merge happens.
- Rows already written are never overwritten by an append or a merge, so a
  transaction's saved `Chunk.state` stays valid.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from association import records as rec
from association.columns import DIASOURCE_DTYPE, OBJECT_DTYPE
from association.records import I8

_PENDING_MIN = 4096
_STATE = ("_buf", "_ids", "_n", "_base", "_base_ids", "_pend", "_pend_ids", "_pn")
"""What `Chunk.state` saves: every buffer and count a change may replace."""


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
        grown, grown_ids = np.empty(capacity, buf.dtype), np.empty(capacity, I8)
        rec.raw(grown)[:n] = rec.raw(buf)[:n]
        grown_ids[:n] = ids[:n]
        buf, ids = grown, grown_ids
    rec.raw(buf)[n : n + k] = rec.raw(rows)
    ids[n : n + k] = row_ids
    return buf, ids


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
    old = rec.ranges(lo, hi)
    merged = rec.concat([rec.take(rows, old), add], rows.dtype)
    merged = rec.trim(rec.take(merged, rec.canonical(merged)), keep)
    kept_rows = rec.delete(rows, old)
    kept_ids = np.delete(ids, old)
    mids = np.ascontiguousarray(merged["diaObjectId"])
    at = np.searchsorted(kept_ids, mids)
    return rec.readonly(rec.insert(kept_rows, at, merged)), rec.readonly(
        np.insert(kept_ids, at, mids)
    )


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
            np.empty(0, I8),
            0,
            objects,
            objects["diaObjectId"],
            self._object_spare(),
        )
        self._base = rec.readonly(recent)
        self._base_ids = rec.readonly(np.ascontiguousarray(recent["diaObjectId"]))
        self._pend = np.empty(0, DIASOURCE_DTYPE)
        self._pend_ids = np.empty(0, I8)
        self._pn = 0

    def _object_spare(self) -> int:
        return 16 + self._n * (32 + self._spread // 2) // 1024

    # reading

    @property
    def objects(self) -> np.ndarray:
        """Objects sorted by diaObjectId: a read-only view that later updates change."""
        return rec.readonly(self._buf[: self._n])

    @property
    def recent(self) -> np.ndarray:
        """Recent DIASources sorted by (diaObjectId, midpointMjdTai), at most N per Object."""
        self._compact()
        return self._base

    @property
    def n_objects(self) -> int:
        """Objects held."""
        return self._n

    @property
    def n_recent(self) -> int:
        """Recent rows held, counting pending rows not yet trimmed against the base."""
        return len(self._base) + self._pn

    @property
    def nbytes(self) -> int:
        """Bytes allocated, spare capacity included."""
        return (
            self._buf.nbytes
            + self._ids.nbytes
            + self._base.nbytes
            + self._base_ids.nbytes
            + self._pend.nbytes
            + self._pend_ids.nbytes
        )

    @property
    def object_nbytes(self) -> int:
        """Bytes allocated for Objects (rows, ids, spare capacity)."""
        return self._buf.nbytes + self._ids.nbytes

    def ids(self) -> np.ndarray:
        """diaObjectIds, sorted (read-only view)."""
        return rec.readonly(self._ids[: self._n])

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Row numbers of ``ids``, all of which must be in this chunk."""
        return np.searchsorted(self._ids[: self._n], ids)

    def rows_at(self, rows: np.ndarray) -> np.ndarray:
        """A copy of the Objects at row numbers ``rows``."""
        return rec.take(self._buf, rows)

    def recent_of(self, ids: np.ndarray) -> np.ndarray:
        """Recent DIASources of sorted unique ``ids``, canonically sorted."""
        lo = np.searchsorted(self._base_ids, ids, "left")
        hi = np.searchsorted(self._base_ids, ids, "right")
        base = rec.take(self._base, rec.ranges(lo, hi))
        if not self._pn or not len(ids):
            return base
        pend_ids = self._pend_ids[: self._pn]
        at = np.minimum(np.searchsorted(ids, pend_ids), len(ids) - 1)
        pend = rec.take(self._pend, np.flatnonzero(ids[at] == pend_ids))
        if not len(pend):
            return base
        out = rec.concat([base, pend], DIASOURCE_DTYPE)
        return rec.trim(rec.take(out, rec.canonical(out)), self._keep)

    # changing (by a transaction)

    def write(self, rows: np.ndarray, objects: np.ndarray) -> None:
        """Overwrite the Objects at row numbers ``rows`` (same ids) in place."""
        rec.assign(self._buf, rows, objects)

    def insert_objects(self, rows: np.ndarray) -> None:
        """Insert rows sorted by id, none already present; never writes rows [0, n) in place."""
        n = self._n
        new_ids = np.ascontiguousarray(rows["diaObjectId"])
        if n == 0 or new_ids[0] > self._ids[n - 1]:
            spare = self._object_spare()
            self._buf, self._ids = _append(self._buf, self._ids, n, rows, new_ids, spare)
        else:
            at = np.searchsorted(self._ids[:n], new_ids)
            self._buf = rec.insert(self._buf[:n], at, rows)
            self._ids = np.insert(self._ids[:n], at, new_ids)
        self._n = n + len(rows)

    def add_recent(self, rows: np.ndarray) -> None:
        """Append DIASources (any order) to the pending part; merge it into the base when full."""
        spare = max(256, self._pn // 4)
        self._pend, self._pend_ids = _append(
            self._pend, self._pend_ids, self._pn, rows, rows["diaObjectId"], spare
        )
        self._pn += len(rows)
        if self._pn > max(_PENDING_MIN, len(self._base) * (128 + 2 * self._spread) // 1024):
            self._compact()

    def expire(self, before: float) -> int:
        """Drop the recent DIASources older than ``before``; how many went."""
        self._compact()
        keep = self._base["midpointMjdTai"] >= before
        gone = int(len(keep) - np.count_nonzero(keep))
        if gone:  # new arrays: a saved state keeps the old ones
            self._base = rec.readonly(rec.take(self._base, keep))
            self._base_ids = rec.readonly(self._base_ids[keep])
        return gone

    def _compact(self) -> None:
        if self._pn:
            self._base, self._base_ids = _merge_recent(
                self._base, self._base_ids, self._pend[: self._pn], self._keep
            )
            # a fresh buffer: a transaction may still hold the old one
            self._pend, self._pend_ids, self._pn = self._pend[:0], self._pend_ids[:0], 0

    # undo

    def state(self) -> tuple[Any, ...]:
        """References to the chunk's buffers and counts, for `restore`."""
        return tuple(getattr(self, name) for name in _STATE)

    def restore(self, state: tuple[Any, ...], saved: list[np.ndarray]) -> None:
        """Go back to ``state``, then put back the Object rows ``saved`` since, latest first."""
        for name, value in zip(_STATE, state, strict=True):
            setattr(self, name, value)
        ids = self._ids[: self._n]
        for rows in reversed(saved):
            rid = rows["diaObjectId"]
            pos = np.minimum(np.searchsorted(ids, rid), max(self._n - 1, 0))
            ok = ids[pos] == rid if self._n else np.zeros(len(rid), bool)
            rec.assign(self._buf, pos[ok], rec.take(rows, ok))
