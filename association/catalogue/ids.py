"""The id lookup of a Slice's catalogue: diaObjectId -> chunk over every held chunk.

A sorted main array plus a small sorted delta taking new ids, so a visit costs
O(k log k) amortised instead of O(held Objects).
"""

from __future__ import annotations

import numpy as np

from association.catalogue.records import I8

_DELTA_MIN = 65536
_DELTA_FRACTION = 32


class IdIndex:
    """diaObjectId -> chunk over every held chunk: sorted main part plus a small sorted delta."""

    def __init__(self) -> None:
        empty_ids, empty_chunks = np.empty(0, I8), np.empty(0, np.int32)
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
            self._delta = (np.empty(0, I8), np.empty(0, np.int32))

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
        out = np.full(len(ids), -1, I8)
        for keys, vals in (self._main, self._delta):
            if len(keys) == 0:
                continue
            pos = np.minimum(np.searchsorted(keys, ids), len(keys) - 1)
            hit = keys[pos] == ids
            out[hit] = vals[pos[hit]]
        return out

    @property
    def nbytes(self) -> int:
        """Bytes of the lookup's arrays."""
        return sum(a.nbytes for a in (*self._main, *self._delta))
