"""The id lookup of a Slice's catalogue: diaObjectId -> chunk over every held chunk.

A sorted main array plus a small sorted delta taking new ids, so a visit costs
O(k log k) amortised instead of O(held Objects). Ids forgotten from the main
array are marked dead in place (chunk -1) and dropped in one pass once they
are a quarter of it, so evicting a chunk does not copy every held id.
"""

from __future__ import annotations

import numpy as np

from association.records import I8

_DELTA_MIN = 65536
_DELTA_FRACTION = 32
_DEAD_FRACTION = 4
_DEAD = -1


def _empty() -> tuple[np.ndarray, np.ndarray]:
    return np.empty(0, I8), np.empty(0, np.int32)


def _find(keys: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Position of each of ``ids`` in sorted ``keys``, and whether it is there."""
    pos = np.searchsorted(keys, ids)
    hit = pos < len(keys)
    hit[hit] = keys[pos[hit]] == ids[hit]
    return pos, hit


class IdIndex:
    """diaObjectId -> chunk over every held chunk: sorted main part plus a small sorted delta."""

    def __init__(self) -> None:
        self._main = _empty()
        self._delta = _empty()
        self._dead = 0

    @staticmethod
    def _merge(
        part: tuple[np.ndarray, np.ndarray], ids: np.ndarray, chunks: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        at = np.searchsorted(part[0], ids)
        return np.insert(part[0], at, ids), np.insert(part[1], at, chunks)

    def _compact(self) -> None:
        """Drop the dead ids from the main array."""
        keys, vals = self._main
        alive = vals != _DEAD
        self._main = keys[alive], vals[alive]
        self._dead = 0

    def add(self, ids: np.ndarray, chunks: np.ndarray | int) -> None:
        """Add sorted, new ``ids`` living in ``chunks`` (one per id, or one for all)."""
        chunks = np.broadcast_to(np.asarray(chunks, np.int32), ids.shape)
        if self._dead:
            # Ids that were forgotten come back in their dead slots.
            keys, vals = self._main
            pos, hit = _find(keys, ids)
            hit[hit] = vals[pos[hit]] == _DEAD
            vals[pos[hit]] = chunks[hit]
            self._dead -= int(np.count_nonzero(hit))
            ids, chunks = ids[~hit], chunks[~hit]
        limit = max(_DELTA_MIN, len(self._main[0]) // _DELTA_FRACTION)
        if len(ids) > limit:
            self._main = self._merge(self._main, ids, chunks)
            return
        self._delta = self._merge(self._delta, ids, chunks)
        if len(self._delta[0]) > limit:
            if self._dead:
                self._compact()
            self._main = self._merge(self._main, *self._delta)
            self._delta = _empty()

    def remove(self, ids: np.ndarray) -> None:
        """Forget ``ids`` (those not present are ignored)."""
        keys, vals = self._delta
        pos, hit = _find(keys, ids)
        if hit.any():
            self._delta = np.delete(keys, pos[hit]), np.delete(vals, pos[hit])
        keys, vals = self._main
        pos, hit = _find(keys, ids)
        drop = pos[hit]
        drop = drop[vals[drop] != _DEAD]
        vals[drop] = _DEAD
        self._dead += len(drop)
        if self._dead > max(_DELTA_MIN, len(keys) // _DEAD_FRACTION):
            self._compact()

    def locate(self, ids: np.ndarray) -> np.ndarray:
        """Chunk of each id, -1 where not held."""
        out = np.full(len(ids), -1, I8)
        for keys, vals in (self._main, self._delta):
            pos, hit = _find(keys, ids)
            out[hit] = vals[pos[hit]]  # -1 for the dead
        return out

    def __len__(self) -> int:
        return len(self._main[0]) - self._dead + len(self._delta[0])

    @property
    def nbytes(self) -> int:
        """Bytes of the lookup's arrays."""
        return sum(a.nbytes for a in (*self._main, *self._delta))
